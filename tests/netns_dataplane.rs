//! Real traffic through real router namespaces, for every dataplane driver.
//!
//! Each test builds its own simulated network node (router namespace with Neutron's own gateway
//! rules, an external client namespace, VM namespaces), programs forwards through
//! [`RouterSync`] exactly as the agent does, and checks with real TCP and UDP connections.
//! Needs root; skipped with a reason otherwise (and failed under CI).

mod common;

use std::net::SocketAddrV4;
use std::sync::Arc;

use common::{forward, kernel_tests_enabled};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::{RouterSync, SyncMode};
use praas::dataplane::{
    DataplaneError, Driver, Forward, MasqueradeKey, NamespaceKind, Protocol, RuleSet, Usage,
};
use praas::testbed::simnode::{
    self, SimNode, SimNodeOptions, CLIENT_SOURCES, GATEWAY_IP, INTERNAL_GATEWAY, UPSTREAM_IP,
};

const DRIVERS: [Driver; 2] = [Driver::Nftables, Driver::Iptables];

fn sync_for(driver: Driver) -> RouterSync {
    let backend = driver.backend().expect("backend available");
    RouterSync::new(Arc::from(backend), Arc::new(Conntrack))
}

fn rules(forwards: &[Forward]) -> RuleSet {
    RuleSet::from_forwards(forwards).unwrap()
}

fn gw(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY_IP, port)
}

fn node() -> SimNode {
    SimNode::new(SimNodeOptions::default()).expect("simulated network node")
}

/// Runs `body` once per driver, each on a fresh node.
fn each_driver(test: &str, body: impl Fn(Driver, &SimNode, &RouterSync)) {
    if !kernel_tests_enabled(test) {
        return;
    }
    for driver in DRIVERS {
        let node = node();
        let sync = sync_for(driver);
        eprintln!("{test}: driver {driver:?}");
        body(driver, &node, &sync);
    }
}

#[test]
fn tcp_and_udp_reach_the_vm_through_the_gateway_with_the_client_address_preserved() {
    each_driver("tcp_and_udp_reach_the_vm", |_, node, sync| {
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        let _udp = node.serve_udp(0, 53).unwrap();
        let fwds = [
            forward("ssh", Protocol::Tcp, "4000", vm, "22"),
            forward("dns", Protocol::Udp, "4001", vm, "53"),
        ];
        assert_eq!(
            sync.sync(&node.router_ns, &rules(&fwds)).unwrap().mode,
            SyncMode::Full
        );

        let answer = SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "hello").unwrap();
        assert_eq!(answer, format!("from={UPSTREAM_IP} hello"));
        let answer =
            SimNode::udp_exchange(&node.client_ns, Some(CLIENT_SOURCES[0]), gw(4001), "q").unwrap();
        assert_eq!(answer, format!("from={} q", CLIENT_SOURCES[0]));
        // Not mapped: nothing answers on another port or on the other protocol.
        assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(4001), "x").is_err());
        assert!(SimNode::udp_exchange(&node.client_ns, None, gw(4000), "x").is_err());
    });
}

#[test]
fn masquerade_rewrites_the_client_address_only_when_asked() {
    each_driver("masquerade", |_, node, sync| {
        let vm = node.vms[0].ip;
        let _a = node.serve_tcp(0, 22).unwrap();
        let _b = node.serve_tcp(0, 80).unwrap();
        let mut masq = forward("web", Protocol::Tcp, "4080", vm, "80");
        masq.masquerade = true;
        sync.sync(
            &node.router_ns,
            &rules(&[forward("ssh", Protocol::Tcp, "4000", vm, "22"), masq]),
        )
        .unwrap();
        let plain = SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "a").unwrap();
        assert_eq!(plain, format!("from={UPSTREAM_IP} a"));
        let rewritten = SimNode::tcp_exchange(&node.client_ns, None, gw(4080), "b").unwrap();
        assert_eq!(rewritten, format!("from={INTERNAL_GATEWAY} b"));
    });
}

