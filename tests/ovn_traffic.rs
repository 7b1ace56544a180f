//! Real traffic through the OVN driver: the checks of `netns_dataplane.rs` (the netfilter
//! drivers) run again on OVN. Each test builds a Neutron-like router with ovn-nbctl in the
//! one-chassis environment (`scripts/ovn`), programs forwards through [`RouterSync`] and the real
//! [`OvnBackend`] exactly as the agent does (waiting until the chassis reports each change
//! applied, `hv_cfg`), and checks with TCP and UDP connections between namespaces.
//!
//! ```text
//!  client ns 203.0.113.(120+n) ── br-ex ── neutron-<id>-ext (localnet physnet1)
//!                                               │ lrp-<id>-gw 203.0.113.(20+n), on the chassis
//!                                          neutron-<id>  (SNAT 10.n.0.0/24, our load balancers)
//!                                               │ lrp-<id>-int 10.n.0.1
//!                         VM ns 10.n.0.1x ── neutron-<id>-net
//! ```
//!
//! The tests run in parallel in one process: each has its own slot `n`, hence its own names,
//! addresses and MACs (the environment is shared). Needs root and the OVN packages; skipped with
//! a reason otherwise (and failed under CI).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use praas::dataplane::ovn::{ApplyWait, Northbound, OvnBackend};
use praas::dataplane::sync::{Check, RouterSync, SyncMode, SyncOutcome};
use praas::dataplane::{Forward, NamespaceKind, PortRange, Protocol, RouterNamespace, RuleSet};
use praas::ovsdb::{Remote, TlsFiles};
// OVN deletes the conntrack entries of removed forwards itself (ct_flush): no cleaner.
use praas::testbed::fake_dataplane::NoFlows;
use praas::testbed::ovn::{self, OvnEnv, OvnNamespace};
use praas::testbed::ovn_router::{NeutronRouter, RouterLayout};
use praas::testbed::simnode::{kernel_tests_enabled, Connection, Server, SimNode};

/// How long a sync may wait for the chassis to apply a change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One test's router, its networks, VMs and external client. Fields drop in order: the
/// namespaces first, then the northbound rows, then (if this was its last user) the environment.
struct Site {
    test: &'static str,
    client: OvnNamespace,
    vms: Vec<OvnNamespace>,
    sync: RouterSync,
    router: RouterNamespace,
    gateway: Ipv4Addr,
    rows: NeutronRouter,
    env: Arc<OvnEnv>,
}

impl Site {
    /// Slot `slot` (1..=15, one per test) with `vms` VMs, or `None` when the test is skipped.
    fn new(test: &'static str, slot: u8, vms: usize) -> Option<Site> {
        if !kernel_tests_enabled(test) || !ovn::tests_enabled(test) {
            return None;
        }
        let env = OvnEnv::start().expect("scripts/ovn up");
        let gateway = Ipv4Addr::new(203, 0, 113, 20 + slot);
        let client_ip = Ipv4Addr::new(203, 0, 113, 120 + slot);
        let rows = NeutronRouter::build(
            &env,
            RouterLayout {
                router_id: format!("traffic{slot}"),
                slot,
                gateway: Ipv4Net::new(gateway, 24).unwrap(),
                internal: Ipv4Net::new(Ipv4Addr::new(10, slot, 0, 1), 24).unwrap(),
                vms: (0..vms)
                    .map(|i| Ipv4Addr::new(10, slot, 0, 10 + i as u8))
                    .collect(),
            },
        )
        .expect("the topology in the northbound database");
        let client = OvnNamespace::external(&env, format!("{client_ip}/24").parse().unwrap(), None)
            .expect("external client namespace on br-ex");
        let vms: Vec<OvnNamespace> = (0..vms)
            .map(|i| {
                rows.attach_vm(i)
                    .expect("VM namespace on br-int, its port bound")
            })
            .collect();

        let northbound = Northbound::new(
            vec![Remote::parse(&env.nb).expect("the environment's northbound remote")],
            TlsFiles::default(),
            Duration::from_secs(5),
        );
        let backend = OvnBackend::new(Arc::new(northbound), ApplyWait::Chassis, APPLY_TIMEOUT);
        let sync = RouterSync::new(Arc::new(backend), Arc::new(NoFlows));
        Some(Site {
            test,
            client,
            vms,
            sync,
            router: RouterNamespace::for_router(&rows.layout.router_id, NamespaceKind::OvnRouter),
            gateway,
            rows,
            env,
        })
    }

