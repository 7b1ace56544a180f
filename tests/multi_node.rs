//! Several network nodes, as deployed: two `praas server` processes and two `praas agent`
//! processes (the real binary) on a three-node MariaDB Galera cluster (`scripts/galera`), each
//! server on a different node, each agent in its own mount namespace
//! whose `/run/netns` holds only its node's router namespaces (what `ip netns` on that node
//! would list). An HA router has a namespace on both nodes, with the gateway address on the
//! active one (as keepalived keeps it); a second router lives on node B only.
//!
//! ```text
//!  client 203.0.113.1 ─┐                       ┌─ node A: qrouter-HA (active: 203.0.113.10, 10.0.0.1)
//!   (198.51.100.2)     ├── external switch ────┤
//!                      │                       └─ node B: qrouter-HA (standby: no addresses)
//!                      │                                  qrouter-B2 (203.0.113.50, its own)
//!                      └── tenant switch ── VM 10.0.0.5 (behind both HA replicas)
//! ```
//!
//! Checked: each agent programs and reports only its node's routers; both replicas of the HA
//! router are programmed (the rules match the gateway address, which moves); after the address
//! moves from A to B (and the neighbours learn it, as keepalived's gratuitous ARP does) new
//! connections are forwarded by B; a change made on either server reaches both nodes.
//! The servers read router facts from the namespaces of a node (there is no Neutron here):
//! server 1 sees node A, server 2 node B.

mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::*;
use praas::testbed::simnode;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_two_servers_and_an_ha_router_that_fails_over() {
    let test = "two_nodes_two_servers_and_an_ha_router_that_fails_over";
    let Some(galera) = Cloud::prerequisites(test).await else {
        return;
    };
    let mut cloud = Cloud::start(&galera).await;
    let (ha, solo) = (cloud.ha.clone(), cloud.solo.clone());
    let (server1, server2) = (cloud.api[0], cloud.api[1]);
    let topo = &cloud.topo;
    let all: Vec<&Role> = cloud.roles.iter().collect();
    let _echo = Echo::start(&topo.vm, 22);

    // A mapping on the HA router through server 1, one on node B's router through server 2.
    let (status, created) = call(
        server1,
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {
        "router_id": ha, "internal_ip_address": VM.to_string(), "internal_port": 22}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let port = created["mapping"]["external_port"].as_u64().unwrap() as u16;
    let (status, other) = call(
        server2,
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {
        "router_id": solo, "internal_ip_address": "10.9.0.5", "internal_port": 80}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let listed = |ns: &str| {
        simnode::run(
            &[
                "ip", "netns", "exec", ns, "nft", "list", "map", "ip", "praas", "forwards",
            ],
            None,
        )
        .unwrap_or_default()
    };
    let element = format!("{GATEWAY} . tcp . {port} : {VM} . 22");
    wait(
        "both HA replicas programmed",
        Duration::from_secs(10),
        &all,
        async || {
            listed(&topo.replica_a).contains(&element) && listed(&topo.replica_b).contains(&element)
        },
    )
    .await;
    wait(
        "node B's own router programmed",
        Duration::from_secs(10),
        &all,
        async || listed(&topo.solo).contains("10.9.0.5 . 80"),
    )
    .await;
    // Node A never saw node B's router: nothing of it in A's namespace.
    assert!(
        !listed(&topo.replica_a).contains("10.9.0.5"),
        "{}",
        listed(&topo.replica_a)
    );
    let mapping = format!(
        "/v1/mappings/{}",
        created["mapping"]["id"].as_str().unwrap()
    );
    wait(
        "the HA mapping ACTIVE",
        Duration::from_secs(10),
        &all,
        async || {
            call(server2, Method::GET, &mapping, None).await.1["mapping"]["status"] == "ACTIVE"
        },
    )
    .await;

    // Each agent reports only its node's routers.
    let mut on_b = vec![ha.clone(), solo.clone()];
    on_b.sort();
    let expected = json!([["node-a", [ha], true], ["node-b", on_b, true]]);
    wait(
        "both agents reporting their routers",
        Duration::from_secs(10),
        &all,
        async || {
            let agents = call(server2, Method::GET, "/v1/agents", None).await.1;
            let seen: Vec<Value> = agents["agents"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|a| json!([a["host"], a["routers"], a["alive"]]))
                        .collect()
                })
                .unwrap_or_default();
            Value::Array(seen) == expected
        },
    )
    .await;

    // Traffic goes through the active replica, then through the other after fail-over.
    let client = topo.client.clone();
    assert!(forwards(&client, port), "through node A");
    let started = Instant::now();
    topo.fail_over();
    wait(
        "forwarding through node B",
        Duration::from_secs(5),
        &all,
        async || forwards(&client, port),
    )
    .await;
    println!(
        "multi-node: new connections through node B {} ms after the gateway address moved",
        started.elapsed().as_millis()
    );

    // A change on server 2 reaches both replicas.
    let (status, body) = call(
        server2,
        Method::PUT,
        &mapping,
        Some(json!({"mapping": {
        "external_port": 4090}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let moved = format!("{GATEWAY} . tcp . 4090 : {VM} . 22");
    wait(
        "the change on both replicas",
        Duration::from_secs(10),
        &all,
        async || {
            listed(&topo.replica_a).contains(&moved) && listed(&topo.replica_b).contains(&moved)
        },
    )
    .await;
    assert!(forwards(&client, 4090), "the moved port, through node B");

    // POST on server 2 until the rule is in the kernel of node B (the active replica now),
    // programmed by the agent of another process that heard of it over RabbitMQ. (Server 1
    // reads router facts on node A, which holds no gateway address any more.)
    let backend = praas::dataplane::nft::NftBackend::new().unwrap();
    let replica_b = praas::dataplane::RouterNamespace::named(topo.replica_b.clone());
    let mut times = vec![];
    for i in 0..50u16 {
        let started = Instant::now();
        let (status, body) = call(
            server2,
            Method::POST,
            "/v1/mappings",
            Some(json!({"mapping": {
            "router_id": ha, "internal_ip_address": VM.to_string(), "internal_port": 1000 + i}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let key = praas::dataplane::ExternalKey {
            ip: GATEWAY,
            protocol: praas::dataplane::Protocol::Tcp,
            port: body["mapping"]["external_port"].as_u64().unwrap() as u16,
        };
        use praas::dataplane::Backend;
        while !backend
            .read_back(&replica_b)
            .unwrap()
            .is_some_and(|r| r.forwards.contains_key(&key))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mapping {i} never programmed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
    println!(
        "multi-node: POST on server 2 to the rule in node B's kernel: p50 {:.1} ms, p99 {:.1} ms, worst {:.1} ms of {}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
    assert!(p50 <= Duration::from_millis(50), "p50 {p50:?}");
    assert!(p99 <= Duration::from_millis(500), "p99 {p99:?}");

    // Every role serves /metrics: server 2 counted its POSTs, node B's agent its passes over
    // its two namespaces (announcements that arrive together make one pass).
    use common::metrics::{promtool_accepts, sample, scrape};
    let text = scrape(&format!("http://127.0.0.1:{server2}")).await;
    promtool_accepts(&text);
    assert_eq!(
        sample(&text, "praas_build_info", &[("role", "server")]),
        Some(1.0)
    );
    let posted = [
        ("method", "POST"),
        ("route", "/v1/mappings"),
        ("status", "201"),
    ];
    assert_eq!(
        sample(&text, "praas_http_requests_total", &posted),
        Some(51.0),
        "{text}"
    );
    let text = scrape(&format!("http://127.0.0.1:{}", cloud.ready_port(3))).await;
    promtool_accepts(&text);
    assert_eq!(
        sample(&text, "praas_build_info", &[("role", "agent")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "praas_agent_namespaces", &[]),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, "praas_agent_passes_total", &[("kind", "changes")]) >= Some(1.0),
        "{text}"
    );
    drop(all);
    cloud.stop();
}
