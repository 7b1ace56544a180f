//! The servers of the dev cloud are real: Nova (with its fake virt driver) found through the
//! catalog lists a project's servers and no other project's, their NICs are Neutron ports
//! whose `device_id` is the server, and a server booted and deleted through Nova's API makes
//! and removes its port in Neutron.
//!
//! They need the dev cloud (`scripts/dev-cloud up`) with Nova (the default; not with
//! `PRAAS_CLOUD_NOVA=0`), found at `PRAAS_CLOUD_DIR` (default `/var/tmp/praas-dev-cloud`).
//! Without it the tests print one line and skip; under CI they fail instead (`scripts/test`
//! brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use support::{neutron_call, nova_call, nova_try, Cloud, KEYSTONE};

/// The name of the servers these tests boot: leftovers of an interrupted run are found by it.
const PREFIX: &str = "praas-nova-test-";

fn ids(servers: &Value) -> BTreeSet<String> {
    servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The server ids of project `p` in resources.json.
fn recorded(cloud: &Cloud, p: &str) -> BTreeSet<String> {
    ids(&cloud.project(p)["servers"])
}

/// The Neutron ports whose `device_id` is `server`, as `user` sees them.
async fn ports_of(cloud: &Cloud, user: &str, server: &str) -> Vec<Value> {
    let ports = neutron_call(
        cloud,
        user,
        Method::GET,
        &format!("ports?device_id={server}"),
        None,
    )
    .await;
    ports["ports"].as_array().unwrap().clone()
}

/// Each project's member lists exactly its own servers through the catalog's `compute`
/// endpoint (so does its reader); each server's NICs are the Neutron ports with its
/// `device_id`, bound and ACTIVE, with the addresses resources.json recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_lists_its_own_servers_and_finds_their_ports_by_device_id() {
    let test = "a_project_lists_its_own_servers_and_finds_their_ports_by_device_id";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let Some(nova) = cloud.nova(test) else {
        return;
    };
    assert_eq!(
        cloud.session("a-member").endpoint("compute").await.unwrap(),
        nova,
        "the catalog's compute endpoint"
    );
    let (a, b) = (recorded(&cloud, "a"), recorded(&cloud, "b"));
    assert!(a.len() >= 5 && !b.is_empty(), "{a:?} {b:?}");
    for (user, own, other) in [
        ("a-member", &a, &b),
        ("a-reader", &a, &b),
        ("b-member", &b, &a),
    ] {
        let listed = nova_call(&cloud, user, Method::GET, "servers/detail", None).await;
        let listed: BTreeSet<String> = listed["servers"]
            .as_array()
            .unwrap()
            .iter()
            // Not the servers that the other test of this file boots meanwhile.
            .filter(|s| !name(s).starts_with(PREFIX))
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(&listed, own, "{user}'s servers");
        assert!(listed.is_disjoint(other), "{user} sees another project's");
    }
    // One name, two servers: what a client that goes by name must notice.
    let twins = cloud.project("a")["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "server-twin")
        .count();
    assert_eq!(twins, 2);
    // Another project's server, asked for by id, is not found.
    let foreign = b.first().unwrap();
    let (status, _) = nova_try(
        &cloud,
        "a-member",
        Method::GET,
        &format!("servers/{foreign}"),
        None,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    for p in ["a", "b"] {
        let project = cloud.project(p);
        for server in project["servers"].as_array().unwrap() {
            let id = server["id"].as_str().unwrap();
            let ports = ports_of(&cloud, &format!("{p}-member"), id).await;
            let recorded = server["ports"].as_array().unwrap();
            assert_eq!(ports.len(), recorded.len(), "{server}");
            for nic in recorded {
                let port = ports
                    .iter()
                    .find(|port| port["id"] == nic["port_id"])
                    .unwrap_or_else(|| panic!("{nic} not among {ports:?}"));
                assert_eq!(port["network_id"], nic["network_id"]);
                assert_eq!(port["fixed_ips"][0]["ip_address"], nic["ip"]);
                assert_eq!(port["fixed_ips"][0]["subnet_id"], nic["subnet_id"]);
                assert_eq!(port["mac_address"], nic["mac"]);
                assert_eq!(port["project_id"], project["project_id"]);
                assert!(
                    port["device_owner"]
                        .as_str()
                        .unwrap()
                        .starts_with("compute:"),
                    "{port}"
                );
                assert_eq!(port["status"], "ACTIVE", "{port}");
            }
        }
        // Another project's ports are not listed by device_id either.
        let other = if p == "a" { "b" } else { "a" };
        let id = cloud.project(other)["servers"][0]["id"].as_str().unwrap();
        assert!(ports_of(&cloud, &format!("{p}-member"), id)
            .await
            .is_empty());
    }
    // The second NIC of server-a2 is on a network behind a router of its own; server-a3's is
    // on a network no router serves.
    let servers = &cloud.project("a")["servers"];
    let by_name = |n: &str| {
        servers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("server-a2")["ports"][1]["network_id"],
        cloud.project("a")["second_network"]["network_id"]
    );
    assert_eq!(
        by_name("server-a3")["ports"][1]["subnet_id"],
        cloud.project("a")["unrouted"]["subnet_id"]
    );
}

fn name(server: &Value) -> &str {
    server["name"].as_str().unwrap_or_default()
}

/// Waits until `probe` gives a value, up to `limit`; returns it and how long it took.
async fn wait_for<T, F>(limit: Duration, what: &str, mut probe: impl FnMut() -> F) -> (T, Duration)
where
    F: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server that project A's member boots through Nova gets a port on A's network in Neutron
/// (its `device_id` the server, bound and ACTIVE); deleting the server removes the port within
/// seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_booted_through_nova_has_a_port_in_neutron_until_it_is_deleted() {
    let test = "a_server_booted_through_nova_has_a_port_in_neutron_until_it_is_deleted";
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    if cloud.nova(test).is_none() {
        return;
    }
    // Leftovers of an interrupted run.
    let listed = nova_call(&cloud, "a-member", Method::GET, "servers", None).await;
    for old in listed["servers"].as_array().unwrap() {
        if name(old).starts_with(PREFIX) {
            let id = old["id"].as_str().unwrap();
            nova_try(
                &cloud,
                "a-member",
                Method::DELETE,
                &format!("servers/{id}"),
                None,
            )
            .await;
        }
    }

    let a = cloud.project("a");
    let server_name = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
    let made = nova_call(
        &cloud,
        "a-member",
        Method::POST,
        "servers",
        Some(json!({"server": {
            "name": server_name,
            "flavorRef": cloud.resources["flavor"]["id"],
            "imageRef": cloud.resources["image"]["id"],
            "networks": [{"uuid": a["network_id"]}],
        }})),
    )
    .await;
    let id = made["server"]["id"].as_str().unwrap().to_string();
    let (server, booted) = wait_for(Duration::from_secs(90), "server ACTIVE", || {
        let (cloud, id) = (&cloud, id.clone());
        async move {
            let s = nova_call(
                cloud,
                "a-member",
                Method::GET,
                &format!("servers/{id}"),
                None,
            )
            .await;
            assert_ne!(s["server"]["status"], "ERROR", "{s}");
            (s["server"]["status"] == "ACTIVE").then_some(s)
        }
    })
    .await;
    eprintln!("{test}: ACTIVE after {booted:?}");
    let ports = ports_of(&cloud, "a-member", &id).await;
    assert_eq!(ports.len(), 1, "{ports:?}");
    let port = &ports[0];
    assert_eq!(port["network_id"], a["network_id"]);
    assert_eq!(port["status"], "ACTIVE", "{port}");
    assert_eq!(port["project_id"], a["project_id"]);
    // The address Nova reports for the server is the port's.
    let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap();
    let addresses = server["server"]["addresses"].to_string();
    assert!(addresses.contains(ip), "{ip} not in {addresses}");

    nova_call(
        &cloud,
        "a-member",
        Method::DELETE,
        &format!("servers/{id}"),
        None,
    )
    .await;
    let (_, removed) = wait_for(Duration::from_secs(15), "port removed", || {
        let (cloud, id) = (&cloud, id.clone());
        async move {
            ports_of(cloud, "a-member", &id)
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    eprintln!("{test}: port removed {removed:?} after the delete");
    let (_, gone) = wait_for(Duration::from_secs(30), "server gone", || {
        let (cloud, id) = (&cloud, id.clone());
        async move {
            let (status, _) = nova_try(
                cloud,
                "a-member",
                Method::GET,
                &format!("servers/{id}"),
                None,
            )
            .await;
            (status == reqwest::StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    eprintln!("{test}: server gone {gone:?} after its port");
}
