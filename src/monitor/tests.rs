use std::sync::Mutex;

use super::*;
use crate::model::{PortRange, Protocol};
use crate::store::{ExternalPorts, NewMapping, Policy};

const ROUTER: &str = "r1";

fn router(gateway: Option<&str>) -> RouterInfo {
    RouterInfo {
        id: ROUTER.into(),
        name: String::new(),
        project_id: Some("p1".into()),
        gateway_ip: gateway.map(|g| g.parse().unwrap()),
        distributed: false,
        subnets: vec!["10.0.0.0/24".parse().unwrap()],
        subnet_ids: vec!["s1".into()],
    }
}

/// A port with `addresses`: those in 10.0.0.0/24 on the router's subnet `s1`, others on
/// `s-other`.
fn port(device: &str, addresses: &[&str]) -> PortInfo {
    let net: ipnet::Ipv4Net = "10.0.0.0/24".parse().unwrap();
    PortInfo {
        id: "port-1".into(),
        project_id: Some("p1".into()),
        device_id: device.into(),
        device_owner: "compute:nova".into(),
        fixed_ips: addresses
            .iter()
            .map(|a| {
                let ip = a.parse().unwrap();
                crate::openstack::FixedIp {
                    ip,
                    subnet_id: Some(if net.contains(&ip) { "s1" } else { "s-other" }.into()),
                }
            })
            .collect(),
    }
}

fn mapping() -> Mapping {
    Mapping {
        id: "m1".into(),
        project_id: "p1".into(),
        router_id: ROUTER.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        external_ports: PortRange::single(4000).unwrap(),
        internal_ip_address: "10.0.0.5".parse().unwrap(),
        internal_port_id: Some("port-1".into()),
        internal_ports: PortRange::single(22).unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
        status: Status::Active,
        status_reason: None,
        held: false,
        created_at: String::new(),
        updated_at: String::new(),
    }
}

fn held(status: Status, reason: &str) -> Mapping {
    Mapping {
        held: true,
        status,
        status_reason: Some(reason.into()),
        ..mapping()
    }
}

#[test]
fn nothing_changed_is_nothing_to_do() {
    let r = router(Some("203.0.113.10"));
    let p = port("vm-1", &["10.0.0.5"]);
    assert_eq!(
        decide(&mapping(), Some(&r), Some(Some(&p)), PortGone::Delete),
        Action::Keep
    );
    // A mapping without a port is checked against its router only.
    let m = Mapping {
        internal_port_id: None,
        ..mapping()
    };
    assert_eq!(decide(&m, Some(&r), None, PortGone::Delete), Action::Keep);
}

#[test]
fn deleted_routers_and_ports_delete_their_mappings_or_hold_them_down() {
    let r = router(Some("203.0.113.10"));
    assert!(matches!(
        decide(&mapping(), None, Some(None), PortGone::Delete),
        Action::Delete { .. }
    ));
    assert!(matches!(
        decide(&mapping(), Some(&r), Some(None), PortGone::Delete),
        Action::Delete { reason } if reason.contains("port-1 was deleted")
    ));
    let unbound = port("", &["10.0.0.5"]);
    assert!(matches!(
        decide(&mapping(), Some(&r), Some(Some(&unbound)), PortGone::Delete),
        Action::Delete { reason } if reason.contains("no longer bound")
    ));
    match decide(&mapping(), Some(&r), Some(None), PortGone::Down) {
        Action::Update(Change {
            hold:
                Some(Hold::Keep {
                    status: Status::Down,
                    reason,
                }),
            ..
        }) => {
            assert!(reason.contains("deleted"))
        }
        other => panic!("{other:?}"),
    }
    // Already held for that reason: no churn.
    let m = held(Status::Down, "port port-1 was deleted");
    assert_eq!(
        decide(&m, Some(&r), Some(None), PortGone::Down),
        Action::Keep
    );
}

