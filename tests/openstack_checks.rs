//! New mappings against the real Keystone and Neutron of `scripts/dev-cloud`: what Neutron
//! allows to be mapped, and a member mapping its VM on the node an L3 agent would build, with
//! real traffic through the router's gateway, while Keystone is stopped (503, cached
//! validations, forwarding goes on).
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::net::SocketAddrV4;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use praas::dataplane::netlink::sockets;
use praas::testbed::simnode::{SimLayout, SimNode, SimNodeOptions};
use serde_json::{json, Value};

use support::{call, Cloud, KEYSTONE};

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