#[test]
fn a_removed_mapping_stops_new_and_established_connections() {
    each_driver("removed_mapping", |_, node, sync| {
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        let keep = forward("keep", Protocol::Tcp, "4001", vm, "22");
        sync.sync(
            &node.router_ns,
            &rules(&[
                forward("ssh", Protocol::Tcp, "4000", vm, "22"),
                keep.clone(),
            ]),
        )
        .unwrap();
        let mut established = SimNode::connect(&node.client_ns, None, gw(4000)).unwrap();
        let mut other = SimNode::connect(&node.client_ns, None, gw(4001)).unwrap();
        established.exchange("before").unwrap();
        other.exchange("before").unwrap();

        let out = sync.sync(&node.router_ns, &rules(&[keep])).unwrap();
        assert_eq!((out.mode, out.removed), (SyncMode::Incremental, 1));
        assert!(
            out.flows_deleted >= 1,
            "the established flow must be deleted: {out:?}"
        );
        assert!(
            established.exchange("after").is_err(),
            "an established connection outlived its mapping"
        );
        assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "new").is_err());
        // The other mapping's connection is untouched.
        assert_eq!(
            other.exchange("still").unwrap(),
            format!("from={UPSTREAM_IP} still")
        );
    });
}

#[test]
fn a_changed_external_port_kills_the_old_one_and_serves_the_new_one() {
    each_driver("changed_external_port", |_, node, sync| {
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        sync.sync(
            &node.router_ns,
            &rules(&[forward("ssh", Protocol::Tcp, "4000", vm, "22")]),
        )
        .unwrap();
        let mut old = SimNode::connect(&node.client_ns, None, gw(4000)).unwrap();
        old.exchange("x").unwrap();
        sync.sync(
            &node.router_ns,
            &rules(&[forward("ssh", Protocol::Tcp, "4050", vm, "22")]),
        )
        .unwrap();
        assert!(old.exchange("y").is_err());
        assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "z").is_err());
        SimNode::tcp_exchange(&node.client_ns, None, gw(4050), "z").unwrap();
    });
}

#[test]
fn allowed_cidrs_admit_listed_clients_and_refuse_others() {
    each_driver("allowed_cidrs", |_, node, sync| {
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        let mut f = forward("ssh", Protocol::Tcp, "4000", vm, "22");
        f.allowed_cidrs = vec![
            "198.51.100.0/24".parse().unwrap(),
            "203.0.113.1/32".parse().unwrap(),
        ];
        sync.sync(&node.router_ns, &rules(&[f])).unwrap();
        let [listed, unlisted] = CLIENT_SOURCES;
        SimNode::tcp_exchange(&node.client_ns, Some(listed), gw(4000), "a").unwrap();
        SimNode::tcp_exchange(&node.client_ns, Some(UPSTREAM_IP), gw(4000), "a").unwrap();
        assert!(SimNode::tcp_exchange(&node.client_ns, Some(unlisted), gw(4000), "a").is_err());
    });
}

#[test]
fn port_ranges_map_one_to_one_and_many_to_one() {
    each_driver("port_ranges", |_, node, sync| {
        let vm = node.vms[0].ip;
        let servers: Vec<_> = (6000..=6002)
            .map(|p| node.serve_tcp(0, p).unwrap())
            .collect();
        let _ssh = node.serve_tcp(0, 22).unwrap();
        sync.sync(
            &node.router_ns,
            &rules(&[
                forward("shift", Protocol::Tcp, "5000:5002", vm, "6000:6002"),
                forward("fan-in", Protocol::Tcp, "5100:5101", vm, "22"),
            ]),
        )
        .unwrap();
        for k in 0..3u16 {
            // The server answers on the port the VM received on: check it through the socket.
            let mut c = SimNode::connect(&node.client_ns, None, gw(5000 + k)).unwrap();
            c.exchange("r").unwrap();
        }
        assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(5003), "r").is_err());
        SimNode::tcp_exchange(&node.client_ns, None, gw(5100), "r").unwrap();
        SimNode::tcp_exchange(&node.client_ns, None, gw(5101), "r").unwrap();
        drop(servers);
    });
}