    fn gw(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.gateway, port)
    }

    fn vm_ip(&self, vm: usize) -> Ipv4Addr {
        self.vms[vm].ip
    }

    /// A forward from the gateway; ports as `"4000"` or `"4000:4002"`.
    fn forward(&self, id: &str, protocol: Protocol, ext: &str, vm: usize, int: &str) -> Forward {
        Forward {
            id: id.into(),
            protocol,
            external_ip: self.gateway,
            external_ports: ext.parse::<PortRange>().unwrap(),
            internal_ip: self.vm_ip(vm),
            internal_ports: int.parse::<PortRange>().unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        }
    }

    /// Syncs the router to exactly `forwards`.
    fn sync(&self, forwards: &[Forward]) -> SyncOutcome {
        self.sync
            .sync(&self.router, &RuleSet::from_forwards(forwards).unwrap())
            .unwrap_or_else(|e| panic!("{}: sync: {}", self.test, praas::util::Chain(&e)))
    }

    /// The conntrack entries of this site (its gateway address appears in each).
    fn conntrack(&self) -> Vec<String> {
        let gateway = format!("={},", self.gateway);
        self.env
            .conntrack()
            .expect("dpctl/dump-conntrack")
            .into_iter()
            .filter(|l| l.contains(&gateway))
            .collect()
    }

    fn print_conntrack(&self, when: &str) {
        let entries = self.conntrack();
        eprintln!(
            "{}: conntrack {when} ({} entries with the gateway address):",
            self.test,
            entries.len()
        );
        for entry in entries {
            eprintln!("    {entry}");
        }
    }
}

/// `f` until it succeeds, at most `attempts` times: the router resolves the client's address
/// (ARP) on the first packet it sends there, and drops that packet.
fn eventually<T>(what: &str, attempts: u32, f: impl Fn() -> std::io::Result<T>) -> T {
    let mut last = None;
    for attempt in 1..=attempts {
        match f() {
            Ok(v) => {
                if attempt > 1 {
                    eprintln!("{what}: answered at attempt {attempt}");
                }
                return v;
            }
            Err(e) => last = Some(e),
        }
    }
    panic!(
        "{what}: no answer after {attempts} attempts: {:?}",
        last.unwrap()
    );
}

fn connect(ns: &OvnNamespace, dst: SocketAddrV4) -> std::io::Result<Connection> {
    SimNode::connect(&ns.namespace, None, dst)
}

fn serve_tcp(ns: &OvnNamespace, ports: impl IntoIterator<Item = u16>) -> Vec<Server> {
    ports
        .into_iter()
        .map(|p| ns.serve_tcp(p).expect("tcp server"))
        .collect()
}

#[test]
fn tcp_and_udp_reach_the_vm_through_the_gateway_with_the_client_address_and_nothing_else_does() {
    let Some(site) = Site::new("ovn_traffic::tcp_and_udp", 1, 1) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let _udp = site.vms[0].serve_udp(53).unwrap();
    let out = site.sync(&[
        site.forward("ssh", Protocol::Tcp, "4000", 0, "22"),
        site.forward("dns", Protocol::Udp, "4001", 0, "53"),
    ]);
    assert_eq!(out.mode, SyncMode::Full);

    let client = &site.client;
    let answer = eventually("tcp to the forward", 3, || {
        client.tcp_exchange(site.gw(4000), "hello")
    });
    assert_eq!(answer, format!("from={} hello", client.ip));
    let answer = eventually("udp to the forward", 3, || {
        client.udp_exchange(site.gw(4001), "q")
    });
    assert_eq!(answer, format!("from={} q", client.ip));
    // Not mapped: nothing answers on another port or on the other protocol.
    assert!(client.tcp_exchange(site.gw(4001), "x").is_err());
    assert!(client.tcp_exchange(site.gw(4002), "x").is_err());
    assert!(client.udp_exchange(site.gw(4000), "x").is_err());
    assert!(client.udp_exchange(site.gw(4002), "x").is_err());
}

