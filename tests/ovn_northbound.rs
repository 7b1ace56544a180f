//! The OVN driver against a real OVN northbound database (a private `ovsdb-server`, no northd,
//! no chassis): the rows it writes, the rows it leaves alone, repair after someone else's edit,
//! removal, a lost connection, and a clustered (raft) database used through its leader while
//! leadership moves. Needs OVN's tools, not root.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use praas::dataplane::ovn::{ApplyWait, Northbound, OvnBackend};
use praas::dataplane::sync::{Check, RouterSync};
use praas::dataplane::{
    Backend, DataplaneError, Forward, NamespaceKind, PortRange, Protocol, RouterNamespace, RuleSet,
};
use praas::ovsdb::{Remote, TlsFiles};
// OVN deletes the conntrack entries of removed forwards itself (ct_flush): no cleaner.
use praas::testbed::fake_dataplane::NoFlows;
use praas::testbed::ovsdb_server::{NorthboundCluster, NorthboundServer, OvsdbServerError};

const GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// A northbound database the test can run `ovn-nbctl` against: one server or a cluster.
trait Nbctl {
    fn nbctl(&self, args: &[&str]) -> Result<String, OvsdbServerError>;
}

impl Nbctl for NorthboundServer {
    fn nbctl(&self, args: &[&str]) -> Result<String, OvsdbServerError> {
        NorthboundServer::nbctl(self, args)
    }
}

impl Nbctl for NorthboundCluster {
    fn nbctl(&self, args: &[&str]) -> Result<String, OvsdbServerError> {
        NorthboundCluster::nbctl(self, args)
    }
}

/// A Neutron-like router: `neutron-r1` with a gateway port on `ext` and an interface on
/// `int`, as Neutron's OVN driver writes them (lrp-<port>, router-type switch ports).
fn topology(nb: &impl Nbctl) {
    let cmds: &[&[&str]] = &[
        &["ls-add", "neutron-int"],
        &["ls-add", "neutron-ext"],
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
        &["lsp-add", "neutron-ext", "ext-router"],
        &["lsp-set-type", "ext-router", "router"],
        &["lsp-set-options", "ext-router", "router-port=lrp-gw"],
        &["lsp-add", "neutron-int", "vm-port"],
        // Neutron's own port forwarding on a floating IP, attached to the same router.
        &[
            "lb-add",
            "pf-floatingip-f1-tcp",
            "203.0.113.20:22",
            "10.0.0.7:22",
            "tcp",
        ],
        &["lr-lb-add", "neutron-r1", "pf-floatingip-f1-tcp"],
    ];
    for args in cmds {
        nb.nbctl(args).unwrap();
    }
}

fn backend(nb: &NorthboundServer, wait: ApplyWait, timeout: Duration) -> OvnBackend {
    let northbound = Northbound::new(
        vec![Remote::parse(&nb.remote()).unwrap()],
        TlsFiles::default(),
        Duration::from_secs(5),
    );
    OvnBackend::new(Arc::new(northbound), wait, timeout)
}

