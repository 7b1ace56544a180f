//! From `POST /v1/mappings` to packets: the API, the store, the agent and the nftables
//! dataplane together, on a simulated network node whose router facts the API reads from the
//! namespace itself. Needs root.

mod common;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::kernel_tests_enabled;
use http_body_util::BodyExt;
use praas::agent::Agent;
use praas::api::{self, AppState};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::Driver;
use praas::openstack::NamespaceDirectory;
use praas::simnode::{SimNode, SimNodeOptions, GATEWAY_IP, UPSTREAM_IP};
use praas::store::{Policy, Store, Strategy};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-project-id", "p1")
        .header("x-roles", "member");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_default();
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    )
}

async fn wait_for_status(app: &Router, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = call(app, Method::GET, &format!("/v1/mappings/{id}"), None).await;
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

    let dir = std::env::temp_dir().join(format!("praas-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let sync = Arc::new(RouterSync::new(
        Arc::from(Driver::Nftables.backend().unwrap()),
        Arc::new(Conntrack),
    ));
    let agent = tokio::spawn(Agent::new(store.clone(), sync, Duration::from_secs(300)).run());
    let app = api::router(Arc::new(AppState {
        store,
        directory: Arc::new(NamespaceDirectory),
        auth: api::Authenticator::noauth(),
        policy: Policy {
            range: praas::dataplane::PortRange::new(4000, 4100).unwrap(),
            strategy: Strategy::Sequential,
        },
    }));

    let (status, body) = call(&app, Method::POST, "/v1/mappings", Some(json!({"mapping": {
        "router_id": node.router_id, "internal_ip_address": node.vms[0].ip.to_string(), "internal_port": 22}}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["mapping"]["external_ip_address"],
        GATEWAY_IP.to_string(),
        "gateway read from the namespace"
    );
    let id = body["mapping"]["id"].as_str().unwrap().to_string();
    let port = body["mapping"]["external_port"].as_u64().unwrap() as u16;
    wait_for_status(&app, &id, "ACTIVE").await;

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

    let (status, _) = call(&app, Method::DELETE, &format!("/v1/mappings/{id}"), None).await;
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
    agent.abort();
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
}