#[test]
fn port_ranges_map_one_to_one_and_many_to_one() {
    let Some(site) = Site::new("ovn_traffic::port_ranges", 2, 1) else {
        return;
    };
    let _ssh = site.vms[0].serve_tcp(22).unwrap();
    site.sync(&[
        site.forward("shift", Protocol::Tcp, "4010:4012", 0, "8010:8012"),
        site.forward("fan-in", Protocol::Tcp, "4020:4021", 0, "22"),
    ]);
    let client = &site.client;
    eventually("the fan-in forward", 3, || {
        client.tcp_exchange(site.gw(4020), "r")
    });
    client.tcp_exchange(site.gw(4021), "r").unwrap();
    // One to one: with only 8010+k listening, exactly 4010+k reaches it (the VM refuses the
    // other ports itself).
    for k in 0..3u16 {
        let _one = site.vms[0].serve_tcp(8010 + k).unwrap();
        for j in 0..3u16 {
            let answer = client.tcp_exchange(site.gw(4010 + j), "r");
            assert_eq!(
                answer.is_ok(),
                j == k,
                "gateway port {} with only VM port {} listening: {answer:?}",
                4010 + j,
                8010 + k
            );
        }
    }
    let _all = serve_tcp(&site.vms[0], 8010..=8012);
    assert!(client.tcp_exchange(site.gw(4013), "r").is_err());
    assert!(client.tcp_exchange(site.gw(4009), "r").is_err());
    assert!(client.tcp_exchange(site.gw(4022), "r").is_err());
}

/// Established connections are cut by ovn-controller, not by the agent: our load balancers
/// carry `options:ct_flush=true`, and when a VIP goes, ovn-controller (OVN 23.03) sends OVS a
/// conntrack flush for its 5-tuple (`Flushing CT for 5-tuple: vip=…, backend=…` in its debug
/// log) before it reports the change applied; the entry is gone from every zone when sync
/// returns. The client's next segment is then new to the router's conntrack, finds no load
/// balancer, is addressed to the router itself and is dropped: the client sees a timeout, not
/// a reset, and nothing more reaches the VM.
///
/// Both halves are needed, as seen by breaking the driver: without `ct_flush`, or with the load
/// balancer on the router only (OVN 23.03 gives ovn-controller only the load balancers of
/// logical switches), the entry stays; without `ct_flush` the established connection was seen
/// to keep working (until conntrack's idle timeout).
#[test]
fn a_removed_mapping_stops_new_connections_and_cuts_established_ones() {
    let Some(site) = Site::new("ovn_traffic::removed_mapping", 3, 1) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let keep = site.forward("keep", Protocol::Tcp, "4001", 0, "22");
    site.sync(&[
        site.forward("gone", Protocol::Tcp, "4000", 0, "22"),
        keep.clone(),
    ]);
    let client = &site.client;
    let mut established = eventually("the forward", 3, || connect(client, site.gw(4000)));
    let mut other = connect(client, site.gw(4001)).unwrap();
    let me = format!("from={} ", client.ip);
    assert_eq!(
        established.exchange("before").unwrap(),
        format!("{me}before")
    );
    assert_eq!(other.exchange("before").unwrap(), format!("{me}before"));
    site.print_conntrack("before the removal");

    let out = site.sync(&[keep]);
    assert_eq!((out.mode, out.removed), (SyncMode::Incremental, 1));
    site.print_conntrack("after the removal");
    let entries = site.conntrack();
    assert!(
        !entries.iter().any(|e| e.contains("dport=4000)")),
        "the removed forward's connection is still tracked: {entries:#?}"
    );
    assert!(
        entries.iter().any(|e| e.contains("dport=4001)")),
        "the other forward's connection is no longer tracked: {entries:#?}"
    );
    let after = established.exchange("after");
    eprintln!(
        "{}: established connection after the removal: {after:?}",
        site.test
    );
    assert!(
        after.is_err(),
        "an established connection outlived its mapping: {after:?}"
    );
    assert!(client.tcp_exchange(site.gw(4000), "new").is_err());
    // The other mapping's connection is untouched.
    assert_eq!(other.exchange("still").unwrap(), format!("{me}still"));
}

