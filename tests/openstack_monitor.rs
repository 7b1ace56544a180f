//! The monitor against the real Keystone and Neutron of `scripts/dev-cloud` (and the real
//! RabbitMQ for notifications): Neutron's changes of fixed IPs, ports and gateways followed,
//! Neutron stopped changing nothing, mappings held while their router has no gateway,
//! notifications acted on at once, what Neutron changes reaching the packets through the
//! agent, and `praas monitor` run as a process.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use praas::dataplane::netlink::sockets;
use praas::monitor::notifications::Subscription;
use praas::monitor::{Monitor, PortGone};
use praas::openstack::NeutronDirectory;
use praas::store::Policy;
use praas::testbed::simnode::SimNode;
use serde_json::{json, Value};
use tokio::sync::Notify;

use support::{
    call, external_prefix, first_free, neutron_call, until, upstream, vm_port, Cloud, OwnRouter,
    KEYSTONE,
};

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
    while counters.cycles.get() < 1 {
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
    while counters.cycles.get() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second cycle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.abort();
    listener.abort();
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
    let failed = counters.failed_cycles.get();
    let generation = store.generation().await.unwrap();
    // A failing cycle takes about a second (reads are retried with backoff).
    tokio::time::sleep(interval * 4).await;
    let failed_meanwhile = counters.failed_cycles.get() - failed;
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
    let failed = counters.failed_cycles.get();
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
    assert_eq!(counters.failed_cycles.get(), failed);
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
        counters.cycles.get() >= 1
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
    let status_port = praas::testbed::free_port();
    std::fs::write(
        &config,
        format!(
            "[praas]\nsecond_monitoring = 20\nbind_address = 127.0.0.1\n\
             monitor_status_port = {status_port}\n[database]\nconnection = {url}\n\
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
    // Its /metrics (on the status port) counted the notification and the deletion.
    use common::metrics::{promtool_accepts, sample, scrape};
    let base = format!("http://127.0.0.1:{status_port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&base).await;
        if sample(&text, "praas_monitor_deletions_total", &[]) == Some(1.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    promtool_accepts(&text);
    assert_eq!(
        sample(&text, "praas_build_info", &[("role", "monitor")]),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "praas_neutron_notifications_total",
            &[("event_type", "port.delete.end")]
        ) >= Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "praas_monitor_lease_held", &[]), Some(1.0));
    assert_eq!(
        sample(&text, "praas_mappings", &[("status", "PENDING")]),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "praas_openstack_request_duration_seconds_count",
            &[("service", "neutron"), ("operation", "read")]
        ) >= Some(1.0),
        "{text}"
    );
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
