//! `praas agent` with `[dataplane] driver = ovn`, run as the runtime runs it, against a real
//! OVN northbound database (a private `ovsdb-server`): one agent holds the OVN worker lease
//! and programs every router, a second stands by and takes over when the first stops, and the
//! load balancers of a router Neutron deleted are removed. Needs OVN's tools, not root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use praas::config::Config;
use praas::dataplane::ovn::ApplyWait;
use praas::dataplane::Driver;
use praas::ovsdb::Remote;
use praas::runtime::{self, Role};
use praas::store::{ExternalPorts, NewMapping, Policy, Status, Store};
use praas::testbed::ovsdb_server::NorthboundServer;

fn topology(nb: &NorthboundServer) {
    for args in [
        &["ls-add", "neutron-int"][..],
        &["lr-add", "neutron-r1"],
        &[
            "lrp-add",
            "neutron-r1",
            "lrp-int",
            "fa:16:3e:00:00:01",
            "10.0.0.1/24",
        ],
        &[
            "lrp-add",
            "neutron-r1",
            "lrp-gw",
            "fa:16:3e:00:00:02",
            "203.0.113.10/24",
        ],
        &["lrp-set-gateway-chassis", "lrp-gw", "chassis-1", "1"],
        &["lsp-add", "neutron-int", "int-router"],
        &["lsp-set-type", "int-router", "router"],
        &["lsp-set-options", "int-router", "router-port=lrp-int"],
    ] {
        nb.nbctl(args).unwrap();
    }
}

fn new(vm: Ipv4Addr, port: &str) -> NewMapping {
    NewMapping {
        project_id: "p1".into(),
        router_id: "r1".into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: "tcp".parse().unwrap(),
        external_ports: ExternalPorts::Allocate { len: 1 },
        internal_ip_address: vm,
        internal_port_id: None,
        internal_ports: port.parse().unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

fn config(db: &str, nb: &NorthboundServer, host: &str) -> Config {
    let mut cfg = Config::default();
    cfg.database.connection = db.to_string();
    cfg.dataplane.driver = Driver::Ovn;
    cfg.dataplane.usage_interval = 0;
    cfg.ovn.ovn_nb_connection = vec![Remote::parse(&nb.remote()).unwrap()];
    // No northd here: committed is applied.
    cfg.ovn.wait_for = ApplyWait::None;
    cfg.praas.host = Some(host.to_string());
    cfg.praas.agent_status_port = 0;
    cfg.praas.report_interval = 1;
    cfg
}

/// The `vips` of our TCP load balancers of router r1 (one per VM), as ovn-nbctl shows them,
/// in one line ("" if none).
fn vips(nb: &NorthboundServer) -> String {
    let out = nb
        .nbctl(&[
            "--data=bare",
            "--no-headings",
            "--columns=vips",
            "find",
            "Load_Balancer",
            "external_ids:\"praas:router_id\"=r1",
            "protocol=tcp",
        ])
        .unwrap();
    let mut vips: Vec<&str> = out.split_whitespace().collect();
    vips.sort();
    vips.join(" ")
}

async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ovn_worker_programs_every_router_and_a_standby_takes_over_when_it_stops() {
    let Some(nb) = NorthboundServer::start_for("ovn_worker::one_worker_and_a_standby") else {
        return;
    };
    topology(&nb);
    let dir = std::env::temp_dir().join(format!("praas-ovn-worker-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite:///{}", dir.join("praas.db").display());
    let (a_cfg, b_cfg) = (config(&db, &nb, "node-a"), config(&db, &nb, "node-b"));
    runtime::db_sync(&a_cfg).await.unwrap();
    let store = Store::open(&db).await.unwrap();
    let policy = Policy::default();
    let first = store
        .create(new(Ipv4Addr::new(10, 0, 0, 5), "22"), &policy)
        .await
        .unwrap();

    let a = runtime::start(&a_cfg, Role::Agent).await.unwrap();
    let took = eventually(
        "the first agent programs the router",
        Duration::from_secs(10),
        || vips(&nb).contains("10.0.0.5:22"),
    )
    .await;
    eprintln!("programmed {took:?} after the first agent started");
    let port = first.external_ports.first();
    assert_eq!(vips(&nb), format!("203.0.113.10:{port}=10.0.0.5:22"));
    // The mapping is ACTIVE once OVN holds it.
    let start = Instant::now();
    while store.get(&first.id).await.unwrap().unwrap().status != Status::Active {
        assert!(start.elapsed() < Duration::from_secs(10), "not ACTIVE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second agent stands by while the first holds the lease.
    let b = runtime::start(&b_cfg, Role::Agent).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder = store
        .lease_of(praas::store::LeaseRole::OvnWorker)
        .await
        .unwrap();
    assert!(
        holder.is_some_and(|h| h.starts_with("node-a:")),
        "node-a holds the lease"
    );

    // The holder stops (and gives the lease up): the standby takes over within a renewal.
    a.stop().await;
    let second = store
        .create(new(Ipv4Addr::new(10, 0, 0, 6), "80"), &policy)
        .await
        .unwrap();
    let took = eventually("the standby takes over", Duration::from_secs(12), || {
        vips(&nb).contains("10.0.0.6:80")
    })
    .await;
    eprintln!("the standby programmed a new mapping {took:?} after the holder stopped");
    assert!(vips(&nb).contains("10.0.0.5:22"), "the first mapping stays");
    let holder = store
        .lease_of(praas::store::LeaseRole::OvnWorker)
        .await
        .unwrap();
    assert!(
        holder.is_some_and(|h| h.starts_with("node-b:")),
        "node-b holds the lease"
    );
    assert!(second.external_ports.first() != port);

    // Neutron deletes the router: OVN keeps our load balancers (a root table), we remove them.
    nb.nbctl(&["lr-del", "neutron-r1"]).unwrap();
    let took = eventually(
        "the router's load balancers are removed",
        Duration::from_secs(12),
        || vips(&nb).is_empty(),
    )
    .await;
    eprintln!("orphaned load balancers removed {took:?} after the router was deleted");
    b.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