fn forward(
    id: &str,
    protocol: Protocol,
    ext: (u16, u16),
    vm: Ipv4Addr,
    int: (u16, u16),
) -> Forward {
    Forward {
        id: id.into(),
        external_ip: GW,
        protocol,
        external_ports: PortRange::new(ext.0, ext.1).unwrap(),
        internal_ip: vm,
        internal_ports: PortRange::new(int.0, int.1).unwrap(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

fn router() -> RouterNamespace {
    RouterNamespace::for_router("r1", NamespaceKind::OvnRouter)
}

/// `name -> vips` of every load balancer, as `ovn-nbctl` lists them.
fn lbs(nb: &impl Nbctl) -> Vec<(String, String)> {
    let out = nb
        .nbctl(&[
            "--format=csv",
            "--data=bare",
            "--no-headings",
            "--columns=name,vips",
            "list",
            "Load_Balancer",
        ])
        .unwrap();
    let mut rows: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(n, v)| (n.to_string(), v.trim_matches('"').to_string()))
        .collect();
    rows.sort();
    rows
}

fn attached(nb: &NorthboundServer, table: &str, name: &str) -> Vec<String> {
    let table = if table == "router" {
        "Logical_Router"
    } else {
        "Logical_Switch"
    };
    let column = nb
        .nbctl(&[
            "--data=bare",
            "--no-headings",
            "--columns=load_balancer",
            "find",
            table,
            &format!("name={name}"),
        ])
        .unwrap();
    let mut names: Vec<String> = column
        .split_whitespace()
        .map(|uuid| {
            nb.nbctl(&["get", "Load_Balancer", uuid, "name"])
                .unwrap()
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn forwards_become_our_load_balancers_on_the_router_and_its_tenant_switches_only() {
    let Some(nb) = NorthboundServer::start_for("ovn_northbound::forwards_become_load_balancers")
    else {
        return;
    };
    topology(&nb);
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let rules = RuleSet::from_forwards(&[
        forward("m1", Protocol::Tcp, (4000, 4000), vm, (22, 22)),
        forward("m2", Protocol::Udp, (4001, 4002), vm, (5001, 5002)),
    ])
    .unwrap();
    let ovn = backend(&nb, ApplyWait::None, Duration::from_secs(1));
    ovn.full_sync(&router(), &rules).unwrap();

    assert_eq!(
        lbs(&nb),
        [
            (
                "pf-floatingip-f1-tcp".to_string(),
                "203.0.113.20:22=10.0.0.7:22".to_string()
            ),
            (
                "praas-r1-tcp-10.0.0.5".to_string(),
                "203.0.113.10:4000=10.0.0.5:22".to_string()
            ),
            (
                "praas-r1-udp-10.0.0.5".to_string(),
                "203.0.113.10:4001=10.0.0.5:5001 203.0.113.10:4002=10.0.0.5:5002".to_string()
            ),
        ]
    );
    assert_eq!(
        attached(&nb, "router", "neutron-r1"),
        [
            "pf-floatingip-f1-tcp",
            "praas-r1-tcp-10.0.0.5",
            "praas-r1-udp-10.0.0.5"
        ]
    );
    assert_eq!(
        attached(&nb, "switch", "neutron-int"),
        ["praas-r1-tcp-10.0.0.5", "praas-r1-udp-10.0.0.5"]
    );
    assert!(
        attached(&nb, "switch", "neutron-ext").is_empty(),
        "not on the gateway's network"
    );
    let ids = nb
        .nbctl(&[
            "--data=bare",
            "--no-headings",
            "--columns=external_ids,options",
            "find",
            "Load_Balancer",
            "name=praas-r1-tcp-10.0.0.5",
        ])
        .unwrap();
    assert!(ids.contains("praas:router_id=r1"), "{ids}");
    assert!(ids.contains("praas:backend=10.0.0.5"), "{ids}");
    assert!(ids.contains("ct_flush=true"), "{ids}");
    assert_eq!(ovn.read_back(&router()).unwrap(), Some(rules.clone()));

    // Idempotent: the same rules again write nothing (the replica already matches).
    let (_, before) = ovn.northbound().generation().unwrap();
    ovn.full_sync(&router(), &rules).unwrap();
    assert_eq!(ovn.northbound().generation().unwrap().1, before);
}

#[test]
fn changes_are_one_transaction_of_vip_mutations_and_removal_leaves_neutrons_rows() {
    let Some(nb) = NorthboundServer::start_for("ovn_northbound::changes_and_removal") else {
        return;
    };
    topology(&nb);
    let ovn = Arc::new(backend(&nb, ApplyWait::None, Duration::from_secs(1)));
    let sync = RouterSync::new(ovn.clone(), Arc::new(NoFlows));
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let (a, b) = (
        forward("a", Protocol::Tcp, (4000, 4000), vm, (22, 22)),
        forward("b", Protocol::Tcp, (4001, 4001), vm, (80, 80)),
    );
    sync.sync(&router(), &RuleSet::from_forwards([&a, &b]).unwrap())
        .unwrap();
    // b re-pointed to another VM (its load balancer), c added (UDP), a removed (the first
    // VM's TCP load balancer goes): one incremental update.
    let b2 = forward(
        "b",
        Protocol::Tcp,
        (4001, 4001),
        Ipv4Addr::new(10, 0, 0, 6),
        (8080, 8080),
    );
    let c = forward("c", Protocol::Udp, (4002, 4002), vm, (53, 53));
    let desired = RuleSet::from_forwards([&b2, &c]).unwrap();
    let outcome = sync.sync(&router(), &desired).unwrap();
    assert_eq!(outcome.mode, praas::dataplane::sync::SyncMode::Incremental);
    assert_eq!(
        lbs(&nb),
        [
            (
                "pf-floatingip-f1-tcp".to_string(),
                "203.0.113.20:22=10.0.0.7:22".to_string()
            ),
            (
                "praas-r1-tcp-10.0.0.6".to_string(),
                "203.0.113.10:4001=10.0.0.6:8080".to_string()
            ),
            (
                "praas-r1-udp-10.0.0.5".to_string(),
                "203.0.113.10:4002=10.0.0.5:53".to_string()
            ),
        ]
    );
    // The last TCP forward goes: its load balancer is detached and deleted.
    let only_udp = RuleSet::from_forwards([&c]).unwrap();
    sync.sync(&router(), &only_udp).unwrap();
    assert_eq!(
        attached(&nb, "router", "neutron-r1"),
        ["pf-floatingip-f1-tcp", "praas-r1-udp-10.0.0.5"]
    );
    sync.verify(&router()).unwrap();

    sync.remove(&router()).unwrap();
    assert_eq!(
        lbs(&nb),
        [(
            "pf-floatingip-f1-tcp".to_string(),
            "203.0.113.20:22=10.0.0.7:22".to_string()
        )]
    );
    assert_eq!(
        attached(&nb, "router", "neutron-r1"),
        ["pf-floatingip-f1-tcp"]
    );
    assert!(attached(&nb, "switch", "neutron-int").is_empty());
}

/// Waits until `check` says something other than `Unchanged`, as the agent's one-second
/// check would see it.
fn check_until_moved(sync: &RouterSync) -> (Check, Duration) {
    let start = Instant::now();
    loop {
        match sync.check(&router()).unwrap() {
            Check::Unchanged if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return (other, start.elapsed()),
        }
    }
}

#[test]
fn a_deleted_detached_or_edited_load_balancer_of_ours_is_seen_and_repaired() {
    let Some(nb) = NorthboundServer::start_for("ovn_northbound::drift_is_repaired") else {
        return;
    };
    topology(&nb);
    let ovn = Arc::new(backend(&nb, ApplyWait::None, Duration::from_secs(1)));
    let sync = RouterSync::new(ovn.clone(), Arc::new(NoFlows));
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let rules = RuleSet::from_forwards(&[
        forward("a", Protocol::Tcp, (4000, 4000), vm, (22, 22)),
        forward("b", Protocol::Udp, (4001, 4001), vm, (53, 53)),
    ])
    .unwrap();
    sync.sync(&router(), &rules).unwrap();
    assert_eq!(sync.check(&router()).unwrap(), Check::Unchanged);

    // A change elsewhere in the database leaves the router's fingerprint: nothing read back.
    let before = ovn.northbound().generation().unwrap();
    nb.nbctl(&["lb-add", "other", "203.0.113.30:80", "10.0.0.9:80", "tcp"])
        .unwrap();
    let start = Instant::now();
    while ovn.northbound().generation().unwrap() == before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the replica never moved"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sync.check(&router()).unwrap(), Check::Unchanged);
    // Someone else's change on the router: seen, read back, ours intact.
    nb.nbctl(&["lr-lb-add", "neutron-r1", "other"]).unwrap();
    let (check, _) = check_until_moved(&sync);
    assert_eq!(check, Check::Intact);

    let edits: &[(&str, &[&str])] = &[
        ("deleted", &["lb-del", "praas-r1-tcp-10.0.0.5"]),
        (
            "detached from the router",
            &["lr-lb-del", "neutron-r1", "praas-r1-udp-10.0.0.5"],
        ),
        (
            "detached from a tenant switch",
            &["ls-lb-del", "neutron-int", "praas-r1-tcp-10.0.0.5"],
        ),
        (
            "a VIP edited",
            &[
                "set",
                "Load_Balancer",
                "praas-r1-udp-10.0.0.5",
                "vips:\"203.0.113.10:4001\"=\"10.0.0.99:53\"",
            ],
        ),
    ];
    for (what, args) in edits {
        nb.nbctl(args).unwrap();
        let (check, took) = check_until_moved(&sync);
        assert!(matches!(check, Check::Drifted(_)), "{what}: {check:?}");
        assert!(took < Duration::from_secs(2), "{what}: seen after {took:?}");
        sync.sync(&router(), &rules).unwrap();
        assert_eq!(
            ovn.read_back(&router()).unwrap(),
            Some(rules.clone()),
            "{what}: repaired"
        );
        assert_eq!(sync.check(&router()).unwrap(), Check::Unchanged, "{what}");
    }
    // The foreign rows were never touched.
    assert!(lbs(&nb).iter().any(|(n, _)| n == "other"));
    assert!(lbs(&nb).iter().any(|(n, _)| n == "pf-floatingip-f1-tcp"));
}

#[test]
fn a_missing_router_a_lost_server_and_an_unapplied_change_are_clear_errors() {
    let Some(mut nb) = NorthboundServer::start_for("ovn_northbound::errors") else {
        return;
    };
    topology(&nb);
    let ovn = backend(&nb, ApplyWait::None, Duration::from_secs(1));
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let rules =
        RuleSet::from_forwards(&[forward("a", Protocol::Tcp, (4000, 4000), vm, (22, 22))]).unwrap();

    let missing = RouterNamespace::for_router("r9", NamespaceKind::OvnRouter);
    let err = ovn.full_sync(&missing, &rules).unwrap_err();
    assert_eq!(
        err.to_string(),
        "logical router neutron-r9 is not in OVN's northbound database"
    );
    assert_eq!(ovn.read_back(&missing).unwrap(), None);

    // The server goes away and comes back: the next call connects again and refills.
    ovn.full_sync(&router(), &rules).unwrap();
    nb.stop();
    let err = ovn.full_sync(&router(), &RuleSet::default()).unwrap_err();
    assert!(matches!(err, DataplaneError::Ovn { .. }), "{err}");
    nb.restart().unwrap();
    assert_eq!(ovn.read_back(&router()).unwrap(), Some(rules.clone()));
    ovn.full_sync(&router(), &RuleSet::default()).unwrap();
    assert_eq!(ovn.read_back(&router()).unwrap(), Some(RuleSet::default()));

    // No northd here: waiting for the chassis times out, and says so.
    let waiting = backend(&nb, ApplyWait::Chassis, Duration::from_millis(300));
    let start = Instant::now();
    let err = waiting.full_sync(&router(), &rules).unwrap_err();
    let text = praas::util::Chain(&err).to_string();
    assert!(text.contains("did not report the change applied"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(2));

    // Masquerade cannot be had per forward on OVN: refused, not half done.
    let mut masq = forward("m", Protocol::Tcp, (4005, 4005), vm, (22, 22));
    masq.masquerade = true;
    let err = ovn
        .full_sync(&router(), &RuleSet::from_forwards([&masq]).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("masquerade"), "{err}");
}

/// `(match, action)` of the policies on `neutron-r1` carrying `praas:router_id=r1`, and the
/// number of all policies in the database.
fn policies(nb: &NorthboundServer) -> (Vec<(String, String)>, usize) {
    let ours = nb
        .nbctl(&[
            "--format=csv",
            "--data=bare",
            "--no-headings",
            "--columns=match,action",
            "find",
            "Logical_Router_Policy",
            "external_ids:\"praas:router_id\"=r1",
        ])
        .unwrap();
    let mut ours: Vec<(String, String)> = ours
        .lines()
        .filter_map(|l| l.rsplit_once(','))
        .map(|(m, a)| (m.trim_matches('"').replace("\"\"", "\""), a.to_string()))
        .collect();
    ours.sort();
    let all = nb
        .nbctl(&[
            "--data=bare",
            "--no-headings",
            "--columns=_uuid",
            "list",
            "Logical_Router_Policy",
        ])
        .unwrap();
    (ours, all.split_whitespace().count())
}

fn uuid_of_our_policy(nb: &NorthboundServer) -> String {
    nb.nbctl(&[
        "--data=bare",
        "--no-headings",
        "--columns=_uuid",
        "find",
        "Logical_Router_Policy",
        "external_ids:\"praas:router_id\"=r1",
    ])
    .unwrap()
    .split_whitespace()
    .next()
    .expect("a policy of ours")
    .to_string()
}

#[test]
fn allowed_sources_are_router_policies_of_ours_repaired_and_removed_beside_an_operators() {
    let Some(nb) = NorthboundServer::start_for("ovn_northbound::allowed_sources") else {
        return;
    };
    topology(&nb);
    // An operator's own policy on the router.
    nb.nbctl(&[
        "lr-policy-add",
        "neutron-r1",
        "100",
        "ip4.src == 10.0.0.0/24",
        "allow",
    ])
    .unwrap();
    let ovn = Arc::new(backend(&nb, ApplyWait::None, Duration::from_secs(1)));
    let sync = RouterSync::new(ovn.clone(), Arc::new(NoFlows));
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let mut ssh = forward("a", Protocol::Tcp, (4000, 4001), vm, (8000, 8001));
    ssh.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
    let mut dns = forward("b", Protocol::Udp, (4002, 4002), vm, (53, 53));
    dns.allowed_cidrs = vec!["192.0.2.7/32".parse().unwrap()];
    let rules = RuleSet::from_forwards(&[ssh.clone(), dns.clone()]).unwrap();
    sync.sync(&router(), &rules).unwrap();
    let (ours, all) = policies(&nb);
    let head = "inport == \"lrp-gw\" && ip4 && ct_mark.natted == 1 && ip4.dst == 10.0.0.5";
    assert_eq!(
        ours,
        [
            (
                format!("{head} && tcp && tcp.dst >= 8000 && tcp.dst <= 8001 && ip4.src != {{198.51.100.0/24}}"),
                "drop".to_string()
            ),
            (
                format!("{head} && udp && udp.dst == 53 && ip4.src != {{192.0.2.7/32}}"),
                "drop".to_string()
            ),
        ]
    );
    assert_eq!(all, 3, "ours and the operator's");
    assert_eq!(ovn.read_back(&router()).unwrap(), Some(rules.clone()));
    assert_eq!(sync.check(&router()).unwrap(), Check::Unchanged);

    // Deleted or edited by someone else: seen within 2 s, rewritten by the next sync.
    for what in ["deleted", "its match edited", "its action edited"] {
        let uuid = uuid_of_our_policy(&nb);
        match what {
            "deleted" => nb.nbctl(&["lr-policy-del", "neutron-r1", &uuid]),
            "its match edited" => nb.nbctl(&[
                "set",
                "Logical_Router_Policy",
                &uuid,
                "match=\"ip4.src == 192.0.2.0/24\"",
            ]),
            _ => nb.nbctl(&["set", "Logical_Router_Policy", &uuid, "action=allow"]),
        }
        .unwrap();
        let (check, took) = check_until_moved(&sync);
        assert!(matches!(check, Check::Drifted(_)), "{what}: {check:?}");
        assert!(took < Duration::from_secs(2), "{what}: seen after {took:?}");
        sync.sync(&router(), &rules).unwrap();
        assert_eq!(policies(&nb).0, ours, "{what}: repaired");
        assert_eq!(policies(&nb).1, 3, "{what}");
        assert_eq!(sync.check(&router()).unwrap(), Check::Unchanged, "{what}");
    }

    // A changed list replaces only the policy it concerns; an open forward has none.
    dns.allowed_cidrs = vec![];
    let open = RuleSet::from_forwards(&[ssh.clone(), dns.clone()]).unwrap();
    sync.sync(&router(), &open).unwrap();
    assert_eq!(policies(&nb).0, ours[..1]);
    assert_eq!(ovn.read_back(&router()).unwrap(), Some(open));

    // Masquerade is refused with its reason, and nothing is written.
    dns.masquerade = true;
    let masqueraded = RuleSet::from_forwards(&[ssh.clone(), dns]).unwrap();
    let e = ovn.full_sync(&router(), &masqueraded).unwrap_err();
    assert!(
        e.to_string()
            .contains("OVN 23.03 cannot source-NAT one forward"),
        "{e}"
    );
    assert_eq!(policies(&nb).0, ours[..1]);

    // Removal takes ours and leaves the operator's.
    sync.remove(&router()).unwrap();
    assert_eq!(policies(&nb), (vec![], 1));

    // Policies are not a root table: they go with their router.
    sync.sync(&router(), &rules).unwrap();
    nb.nbctl(&["lr-del", "neutron-r1"]).unwrap();
    assert_eq!(policies(&nb), (vec![], 0));
}

#[test]
fn a_clustered_database_is_used_through_its_leader_and_followed_when_leadership_moves() {
    let Some(mut cluster) = NorthboundCluster::start_for("ovn_northbound::clustered_leader") else {
        return;
    };
    topology(&cluster);
    let leader = cluster.leader().expect("a leader");
    // The followers first, as an operator may list them: they are passed over.
    let order: Vec<usize> = (0..3).filter(|&i| i != leader).chain([leader]).collect();
    let northbound = Arc::new(Northbound::new(
        order
            .iter()
            .map(|&i| Remote::parse(&cluster.remote(i)).unwrap())
            .collect(),
        TlsFiles::default(),
        Duration::from_secs(5),
    ));
    let backend = OvnBackend::new(northbound.clone(), ApplyWait::None, Duration::from_secs(5));
    let sync = RouterSync::new(Arc::new(backend), Arc::new(NoFlows));
    let vm = Ipv4Addr::new(10, 0, 0, 5);
    let forwards: Vec<Forward> = (0..3)
        .map(|i| {
            forward(
                &format!("m{i}"),
                Protocol::Tcp,
                (4000 + i, 4000 + i),
                vm,
                (22, 22),
            )
        })
        .collect();
    let sync_to = |n: usize| sync.sync(&router(), &RuleSet::from_forwards(&forwards[..n]).unwrap());
    let our_vips = |cluster: &NorthboundCluster| {
        lbs(cluster)
            .into_iter()
            .find(|(name, _)| name == "praas-r1-tcp-10.0.0.5")
            .map(|(_, vips)| vips)
            .unwrap_or_default()
    };

    sync_to(1).expect("a change through the leader");
    assert_eq!(
        northbound.connected_to(),
        Some(cluster.remote(leader)),
        "connected to the leader, not to the followers listed first"
    );
    assert!(our_vips(&cluster).contains("203.0.113.10:4000"));

    // Leadership moves while the old leader keeps running: its _Server row says so, the
    // connection is given up, and the next change goes to the new leader.
    let new = cluster
        .transfer_leadership()
        .expect("leadership transferred");
    let t = Instant::now();
    while northbound.connected_to() == Some(cluster.remote(leader)) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still using member {leader} 5 s after it stopped leading"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "clustered: the former leader given up {:?} after the transfer",
        t.elapsed()
    );
    sync_to(2).expect("a change after the transfer");
    assert_eq!(northbound.connected_to(), Some(cluster.remote(new)));
    let vips = our_vips(&cluster);
    assert!(vips.contains("203.0.113.10:4000") && vips.contains("203.0.113.10:4001"));

    // The leader crashes: once the other two elect one, a change (the agent's next pass)
    // goes through it.
    cluster.kill(new);
    let t = Instant::now();
    let newer = cluster
        .wait_leader(Duration::from_secs(20))
        .expect("a leader elected among the other two");
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sync_to(3) {
            Ok(_) => break,
            Err(e) if t.elapsed() < Duration::from_secs(20) => {
                eprintln!("clustered: attempt {attempts}: {}", praas::util::Chain(&e));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no change went through 20 s after the crash: {e}"),
        }
    }
    eprintln!(
        "clustered: a change went through {:?} after the leader crashed ({attempts} attempts)",
        t.elapsed()
    );
    assert_eq!(northbound.connected_to(), Some(cluster.remote(newer)));
    assert!(our_vips(&cluster).contains("203.0.113.10:4002"));
}