/// The old connection's conntrack entry is flushed by ovn-controller (`ct_flush`, see above) as
/// the VIP's backend changes. The client's next segment is then new to the router's
/// conntrack and is balanced to the new target, which does not know the connection and answers
/// with a reset.
#[test]
fn a_repointed_mapping_serves_new_connections_from_the_new_target_and_cuts_the_old_one() {
    let Some(site) = Site::new("ovn_traffic::repointed_mapping", 4, 2) else {
        return;
    };
    // Each VM listens on one port only: an answer says which target was reached.
    let _old = site.vms[0].serve_tcp(22).unwrap();
    let _new = site.vms[1].serve_tcp(8022).unwrap();
    site.sync(&[site.forward("ssh", Protocol::Tcp, "4000", 0, "22")]);
    let client = &site.client;
    let mut old = eventually("the forward", 3, || connect(client, site.gw(4000)));
    old.exchange("x").unwrap();

    let out = site.sync(&[site.forward("ssh", Protocol::Tcp, "4000", 1, "8022")]);
    assert_eq!(
        (out.mode, out.added, out.removed),
        (SyncMode::Incremental, 1, 1)
    );
    site.print_conntrack("after re-pointing");
    let old_backend = format!("reply=(src={},", site.vm_ip(0));
    let entries = site.conntrack();
    assert!(
        !entries.iter().any(|e| e.contains(&old_backend)),
        "the old target's connection is still tracked: {entries:#?}"
    );
    let after = old.exchange("y");
    eprintln!("{}: old connection after re-pointing: {after:?}", site.test);
    assert!(after.is_err(), "the old connection survived: {after:?}");
    assert_eq!(
        client.tcp_exchange(site.gw(4000), "z").unwrap(),
        format!("from={} z", client.ip)
    );
}

#[test]
fn hairpin_lets_a_vm_reach_itself_and_a_neighbour_through_the_gateway_address() {
    let Some(site) = Site::new("ovn_traffic::hairpin", 5, 2) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let _udp = site.vms[0].serve_udp(53).unwrap();
    site.sync(&[
        site.forward("ssh", Protocol::Tcp, "4000", 0, "22"),
        site.forward("dns", Protocol::Udp, "4001", 0, "53"),
    ]);
    for (who, vm) in [
        ("a neighbour", &site.vms[1]),
        ("the VM itself", &site.vms[0]),
    ] {
        let answer = eventually(&format!("tcp hairpin from {who}"), 3, || {
            vm.tcp_exchange(site.gw(4000), "hi")
        });
        eprintln!("{}: tcp from {who} ({}): {answer}", site.test, vm.ip);
        assert!(answer.ends_with(" hi"), "{answer}");
        let answer = eventually(&format!("udp hairpin from {who}"), 3, || {
            vm.udp_exchange(site.gw(4001), "q")
        });
        eprintln!("{}: udp from {who} ({}): {answer}", site.test, vm.ip);
        assert!(answer.ends_with(" q"), "{answer}");
    }
    // Not mapped is not forwarded from inside either.
    assert!(site.vms[1].tcp_exchange(site.gw(4002), "x").is_err());
}

