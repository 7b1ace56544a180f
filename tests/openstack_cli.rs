//! The Proxy CLI (`praas pat …`) against PRaaS served over HTTP with the real Keystone and
//! Neutron of `scripts/dev-cloud`.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use serde_json::{json, Value};

use support::{Cloud, KEYSTONE};

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
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["internal_ip_address"], a["vms"][1]["ip"]);
    assert_eq!(created["router_id"], a["router_id"]);

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
    assert_eq!(changed["external_port"], 4099);

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
    assert_eq!(
        out, "",
        "deleting prints nothing, as openstack's delete commands"
    );
    let (ok, out, _) = pat("a-member", args(&["--json", "list"])).await;
    assert!(ok);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    server.abort();
}

/// Without `--url` or `PRAAS_URL`, `praas pat` finds PRaaS in Keystone's catalog under the
/// service type `port-forwarding` (which the dev cloud registers, as the install documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_cli_finds_praas_through_the_catalog() {
    let test = "the_proxy_cli_finds_praas_through_the_catalog";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let Some(endpoint) = cloud.resources["praas"].as_str() else {
        panic!("{test}: the dev cloud registers no PRaaS endpoint: run scripts/dev-cloud up again");
    };
    let address = endpoint.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    let app = cloud.app().await;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .arg("pat")
        .arg("--clouds-file")
        .arg(cloud.dir.join("clouds.yaml"))
        .args(["--os-cloud", "b-reader", "--json", "list"])
        .env_remove("OS_CLOUD")
        .env_remove("PRAAS_URL")
        .output()
        .await
        .unwrap();
    server.abort();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!([]),
        "project B has no mapping"
    );
}