#[test]
fn a_changed_address_is_followed_on_the_routers_subnets() {
    let r = router(Some("203.0.113.10"));
    // The port lost 10.0.0.5 and has an address on another network and one on ours.
    let p = port("vm-1", &["192.168.7.3", "10.0.0.77"]);
    match decide(&mapping(), Some(&r), Some(Some(&p)), PortGone::Delete) {
        Action::Update(c) => {
            assert_eq!(c.internal_ip, Some("10.0.0.77".parse().unwrap()));
            assert_eq!((c.external_ip, c.hold), (None, None));
            assert!(c.reason.contains("10.0.0.5 -> 10.0.0.77"), "{}", c.reason);
        }
        other => panic!("{other:?}"),
    }
    // Nothing on the router's subnets: held in ERROR with the reason, never pointed elsewhere.
    let p = port("vm-1", &["192.168.7.3"]);
    match decide(&mapping(), Some(&r), Some(Some(&p)), PortGone::Delete) {
        Action::Update(Change {
            hold:
                Some(Hold::Keep {
                    status: Status::Error,
                    reason,
                }),
            internal_ip: None,
            ..
        }) => {
            assert!(reason.contains("no address on a subnet"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

fn held_in_error(action: Action) -> String {
    match action {
        Action::Update(Change {
            hold:
                Some(Hold::Keep {
                    status: Status::Error,
                    reason,
                }),
            internal_ip: None,
            ..
        }) => reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_address_the_router_no_longer_reaches_is_held_in_error() {
    // The same address, but on a subnet of another network with the same range: the router
    // would forward to whoever holds it on its own subnet.
    let mut twin = port("vm-1", &["10.0.0.5"]);
    twin.fixed_ips[0].subnet_id = Some("s-twin".into());
    let r = router(Some("203.0.113.10"));
    let reason = held_in_error(decide(
        &mapping(),
        Some(&r),
        Some(Some(&twin)),
        PortGone::Delete,
    ));
    assert!(reason.contains("no address on a subnet"), "{reason}");
    // The router's interface on the subnet was removed.
    let detached = RouterInfo {
        subnets: vec![],
        subnet_ids: vec![],
        ..router(Some("203.0.113.10"))
    };
    let p = port("vm-1", &["10.0.0.5"]);
    held_in_error(decide(
        &mapping(),
        Some(&detached),
        Some(Some(&p)),
        PortGone::Delete,
    ));
    let no_port = Mapping {
        internal_port_id: None,
        ..mapping()
    };
    let reason = held_in_error(decide(&no_port, Some(&detached), None, PortGone::Delete));
    assert!(reason.contains("no longer on a subnet"), "{reason}");
}

#[test]
fn gateways_are_followed_and_their_removal_holds_mappings_until_they_return() {
    let p = port("vm-1", &["10.0.0.5"]);
    match decide(
        &mapping(),
        Some(&router(Some("203.0.113.99"))),
        Some(Some(&p)),
        PortGone::Delete,
    ) {
        Action::Update(c) => assert_eq!(c.external_ip, Some("203.0.113.99".parse().unwrap())),
        other => panic!("{other:?}"),
    }
    let down = decide(
        &mapping(),
        Some(&router(None)),
        Some(Some(&p)),
        PortGone::Delete,
    );
    assert!(
        matches!(
            &down,
            Action::Update(Change {
                hold: Some(Hold::Keep {
                    status: Status::Down,
                    ..
                }),
                ..
            })
        ),
        "{down:?}"
    );
    // Back: released, and following the new gateway in the same change.
    let m = held(Status::Down, "router r1 has no external gateway");
    match decide(
        &m,
        Some(&router(Some("203.0.113.50"))),
        Some(Some(&p)),
        PortGone::Delete,
    ) {
        Action::Update(c) => {
            assert_eq!(c.hold, Some(Hold::Release));
            assert_eq!(c.external_ip, Some("203.0.113.50".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_router_converted_to_or_from_dvr_moves_its_mappings() {
    let p = port("vm-1", &["10.0.0.5"]);
    let dvr = RouterInfo {
        distributed: true,
        ..router(Some("203.0.113.10"))
    };
    match decide(&mapping(), Some(&dvr), Some(Some(&p)), PortGone::Delete) {
        Action::Update(c) => {
            assert_eq!(c.distributed, Some(true));
            assert_eq!(c.reason, "router converted from legacy to distributed");
        }
        other => panic!("{other:?}"),
    }
    let on_dvr = Mapping {
        distributed: true,
        ..mapping()
    };
    assert_eq!(
        decide(&on_dvr, Some(&dvr), Some(Some(&p)), PortGone::Delete),
        Action::Keep
    );
    match decide(
        &on_dvr,
        Some(&router(Some("203.0.113.10"))),
        Some(Some(&p)),
        PortGone::Delete,
    ) {
        Action::Update(c) => assert_eq!(c.distributed, Some(false)),
        other => panic!("{other:?}"),
    }
}

/// A scripted Neutron: what it knows, or that it fails.
#[derive(Default)]
struct FakeNetwork {
    ports: Mutex<HashMap<String, PortInfo>>,
    routers: Mutex<HashMap<String, RouterInfo>>,
    fail: Mutex<bool>,
}

#[async_trait::async_trait]
impl NetworkView for FakeNetwork {
    async fn ports(&self, ids: &[String]) -> Result<HashMap<String, PortInfo>, OpenStackError> {
        if *self.fail.lock().unwrap() {
            return Err(OpenStackError::Status {
                service: "Neutron",
                url: "http://neutron/v2.0/ports".into(),
                status: 503,
                body: String::new(),
            });
        }
        let ports = self.ports.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| ports.get(id).map(|p| (id.clone(), p.clone())))
            .collect())
    }

    async fn routers(&self, ids: &[String]) -> Result<HashMap<String, RouterInfo>, OpenStackError> {
        let routers = self.routers.lock().unwrap();
        Ok(ids
            .iter()
            .filter_map(|id| routers.get(id).map(|r| (id.clone(), r.clone())))
            .collect())
    }
}

async fn store() -> Arc<Store> {
    let dir = std::env::temp_dir().join(format!("praas-monitor-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    Arc::new(store)
}

fn new(ip: &str, port_id: &str) -> NewMapping {
    NewMapping {
        project_id: "p1".into(),
        router_id: ROUTER.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        external_ports: ExternalPorts::Allocate { len: 1 },
        internal_ip_address: ip.parse().unwrap(),
        internal_port_id: Some(port_id.into()),
        internal_ports: PortRange::single(22).unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

#[tokio::test]
async fn a_cycle_applies_decisions_and_a_failing_neutron_changes_nothing() {
    let store = store().await;
    let policy = Policy::default();
    let kept = store
        .create(new("10.0.0.5", "port-1"), &policy)
        .await
        .unwrap();
    let moved = store
        .create(new("10.0.0.6", "port-2"), &policy)
        .await
        .unwrap();
    let gone = store
        .create(new("10.0.0.7", "port-3"), &policy)
        .await
        .unwrap();
    let net = Arc::new(FakeNetwork::default());
    net.routers
        .lock()
        .unwrap()
        .insert(ROUTER.into(), router(Some("203.0.113.10")));
    {
        let mut ports = net.ports.lock().unwrap();
        ports.insert(
            "port-1".into(),
            PortInfo {
                id: "port-1".into(),
                ..port("vm-1", &["10.0.0.5"])
            },
        );
        ports.insert(
            "port-2".into(),
            PortInfo {
                id: "port-2".into(),
                ..port("vm-2", &["10.0.0.60"])
            },
        );
    }
    let monitor = Monitor::new(store.clone(), net.clone(), PortGone::Delete);

    // Neutron failing: nothing is touched, whatever it would have found.
    *net.fail.lock().unwrap() = true;
    let generation = store.generation().await.unwrap();
    assert!(monitor.cycle(Duration::from_secs(90)).await.is_err());
    assert_eq!(store.generation().await.unwrap(), generation);
    assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 3);

    *net.fail.lock().unwrap() = false;
    let audit = crate::testbed::audit::recorder();
    let report = monitor.cycle(Duration::from_secs(90)).await.unwrap();
    assert_eq!((report.mappings, report.deleted, report.updated), (3, 1, 1));
    // Each change the monitor made is one audit event with its reason.
    let lines = audit.lines_about(&[&kept.id, &moved.id, &gone.id]);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines.iter().all(|l| l.contains("actor=monitor")),
        "{lines:#?}"
    );
    let update = lines
        .iter()
        .find(|l| l.contains("action=\"update\""))
        .unwrap();
    assert!(
        update.contains(&format!("mapping={}", moved.id))
            && update.contains("internal_ip_address: 10.0.0.6 → 10.0.0.60"),
        "{update}"
    );
    let delete = lines
        .iter()
        .find(|l| l.contains("action=\"delete\""))
        .unwrap();
    assert!(
        delete.contains(&format!("mapping={}", gone.id))
            && delete.contains("port port-3 was deleted"),
        "{delete}"
    );
    assert!(store.get(&gone.id).await.unwrap().is_none());
    let moved = store.get(&moved.id).await.unwrap().unwrap();
    assert_eq!(moved.internal_ip_address.to_string(), "10.0.0.60");
    assert_eq!(moved.status, Status::Pending, "to be programmed again");
    let kept_now = store.get(&kept.id).await.unwrap().unwrap();
    assert_eq!(kept_now.updated_at, kept.updated_at);

    // Router loses its gateway: held DOWN; gets one back: released and following it.
    net.routers
        .lock()
        .unwrap()
        .insert(ROUTER.into(), router(None));
    monitor.cycle(Duration::from_secs(90)).await.unwrap();
    let m = store.get(&kept.id).await.unwrap().unwrap();
    assert!(m.held && m.status == Status::Down, "{m:?}");
    net.routers
        .lock()
        .unwrap()
        .insert(ROUTER.into(), router(Some("203.0.113.44")));
    monitor.cycle(Duration::from_secs(90)).await.unwrap();
    let m = store.get(&kept.id).await.unwrap().unwrap();
    assert!(!m.held && m.status == Status::Pending, "{m:?}");
    assert_eq!(m.external_ip_address.to_string(), "203.0.113.44");

    // A second monitor waits while the first holds the lease.
    let standby = Monitor::new(store.clone(), net.clone(), PortGone::Delete);
    assert!(
        standby
            .cycle(Duration::from_secs(90))
            .await
            .unwrap()
            .standby
    );
    monitor.release().await;
    assert!(
        !standby
            .cycle(Duration::from_secs(90))
            .await
            .unwrap()
            .standby
    );
}

#[tokio::test]
async fn a_mass_deletion_waits_for_the_next_cycle_to_confirm_it() {
    let store = store().await;
    let policy = Policy::default();
    for n in 0..12 {
        store
            .create(
                new(&format!("10.0.0.{}", 10 + n), &format!("port-{n}")),
                &policy,
            )
            .await
            .unwrap();
    }
    let net = Arc::new(FakeNetwork::default());
    net.routers
        .lock()
        .unwrap()
        .insert(ROUTER.into(), router(Some("203.0.113.10")));
    // Neutron shows none of the ports.
    let monitor = Monitor::new(store.clone(), net.clone(), PortGone::Delete);
    let lease = Duration::from_secs(90);
    let first = monitor.cycle(lease).await.unwrap();
    assert_eq!((first.deleted, first.held_back), (0, 12), "{first:?}");
    assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 12);
    // A glitch: the ports are back; nothing was lost and nothing is pending.
    {
        let mut ports = net.ports.lock().unwrap();
        for n in 0..12 {
            let id = format!("port-{n}");
            ports.insert(
                id.clone(),
                PortInfo {
                    id,
                    ..port("vm", &[&format!("10.0.0.{}", 10 + n)])
                },
            );
        }
    }
    let back = monitor.cycle(lease).await.unwrap();
    assert_eq!((back.deleted, back.held_back), (0, 0), "{back:?}");
    // Really gone, seen twice: deleted.
    net.ports.lock().unwrap().clear();
    assert_eq!(monitor.cycle(lease).await.unwrap().held_back, 12);
    let second = monitor.cycle(lease).await.unwrap();
    assert_eq!((second.deleted, second.held_back), (12, 0), "{second:?}");
    assert!(store.list(&ListFilter::default()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_notifications_runs_at_most_one_cycle_a_second() {
    let store = store().await;
    let net = Arc::new(FakeNetwork::default());
    let monitor = Monitor::new(store, net, PortGone::Delete);
    let counters = monitor.counters();
    let wake = Arc::new(tokio::sync::Notify::new());
    let running = tokio::spawn(monitor.run(Duration::from_secs(600), wake.clone()));
    // The first cycle runs at once; then 2.5 s of an event every 20 ms. Without the gap that
    // is a cycle every 200 ms (about 12); with it, one a second.
    for _ in 0..125 {
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cycles = counters.cycles.get();
    assert!((2..=4).contains(&cycles), "{cycles} cycles in 2.5 s");
    running.abort();
}