#[test]
fn the_routers_snat_keeps_working_next_to_our_forwards() {
    let Some(site) = Site::new("ovn_traffic::snat", 6, 1) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    site.sync(&[site.forward("ssh", Protocol::Tcp, "4000", 0, "22")]);
    let (client, vm) = (&site.client, &site.vms[0]);
    let _out_tcp = client.serve_tcp(9000).unwrap();
    let _out_udp = client.serve_udp(9000).unwrap();
    let outside = SocketAddrV4::new(client.ip, 9000);
    let answer = eventually("tcp from the VM", 3, || vm.tcp_exchange(outside, "out"));
    assert_eq!(answer, format!("from={} out", site.gateway));
    let answer = eventually("udp from the VM", 3, || vm.udp_exchange(outside, "out"));
    assert_eq!(answer, format!("from={} out", site.gateway));
    // Both directions, interleaved.
    for i in 0..10 {
        let msg = format!("m{i}");
        assert_eq!(
            client.tcp_exchange(site.gw(4000), &msg).unwrap(),
            format!("from={} {msg}", client.ip)
        );
        assert_eq!(
            vm.tcp_exchange(outside, &msg).unwrap(),
            format!("from={} {msg}", site.gateway)
        );
    }
}

/// Checks as the agent does each second, until `check` reports drift or 2 s have passed. Other
/// tests' changes in the shared database move the fingerprint too (the replica's generation is
/// the whole database's): those checks say `Intact`, and the loop goes on.
fn check_until_drifted(site: &Site) -> (Check, Duration) {
    let start = Instant::now();
    loop {
        match site.sync.check(&site.router).unwrap() {
            Check::Unchanged | Check::Intact if start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return (other, start.elapsed()),
        }
    }
}

#[test]
fn a_load_balancer_of_ours_deleted_by_someone_else_is_seen_and_traffic_flows_again_after_sync() {
    let Some(site) = Site::new("ovn_traffic::drift", 7, 1) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let _udp = site.vms[0].serve_udp(53).unwrap();
    let forwards = [
        site.forward("ssh", Protocol::Tcp, "4000", 0, "22"),
        site.forward("dns", Protocol::Udp, "4001", 0, "53"),
    ];
    site.sync(&forwards);
    let client = &site.client;
    eventually("the forward", 3, || client.tcp_exchange(site.gw(4000), "a"));
    assert!(matches!(
        site.sync.check(&site.router).unwrap(),
        Check::Unchanged | Check::Intact
    ));

    // Deleted as an operator would, and applied on the chassis before we look.
    let deleted = Instant::now();
    site.env
        .nbctl(&["--wait=hv", "lb-del", &site.rows.lb("tcp", site.vm_ip(0))])
        .unwrap();
    let applied = deleted.elapsed();
    let (check, seen) = check_until_drifted(&site);
    assert!(
        matches!(check, Check::Drifted(_)),
        "not seen within 2 s: {check:?}"
    );
    // Not timed: the forward is really gone until the next sync.
    assert!(client.tcp_exchange(site.gw(4000), "gone").is_err());
    let repaired = Instant::now();
    let out = site.sync(&forwards);
    let synced = repaired.elapsed();
    assert_eq!(out.mode, SyncMode::Full);
    let answer = client.tcp_exchange(site.gw(4000), "b");
    let working = repaired.elapsed();
    assert_eq!(answer.unwrap(), format!("from={} b", client.ip));
    eprintln!(
        "{}: lb-del applied on the chassis in {applied:.2?}; drift seen {seen:.2?} later; sync \
         {synced:.2?}; forward working again {:.2?} after the delete (the probe of the broken \
         forward not counted)",
        site.test,
        applied + seen + working
    );
    assert_eq!(
        client.udp_exchange(site.gw(4001), "q").unwrap(),
        format!("from={} q", client.ip)
    );
    assert!(matches!(
        site.sync.check(&site.router).unwrap(),
        Check::Unchanged | Check::Intact
    ));
}

