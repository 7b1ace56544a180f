//! From `POST /v1/mappings` to packets: `praas all-in-one` as the binary wires it (the API
//! over HTTP, the store, the agent and the nftables dataplane), on a simulated network node
//! whose router facts the API reads from the namespace itself. Needs root.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::kernel_tests_enabled;
use praas::config::{Allocation, AuthStrategy, Config};
use praas::runtime::{self, Role};
use praas::testbed::simnode::{SimNode, SimNodeOptions, GATEWAY_IP, UPSTREAM_IP};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A noauth request to PRaaS over HTTP, as project p1's member.
async fn call(base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("x-project-id", "p1")
        .header("x-roles", "member");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    )
}

async fn wait_for_status(base: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = call(base, Method::GET, &format!("/v1/mappings/{id}"), None).await;
        if body["mapping"]["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "mapping never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_created_through_the_api_forwards_real_traffic_until_deleted() {
    if !kernel_tests_enabled("e2e_all_in_one") {
        return;
    }
    let node = tokio::task::spawn_blocking(|| SimNode::new(SimNodeOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let _ssh = node.serve_tcp(0, 22).unwrap();

    // `praas all-in-one` as the binary starts it, from a configuration: SQLite, the nftables
    // agent, the API on loopback, router facts from this node's namespaces (no clouds.yaml).
    let dir = std::env::temp_dir().join(format!("praas-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = Config::default();
    cfg.database.connection = format!("sqlite:///{}/praas.db", dir.display());
    cfg.praas.bind_address = Ipv4Addr::LOCALHOST.into();
    cfg.praas.port_app = 0;
    cfg.praas.auth_strategy = AuthStrategy::Noauth;
    cfg.praas.port_allocation = Allocation::Sequential;
    cfg.openstack.clouds_file = None;
    let host = format!("e2e-node-{}", uuid::Uuid::new_v4().simple());
    cfg.praas.host = Some(host.clone());
    let running = runtime::start(&cfg, Role::AllInOne).await.unwrap();
    let base = format!("http://{}", running.api_addr().unwrap());
    let app = base.as_str();
    // Ready once the agent's first pass has programmed the node, as a deployment waits for.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call(app, Method::GET, "/readyz", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(body["error"]["code"], "agent_starting", "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, body) = call(app, Method::POST, "/v1/mappings", Some(json!({"mapping": {
        "router_id": node.router_id, "internal_ip_address": node.vms[0].ip.to_string(), "internal_port": 22}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["mapping"]["external_ip_address"],
        GATEWAY_IP.to_string(),
        "gateway read from the namespace"
    );
    let id = body["mapping"]["id"].as_str().unwrap().to_string();
    let port = body["mapping"]["external_port"].as_u64().unwrap() as u16;
    wait_for_status(app, &id, "ACTIVE").await;

    // The node's agent has reported in, serving the router (an admin's view).
    let agents: Value = reqwest::Client::new()
        .get(format!("{app}/v1/agents?router_id={}", node.router_id))
        .header("x-project-id", "admin-project")
        .header("x-roles", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = &agents["agents"][0];
    assert_eq!(agent["host"], host, "{agents}");
    assert_eq!(agent["alive"], true, "{agents}");
    assert!(agent["last_sync_at"].is_string(), "{agents}");
    assert_eq!(agent["last_error"], Value::Null, "{agents}");

    let client = node.client_ns.clone();
    let dst = SocketAddrV4::new(GATEWAY_IP, port);
    let (answer, mut open) = tokio::task::spawn_blocking(move || {
        let answer = SimNode::tcp_exchange(&client, None, dst, "hello").unwrap();
        let mut open = SimNode::connect(&client, None, dst).unwrap();
        open.exchange("kept").unwrap();
        (answer, open)
    })
    .await
    .unwrap();
    assert_eq!(answer, format!("from={UPSTREAM_IP} hello"));

    let (status, _) = call(app, Method::DELETE, &format!("/v1/mappings/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The agent removes the forward and its flows: the open connection is cut, new ones fail.
    let client = node.client_ns.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while SimNode::tcp_exchange(&client, None, dst, "again").is_ok() {
            assert!(
                Instant::now() < deadline,
                "the deleted mapping still forwards"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The rule goes first, then the agent deletes its flows from conntrack: the open
        // connection is cut right after, not necessarily before new ones fail.
        while open.exchange("still?").is_ok() {
            assert!(
                Instant::now() < deadline,
                "an established connection outlived its mapping"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}
