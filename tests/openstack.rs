//! Against the real Keystone and Neutron of `scripts/dev-cloud`: the service's own client
//! (clouds.yaml, catalog, Neutron reads), Keystone-authenticated requests, the authorization
//! matrix of every endpoint, and the Neutron checks of new mappings.
//!
//! The cloud is found at `PRAAS_CLOUD_DIR` (default `/var/tmp/praas-dev-cloud`). Without it the
//! tests print one line and skip; under CI they fail instead (`scripts/test` brings it up).

mod common;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use praas::api::health::Readiness;
use praas::config::{Allocation, Config};
use praas::dataplane::netlink::sockets;
use praas::monitor::notifications::Subscription;
use praas::monitor::{Monitor, PortGone};
use praas::openstack::{clouds, NeutronDirectory, RouterDirectory, Session};
use praas::runtime;
use praas::store::{Policy, Store};
use praas::testbed::simnode::{SimLayout, SimNode, SimNodeOptions};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

use tokio::sync::{Notify, RwLock};
use tower::ServiceExt;

/// Tests that stop Keystone take this for writing; all others for reading.
static KEYSTONE: RwLock<()> = RwLock::const_new(());

struct Cloud {
    dir: PathBuf,
    resources: Value,
}

impl Cloud {
    /// The dev cloud, or `None` (with the reason printed) when it is not running.
    fn find(test: &str) -> Option<Cloud> {
        let dir = PathBuf::from(
            std::env::var("PRAAS_CLOUD_DIR").unwrap_or_else(|_| "/var/tmp/praas-dev-cloud".into()),
        );
        let resources = std::fs::read_to_string(dir.join("resources.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let up = resources.as_ref().is_some_and(|r| {
            r["keystone"]
                .as_str()
                .is_some_and(|url| std::net::TcpStream::connect(authority(url)).is_ok())
        });
        if !up {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{test}: CI must run the dev cloud (scripts/dev-cloud up) at {}",
                    dir.display()
                );
            }
            praas::testbed::simnode::skipped(
                test,
                &format!("no dev cloud at {} (scripts/dev-cloud up)", dir.display()),
            );
            return None;
        }
        Some(Cloud {
            dir,
            resources: resources.unwrap(),
        })
    }

    fn session(&self, cloud: &str) -> Arc<Session> {
        let config = clouds::load(&self.dir.join("clouds.yaml"), cloud).unwrap();
        Arc::new(Session::new(config, Duration::from_secs(10)).unwrap())
    }

    /// A fresh token of the user behind `cloud` of clouds.yaml.
    async fn token(&self, cloud: &str) -> String {
        self.session(cloud).auth_token().await.unwrap()
    }

    fn project(&self, p: &str) -> &Value {
        &self.resources["projects"][p]
    }

    /// The API with Keystone authentication and Neutron checks, on a fresh SQLite store.
    async fn app(&self) -> Router {
        self.app_and_store().await.0
    }

    /// The service's configuration on this cloud: its clouds.yaml, a fresh SQLite store, and
    /// sequential allocation (the lowest free ports, so that tests can pick free ones at the
    /// top).
    fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.database.connection = common::sqlite_url();
        cfg.openstack.clouds_file = Some(self.dir.join("clouds.yaml"));
        cfg.praas.port_allocation = Allocation::Sequential;
        cfg.praas.bind_address = std::net::Ipv4Addr::LOCALHOST.into();
        cfg.praas.port_app = 0;
        cfg
    }

    async fn app_and_store(&self) -> (Router, Arc<Store>) {
        let cfg = self.config();
        let session = runtime::session(&cfg).unwrap();
        let store = runtime::open_store(&cfg).await.unwrap();
        let (directory, _) = runtime::directory(&cfg, session.as_ref());
        let app = runtime::api(
            store.clone(),
            directory,
            runtime::authenticator(&cfg, session.as_ref()).unwrap(),
            runtime::policy(&cfg),
            Readiness::store(store.clone()),
        );
        (app, store)
    }

    /// The agent of `praas all-in-one` on `store` (nftables).
    fn agent(&self, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(runtime::agent(&self.config(), store).unwrap().run())
    }
}

fn authority(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string()
}