#[test]
fn a_forward_works_as_soon_as_sync_returns() {
    let Some(site) = Site::new("ovn_traffic::timing", 8, 1) else {
        return;
    };
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let client = &site.client;
    // The router learns the client's MAC on the first exchange, outside the measurement.
    let mut forwards = vec![site.forward("warm", Protocol::Tcp, "4999", 0, "22")];
    site.sync(&forwards);
    eventually("the first forward", 3, || {
        client.tcp_exchange(site.gw(4999), "w")
    });

    const TRIALS: u16 = 20;
    let mut syncs = Vec::new();
    let mut firsts = Vec::new();
    let mut retried = 0;
    for i in 0..TRIALS {
        forwards.push(site.forward(
            &format!("t{i}"),
            Protocol::Tcp,
            &(5000 + i).to_string(),
            0,
            "22",
        ));
        let start = Instant::now();
        let out = site.sync(&forwards);
        syncs.push(start.elapsed());
        assert_eq!(out.mode, SyncMode::Incremental);
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(5);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.tcp_exchange(site.gw(5000 + i), "t") {
                Ok(answer) => {
                    assert_eq!(answer, format!("from={} t", client.ip));
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{}: trial {i} attempt {attempts}: {e}", site.test);
                }
                Err(e) => panic!("trial {i}: no answer 5 s after sync returned: {e}"),
            }
        }
        firsts.push(returned.elapsed());
        if attempts > 1 {
            retried += 1;
        }
    }
    syncs.sort();
    firsts.sort();
    let (p50, max) = (firsts[firsts.len() / 2], firsts[firsts.len() - 1]);
    eprintln!(
        "{}: {TRIALS} trials: sync (waiting for hv_cfg) p50 {:.2?} max {:.2?}; sync return -> \
         first forwarded TCP exchange p50 {p50:.2?} max {max:.2?}; {retried} needed a retry",
        site.test,
        syncs[syncs.len() / 2],
        syncs[syncs.len() - 1],
    );
    assert_eq!(retried, 0, "the forward was not working when sync returned");
    assert!(
        max < Duration::from_millis(500),
        "first exchange took {max:?}"
    );
}

/// `f` fails `attempts` times in a row (each attempt waits for its own timeout).
fn refused<T: std::fmt::Debug>(what: &str, attempts: u32, f: impl Fn() -> std::io::Result<T>) {
    for attempt in 1..=attempts {
        if let Ok(answer) = f() {
            panic!("{what}: answered at attempt {attempt}: {answer:?}");
        }
    }
}

/// The router policies of ours on the site's router: (match, action).
fn our_policies(site: &Site) -> Vec<(String, String)> {
    let out = site
        .env
        .nbctl(&[
            "--bare",
            "--columns=match,action",
            "find",
            "Logical_Router_Policy",
            &format!(
                "external_ids:\"praas:router_id\"={}",
                site.rows.layout.router_id
            ),
        ])
        .expect("ovn-nbctl find");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .chunks(2)
        .map(|c| (c[0].to_string(), c.get(1).unwrap_or(&"").to_string()))
        .collect()
}