#[test]
fn hairpin_lets_a_vm_reach_a_neighbour_through_the_gateway_address() {
    if !kernel_tests_enabled("hairpin") {
        return;
    }
    // Without Neutron's rules, so that our own hairpin handling is what makes it work; and with
    // them, as on a real node.
    for neutron_rules in [false, true] {
        for driver in DRIVERS {
            let node = SimNode::new(SimNodeOptions {
                neutron_rules,
                ..Default::default()
            })
            .unwrap();
            let sync = sync_for(driver);
            let _tcp = node.serve_tcp(0, 22).unwrap();
            let _udp = node.serve_udp(0, 53).unwrap();
            let fwds = [
                forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22"),
                forward("dns", Protocol::Udp, "4001", node.vms[0].ip, "53"),
            ];
            sync.sync(&node.router_ns, &rules(&fwds)).unwrap();
            let from_vm1 = &node.vms[1].namespace;
            let answer = SimNode::tcp_exchange(from_vm1, None, gw(4000), "hi")
                .unwrap_or_else(|e| panic!("{driver:?} neutron_rules={neutron_rules}: {e}"));
            assert!(answer.ends_with(" hi"), "{answer}");
            SimNode::udp_exchange(from_vm1, None, gw(4001), "q")
                .unwrap_or_else(|e| panic!("{driver:?} neutron_rules={neutron_rules} udp: {e}"));
        }
    }
}

#[test]
fn neutron_outbound_snat_keeps_working_next_to_our_rules() {
    each_driver("neutron_snat", |_, node, sync| {
        let _tcp = node.serve_tcp(0, 22).unwrap();
        sync.sync(
            &node.router_ns,
            &rules(&[forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22")]),
        )
        .unwrap();
        // A server on the Internet sees the VM's outgoing connection from the gateway address.
        let listener = praas::dataplane::netns::run_in_path(
            &praas::dataplane::netns::path_of(&node.client_ns),
            || std::net::TcpListener::bind("203.0.113.1:8080"),
        )
        .unwrap()
        .unwrap();
        let vm_ns = node.vms[0].namespace.clone();
        let client = std::thread::spawn(move || {
            SimNode::connect(&vm_ns, None, SocketAddrV4::new(UPSTREAM_IP, 8080)).map(drop)
        });
        let (_, peer) = listener.accept().unwrap();
        client.join().unwrap().unwrap();
        assert_eq!(peer.ip().to_string(), GATEWAY_IP.to_string());
    });
}

#[test]
fn applying_the_same_state_twice_changes_nothing() {
    each_driver("idempotent", |driver, node, sync| {
        let vm = node.vms[0].ip;
        let mut f = forward("ssh", Protocol::Tcp, "4000", vm, "22");
        f.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
        f.masquerade = true;
        let desired = rules(&[f, forward("dns", Protocol::Udp, "4001:4003", vm, "53")]);
        sync.sync(&node.router_ns, &desired).unwrap();
        let listing = || {
            simnode::run(
                &[
                    "ip",
                    "netns",
                    "exec",
                    node.router_ns.name(),
                    "nft",
                    "list",
                    "ruleset",
                ],
                None,
            )
            .unwrap()
        };
        let first = listing();
        assert_eq!(
            sync.sync(&node.router_ns, &desired).unwrap().mode,
            SyncMode::Unchanged
        );
        // A fresh agent (no memory) rewrites the table; the kernel ends up holding the same.
        let fresh = sync_for(driver);
        assert_eq!(
            fresh.sync(&node.router_ns, &desired).unwrap().mode,
            SyncMode::Full
        );
        assert_eq!(
            listing(),
            first,
            "a second full sync changed the kernel's rules"
        );
        assert_eq!(
            sync.backend().read_back(&node.router_ns).unwrap(),
            Some(desired)
        );
    });
}

#[test]
fn our_rules_removed_by_someone_else_are_detected_and_repaired() {
    each_driver("tamper", |driver, node, sync| {
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        let desired = rules(&[forward("ssh", Protocol::Tcp, "4000", vm, "22")]);
        sync.sync(&node.router_ns, &desired).unwrap();
        sync.verify(&node.router_ns).unwrap();
        let ns = node.router_ns.name();
        match driver {
            Driver::Nftables => simnode::run(
                &[
                    "ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "praas",
                ],
                None,
            ),
            Driver::Iptables => simnode::run(
                &[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-t",
                    "nat",
                    "-F",
                    "custom-PREROUTING",
                ],
                None,
            ),
            Driver::Ovn => unreachable!("each_driver runs the netfilter drivers"),
        }
        .unwrap();
        assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "x").is_err());
        let err = sync.verify(&node.router_ns).unwrap_err();
        assert!(
            matches!(err, praas::dataplane::DataplaneError::Drift { .. }),
            "{err}"
        );
        assert_eq!(
            sync.sync(&node.router_ns, &desired).unwrap().mode,
            SyncMode::Full
        );
        SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "x").unwrap();
    });
}