async fn call(
    app: &Router,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("x-auth-token", t);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_default();
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, value)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("requests_without_a_valid_token_are_refused") else {
        return;
    };
    let app = cloud.app().await;
    let oversized = format!("gAAAAAB{}", "x".repeat(praas::api::auth::MAX_TOKEN_LEN));
    for token in [
        None,
        Some("gAAAAABnot-a-real-token"),
        Some(""),
        Some(oversized.as_str()),
    ] {
        for (method, uri) in [
            (Method::GET, "/v1/mappings"),
            (Method::POST, "/v1/mappings"),
            (Method::GET, "/router_pat?router_id=x"),
        ] {
            let (status, body) = call(&app, token, method.clone(), uri, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {token:?}: {body}"
            );
            // Each protocol answers in its own shape.
            if uri.starts_with("/v1") {
                assert_eq!(body["error"]["code"], "unauthorized");
            } else {
                assert_eq!(body["status"], "ERROR", "{body}");
            }
        }
    }
    // Health checks and the API document stay open.
    for uri in ["/healthz", "/readyz", "/v1/openapi.json"] {
        assert_eq!(
            call(&app, None, Method::GET, uri, None).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
}

/// Every endpoint × admin, member and reader of the owning project, member and reader of
/// another project, on project A's router and VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_for_every_endpoint() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("the_authorization_matrix_holds_for_every_endpoint") else {
        return;
    };
    let app = cloud.app().await;
    let a = cloud.project("a");
    let router = a["router_id"].as_str().unwrap();
    let gateway = a["router_gateway_ip"].as_str().unwrap();
    let (vm1_port, vm2_ip) = (
        a["vms"][0]["port_id"].as_str().unwrap(),
        a["vms"][1]["ip"].as_str().unwrap(),
    );
    let users = ["admin", "a-member", "a-reader", "b-member", "b-reader"];
    let mut tokens = std::collections::BTreeMap::new();
    for u in users {
        tokens.insert(u, cloud.token(u).await);
    }
    let writes = |user: &str| matches!(user, "admin" | "a-member");
    let sees = |user: &str| matches!(user, "admin" | "a-member" | "a-reader");

    for (n, user) in users.iter().enumerate() {
        let token = Some(tokens[user].as_str());
        let internal_port = 2000 + n as u64;
        // v1 create.
        let (status, created) = call(
            &app,
            token,
            Method::POST,
            "/v1/mappings",
            Some(
                json!({"mapping": {"router_id": router, "internal_port_id": vm1_port,
                "internal_port": internal_port}}),
            ),
        )
        .await;
        let want = match *user {
            "admin" | "a-member" => StatusCode::CREATED,
            "b-member" => StatusCode::NOT_FOUND,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, want, "{user} creates: {created}");
        // The mapping the rest of the checks use: made by A's member.
        let (_, made) = call(
            &app,
            Some(&tokens["a-member"]),
            Method::POST,
            "/v1/mappings",
            Some(
                json!({"mapping": {"router_id": router, "internal_port_id": vm1_port,
                "internal_port": 3000 + n as u64}}),
            ),
        )
        .await;
        let id = made["mapping"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{made}"))
            .to_string();
        assert_eq!(made["mapping"]["project_id"], a["project_id"]);

        // v1 list and show.
        let (status, list) = call(&app, token, Method::GET, "/v1/mappings", None).await;
        assert_eq!(status, StatusCode::OK, "{user} lists: {list}");
        let listed = list["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str());
        assert_eq!(listed, sees(user), "{user} lists: {list}");
        let (status, shown) = call(
            &app,
            token,
            Method::GET,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = if sees(user) {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, want, "{user} shows: {shown}");

        // Original protocol: list and create.
        let (status, pat) = call(
            &app,
            token,
            Method::GET,
            &format!("/router_pat?router_id=qrouter-{router}"),
            None,
        )
        .await;
        if user.ends_with("reader") || writes(user) || *user == "b-member" {
            assert_eq!(status, StatusCode::OK, "{user} router_pat: {pat}");
        }
        let pat_text = pat.to_string();
        assert_eq!(
            pat_text.contains(&format!("{}", 3000 + n)),
            sees(user),
            "{user} router_pat: {pat}"
        );
        let (status, pat_created) = call(
            &app,
            token,
            Method::POST,
            &format!(
                "/pat/create?router_id=qrouter-{router}&server_ip={vm2_ip}&create_server_port={}&gateway={gateway}",
                4000 + n
            ),
            None,
        )
        .await;
        match *user {
            "admin" | "a-member" => {
                assert_eq!(status, StatusCode::OK, "{user} pat/create: {pat_created}");
                assert!(
                    pat_created["create_router_port"].is_string(),
                    "{user}: {pat_created}"
                );
            }
            "b-member" => {
                // The original protocol answers 200 with an error body; nothing is created.
                assert_eq!(status, StatusCode::OK, "{user} pat/create: {pat_created}");
                assert!(
                    pat_created["create_router_port"].is_null(),
                    "{user}: {pat_created}"
                );
            }
            _ => assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{user} pat/create: {pat_created}"
            ),
        }

        // v1 update and delete.
        let (status, updated) = call(
            &app,
            token,
            Method::PUT,
            &format!("/v1/mappings/{id}"),
            Some(json!({"mapping": {"description": format!("changed by {user}")}})),
        )
        .await;
        // Another project's mapping does not exist for the caller, whatever its role.
        let want = match *user {
            "admin" | "a-member" => StatusCode::OK,
            "a-reader" => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(status, want, "{user} updates: {updated}");
        let (status, deleted) = call(
            &app,
            token,
            Method::DELETE,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = match *user {
            "admin" | "a-member" => StatusCode::NO_CONTENT,
            "a-reader" => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(status, want, "{user} deletes: {deleted}");
        let (status, _) = call(
            &app,
            Some(&tokens["admin"]),
            Method::GET,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = if writes(user) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want, "after {user}'s delete");

        // Original protocol: one server's listing, modify and remove of a mapping that A's
        // member made through it.
        let server_port = 5000 + n;
        let create = format!(
            "/pat/create?router_id=qrouter-{router}&server_ip={vm2_ip}&create_server_port={server_port}&gateway={gateway}"
        );
        let (_, made) = call(&app, Some(&tokens["a-member"]), Method::POST, &create, None).await;
        assert_eq!(made["status"], "SUCCESS", "{made}");
        let (status, listing) = call(
            &app,
            token,
            Method::GET,
            &format!("/router_server_pat?router_id=qrouter-{router}&server_ip={vm2_ip}"),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{user} router_server_pat: {listing}"
        );
        assert_eq!(
            listing.to_string().contains(&server_port.to_string()),
            sees(user),
            "{user} router_server_pat: {listing}"
        );
        let target = |op: &str, extra: String| {
            format!(
                "/pat/{op}?router_id=qrouter-{router}&server_ip={vm2_ip}&{op}_server_port={server_port}{extra}&gateway={gateway}"
            )
        };
        let (status, modified) = call(
            &app,
            token,
            Method::POST,
            &target("modify", format!("&modify_router_port={}", 4100 - n)),
            None,
        )
        .await;
        let (status2, removed) = call(
            &app,
            token,
            Method::POST,
            &target("remove", String::new()),
            None,
        )
        .await;
        match *user {
            "admin" | "a-member" => {
                assert_eq!(
                    (status, &modified["status"]),
                    (StatusCode::OK, &json!("SUCCESS")),
                    "{user} modify: {modified}"
                );
                assert_eq!(
                    (status2, &removed["status"]),
                    (StatusCode::OK, &json!("REMOVED")),
                    "{user} remove: {removed}"
                );
            }
            "a-reader" => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{user} modify: {modified}");
                assert_eq!(status2, StatusCode::FORBIDDEN, "{user} remove: {removed}");
            }
            // Another project's mapping is not there for them.
            _ => {
                assert_eq!(
                    (status, &modified["status"]),
                    (StatusCode::OK, &json!("NO CREATED")),
                    "{user} modify: {modified}"
                );
                assert_eq!(
                    (status2, &removed["status"]),
                    (StatusCode::OK, &json!("NO CREATED")),
                    "{user} remove: {removed}"
                );
            }
        }
    }
}

/// Neutron decides what may be mapped: the caller's router with a gateway, the caller's port,
/// an address of that port on a subnet of that router.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mappings_are_checked_against_neutron() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("mappings_are_checked_against_neutron") else {
        return;
    };
    let app = cloud.app().await;
    let (a, b) = (cloud.project("a"), cloud.project("b"));
    let member = cloud.token("a-member").await;
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let router = s(&a["router_id"]);
    let cases = [
        (
            "router of another project",
            json!({"router_id": s(&b["router_id"]), "internal_ip_address": s(&a["vms"][0]["ip"]), "internal_port": 22}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "router without gateway",
            json!({"router_id": s(&a["router_without_gateway_id"]), "internal_ip_address": s(&a["vms"][0]["ip"]), "internal_port": 22}),
            StatusCode::CONFLICT,
            "router_has_no_gateway",
        ),
        (
            "port on a subnet the router does not serve",
            json!({"router_id": router, "internal_port_id": s(&a["unrouted"]["port_id"]), "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "address that is not the port's",
            json!({"router_id": router, "internal_port_id": s(&a["vms"][0]["port_id"]), "internal_ip_address": s(&a["vms"][1]["ip"]), "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "another project's port",
            json!({"router_id": router, "internal_port_id": s(&b["vms"][0]["port_id"]), "internal_port": 22}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "another project's address",
            json!({"router_id": router, "internal_ip_address": s(&b["vms"][0]["ip"]), "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "an address on the router's subnet that no port holds",
            json!({"router_id": router, "internal_ip_address": "10.10.0.250", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown router",
            json!({"router_id": "00000000-0000-4000-8000-000000000000", "internal_ip_address": s(&a["vms"][0]["ip"]), "internal_port": 22}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, mapping, status, code) in cases {
        let (got, body) = call(
            &app,
            Some(&member),
            Method::POST,
            "/v1/mappings",
            Some(json!({ "mapping": mapping })),
        )
        .await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
    }
    // The good case, with the router found from the address alone, and the port recorded.
    let (got, body) = call(
        &app,
        Some(&member),
        Method::POST,
        "/v1/mappings",
        Some(
            json!({"mapping": {"internal_ip_address": s(&a["vms"][1]["ip"]), "internal_port": 22}}),
        ),
    )
    .await;
    assert_eq!(got, StatusCode::CREATED, "{body}");
    let m = &body["mapping"];
    assert_eq!(m["router_id"], a["router_id"]);
    assert_eq!(m["external_ip_address"], a["router_gateway_ip"]);
    assert_eq!(m["internal_port_id"], a["vms"][1]["port_id"]);
    assert_eq!(m["project_id"], a["project_id"]);
}

/// A member maps its VM on the node an L3 agent would have built from what Neutron allocated,
/// and a real connection goes through the router's gateway. Then Keystone stops: requests that
/// need a token validated get 503 (not 401, not 500), a validation cached before the outage
/// still counts, and the mapping keeps forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_maps_its_vm_and_keystone_down_is_503_while_traffic_flows() {
    let test = "a_member_maps_its_vm_and_keystone_down_is_503_while_traffic_flows";
    let _alone = KEYSTONE.write().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let kernel = common::kernel_tests_enabled(test);
    let a = cloud.project("a");
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let external_prefix: ipnet::Ipv4Net = s(&cloud.resources["external_network"]["cidr"])
        .parse()
        .unwrap();
    let tenant_prefix: ipnet::Ipv4Net = s(&a["cidr"]).parse().unwrap();
    let (app, node, agent) = if kernel {
        let layout = SimLayout {
            router_id: s(&a["router_id"]),
            gateway: ipnet::Ipv4Net::new(
                s(&a["router_gateway_ip"]).parse().unwrap(),
                external_prefix.prefix_len(),
            )
            .unwrap(),
            upstream: s(&cloud.resources["external_network"]["gateway_ip"])
                .parse()
                .unwrap(),
            internal: ipnet::Ipv4Net::new(
                s(&a["router_interface_ip"]).parse().unwrap(),
                tenant_prefix.prefix_len(),
            )
            .unwrap(),
            vm_ips: vec![s(&a["vms"][0]["ip"]).parse().unwrap()],
        };
        let node = tokio::task::spawn_blocking(move || {
            SimNode::new(SimNodeOptions {
                layout: Some(layout),
                ..Default::default()
            })
        })
        .await
        .unwrap()
        .unwrap();
        let (app, store) = cloud.app_and_store().await;
        let agent = cloud.agent(store);
        (app, Some(node), Some(agent))
    } else {
        (cloud.app().await, None, None)
    };
    let member = cloud.token("a-member").await;
    let fresh = cloud.token("a-reader").await;
    let (status, body) = call(
        &app,
        Some(&member),
        Method::POST,
        "/v1/mappings",
        Some(
            json!({"mapping": {"internal_port_id": s(&a["vms"][0]["port_id"]), "internal_port": 22,
            "router_id": s(&a["router_id"])}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = s(&body["mapping"]["id"]);
    let port = body["mapping"]["external_port"].as_u64().unwrap() as u16;
    let dst = SocketAddrV4::new(s(&a["router_gateway_ip"]).parse().unwrap(), port);
    let _server = node.as_ref().map(|n| n.serve_tcp(0, 22).unwrap());
    let through = |node: &Option<SimNode>, msg: &'static str| {
        let client = node.as_ref().map(|n| n.client_ns.clone());
        async move {
            let client = client?;
            tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match SimNode::tcp_exchange(&client, None, dst, msg) {
                        Ok(answer) => return Some(answer),
                        Err(e) if std::time::Instant::now() > deadline => {
                            panic!("no connection to {dst}: {e}")
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .await
            .unwrap()
        }
    };
    let upstream = s(&cloud.resources["external_network"]["gateway_ip"]);
    if let Some(answer) = through(&node, "hello").await {
        // The VM sees the client's own address: no masquerade by default.
        assert_eq!(answer, format!("from={upstream} hello"));
        // The agent records the status just after programming: traffic may pass first.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, shown) = call(
                &app,
                Some(&member),
                Method::GET,
                &format!("/v1/mappings/{id}"),
                None,
            )
            .await;
            if shown["mapping"]["status"] == "ACTIVE" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{shown}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let pid_file = cloud.dir.join("keystone.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    praas::testbed::simnode::run(&["kill", &pid], None).unwrap();
    // Gone when the process is, not merely its listener (which closes first).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "Keystone did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = call(&app, Some(&fresh), Method::GET, "/v1/mappings", None).await;
    let (cached, _) = call(&app, Some(&member), Method::GET, "/v1/mappings", None).await;
    let still = through(&node, "still there").await;

    // Back up before asserting, so that a failure here does not take the cloud down for
    // the tests that follow.
    let restarted = std::process::Command::new("bash")
        .args(["scripts/dev-cloud", "up"])
        .env("PRAAS_CLOUD_DIR", &cloud.dir)
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "identity_unavailable");
    assert_eq!(
        cached,
        StatusCode::OK,
        "a validation cached before the outage still counts"
    );
    if let Some(answer) = still {
        assert_eq!(answer, format!("from={upstream} still there"));
    }
    if let Some(agent) = agent {
        agent.abort();
    }
    if let Some(node) = &node {
        sockets::forget(&node.router_ns);
    }
}

/// A new VM port of project A's member on A's network, named `prefix-<unique>` (bound to an
/// instance of the same name); Neutron's answer.
async fn vm_port(cloud: &Cloud, prefix: &str) -> Value {
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let network = cloud.project("a")["network_id"].clone();
    neutron_call(
        cloud,
        "a-member",
        reqwest::Method::POST,
        "ports",
        Some(json!({"port": {"network_id": network, "device_id": name,
            "device_owner": "compute:nova", "name": name}})),
    )
    .await
}

/// Neutron as `user` (a cloud of clouds.yaml), for changes the tests make; must succeed.
async fn neutron_call(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, value) = neutron_try(cloud, user, method.clone(), path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {value}");
    value
}

/// Neutron as `user`: the status and the body (`Null` when it is not JSON).
async fn neutron_try(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let token = cloud.token(user).await;
    let url = format!(
        "{}/v2.0/{path}",
        cloud.resources["neutron"].as_str().unwrap()
    );
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The monitor against the real Neutron: a changed fixed IP is followed (same external port),
/// Neutron stopped changes nothing, a deleted port takes its mapping with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_neutron_and_changes_nothing_when_it_is_down() {
    let test = "the_monitor_follows_neutron_and_changes_nothing_when_it_is_down";
    let _alone = KEYSTONE.write().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let a = cloud.project("a");
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let (app, store) = cloud.app_and_store().await;
    let member = cloud.token("a-member").await;
    // A VM port of its own, so that changing it disturbs no other test.
    // Ports an interrupted run left behind.
    let network = s(&a["network_id"]);
    let old = neutron_call(
        &cloud,
        "admin",
        reqwest::Method::GET,
        &format!("ports?network_id={network}"),
        None,
    )
    .await;
    for p in old["ports"].as_array().unwrap() {
        if p["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("vm-monitor-")
        {
            neutron_call(
                &cloud,
                "admin",
                reqwest::Method::DELETE,
                &format!("ports/{}", s(&p["id"])),
                None,
            )
            .await;
        }
    }
    let port = vm_port(&cloud, "vm-monitor").await;
    let port_id = s(&port["port"]["id"]);
    let (status, body) = call(
        &app,
        Some(&member),
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {"internal_port_id": port_id, "internal_port": 22}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = s(&body["mapping"]["id"]);
    let external_port = body["mapping"]["external_port"].clone();
    let old_ip = s(&body["mapping"]["internal_ip_address"]);

    let session = cloud.session("openstack");
    let monitor = Monitor::new(
        store.clone(),
        Arc::new(NeutronDirectory::new(session)),
        PortGone::Delete,
    );
    let lease = Duration::from_secs(30);
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!((report.deleted, report.updated), (0, 0), "{report:?}");

    // The port's fixed IP changes through the Neutron API.
    let new_ip = if old_ip.ends_with(".200") {
        "10.10.0.201"
    } else {
        "10.10.0.200"
    };
    neutron_call(
        &cloud,
        "a-member",
        reqwest::Method::PUT,
        &format!("ports/{port_id}"),
        Some(json!({"port": {"fixed_ips": [{"subnet_id": s(&a["subnet_id"]), "ip_address": new_ip}]}})),
    )
    .await;
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!(report.updated, 1, "{report:?}");
    let (_, shown) = call(
        &app,
        Some(&member),
        Method::GET,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!(shown["mapping"]["internal_ip_address"], new_ip, "{shown}");
    assert_eq!(
        shown["mapping"]["external_port"], external_port,
        "the user keeps the port"
    );

    // Neutron stopped: the port is deleted meanwhile, but nothing may change on doubt.
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{port_id}"),
        None,
    )
    .await;
    let pid = std::fs::read_to_string(cloud.dir.join("neutron.pid"))
        .unwrap()
        .trim()
        .to_string();
    praas::testbed::simnode::run(&["kill", &pid], None).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "Neutron did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let generation = store.generation().await.unwrap();
    let down = monitor.cycle(lease).await;
    let unchanged = store.generation().await.unwrap() == generation;
    let restarted = std::process::Command::new("bash")
        .args(["scripts/dev-cloud", "up"])
        .env("PRAAS_CLOUD_DIR", &cloud.dir)
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    assert!(down.is_err(), "{down:?}");
    assert!(unchanged, "a cycle without Neutron changed the store");
    assert!(store.get(&id).await.unwrap().is_some());

    // Neutron back: the deletion is seen, the mapping goes.
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    let (status, _) = call(
        &app,
        Some(&member),
        Method::GET,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// With Neutron's notifications on the real RabbitMQ, a deleted port's mapping goes without
/// waiting for the polling cycle (set to ten minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_make_the_monitor_react_at_once() {
    let test = "notifications_make_the_monitor_react_at_once";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if !common::rabbitmq_enabled(test) {
        return;
    }
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let (app, store) = cloud.app_and_store().await;
    let member = cloud.token("a-member").await;
    let port = vm_port(&cloud, "vm-notified").await;
    let port_id = s(&port["port"]["id"]);
    let (status, body) = call(
        &app,
        Some(&member),
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {"internal_port_id": port_id, "internal_port": 22}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = s(&body["mapping"]["id"]);

    let monitor = Monitor::new(
        store.clone(),
        Arc::new(NeutronDirectory::new(cloud.session("openstack"))),
        PortGone::Delete,
    );
    let counters = monitor.counters();
    let (wake, listening) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let listener = tokio::spawn(praas::monitor::notifications::listen(
        Subscription::new(common::RABBIT_URL.into(), "neutron".into()),
        wake.clone(),
        listening.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), listening.notified())
        .await
        .expect("not listening to RabbitMQ after 10 s");
    let running = tokio::spawn(monitor.run(Duration::from_secs(600), wake));
    // The first cycle runs at once; once it has finished, only a notification can start another.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.cycles.load(Ordering::Relaxed) < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.get(&id).await.unwrap().is_some());

    let deleted_at = std::time::Instant::now();
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{port_id}"),
        None,
    )
    .await;
    while store.get(&id).await.unwrap().is_some() {
        assert!(
            deleted_at.elapsed() < Duration::from_secs(15),
            "the mapping of a deleted port is still there after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{test}: port deleted -> mapping deleted in {:?} (polling interval 600 s)",
        deleted_at.elapsed()
    );
    // The timer's only cycle had finished before the deletion: the one that saw it was woken.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counters.cycles.load(Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "no second cycle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.abort();
    listener.abort();
}

/// A router of the test's own in project A: a network and subnet of its own behind it (so
/// that no other test sees a second router on its network), a gateway on the external network,
/// and VM ports. Leftovers of an interrupted run are removed first.
struct OwnRouter {
    id: String,
    network_id: String,
    subnet_id: String,
    /// The subnet, with the router's interface address.
    interface: ipnet::Ipv4Net,
    /// (port id, fixed IP) of each VM port.
    vms: Vec<(String, std::net::Ipv4Addr)>,
}

const OWN_PREFIX: &str = "praas-own-";

impl OwnRouter {
    async fn create(cloud: &Cloud, vms: usize) -> OwnRouter {
        Self::remove_leftovers(cloud).await;
        let tag = format!("{OWN_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let s = |v: &Value| v.as_str().unwrap().to_string();
        let member = |method, path: &str, body| {
            let (cloud, path) = (cloud, path.to_string());
            async move { neutron_call(cloud, "a-member", method, &path, body).await }
        };
        use reqwest::Method as M;
        let network = member(M::POST, "networks", Some(json!({"network": {"name": tag}}))).await;
        let network_id = s(&network["network"]["id"]);
        let subnet = member(
            M::POST,
            "subnets",
            Some(
                json!({"subnet": {"name": tag, "network_id": network_id, "ip_version": 4,
                "cidr": "10.30.0.0/24", "gateway_ip": "10.30.0.1", "enable_dhcp": false}}),
            ),
        )
        .await;
        let subnet_id = s(&subnet["subnet"]["id"]);
        let public = s(&cloud.resources["external_network"]["id"]);
        let router = member(
            M::POST,
            "routers",
            Some(json!({"router": {"name": tag, "external_gateway_info": {"network_id": public}}})),
        )
        .await;
        let id = s(&router["router"]["id"]);
        member(
            M::PUT,
            &format!("routers/{id}/add_router_interface"),
            Some(json!({"subnet_id": subnet_id})),
        )
        .await;
        let mut ports = vec![];
        for i in 0..vms {
            let port = member(
                M::POST,
                "ports",
                Some(
                    json!({"port": {"network_id": network_id, "name": format!("{tag}-vm{i}"),
                    "device_id": format!("{tag}-vm{i}"), "device_owner": "compute:nova"}}),
                ),
            )
            .await;
            ports.push((
                s(&port["port"]["id"]),
                s(&port["port"]["fixed_ips"][0]["ip_address"])
                    .parse()
                    .unwrap(),
            ));
        }
        OwnRouter {
            id,
            network_id,
            subnet_id,
            interface: "10.30.0.1/24".parse().unwrap(),
            vms: ports,
        }
    }

    /// The router's gateway address, as Neutron has it now.
    async fn gateway(&self, cloud: &Cloud) -> Option<std::net::Ipv4Addr> {
        let r = neutron_call(
            cloud,
            "admin",
            reqwest::Method::GET,
            &format!("routers/{}", self.id),
            None,
        )
        .await;
        r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
            .as_str()
            .map(|ip| ip.parse().unwrap())
    }

    /// The simulated node an L3 agent would build for this router and its VMs.
    async fn node(&self, cloud: &Cloud) -> SimNode {
        let layout = SimLayout {
            router_id: self.id.clone(),
            gateway: ipnet::Ipv4Net::new(
                self.gateway(cloud).await.unwrap(),
                external_prefix(cloud),
            )
            .unwrap(),
            upstream: upstream(cloud),
            internal: self.interface,
            vm_ips: self.vms.iter().map(|(_, ip)| *ip).collect(),
        };
        tokio::task::spawn_blocking(move || {
            SimNode::new(SimNodeOptions {
                layout: Some(layout),
                ..Default::default()
            })
        })
        .await
        .unwrap()
        .unwrap()
    }

    async fn remove(self, cloud: &Cloud) {
        remove_router(cloud, &self.id, &self.network_id, &self.subnet_id).await;
    }

    /// Routers, ports and networks named by an earlier, interrupted run.
    async fn remove_leftovers(cloud: &Cloud) {
        let routers = neutron_call(cloud, "admin", reqwest::Method::GET, "routers", None).await;
        let networks = neutron_call(cloud, "admin", reqwest::Method::GET, "networks", None).await;
        let named = |v: &Value| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(OWN_PREFIX))
        };
        for r in routers["routers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| named(r))
        {
            let name = r["name"].as_str().unwrap();
            if let Some(n) = networks["networks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == name)
            {
                let (id, network) = (r["id"].as_str().unwrap(), n["id"].as_str().unwrap());
                let subnet = n["subnets"][0].as_str().unwrap_or_default();
                remove_router(cloud, id, network, subnet).await;
            }
        }
    }
}

async fn remove_router(cloud: &Cloud, id: &str, network: &str, subnet: &str) {
    use reqwest::Method as M;
    // Each step may already have been done by the test or by an interrupted run.
    neutron_try(
        cloud,
        "admin",
        M::PUT,
        &format!("routers/{id}/remove_router_interface"),
        Some(json!({"subnet_id": subnet})),
    )
    .await;
    neutron_try(cloud, "admin", M::DELETE, &format!("routers/{id}"), None).await;
    let ports = neutron_call(
        cloud,
        "admin",
        M::GET,
        &format!("ports?network_id={network}"),
        None,
    )
    .await;
    for p in ports["ports"].as_array().unwrap() {
        let port = p["id"].as_str().unwrap();
        neutron_try(cloud, "admin", M::DELETE, &format!("ports/{port}"), None).await;
    }
    neutron_try(
        cloud,
        "admin",
        M::DELETE,
        &format!("networks/{network}"),
        None,
    )
    .await;
}

fn upstream(cloud: &Cloud) -> std::net::Ipv4Addr {
    cloud.resources["external_network"]["gateway_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The monitor and a router's gateway, against the real Neutron: removed → the mapping is held
/// DOWN (out of the dataplane); set again (Neutron picks the address) → released, following the
/// new gateway address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_holds_mappings_while_their_router_has_no_gateway() {
    let test = "the_monitor_holds_mappings_while_their_router_has_no_gateway";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let router = OwnRouter::create(&cloud, 1).await;
    let public = cloud.resources["external_network"]["id"].clone();
    let (app, store) = cloud.app_and_store().await;
    let token = cloud.token("a-member").await;
    let (status, body) = call(
        &app,
        Some(&token),
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {"internal_port_id": router.vms[0].0, "internal_port": 22}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["mapping"]["id"].as_str().unwrap().to_string();
    let monitor = Monitor::new(
        store.clone(),
        Arc::new(NeutronDirectory::new(cloud.session("openstack"))),
        PortGone::Delete,
    );
    let lease = Duration::from_secs(30);
    let set_gateway = |info: Value| {
        let (cloud, path) = (&cloud, format!("routers/{}", router.id));
        async move {
            neutron_call(
                cloud,
                "a-member",
                reqwest::Method::PUT,
                &path,
                Some(json!({"router": {"external_gateway_info": info}})),
            )
            .await
        }
    };

    set_gateway(json!({})).await;
    monitor.cycle(lease).await.unwrap();
    let held = store.get(&id).await.unwrap().unwrap();
    assert!(
        held.held && held.status == praas::store::Status::Down,
        "{held:?}"
    );
    assert!(held.status_reason.unwrap().contains("no external gateway"));

    // A gateway again, at an address of Neutron's choosing (often not the first one).
    set_gateway(json!({"network_id": public})).await;
    monitor.cycle(lease).await.unwrap();
    let back = store.get(&id).await.unwrap().unwrap();
    assert!(!back.held, "{back:?}");
    assert_eq!(Some(back.external_ip_address), router.gateway(&cloud).await);
    assert_eq!(
        back.status,
        praas::store::Status::Pending,
        "to be programmed again"
    );
    router.remove(&cloud).await;
}

/// Sets `resource` (a Neutron path) to the first of `candidates` that Neutron accepts (some
/// addresses may be taken), and returns it.
async fn first_free(
    cloud: &Cloud,
    path: &str,
    candidates: impl IntoIterator<Item = std::net::Ipv4Addr>,
    body: impl Fn(std::net::Ipv4Addr) -> Value,
) -> std::net::Ipv4Addr {
    for ip in candidates {
        let (status, answer) =
            neutron_try(cloud, "admin", reqwest::Method::PUT, path, Some(body(ip))).await;
        if status.is_success() {
            return ip;
        }
        assert_eq!(status, reqwest::StatusCode::CONFLICT, "{path}: {answer}");
    }
    panic!("{path}: no free address among the candidates");
}

/// Waits until `probe` says yes, up to `limit`; returns how long it took.
async fn until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let yes = tokio::task::block_in_place(&mut probe);
        if yes {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What Neutron changes reaches the packets: the monitor with the agent on the node an L3
/// agent would build from Neutron's allocation. Polling every 2 s: a changed fixed IP (the VM
/// moves with it) is followed on the same external port; a changed gateway address is
/// followed; a removed gateway stops forwarding until it returns; Neutron stopped changes nothing and traffic flows; a deleted port's connection is
/// refused within the interval. Then with notifications (polling at 10 minutes): a deleted
/// port's connection is refused within moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_neutron_changes_reaches_the_packets() {
    let test = "what_neutron_changes_reaches_the_packets";
    // Stops Neutron.
    let _alone = KEYSTONE.write().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if !common::kernel_tests_enabled(test) {
        return;
    }
    if !common::rabbitmq_enabled(test) {
        return;
    }
    let router = OwnRouter::create(&cloud, 2).await;
    let mut node = router.node(&cloud).await;
    let (app, store) = cloud.app_and_store().await;
    let agent = cloud.agent(store.clone());
    let view = Arc::new(NeutronDirectory::new(cloud.session("openstack")));
    let interval = Duration::from_secs(2);
    let polling = Monitor::new(store.clone(), view.clone(), PortGone::Delete);
    let counters = polling.counters();
    let (stop_polling, stopped) = tokio::sync::oneshot::channel::<()>();
    let polling = tokio::spawn(polling.run_until(interval, Arc::new(Notify::new()), async {
        let _ = stopped.await;
    }));

    let token = cloud.token("a-member").await;
    let mut mapped = vec![];
    for (port_id, _) in &router.vms {
        let (status, body) = call(
            &app,
            Some(&token),
            Method::POST,
            "/v1/mappings",
            Some(json!({"mapping": {"internal_port_id": port_id, "internal_port": 22}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        mapped.push((
            body["mapping"]["id"].as_str().unwrap().to_string(),
            body["mapping"]["external_port"].as_u64().unwrap() as u16,
        ));
    }
    let _servers = [
        node.serve_tcp(0, 22).unwrap(),
        node.serve_tcp(1, 22).unwrap(),
    ];
    let client = node.client_ns.clone();
    let upstream = upstream(&cloud);
    let answers = |gateway: std::net::Ipv4Addr, port: u16| {
        let client = client.clone();
        move || {
            SimNode::tcp_exchange(&client, None, SocketAddrV4::new(gateway, port), "hi").ok()
                == Some(format!("from={upstream} hi"))
        }
    };
    let refused = |gateway: std::net::Ipv4Addr, port: u16| {
        let client = client.clone();
        move || SimNode::connect(&client, None, SocketAddrV4::new(gateway, port)).is_err()
    };
    let gateway = node.gateway_ip;
    for (_, port) in &mapped {
        until(
            Duration::from_secs(10),
            "first connection",
            answers(gateway, *port),
        )
        .await;
    }

    // The VM's fixed IP changes in Neutron, and the VM takes the new address.
    let (vm_port, old_ip) = router.vms[0].clone();
    let subnet = router.subnet_id.clone();
    let new_ip = first_free(
        &cloud,
        &format!("ports/{vm_port}"),
        (200..=250).map(|h| std::net::Ipv4Addr::new(10, 30, 0, h)),
        |ip| json!({"port": {"fixed_ips": [{"subnet_id": subnet, "ip_address": ip.to_string()}]}}),
    )
    .await;
    assert_ne!(new_ip, old_ip);
    let moved = ipnet::Ipv4Net::new(new_ip, router.interface.prefix_len()).unwrap();
    node.readdress_vm(0, moved, router.interface.addr())
        .unwrap();
    let took = until(
        interval * 4,
        "the same external port to the new address",
        answers(gateway, mapped[0].1),
    )
    .await;
    eprintln!("{test}: fixed IP {old_ip} -> {new_ip} followed in {took:?} (interval {interval:?})");
    let m = store.get(&mapped[0].0).await.unwrap().unwrap();
    assert_eq!(m.internal_ip_address, new_ip);
    assert_eq!(
        m.external_ports.first(),
        mapped[0].1,
        "the user keeps the port"
    );

    // The router's gateway address changes in Neutron, and the L3 agent moves it.
    let public = cloud.resources["external_network"]["id"].clone();
    let new_gateway = first_free(
        &cloud,
        &format!("routers/{}", router.id),
        (240..=250)
            .rev()
            .map(|h| std::net::Ipv4Addr::new(203, 0, 113, h)),
        |ip| {
            json!({"router": {"external_gateway_info": {"network_id": public,
                "external_fixed_ips": [{"ip_address": ip.to_string()}]}}})
        },
    )
    .await;
    assert_ne!(new_gateway, gateway);
    let moved = ipnet::Ipv4Net::new(new_gateway, external_prefix(&cloud)).unwrap();
    node.readdress_gateway(moved, upstream).unwrap();
    let took = until(
        interval * 4,
        "the new gateway address",
        answers(new_gateway, mapped[1].1),
    )
    .await;
    eprintln!("{test}: gateway {gateway} -> {new_gateway} followed in {took:?}");
    let gateway = new_gateway;
    until(
        interval * 4,
        "both on the new address",
        answers(gateway, mapped[0].1),
    )
    .await;
    assert_eq!(
        store
            .get(&mapped[0].0)
            .await
            .unwrap()
            .unwrap()
            .external_ip_address,
        gateway
    );

    // The gateway is removed: the mappings are held DOWN, out of the dataplane; it returns
    // (at the same address, which the node still has): they forward again.
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::PUT,
        &format!("routers/{}", router.id),
        Some(json!({"router": {"external_gateway_info": {}}})),
    )
    .await;
    until(
        interval * 4,
        "no gateway, no forwarding",
        refused(gateway, mapped[0].1),
    )
    .await;
    let held = store.get(&mapped[0].0).await.unwrap().unwrap();
    assert_eq!(held.status, praas::store::Status::Down, "{held:?}");
    first_free(&cloud, &format!("routers/{}", router.id), [gateway], |ip| {
        json!({"router": {"external_gateway_info": {"network_id": public,
                "external_fixed_ips": [{"ip_address": ip.to_string()}]}}})
    })
    .await;
    for (_, port) in &mapped {
        until(interval * 4, "the gateway back", answers(gateway, *port)).await;
    }

    // Neutron stops: cycles fail, nothing changes, traffic flows.
    let pid = std::fs::read_to_string(cloud.dir.join("neutron.pid"))
        .unwrap()
        .trim()
        .to_string();
    praas::testbed::simnode::run(&["kill", &pid], None).unwrap();
    let stopped = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "Neutron did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = counters.failed_cycles.load(Ordering::Relaxed);
    let generation = store.generation().await.unwrap();
    // A failing cycle takes about a second (reads are retried with backoff).
    tokio::time::sleep(interval * 4).await;
    let failed_meanwhile = counters.failed_cycles.load(Ordering::Relaxed) - failed;
    let unchanged = store.generation().await.unwrap() == generation;
    let flowing = tokio::task::block_in_place(answers(gateway, mapped[0].1))
        && tokio::task::block_in_place(answers(gateway, mapped[1].1));
    let restarted = std::process::Command::new("bash")
        .args(["scripts/dev-cloud", "up"])
        .env("PRAAS_CLOUD_DIR", &cloud.dir)
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    assert!(
        failed_meanwhile >= 2,
        "cycles failed while Neutron was down: {failed_meanwhile}"
    );
    assert!(unchanged, "a cycle without Neutron changed the store");
    assert!(flowing, "traffic stopped while Neutron was down");

    // Neutron back, cycles resume: a deleted port's connection is refused within the interval.
    let failed = counters.failed_cycles.load(Ordering::Relaxed);
    let issued = std::time::Instant::now();
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{}", router.vms[1].0),
        None,
    )
    .await;
    let answered = issued.elapsed();
    let took = until(
        interval * 3,
        "the deleted port's connection to be refused",
        refused(gateway, mapped[1].1),
    )
    .await;
    eprintln!(
        "{test}: polling every {interval:?}: Neutron answered the DELETE in {answered:?}, \
         the connection was refused {took:?} later"
    );
    assert!(store.get(&mapped[1].0).await.unwrap().is_none());
    assert_eq!(counters.failed_cycles.load(Ordering::Relaxed), failed);
    assert!(tokio::task::block_in_place(answers(gateway, mapped[0].1)));
    // Stopping gives the lease up, so the next monitor acts at once.
    stop_polling.send(()).unwrap();
    polling.await.unwrap();

    // Notifications, with polling at ten minutes: the deletion is acted on within moments.
    let notified = Monitor::new(store.clone(), view, PortGone::Delete);
    let counters = notified.counters();
    let (wake, listening) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let listener = tokio::spawn(praas::monitor::notifications::listen(
        Subscription::new(common::RABBIT_URL.into(), "neutron".into()),
        wake.clone(),
        listening.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), listening.notified())
        .await
        .expect("not listening to RabbitMQ after 10 s");
    let notified = tokio::spawn(notified.run(Duration::from_secs(600), wake));
    until(Duration::from_secs(10), "the first cycle", || {
        counters.cycles.load(Ordering::Relaxed) >= 1
    })
    .await;
    let issued = std::time::Instant::now();
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{vm_port}"),
        None,
    )
    .await;
    let answered = issued.elapsed();
    let took = until(
        Duration::from_secs(10),
        "a notified deletion",
        refused(gateway, mapped[0].1),
    )
    .await;
    eprintln!(
        "{test}: notifications, polling every 600 s: Neutron answered the DELETE in \
         {answered:?}, the connection was refused {took:?} later"
    );
    notified.abort();
    listener.abort();
    agent.abort();
    sockets::forget(&node.router_ns);
    drop(node);
    router.remove(&cloud).await;
}

fn external_prefix(cloud: &Cloud) -> u8 {
    cloud.resources["external_network"]["cidr"]
        .as_str()
        .unwrap()
        .parse::<ipnet::Ipv4Net>()
        .unwrap()
        .prefix_len()
}

/// The Proxy CLI (`praas pat …`) against PRaaS served over HTTP with the real Keystone and
/// Neutron: a member creates, lists, changes and removes a mapping of its VM as the user of
/// clouds.yaml; a reader cannot create; another project cannot see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_cli_manages_a_members_mappings() {
    let test = "the_proxy_cli_manages_a_members_mappings";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = cloud.app().await;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let clouds = cloud.dir.join("clouds.yaml");
    let pat = |user: &'static str, args: Vec<String>| {
        let (clouds, url) = (clouds.clone(), url.clone());
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
                .arg("pat")
                .arg("--clouds-file")
                .arg(&clouds)
                .args(["--os-cloud", user, "--url", &url])
                .args(&args)
                .env_remove("OS_CLOUD")
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let a = cloud.project("a");
    let vm_port = a["vms"][1]["port_id"].as_str().unwrap().to_string();

    let (ok, out, err) = pat(
        "a-member",
        args(&[
            "--json",
            "create",
            "--port",
            &vm_port,
            "--server-port",
            "8080",
            "--description",
            "web",
        ]),
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created[0]["id"].as_str().unwrap().to_string();
    assert_eq!(created[0]["internal_ip_address"], a["vms"][1]["ip"]);
    assert_eq!(created[0]["router_id"], a["router_id"]);

    // The table, as the original showed it.
    let (ok, out, err) = pat("a-member", args(&["list"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("Router Port") && out.contains(&id), "{out}");
    assert!(out.contains("| 8080 ") && out.contains("| web "), "{out}");

    let (ok, out, err) = pat(
        "a-member",
        args(&["--json", "modify", &id, "--router-port", "4099"]),
    )
    .await;
    assert!(ok, "{err}");
    let changed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changed[0]["external_port"], 4099);

    // A reader may look but not create; project B does not see it at all.
    let (ok, out, _) = pat("a-reader", args(&["--json", "show", &id])).await;
    assert!(ok);
    assert!(out.contains(&id));
    let (ok, _, err) = pat(
        "a-reader",
        args(&["create", "--port", &vm_port, "--server-port", "8081"]),
    )
    .await;
    assert!(!ok && err.contains("403 forbidden"), "{err}");
    let (ok, _, err) = pat("b-member", args(&["show", &id])).await;
    assert!(!ok && err.contains("404 not_found"), "{err}");
    let (ok, out, _) = pat("b-member", args(&["--json", "list"])).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));

    let (ok, out, err) = pat("a-member", args(&["remove", &id])).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("removed {id}")));
    let (ok, out, _) = pat("a-member", args(&["--json", "list"])).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    server.abort();
}

/// `praas monitor` as operators run it: a process reading its INI file and clouds.yaml,
/// reacting to Neutron's notifications, and giving its lease up when systemd stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn praas_monitor_runs_as_a_process_and_gives_its_lease_up_on_sigterm() {
    let test = "praas_monitor_runs_as_a_process_and_gives_its_lease_up_on_sigterm";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if !common::rabbitmq_enabled(test) {
        return;
    }
    let a = cloud.project("a");
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let url = common::sqlite_url();
    let store = common::open(&url).await;
    let port = vm_port(&cloud, "vm-process").await;
    let port_id = s(&port["port"]["id"]);
    let m = store
        .create(
            praas::store::NewMapping {
                project_id: s(&a["project_id"]),
                router_id: s(&a["router_id"]),
                distributed: false,
                external_ip_address: s(&a["router_gateway_ip"]).parse().unwrap(),
                protocol: praas::dataplane::Protocol::Tcp,
                external_ports: praas::store::ExternalPorts::Allocate { len: 1 },
                internal_ip_address: s(&port["port"]["fixed_ips"][0]["ip_address"])
                    .parse()
                    .unwrap(),
                internal_port_id: Some(port_id.clone()),
                internal_ports: praas::dataplane::PortRange::single(22).unwrap(),
                description: String::new(),
                allowed_cidrs: vec![],
                masquerade: false,
            },
            &Policy::default(),
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("praas-monitor-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("praas.conf");
    // Polling every 20 s (a lease of 60 s): the deletion below is seen by notification.
    std::fs::write(
        &config,
        format!(
            "[praas]\nsecond_monitoring = 20\n[database]\nconnection = {url}\n\
             [openstack]\nclouds_file = {}\n[notifications]\ntransport_url = {}\n",
            cloud.dir.join("clouds.yaml").display(),
            common::RABBIT_URL
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["monitor", "--config-file"])
        .arg(&config)
        .env("PRAAS_LOG", "praas=info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            seen += &line;
            seen.push('\n');
            if seen.contains("monitor started")
                && seen.contains("listening to Neutron's notifications")
            {
                return;
            }
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "the monitor did not start listening:\n{seen}"
    );
    // Its first cycle has run (or runs now); the port goes, and so does the mapping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{port_id}"),
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.get(&m.id).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor process did not delete the mapping of a deleted port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopped as systemd stops it: it exits cleanly and the lease is free at once.
    let pid = child.id().unwrap().to_string();
    praas::testbed::simnode::run(&["kill", "-TERM", &pid], None).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("no exit 10 s after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        store
            .acquire_lease("the-next-monitor", Duration::from_secs(60))
            .await
            .unwrap(),
        "the lease was not given up"
    );
}