/// Allowed sources on OVN are router policies of ours (`src/dataplane/ovn/policy.rs`) that
/// drop, at the gateway port, a load-balanced connection to a restricted forward from any
/// other source. Checked with two external clients, TCP and UDP; VMs behind the router reach
/// the forward whatever the list says (their traffic is load-balanced on the tenant switch and
/// never enters through the gateway port: the documented difference from the netfilter
/// drivers).
#[test]
fn allowed_sources_let_listed_clients_through_and_refuse_others_from_outside() {
    let Some(site) = Site::new("ovn_traffic::allowed_sources", 9, 2) else {
        return;
    };
    let other = OvnNamespace::external(
        &site.env,
        format!("{}/24", Ipv4Addr::new(203, 0, 113, 169))
            .parse()
            .unwrap(),
        None,
    )
    .expect("a second external client");
    let _tcp = site.vms[0].serve_tcp(22).unwrap();
    let _udp = site.vms[0].serve_udp(53).unwrap();
    let restricted = |allowed: &[Ipv4Addr]| {
        let cidrs: Vec<_> = allowed
            .iter()
            .map(|ip| format!("{ip}/32").parse().unwrap())
            .collect();
        let mut ssh = site.forward("ssh", Protocol::Tcp, "4000", 0, "22");
        let mut dns = site.forward("dns", Protocol::Udp, "4001", 0, "53");
        let mut ntp = site.forward("ntp", Protocol::Udp, "4002", 0, "123");
        ssh.allowed_cidrs = cidrs.clone();
        dns.allowed_cidrs = cidrs.clone();
        ntp.allowed_cidrs = cidrs;
        vec![ssh, dns, ntp]
    };
    let client = &site.client;
    let (tcp, udp) = (site.gw(4000), site.gw(4001));

    // Only the first client is allowed.
    site.sync(&restricted(&[client.ip]));
    let policies = our_policies(&site);
    assert_eq!(policies.len(), 3, "one policy per VM socket: {policies:?}");
    let answer = eventually("tcp from the allowed client", 3, || {
        client.tcp_exchange(tcp, "a")
    });
    assert_eq!(answer, format!("from={} a", client.ip));
    let answer = eventually("udp from the allowed client", 3, || {
        client.udp_exchange(udp, "a")
    });
    assert_eq!(answer, format!("from={} a", client.ip));
    refused("tcp from the other client", 3, || {
        other.tcp_exchange(tcp, "b")
    });
    refused("udp from the other client", 3, || {
        other.udp_exchange(udp, "b")
    });
    // The VM's own outbound traffic through the router's SNAT, from the restricted VM port to
    // a source that is not allowed: its answers come back (`ct_mark.natted` is not set on
    // them), so the policy refuses only forwarded connections.
    let _echo = other.serve_udp(7000).unwrap();
    let vm_socket = praas::dataplane::netns::run_in_path(
        &praas::dataplane::netns::path_of(&site.vms[0].namespace),
        || std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 123)),
    )
    .unwrap()
    .unwrap();
    vm_socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let answer = eventually("udp from the restricted VM port through SNAT", 3, || {
        vm_socket.send_to(b"s", SocketAddrV4::new(other.ip, 7000))?;
        let mut buf = [0u8; 256];
        let (n, _) = vm_socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
    });
    assert_eq!(answer, format!("from={} s", site.gateway));
    // Hairpin: not restricted (the VMs are not on the list).
    for vm in &site.vms {
        let answer = eventually("tcp hairpin", 3, || vm.tcp_exchange(tcp, "h"));
        assert!(answer.ends_with(" h"), "{answer}");
        let answer = eventually("udp hairpin", 3, || vm.udp_exchange(udp, "h"));
        assert!(answer.ends_with(" h"), "{answer}");
    }

    // The list changes: the other client only.
    let out = site.sync(&restricted(&[other.ip]));
    assert_eq!(out.mode, SyncMode::Incremental);
    let answer = eventually("tcp from the newly allowed client", 3, || {
        other.tcp_exchange(tcp, "c")
    });
    assert_eq!(answer, format!("from={} c", other.ip));
    let answer = eventually("udp from the newly allowed client", 3, || {
        other.udp_exchange(udp, "c")
    });
    assert_eq!(answer, format!("from={} c", other.ip));
    refused("tcp from the client no longer allowed", 3, || {
        client.tcp_exchange(tcp, "d")
    });
    refused("udp from the client no longer allowed", 3, || {
        client.udp_exchange(udp, "d")
    });

    // No list: everyone again, and no policy of ours is left.
    site.sync(&restricted(&[]));
    assert_eq!(our_policies(&site), Vec::<(String, String)>::new());
    for ns in [client, &other] {
        let answer = eventually("tcp without a list", 3, || ns.tcp_exchange(tcp, "e"));
        assert_eq!(answer, format!("from={} e", ns.ip));
        let answer = eventually("udp without a list", 3, || ns.udp_exchange(udp, "e"));
        assert_eq!(answer, format!("from={} e", ns.ip));
    }

    // Restricted again, then the mapping removed: the policies go with the load balancers.
    site.sync(&restricted(&[client.ip]));
    assert_eq!(our_policies(&site).len(), 3);
    site.sync.remove(&site.router).unwrap();
    assert_eq!(our_policies(&site), Vec::<(String, String)>::new());
}
