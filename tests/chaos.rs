//! Chaos on the simulated cloud of `tests/cluster` (two servers and two agents of the real
//! binary on a three-node Galera cluster, an HA router on both nodes and a router on node B):
//! 2,000 mixed operations from four clients across both servers while servers and agents are
//! killed with `kill -9` at random moments and started again, and one Galera node is stopped
//! and started during the run. While that node is down the server on it answers 503 and
//! traffic keeps flowing. Afterwards, within 5 s: every acknowledged create exists with its
//! port, every acknowledged delete is gone, no port is held twice, and each node's kernel holds
//! exactly what the store says (no missing and no orphan rule).
//!
//! Not in this run: the monitor (it needs the routers in Neutron; these exist only here).

mod cluster;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::*;
use praas::dataplane::{Backend, RouterNamespace, RuleSet};
use praas::store::{ListFilter, Store};
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::json;

const OPERATIONS: usize = 2000;
const CLIENTS: usize = 4;

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged creates and modifies: mapping id → (router, external port).
    live: BTreeMap<String, (String, u16)>,
    /// Acknowledged deletes.
    deleted: BTreeSet<String>,
    /// Mappings whose last change got no answer: their port may be the old or the new one, or
    /// (for a delete) they may be gone.
    uncertain: BTreeSet<String>,
    acknowledged: usize,
    refused: usize,
    unanswered: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_changes_survive_kill_9_and_a_galera_node_restart() {
    let test = "acknowledged_changes_survive_kill_9_and_a_galera_node_restart";
    let Some(galera) = Cloud::prerequisites(test).await else {
        return;
    };
    let cloud = Arc::new(tokio::sync::Mutex::new(Cloud::start(&galera).await));
    let (api, ha, solo, client_ns, vm_ns) = {
        let c = cloud.lock().await;
        (
            c.api,
            c.ha.clone(),
            c.solo.clone(),
            c.topo.client.clone(),
            c.topo.vm.clone(),
        )
    };
    let _echo = Echo::start(&vm_ns, 22);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let done = Arc::new(AtomicBool::new(false));
    let next_op = Arc::new(AtomicUsize::new(0));

    // A mapping that carries traffic through the whole run, to show forwarding never needs
    // the database.
    let (status, steady) = call(
        api[0],
        Method::POST,
        "/v1/mappings",
        Some(json!({"mapping": {
        "router_id": ha, "internal_ip_address": "10.0.0.5", "internal_port": 22,
        "external_port": 9999}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{steady}");
    let steady_id = steady["mapping"]["id"].as_str().unwrap().to_string();
    {
        let c = cloud.lock().await;
        let all: Vec<&Role> = c.roles.iter().collect();
        wait(
            "the steady mapping forwarding",
            Duration::from_secs(10),
            &all,
            async || forwards(&client_ns, 9999),
        )
        .await;
    }

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (ledger, next_op, ha, solo) =
                (ledger.clone(), next_op.clone(), ha.clone(), solo.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                let mut mine: Vec<String> = vec![];
                loop {
                    let op = next_op.fetch_add(1, Ordering::Relaxed);
                    if op >= OPERATIONS {
                        break;
                    }
                    let roll: f64 = rng.gen();
                    let (action, id) = if mine.len() < 5 || (roll < 0.45 && mine.len() < 40) {
                        ("create", None)
                    } else if roll < 0.75 {
                        ("modify", Some(mine[rng.gen_range(0..mine.len())].clone()))
                    } else {
                        let i = rng.gen_range(0..mine.len());
                        ("delete", Some(mine.swap_remove(i)))
                    };
                    // Unique ports per operation: explicit (admin) ports never collide.
                    let (external, internal) = (10_000 + op as u16, 1_000 + op as u16);
                    match (action, id) {
                        ("create", _) => {
                            let on_ha = rng.gen_bool(0.5);
                            let (router, vm, server) = if on_ha {
                                (&ha, "10.0.0.5", api[0])
                            } else {
                                (&solo, "10.9.0.5", api[1])
                            };
                            let (status, body) = call(
                                server,
                                Method::POST,
                                "/v1/mappings",
                                Some(json!({"mapping": {
                                "router_id": router, "internal_ip_address": vm,
                                "internal_port": internal, "external_port": external}})),
                            )
                            .await;
                            let mut l = ledger.lock().unwrap();
                            match status {
                                StatusCode::CREATED => {
                                    let id = body["mapping"]["id"].as_str().unwrap().to_string();
                                    l.live.insert(id.clone(), (router.clone(), external));
                                    l.acknowledged += 1;
                                    mine.push(id);
                                }
                                StatusCode::BAD_GATEWAY => l.unanswered += 1,
                                _ => l.refused += 1,
                            }
                        }
                        ("modify", Some(id)) => {
                            let router = ledger.lock().unwrap().live[&id].0.clone();
                            let server = if router == ha { api[0] } else { api[1] };
                            let (status, _) = call(
                                server,
                                Method::PUT,
                                &format!("/v1/mappings/{id}"),
                                Some(json!({"mapping": {"external_port": external}})),
                            )
                            .await;
                            let mut l = ledger.lock().unwrap();
                            match status {
                                StatusCode::OK => {
                                    l.live.insert(id.clone(), (router, external));
                                    l.uncertain.remove(&id);
                                    l.acknowledged += 1;
                                }
                                StatusCode::BAD_GATEWAY => {
                                    l.uncertain.insert(id);
                                    l.unanswered += 1;
                                }
                                _ => l.refused += 1,
                            }
                        }
                        ("delete", Some(id)) => {
                            // Either server: a delete needs no router facts.
                            let server = api[rng.gen_range(0..2)];
                            let (status, _) =
                                call(server, Method::DELETE, &format!("/v1/mappings/{id}"), None)
                                    .await;
                            let mut l = ledger.lock().unwrap();
                            match status {
                                StatusCode::NO_CONTENT => {
                                    l.live.remove(&id);
                                    l.uncertain.remove(&id);
                                    l.deleted.insert(id);
                                    l.acknowledged += 1;
                                }
                                StatusCode::BAD_GATEWAY => {
                                    l.uncertain.insert(id.clone());
                                    l.unanswered += 1;
                                    mine.push(id);
                                }
                                _ => {
                                    l.refused += 1;
                                    mine.push(id);
                                }
                            }
                        }
                        _ => unreachable!(),
                    }
                }
            })
        })
        .collect();

    // kill -9 at random moments, each role started again a moment later.
    let kills = Arc::new(AtomicUsize::new(0));
    // Server 2 is spared while its database node is down, so that it can be asked.
    let spare_server_2 = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (cloud, done, kills) = (cloud.clone(), done.clone(), kills.clone());
        let spare = spare_server_2.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
                let victim = rng.gen_range(0..4);
                if victim == 1 && spare.load(Ordering::Relaxed) {
                    continue;
                }
                cloud.lock().await.roles[victim].kill();
                kills.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..600))).await;
                cloud.lock().await.roles[victim].restart();
            }
        })
    };

    // One Galera node (server 2's) stopped and started while the clients run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    spare_server_2.store(true, Ordering::Relaxed);
    {
        let mut c = cloud.lock().await;
        if !c.roles[1].running() {
            c.roles[1].restart();
        }
    }
    cloud.lock().await.wait_ready(1).await;
    let galera_node = tokio::task::spawn_blocking(|| galera_script(&["stop", "2"]))
        .await
        .unwrap();
    assert!(galera_node, "scripts/galera stop 2");
    let outage = Instant::now();
    let mut answered_503 = false;
    let mut flowing = true;
    while outage.elapsed() < Duration::from_secs(3) {
        let (status, body) = call(api[1], Method::GET, "/v1/mappings?limit=1", None).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answered_503 = true;
            assert_eq!(body["error"]["status"], 503, "{body}");
        }
        flowing &= forwards(&client_ns, 9999);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = tokio::task::spawn_blocking(|| galera_script(&["start", "2"]))
        .await
        .unwrap();
    assert!(restarted, "scripts/galera start 2");
    spare_server_2.store(false, Ordering::Relaxed);
    assert!(flowing, "traffic stopped while a database node was down");

    for c in clients {
        c.await.unwrap();
    }
    let run = started.elapsed();
    let run_ended = Instant::now();
    let ledger = Arc::into_inner(ledger)
        .expect("the clients are done")
        .into_inner()
        .unwrap();
    done.store(true, Ordering::Relaxed);
    chaos.await.unwrap();
    // Every role up again.
    {
        let mut c = cloud.lock().await;
        for i in 0..4 {
            if !c.roles[i].running() {
                c.roles[i].restart();
            }
        }
        for i in 0..4 {
            c.wait_ready(i).await;
        }
    }
    assert!(
        answered_503,
        "the server on the stopped Galera node never answered 503 (it may have been killed throughout)"
    );

    // Convergence: the store and every node's kernel agree with what was acknowledged.
    let store = Store::open(&galera[0]).await.unwrap();
    let (nodes, roles_log) = {
        let c = cloud.lock().await;
        let nodes = [
            (c.topo.replica_a.clone(), ha.clone()),
            (c.topo.replica_b.clone(), ha.clone()),
            (c.topo.solo.clone(), solo.clone()),
        ];
        (
            nodes,
            c.roles.iter().map(|r| r.log_tail()).collect::<Vec<_>>(),
        )
    };
    let backend = praas::dataplane::nft::NftBackend::new().unwrap();
    let converging = Instant::now();
    let mut last;
    let converged = loop {
        match check(&store, &ledger, &backend, &nodes).await {
            Ok(()) => break converging.elapsed(),
            Err(why) => last = why,
        }
        if converging.elapsed() > Duration::from_secs(5) {
            panic!("not converged within 5 s: {last}\n{}", roles_log.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The mapping that carried traffic throughout is still there and still forwards.
    assert!(store.get(&steady_id).await.unwrap().is_some());
    assert!(
        forwards(&client_ns, 9999),
        "the steady mapping stopped forwarding"
    );
    let l = &ledger;
    println!(
        "chaos: {OPERATIONS} operations in {:.1} s ({} acknowledged, {} refused, {} unanswered), \
         {} kill -9, one Galera node stopped for 3 s; store and kernels as acknowledged {} ms after \
         the last operation ({} ms after every role was up again)",
        run.as_secs_f64(),
        l.acknowledged,
        l.refused,
        l.unanswered,
        kills.load(Ordering::Relaxed),
        run_ended.elapsed().as_millis(),
        converged.as_millis()
    );
    assert!(
        l.acknowledged > OPERATIONS / 2,
        "too few operations got through"
    );
    cloud.lock().await.stop();
}

/// `scripts/galera` with `args`; whether it succeeded.
fn galera_script(args: &[&str]) -> bool {
    std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/galera"))
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the store and the kernels agree with the ledger; if not, why.
async fn check(
    store: &Store,
    ledger: &Ledger,
    backend: &praas::dataplane::nft::NftBackend,
    nodes: &[(String, String)],
) -> Result<(), String> {
    let mappings = store
        .list(&ListFilter::default())
        .await
        .map_err(|e| e.to_string())?;
    let by_id: BTreeMap<&str, &praas::store::Mapping> =
        mappings.iter().map(|m| (m.id.as_str(), m)).collect();
    for (id, (_, port)) in &ledger.live {
        match by_id.get(id.as_str()) {
            None if ledger.uncertain.contains(id) => {}
            None => return Err(format!("acknowledged mapping {id} is missing")),
            Some(m) if m.external_ports.first() != *port && !ledger.uncertain.contains(id) => {
                return Err(format!(
                    "{id} has port {}, acknowledged {port}",
                    m.external_ports
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(id) = ledger
        .deleted
        .iter()
        .find(|id| by_id.contains_key(id.as_str()))
    {
        return Err(format!("acknowledged delete of {id} is still stored"));
    }
    // No port held twice on a router.
    let mut held: BTreeSet<(String, String, u16)> = BTreeSet::new();
    for m in &mappings {
        for port in m.external_ports.iter() {
            if !held.insert((m.router_id.clone(), m.protocol.to_string(), port)) {
                return Err(format!(
                    "port {port} of router {} is held twice",
                    m.router_id
                ));
            }
        }
    }
    // Each namespace holds exactly its router's mappings.
    for (namespace, router) in nodes {
        let expected = RuleSet::from_forwards(
            &mappings
                .iter()
                .filter(|m| &m.router_id == router && !m.held)
                .map(|m| m.forward())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| e.to_string())?;
        let actual = backend
            .read_back(&RouterNamespace::named(namespace.clone()))
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if actual != expected {
            let d = actual.diff(&expected);
            return Err(format!(
                "{namespace}: {} forwards missing or wrong, {} orphan",
                d.add_forwards.len(),
                d.remove_forwards.len()
            ));
        }
    }
    Ok(())
}