#[test]
fn removing_a_router_leaves_neutrons_rules_and_nothing_of_ours() {
    each_driver("remove", |driver, node, sync| {
        let ns = node.router_ns.name();
        let save = || simnode::run(&["ip", "netns", "exec", ns, "iptables-save"], None).unwrap();
        let neutron_only = |s: String| {
            s.lines()
                .filter(|l| l.contains("neutron"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = neutron_only(save());
        sync.sync(
            &node.router_ns,
            &rules(&[forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22")]),
        )
        .unwrap();
        sync.remove(&node.router_ns).unwrap();
        assert_eq!(
            sync.backend().read_back(&node.router_ns).unwrap(),
            None,
            "{driver:?}"
        );
        let after = save();
        assert!(!after.contains("custom-PREROUTING"), "{after}");
        assert_eq!(neutron_only(after), before);
        let tables =
            simnode::run(&["ip", "netns", "exec", ns, "nft", "list", "tables"], None).unwrap();
        assert!(!tables.contains("praas"), "{tables}");
    });
}

#[test]
fn dvr_snat_namespaces_are_programmed_the_same_way() {
    if !kernel_tests_enabled("dvr") {
        return;
    }
    let node = SimNode::new(SimNodeOptions {
        kind: NamespaceKind::Snat,
        ..Default::default()
    })
    .unwrap();
    assert!(node.router_ns.name().starts_with("snat-"));
    let _tcp = node.serve_tcp(0, 22).unwrap();
    let sync = sync_for(Driver::Nftables);
    sync.sync(
        &node.router_ns,
        &rules(&[forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22")]),
    )
    .unwrap();
    SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "x").unwrap();
}

#[test]
fn every_namespace_of_a_node_is_deleted_with_it() {
    if !kernel_tests_enabled("cleanup") {
        return;
    }
    let names = node().namespaces().to_vec();
    assert!(names.len() >= 4);
    for ns in names {
        assert!(!praas::dataplane::netns::exists(&ns), "{ns} left behind");
    }
}

#[test]
fn a_foreign_rule_in_our_chain_is_detected_and_our_table_rewritten() {
    if !kernel_tests_enabled("foreign_rule") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let _tcp = node.serve_tcp(0, 22).unwrap();
    let desired = rules(&[forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22")]);
    sync.sync(&node.router_ns, &desired).unwrap();
    let ns = node.router_ns.name();
    // Someone puts a rule of their own in front of ours, sending the port elsewhere.
    let nft = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", ns, "nft"];
        all.extend_from_slice(args);
        simnode::run(&all, None).unwrap()
    };
    nft(&[
        "insert",
        "rule",
        "ip",
        "praas",
        "prerouting",
        "tcp",
        "dport",
        "4000",
        "dnat",
        "to",
        "10.0.0.99",
    ]);
    let err = sync.verify(&node.router_ns).unwrap_err();
    assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
    assert_eq!(
        sync.sync(&node.router_ns, &desired).unwrap().mode,
        SyncMode::Full
    );
    sync.verify(&node.router_ns).unwrap();
    let listing = nft(&["list", "table", "ip", "praas"]);
    assert!(!listing.contains("10.0.0.99"), "{listing}");
    SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "x").unwrap();
}

#[test]
fn a_namespace_created_again_under_the_same_name_is_programmed_again() {
    if !kernel_tests_enabled("recreated_namespace") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let desired = rules(&[forward("ssh", Protocol::Tcp, "4000", node.vms[0].ip, "22")]);
    sync.sync(&node.router_ns, &desired).unwrap();
    // The L3 agent deletes the router's namespace and creates it again (e.g. on a resync):
    // the socket kept for the old namespace must not be used for the new one.
    let ns = node.router_ns.name();
    simnode::run(&["ip", "netns", "del", ns], None).unwrap();
    simnode::run(&["ip", "netns", "add", ns], None).unwrap();
    let err = sync.verify(&node.router_ns).unwrap_err();
    assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
    assert_eq!(
        sync.sync(&node.router_ns, &desired).unwrap().mode,
        SyncMode::Full
    );
    let listing = simnode::run(
        &[
            "ip", "netns", "exec", ns, "nft", "list", "map", "ip", "praas", "forwards",
        ],
        None,
    )
    .unwrap();
    assert!(
        listing.contains("203.0.113.10 . tcp . 4000 : 10.0.0.5 . 22"),
        "{listing}"
    );
}

#[test]
fn single_element_lookups_find_exactly_what_the_kernel_holds() {
    use praas::dataplane::netlink::sockets;
    use praas::dataplane::nft::wire::{self, NftSocket};
    if !kernel_tests_enabled("element_lookup") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let vm = node.vms[0].ip;
    let mut restricted = forward("ssh", Protocol::Tcp, "4000", vm, "22");
    restricted.allowed_cidrs = vec![
        "198.51.100.0/24".parse().unwrap(),
        "192.0.2.7/32".parse().unwrap(),
    ];
    let mut masq = forward("dns", Protocol::Udp, "4001:4002", vm, "53");
    masq.masquerade = true;
    let held = rules(&[restricted, masq]);
    sync.sync(&node.router_ns, &held).unwrap();
    // Ask for everything held plus elements that are not there, in every set.
    let absent = rules(&[{
        let mut f = forward("absent", Protocol::Tcp, "4999", vm, "2222");
        f.allowed_cidrs = vec!["203.0.113.0/28".parse().unwrap()];
        f.masquerade = true;
        f
    }]);
    for ((set, present), (_, missing)) in wire::elements_of(&held)
        .into_iter()
        .zip(wire::elements_of(&absent))
    {
        let mut wanted = present.clone();
        wanted.extend(missing);
        let mut found = sockets::with(&node.router_ns, |s| NftSocket::new(s).lookup(set, &wanted))
            .unwrap()
            .unwrap();
        found.sort();
        let mut present = present;
        present.sort();
        assert_eq!(found, present, "set {set}");
    }
}

// Usage counters (nftables only: the iptables driver has none).

/// The usage element of the simulated gateway's `protocol` forwards to `vm:port`.
fn socket(vm: std::net::Ipv4Addr, protocol: Protocol, port: u16) -> MasqueradeKey {
    MasqueradeKey {
        external_ip: GATEWAY_IP,
        internal_ip: vm,
        protocol,
        internal_port: port,
    }
}

/// What the kernel counted for `key`; a missing element is a test failure.
fn counted(sync: &RouterSync, node: &SimNode, key: &MasqueradeKey) -> Usage {
    let usage = sync
        .usage(&node.router_ns)
        .unwrap()
        .expect("nftables counts");
    *usage
        .get(key)
        .unwrap_or_else(|| panic!("no usage element for {key}: {usage:?}"))
}

/// Bytes of one UDP datagram of `payload` bytes on the wire, IP header included.
fn udp_bytes(payload: usize) -> u64 {
    (20 + 8 + payload) as u64
}

#[test]
fn usage_counts_both_directions_of_tcp_and_udp_and_nothing_else() {
    if !kernel_tests_enabled("usage_both_directions") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let vm = node.vms[0].ip;
    let zero = Usage::default();
    // Nothing of ours in the namespace yet: nothing counted, not an error.
    assert_eq!(
        sync.usage(&node.router_ns).unwrap(),
        Some(Default::default())
    );
    let _tcp = node.serve_tcp(0, 22).unwrap();
    let _udp = node.serve_udp(0, 53).unwrap();
    let fwds = [
        forward("ssh", Protocol::Tcp, "4000", vm, "22"),
        forward("dns", Protocol::Udp, "4001", vm, "53"),
        forward("idle", Protocol::Tcp, "4002", node.vms[1].ip, "22"),
    ];
    let desired = rules(&fwds);
    sync.sync(&node.router_ns, &desired).unwrap();
    let all = sync.usage(&node.router_ns).unwrap().unwrap();
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        desired.counted.iter().copied().collect::<Vec<_>>()
    );
    assert!(all.values().all(|u| *u == zero), "{all:?}");
    let (ssh, dns, idle) = (
        socket(vm, Protocol::Tcp, 22),
        socket(vm, Protocol::Udp, 53),
        socket(node.vms[1].ip, Protocol::Tcp, 22),
    );

    // Traffic that is not a forward of ours: an unmapped port, the other protocol, and a
    // floating IP that Neutron DNATs to the very same VM socket.
    assert!(SimNode::tcp_exchange(&node.client_ns, None, gw(4999), "x").is_err());
    assert!(SimNode::udp_exchange(&node.client_ns, None, gw(4000), "x").is_err());
    let floating = std::net::Ipv4Addr::new(203, 0, 113, 20);
    let r = node.router_ns.name();
    simnode::run(
        &[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            "203.0.113.20/32",
            "dev",
            &node.gateway_device,
        ],
        None,
    )
    .unwrap();
    simnode::run(
        &[
            "ip",
            "netns",
            "exec",
            r,
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            "203.0.113.20/32",
            "-j",
            "DNAT",
            "--to-destination",
            &vm.to_string(),
        ],
        None,
    )
    .unwrap();
    let answer = SimNode::tcp_exchange(
        &node.client_ns,
        None,
        SocketAddrV4::new(floating, 22),
        "through the floating IP",
    )
    .unwrap();
    assert!(answer.ends_with("through the floating IP"), "{answer}");
    let after = sync.usage(&node.router_ns).unwrap().unwrap();
    assert!(after.values().all(|u| *u == zero), "{after:?}");

    // UDP: one datagram each way, counted exactly.
    let question = "q".repeat(500);
    let answer = SimNode::udp_exchange(
        &node.client_ns,
        Some(CLIENT_SOURCES[0]),
        gw(4001),
        &question,
    )
    .unwrap();
    assert_eq!(
        counted(&sync, &node, &dns),
        Usage {
            packets: 2,
            bytes: udp_bytes(question.len()) + udp_bytes(answer.len() + 1), // + its newline
        }
    );

    // TCP: a large request and a larger answer; the answer only passes in the reply direction.
    let request = "r".repeat(20_000);
    let mut c = SimNode::connect(&node.client_ns, None, gw(4000)).unwrap();
    let answer = c.exchange(&request).unwrap();
    assert_eq!(
        answer.len(),
        request.len() + format!("from={UPSTREAM_IP} ").len()
    );
    let tcp = counted(&sync, &node, &ssh);
    let payload = (request.len() + 1 + answer.len() + 1) as u64;
    // Each packet carries at least a 20-byte IP and a 20-byte TCP header.
    assert!(
        tcp.bytes >= payload + 40 * tcp.packets,
        "{tcp:?}: both directions must be counted ({payload} bytes of payload)"
    );
    // At least the handshake, the request and the answer. Packets are counted as the stack
    // sees them: with GRO, one counted packet can carry several segments of the wire.
    assert!(tcp.packets >= 5, "{tcp:?}");
    assert_eq!(counted(&sync, &node, &idle), zero);
    assert_eq!(
        counted(&sync, &node, &dns).packets,
        2,
        "TCP counted into the UDP element"
    );
}

#[test]
fn usage_restarts_from_zero_when_an_element_is_added_again_and_survives_a_resync() {
    if !kernel_tests_enabled("usage_restarts") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let vm = node.vms[0].ip;
    let _udp = node.serve_udp(0, 53).unwrap();
    let dns = forward("dns", Protocol::Udp, "4001", vm, "53");
    let other = forward("other", Protocol::Tcp, "4002", vm, "22");
    let both = rules(&[dns.clone(), other.clone()]);
    let key = socket(vm, Protocol::Udp, 53);
    let exchange = || SimNode::udp_exchange(&node.client_ns, None, gw(4001), "q").unwrap();
    sync.sync(&node.router_ns, &both).unwrap();
    exchange();
    exchange();
    let before = counted(&sync, &node, &key);
    assert_eq!(before.packets, 4);

    // A full sync of an intact table (a restarted agent, the periodic resync) keeps counts.
    let fresh = sync_for(Driver::Nftables);
    assert_eq!(
        fresh.sync(&node.router_ns, &both).unwrap().mode,
        SyncMode::Full
    );
    assert_eq!(counted(&sync, &node, &key), before);
    // Nor are counts drift.
    sync.verify(&node.router_ns).unwrap();

    // Removed: gone from the counters. Added again: from 0.
    sync.sync(&node.router_ns, &rules(std::slice::from_ref(&other)))
        .unwrap();
    assert!(!sync
        .usage(&node.router_ns)
        .unwrap()
        .unwrap()
        .contains_key(&key));
    sync.sync(&node.router_ns, &both).unwrap();
    assert_eq!(counted(&sync, &node, &key), Usage::default());
    exchange();
    assert_eq!(counted(&sync, &node, &key).packets, 2);

    // Re-pointed to another VM socket: the new element counts from 0, the old one is gone.
    let _moved = node.serve_udp(0, 5353).unwrap();
    let repointed = forward("dns", Protocol::Udp, "4001", vm, "5353");
    sync.sync(&node.router_ns, &rules(&[repointed.clone(), other.clone()]))
        .unwrap();
    let usage = sync.usage(&node.router_ns).unwrap().unwrap();
    assert!(!usage.contains_key(&key), "{usage:?}");
    assert_eq!(usage[&socket(vm, Protocol::Udp, 5353)], Usage::default());

    // A table rewritten after someone changed it starts every counter from 0.
    exchange();
    let ns = node.router_ns.name();
    simnode::run(
        &[
            "ip", "netns", "exec", ns, "nft", "add", "rule", "ip", "praas", "forward", "counter",
        ],
        None,
    )
    .unwrap();
    let err = sync.verify(&node.router_ns).unwrap_err();
    assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
    sync.sync(&node.router_ns, &rules(&[repointed, other.clone()]))
        .unwrap();
    assert_eq!(
        counted(&sync, &node, &socket(vm, Protocol::Udp, 5353)),
        Usage::default()
    );
    exchange();
    assert_eq!(
        counted(&sync, &node, &socket(vm, Protocol::Udp, 5353)).packets,
        2
    );

    // A full sync of an intact table deletes the usage elements no longer wanted.
    let fresh = sync_for(Driver::Nftables);
    assert_eq!(
        fresh.sync(&node.router_ns, &rules(&[other])).unwrap().mode,
        SyncMode::Full
    );
    fresh.verify(&node.router_ns).unwrap();
    let usage = fresh.usage(&node.router_ns).unwrap().unwrap();
    assert_eq!(
        usage.keys().copied().collect::<Vec<_>>(),
        [socket(vm, Protocol::Tcp, 22)]
    );
}

#[test]
fn usage_of_a_range_counts_per_internal_port_and_a_fan_in_once() {
    if !kernel_tests_enabled("usage_ranges") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let vm = node.vms[0].ip;
    let _servers: Vec<_> = [6000, 6001, 6002, 53]
        .into_iter()
        .map(|p| node.serve_udp(0, p).unwrap())
        .collect();
    sync.sync(
        &node.router_ns,
        &rules(&[
            forward("shift", Protocol::Udp, "5000:5002", vm, "6000:6002"),
            forward("fan-in", Protocol::Udp, "5100:5101", vm, "53"),
        ]),
    )
    .unwrap();
    SimNode::udp_exchange(&node.client_ns, None, gw(5001), "a").unwrap();
    SimNode::udp_exchange(&node.client_ns, None, gw(5100), "b").unwrap();
    SimNode::udp_exchange(&node.client_ns, None, gw(5101), "c").unwrap();
    let usage = sync.usage(&node.router_ns).unwrap().unwrap();
    let packets: Vec<(u16, u64)> = usage
        .iter()
        .map(|(k, u)| (k.internal_port, u.packets))
        .collect();
    assert_eq!(packets, [(53, 4), (6000, 0), (6001, 2), (6002, 0)]);
}

#[test]
fn usage_counts_hairpin_flows() {
    if !kernel_tests_enabled("usage_hairpin") {
        return;
    }
    for neutron_rules in [false, true] {
        let node = SimNode::new(SimNodeOptions {
            neutron_rules,
            ..Default::default()
        })
        .unwrap();
        let sync = sync_for(Driver::Nftables);
        let vm = node.vms[0].ip;
        let _tcp = node.serve_tcp(0, 22).unwrap();
        let _udp = node.serve_udp(0, 53).unwrap();
        sync.sync(
            &node.router_ns,
            &rules(&[
                forward("ssh", Protocol::Tcp, "4000", vm, "22"),
                forward("dns", Protocol::Udp, "4001", vm, "53"),
            ]),
        )
        .unwrap();
        let from_vm1 = &node.vms[1].namespace;
        let answer = SimNode::udp_exchange(from_vm1, None, gw(4001), "q").unwrap();
        assert_eq!(
            counted(&sync, &node, &socket(vm, Protocol::Udp, 53)),
            Usage {
                packets: 2,
                bytes: udp_bytes(1) + udp_bytes(answer.len() + 1),
            },
            "neutron_rules={neutron_rules}"
        );
        let request = "h".repeat(10_000);
        let mut c = SimNode::connect(from_vm1, None, gw(4000)).unwrap();
        let answer = c.exchange(&request).unwrap();
        let tcp = counted(&sync, &node, &socket(vm, Protocol::Tcp, 22));
        let payload = (request.len() + answer.len() + 2) as u64;
        assert!(
            tcp.bytes >= payload + 40 * tcp.packets,
            "neutron_rules={neutron_rules}: {tcp:?}"
        );
    }
}

#[test]
fn a_table_from_before_the_usage_counters_is_rewritten_with_them() {
    if !kernel_tests_enabled("usage_upgrade") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let vm = node.vms[0].ip;
    let _udp = node.serve_udp(0, 53).unwrap();
    let desired = rules(&[forward("dns", Protocol::Udp, "4001", vm, "53")]);
    sync.sync(&node.router_ns, &desired).unwrap();
    // What an earlier version wrote: the same table without the usage set and its chain.
    let ns = node.router_ns.name();
    let nft = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", ns, "nft"];
        all.extend_from_slice(args);
        simnode::run(&all, None).unwrap()
    };
    nft(&["delete", "chain", "ip", "praas", "forward"]);
    nft(&["delete", "set", "ip", "praas", "usage"]);
    // Forwarding still works, and nothing is counted (nor is it an error).
    SimNode::udp_exchange(&node.client_ns, None, gw(4001), "q").unwrap();
    assert_eq!(
        sync.usage(&node.router_ns).unwrap(),
        Some(Default::default())
    );
    // A starting agent finds the table not ours and rewrites it.
    let fresh = sync_for(Driver::Nftables);
    assert_eq!(
        fresh.sync(&node.router_ns, &desired).unwrap().mode,
        SyncMode::Full
    );
    fresh.verify(&node.router_ns).unwrap();
    let listing = nft(&["list", "table", "ip", "praas"]);
    assert!(listing.contains("chain forward"), "{listing}");
    SimNode::udp_exchange(&node.client_ns, None, gw(4001), "q").unwrap();
    assert_eq!(
        counted(&fresh, &node, &socket(vm, Protocol::Udp, 53)).packets,
        2
    );
}

#[test]
fn usage_of_ten_thousand_mappings_is_read_in_one_dump() {
    if !kernel_tests_enabled("usage_scale") {
        return;
    }
    let node = node();
    let sync = sync_for(Driver::Nftables);
    let fwds: Vec<Forward> = (0..10_000u16)
        .map(|i| {
            let vm = std::net::Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 2);
            forward(
                &format!("m{i}"),
                Protocol::Tcp,
                &(10_000 + i).to_string(),
                vm,
                "22",
            )
        })
        .collect();
    let desired = rules(&fwds);
    assert_eq!(desired.counted.len(), 10_000);
    sync.sync(&node.router_ns, &desired).unwrap();
    let usage = sync.usage(&node.router_ns).unwrap().unwrap();
    assert!(usage.keys().eq(desired.counted.iter()));
    assert!(usage.values().all(|u| *u == Usage::default()));
}

/// Without OpenStack, the routers a project sees are those whose namespaces the node holds:
/// the gateway on `qg-`, DVR where the `snat-` namespace is, no name and no owner; a router
/// whose namespace is deleted is no longer listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_directory_lists_the_routers_whose_namespaces_the_node_holds() {
    use praas::openstack::{NamespaceDirectory, RouterDirectory, RouterSummary};
    let test = "the_namespace_directory_lists_the_routers_whose_namespaces_the_node_holds";
    if !kernel_tests_enabled(test) {
        return;
    }
    let legacy = node();
    let dvr = SimNode::new(SimNodeOptions {
        kind: NamespaceKind::Snat,
        ..Default::default()
    })
    .expect("simulated network node");
    // Other tests' namespaces may be listed too; ours must be, as they are.
    let listed = NamespaceDirectory.routers_of(Some("any")).await.unwrap();
    for (node, distributed) in [(&legacy, false), (&dvr, true)] {
        let router = listed
            .iter()
            .find(|r| r.id == node.router_id)
            .unwrap_or_else(|| panic!("{} is not listed: {listed:?}", node.router_id));
        assert_eq!(
            router,
            &RouterSummary {
                id: node.router_id.clone(),
                name: String::new(),
                project_id: None,
                gateway_ip: Some(GATEWAY_IP),
                distributed,
            }
        );
    }
    let gone = legacy.router_id.clone();
    drop(legacy);
    let listed = NamespaceDirectory.routers_of(None).await.unwrap();
    assert!(listed.iter().all(|r| r.id != gone), "{listed:?}");
    assert!(listed.iter().any(|r| r.id == dvr.router_id), "{listed:?}");
}
