//! The service's own OpenStack client against the real Keystone and Neutron of
//! `scripts/dev-cloud`: login from clouds.yaml (a password and application credentials, by id
//! and by name), the catalog, Neutron's routers and ports as the service reads them, and
//! distributed routers recognised as such; `/readyz` while Keystone refuses the service's own
//! credentials.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::time::Duration;

use praas::openstack::{clouds, NeutronDirectory, RouterDirectory, Session};
use praas::runtime::{self, Role};

use support::{Cloud, KEYSTONE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_logs_in_from_clouds_yaml_and_reads_neutron() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("the_service_logs_in_from_clouds_yaml_and_reads_neutron") else {
        return;
    };
    let session = cloud.session("openstack");
    assert_eq!(
        session.endpoint("network").await.unwrap(),
        cloud.resources["neutron"].as_str().unwrap()
    );
    let neutron = NeutronDirectory::new(session);
    let a = cloud.project("a");
    let router = neutron
        .router(a["router_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(router.project_id.as_deref(), a["project_id"].as_str());
    assert_eq!(
        router.gateway_ip.unwrap().to_string(),
        a["router_gateway_ip"].as_str().unwrap()
    );
    assert_eq!(
        router.subnets,
        vec![a["cidr"].as_str().unwrap().parse().unwrap()]
    );
    assert_eq!(
        router.subnet_ids,
        vec![a["subnet_id"].as_str().unwrap().to_string()]
    );
    let vm = &a["vms"][0];
    let port = neutron
        .port(vm["port_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(port.project_id.as_deref(), a["project_id"].as_str());
    assert_eq!(port.fixed_ips[0].ip.to_string(), vm["ip"].as_str().unwrap());
    assert_eq!(
        port.fixed_ips[0].subnet_id.as_deref(),
        a["subnet_id"].as_str()
    );
    // The router serving an address, found through the port that holds it.
    let ip = vm["ip"].as_str().unwrap().parse().unwrap();
    let serving = neutron
        .routers_serving(ip, a["project_id"].as_str())
        .await
        .unwrap();
    assert_eq!(serving.len(), 1);
    assert_eq!(serving[0].id, a["router_id"].as_str().unwrap());
    // Another project's view of the same address finds nothing.
    let b_project = cloud.project("b")["project_id"].as_str();
    assert!(neutron
        .routers_serving(ip, b_project)
        .await
        .unwrap()
        .is_empty());
    assert!(neutron
        .router("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap()
        .is_none());
    // A router without gateway is known, without a gateway address.
    let bare = neutron
        .router(a["router_without_gateway_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bare.gateway_ip, None);
}

/// Application credentials, by id and by name with the user, log in and reach Neutron; a
/// distributed router is seen as one (its mappings go to the snat- namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_credentials_log_in_and_distributed_routers_are_recognised() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) =
        Cloud::find("application_credentials_log_in_and_distributed_routers_are_recognised")
    else {
        return;
    };
    for entry in ["openstack-appcred-id", "openstack-appcred-name"] {
        let session = cloud.session(entry);
        assert_eq!(
            session.endpoint("network").await.unwrap(),
            cloud.resources["neutron"].as_str().unwrap(),
            "{entry}"
        );
        let neutron = NeutronDirectory::new(session);
        let a = cloud.project("a");
        let dvr = neutron
            .router(a["distributed_router_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(dvr.distributed, "{entry}: {dvr:?}");
        assert!(dvr.gateway_ip.is_some());
        let legacy = neutron
            .router(a["router_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(!legacy.distributed);
    }
    // A wrong secret is the service's credentials refused, not a network error.
    let mut config = clouds::load(&cloud.dir.join("clouds.yaml"), "openstack-appcred-id").unwrap();
    if let clouds::Credentials::ApplicationCredential { secret, .. } = &mut config.credentials {
        *secret = "wrong".into();
    }
    let session = Session::new(config, Duration::from_secs(10)).unwrap();
    let err = session.auth_token().await.unwrap_err();
    assert!(
        matches!(
            err,
            praas::openstack::OpenStackError::LoginRefused { status: 401, .. }
        ),
        "{err}"
    );
}

/// `praas server` on the service's real credentials is ready; with a password Keystone refuses,
/// `/readyz` says it is not, naming Keystone, while `/healthz` still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_keystone_while_the_services_credentials_are_refused() {
    let _shared = KEYSTONE.read().await;
    let test = "readyz_names_keystone_while_the_services_credentials_are_refused";
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let get = |base: String, path: &'static str| async move {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let cfg = cloud.config();
    let running = runtime::start(&cfg, Role::Server).await.unwrap();
    let base = format!("http://{}", running.api_addr().unwrap());
    assert_eq!(get(base.clone(), "/readyz").await.0, 200);
    running.stop().await;

    // The same service with a password Keystone refuses (the dev cloud's clouds.yaml is JSON).
    let mut clouds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cloud.dir.join("clouds.yaml")).unwrap())
            .unwrap();
    clouds["clouds"]["openstack"]["auth"]["password"] = "not-the-password".into();
    let file = std::env::temp_dir().join(format!("praas-refused-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&file, clouds.to_string()).unwrap();
    let mut cfg = cloud.config();
    cfg.openstack.clouds_file = Some(file.clone());
    let running = runtime::start(&cfg, Role::Server).await.unwrap();
    let base = format!("http://{}", running.api_addr().unwrap());
    let (status, body) = get(base.clone(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "identity_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Keystone") && message.contains("refused the service's credentials"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");
    assert_eq!(get(base, "/healthz").await.0, 200);
    running.stop().await;
    let _ = std::fs::remove_file(file);
}
