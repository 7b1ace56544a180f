//! Dataplane benchmark: PRaaS's nftables backend against the two ways this is done today.
//!
//! Run as root: `cargo bench --bench dataplane` (add `-- --quick` for fewer repetitions, or a
//! stage's name to run only that stage).
//! Prints a Markdown table; `docs/benchmarks.md` holds the figures of the last run.
//!
//! Baselines, built here in throwaway namespaces:
//! - original PRaaS: one `ip netns exec … iptables -t nat -I` DNAT + MASQUERADE rule pair per
//!   mapping (a process per rule, as it did);
//! - Neutron port forwarding, as the L3 agent writes it: PREROUTING → `neutron-l3-agent-PREROUTING`
//!   → `neutron-l3-agent-fip-pf`, which holds one unconditional jump per forwarding to a chain
//!   `neutron-l3-agent-pf-<first 8 of the id>` whose one rule has the match and the DNAT; applied
//!   with `iptables-restore -n` in the agent's format, with iptables-nft and, where installed,
//!   iptables-legacy (each row names the one it used).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::nft::libnft::LibNftables;
use praas::dataplane::nft::{render, NftBackend};
use praas::dataplane::sync::RouterSync;
use praas::dataplane::{
    netns, Backend, Changes, ExternalKey, Forward, PortRange, Protocol, RouterNamespace, RuleSet,
    Target,
};
use praas::testbed::simnode::{self, SimNode, SimNodeOptions, GATEWAY_IP};
use praas::testbed::thousands as count;
use socket2::{Domain, SockAddr, Socket, Type};

const FIRST_PORT: u16 = 10_000;

struct Bench {
    quick: bool,
    rows: Vec<(String, String, String)>,
}

impl Bench {
    fn row(&mut self, what: &str, figure: String, note: &str) {
        eprintln!("{what}: {figure} {note}");
        self.rows.push((what.into(), figure, note.into()));
    }

    fn reps(&self, full: usize) -> usize {
        if self.quick {
            (full / 5).max(1)
        } else {
            full
        }
    }
}

/// Throwaway namespaces, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(prefix: &str, n: usize) -> Namespaces {
        let names: Vec<String> = (0..n)
            .map(|i| format!("praas-bench-{}-{prefix}-{i}", std::process::id()))
            .collect();
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        let ns = Namespaces(names);
        simnode::run(&["ip", "-batch", "-"], Some(&script)).expect("creating namespaces");
        ns
    }

    fn router(&self, i: usize) -> RouterNamespace {
        RouterNamespace::named(self.0[i].clone())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let script: String = self.0.iter().map(|n| format!("netns del {n}\n")).collect();
        let _ = simnode::run(&["ip", "-force", "-batch", "-"], Some(&script));
    }
}

fn forwards(n: usize, gateway: Ipv4Addr) -> Vec<Forward> {
    (0..n)
        .map(|i| Forward {
            id: format!("m{i}"),
            protocol: if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            external_ip: gateway,
            external_ports: PortRange::single(FIRST_PORT + i as u16).unwrap(),
            internal_ip: Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 2),
            internal_ports: PortRange::single(22).unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        })
        .collect()
}

/// `n` TCP forwards whose last one goes to the simulated node's VM 0.
fn tcp_forwards_ending_at_vm(n: usize, vm: Ipv4Addr) -> Vec<Forward> {
    let mut f = forwards(n, GATEWAY_IP);
    for x in f.iter_mut() {
        x.protocol = Protocol::Tcp;
    }
    f.last_mut().unwrap().internal_ip = vm;
    f
}

/// The 1-minute load average, as `/proc/loadavg` gives it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn sync() -> RouterSync {
    RouterSync::new(
        Arc::new(NftBackend::new().expect("libnftables")),
        Arc::new(Conntrack),
    )
}

fn ours_program(b: &mut Bench) {
    let backend = NftBackend::new().unwrap();
    for n in [1_000, 10_000] {
        let rules = RuleSet::from_forwards(&forwards(n, GATEWAY_IP)).unwrap();
        let (mut raw, mut verified) = (vec![], vec![]);
        for _ in 0..b.reps(5) {
            let ns = Namespaces::new("prog", 1);
            raw.push(time(|| backend.full_sync(&ns.router(0), &rules).unwrap()).0);
            let ns = Namespaces::new("progv", 1);
            let s = sync();
            verified.push(time(|| s.sync(&ns.router(0), &rules).unwrap()).0);
        }
        b.row(
            &format!(
                "PRaaS nftables: program {} from empty (one transaction)",
                count(n)
            ),
            ms(median(raw)),
            "median",
        );
        b.row(
            &format!(
                "PRaaS nftables: program {} from empty, read back and verified",
                count(n)
            ),
            ms(median(verified)),
            "median; what the agent does",
        );
    }
}

fn ours_add_one(b: &mut Bench) {
    let ns = Namespaces::new("add1", 1);
    let s = sync();
    let mut current = forwards(10_000, GATEWAY_IP);
    s.sync(&ns.router(0), &RuleSet::from_forwards(&current).unwrap())
        .unwrap();
    let rounds = b.reps(200);
    // Grow 10,000 → 10,000 + rounds one mapping at a time, then shrink back one at a time.
    let (mut adds, mut removes) = (vec![], vec![]);
    let mut states = vec![];
    for k in 0..rounds {
        let mut extra = forwards(1, GATEWAY_IP).remove(0);
        extra.id = format!("extra{k}");
        extra.external_ports = PortRange::single(30_000 + k as u16).unwrap();
        current.push(extra);
        states.push(RuleSet::from_forwards(&current).unwrap());
    }
    for desired in &states {
        adds.push(time(|| s.sync(&ns.router(0), desired).unwrap()).0);
    }
    for desired in states.iter().rev().skip(1) {
        removes.push(time(|| s.sync(&ns.router(0), desired).unwrap()).0);
    }
    let (p50, p99) = (median(adds.clone()), percentile(adds, 0.99));
    b.row(
        "PRaaS nftables: +1 mapping at 10,000 (incremental)",
        ms(p50),
        &format!("median; p99 {}", ms(p99)),
    );
    b.row(
        "PRaaS nftables: −1 mapping at 10,000, with conntrack cleanup",
        ms(median(removes)),
        "median; the cleanup's conntrack dump walks the host-wide hash (≈ 12 ms here)",
    );
}

/// The same table applied three ways: a spawned `nft -f` (in the namespace with
/// `ip netns exec`), libnftables in-process, and PRaaS's nfnetlink batch.
fn apply_methods(b: &mut Bench) {
    let lib = LibNftables::get().expect("libnftables");
    let backend = NftBackend::new().unwrap();
    let rules = RuleSet::from_forwards(&forwards(10_000, GATEWAY_IP)).unwrap();
    let text = render::full(&rules);
    let file = std::env::temp_dir().join(format!("praas-bench-{}.nft", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let file = file.to_str().unwrap().to_string();
    let one = "add element ip praas forwards { 203.0.113.10 . tcp . 40000 : 10.0.0.2 . 22 }\n";
    let remove_one = "delete element ip praas forwards { 203.0.113.10 . tcp . 40000 }\n";
    let reps = b.reps(5);
    let (mut spawn_full, mut lib_full, mut spawn_one, mut lib_one, mut ours_one) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let ns = Namespaces::new("methods", 2);
        let (a, c) = (ns.0[0].clone(), ns.router(1));
        spawn_full.push(
            time(|| simnode::run(&["ip", "netns", "exec", &a, "nft", "-f", &file], None).unwrap())
                .0,
        );
        lib_full.push(time(|| netns::run_in(&c, || lib.context().run(&text).unwrap()).unwrap()).0);
        for _ in 0..10 {
            spawn_one.push(
                time(|| {
                    simnode::run(&["ip", "netns", "exec", &a, "nft", one.trim()], None).unwrap()
                })
                .0,
            );
            simnode::run(&["ip", "netns", "exec", &a, "nft", remove_one.trim()], None).unwrap();
            lib_one.push(time(|| netns::run_in(&c, || lib.context().run(one).unwrap()).unwrap()).0);
            netns::run_in(&c, || lib.context().run(remove_one).unwrap()).unwrap();
            let key = ExternalKey {
                ip: GATEWAY_IP,
                protocol: Protocol::Tcp,
                port: 40000,
            };
            let target = Target {
                ip: Ipv4Addr::new(10, 0, 0, 2),
                port: 22,
            };
            let add = Changes {
                add_forwards: vec![(key, target)],
                ..Default::default()
            };
            let del = Changes {
                remove_forwards: vec![(key, target)],
                ..Default::default()
            };
            ours_one.push(time(|| backend.update(&c, &add).unwrap()).0);
            backend.update(&c, &del).unwrap();
        }
    }
    let _ = std::fs::remove_file(&file);
    b.row(
        "apply 10,000 forwards: spawned `ip netns exec … nft -f`",
        ms(median(spawn_full)),
        "median; text parsed by nft",
    );
    b.row(
        "apply 10,000 forwards: libnftables in-process (same text)",
        ms(median(lib_full)),
        "median; no process, same parser",
    );
    b.row(
        "add 1 element at 10,000: spawned `ip netns exec … nft`",
        ms(median(spawn_one)),
        "median",
    );
    b.row(
        "add 1 element at 10,000: libnftables in-process",
        ms(median(lib_one)),
        "median; includes entering the namespace",
    );
    b.row(
        "add 1 element at 10,000: PRaaS nfnetlink batch",
        ms(median(ours_one)),
        "median; kept socket, no thread switch",
    );
}

/// The iptables flavours the Neutron baseline is measured with. The L3 agent runs plain
/// `iptables-save`/`iptables-restore`, so which one it gets is the host's choice
/// (update-alternatives on Debian).
#[derive(Clone, Copy)]
enum Iptables {
    Nft,
    Legacy,
}

impl Iptables {
    fn name(self) -> &'static str {
        match self {
            Iptables::Nft => "iptables-nft",
            Iptables::Legacy => "iptables-legacy",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Iptables::Nft => "iptables-nft-restore",
            Iptables::Legacy => "iptables-legacy-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Iptables::Nft => "iptables-nft-save",
            Iptables::Legacy => "iptables-legacy-save",
        }
    }

    /// The flavours installed here; a missing one gets a row saying so instead of figures.
    fn available(b: &mut Bench) -> Vec<Iptables> {
        let mut found = vec![];
        for i in [Iptables::Nft, Iptables::Legacy] {
            let ok = std::process::Command::new(i.restore())
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                found.push(i);
            } else {
                b.row(
                    &format!("Neutron PF ({}): skipped", i.name()),
                    "not run".into(),
                    &format!("`{}` not installed", i.restore()),
                );
            }
        }
        found
    }

    /// The flavour behind the plain `iptables` command.
    fn default_name() -> String {
        match simnode::run(&["iptables", "--version"], None) {
            Ok(v) if v.contains("nf_tables") => Iptables::Nft.name().into(),
            Ok(v) if v.contains("legacy") => Iptables::Legacy.name().into(),
            _ => "iptables".into(),
        }
    }

    fn apply(self, ns: &str, input: &str) {
        simnode::run(
            &["ip", "netns", "exec", ns, self.restore(), "-n"],
            Some(input),
        )
        .unwrap();
    }
}

/// `n` forwards with ids shaped like Neutron's port forwarding UUIDs. Only the first 8 hex digits
/// reach a chain name; they are a bijective scramble of the index, so they are distinct and, as
/// with random UUIDs, their sorted order has nothing to do with the order of creation.
fn neutron_forwards(mut f: Vec<Forward>, first_index: u32) -> Vec<Forward> {
    for (k, x) in f.iter_mut().enumerate() {
        let i = first_index + k as u32;
        let mut h = i.wrapping_mul(0x9e37_79b1) ^ 0x5e1f_5e1f;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        x.id = format!("{h:08x}-0000-4000-8000-{i:012x}");
    }
    f
}

/// The agent's chain for one port forwarding: `pf-` and the forwarding's id, cut to the 11
/// characters a wrapped chain name may have, behind the agent's `neutron-l3-agent-` prefix.
fn neutron_pf_chain(f: &Forward) -> String {
    let short: String = format!("pf-{}", f.id).chars().take(11).collect();
    format!("neutron-l3-agent-{short}")
}

/// What the router's namespace holds before any port forwarding: the agent's wrapper of the
/// nat PREROUTING chain (in a full router, among its other gateway rules).
const NEUTRON_ROUTER_BASE: &str = "*nat\n\
    :neutron-l3-agent-PREROUTING - [0:0]\n\
    -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
    COMMIT\n";

/// The agent's first apply when a router gets its first port forwarding: the `fip-pf` chain
/// and an unconditional jump to it at the end of its PREROUTING wrapper (empty here, so at 1).
const NEUTRON_PF_DEFAULT: &str = "*nat\n\
    :neutron-l3-agent-fip-pf - [0:0]\n\
    -I neutron-l3-agent-PREROUTING 1 -j neutron-l3-agent-fip-pf\n\
    COMMIT\n";

/// The `iptables-restore -n` input the L3 agent's port forwarding extension produces for new
/// forwardings, `existing` of them being in `fip-pf` already (layout from
/// `neutron/agent/l3/extensions/port_forwarding.py`, text from the diff that
/// `neutron/agent/linux/iptables_manager.py` turns the wanted state into):
/// - the new chains declared in sorted order;
/// - in `neutron-l3-agent-fip-pf`, one unconditional `-j neutron-l3-agent-pf-…` per
///   forwarding, in the order of the forwardings, as positional inserts;
/// - in each per-forwarding chain, its one rule, which holds the whole match:
///   `-d FIP/32 -p PROTO -m PROTO --dport N -j DNAT --to-destination IP:PORT`.
///
/// So every packet that reaches `fip-pf` enters every per-forwarding chain before its own.
fn neutron_restore_input(forwards: &[Forward], existing: usize) -> String {
    let in_order: Vec<(String, &Forward)> =
        forwards.iter().map(|f| (neutron_pf_chain(f), f)).collect();
    let mut sorted = in_order.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut s = String::from("*nat\n");
    for (c, _) in &sorted {
        s += &format!(":{c} - [0:0]\n");
    }
    for (k, (c, _)) in in_order.iter().enumerate() {
        s += &format!("-I neutron-l3-agent-fip-pf {} -j {c}\n", existing + k + 1);
    }
    for (c, f) in &sorted {
        s += &format!(
            "-I {c} 1 -d {}/32 -p {} -m {} --dport {} -j DNAT --to-destination {}:{}\n",
            f.external_ip,
            f.protocol,
            f.protocol,
            f.external_ports.first(),
            f.internal_ip,
            f.internal_ports.first()
        );
    }
    s + "COMMIT\n"
}

/// Programs `forwards` into a namespace holding [`NEUTRON_ROUTER_BASE`] (or the full gateway
/// rules) and no port forwarding yet, with the agent's two applies.
fn neutron_program_from_empty(ipt: Iptables, ns: &str, forwards: &[Forward]) {
    ipt.apply(ns, NEUTRON_PF_DEFAULT);
    ipt.apply(ns, &neutron_restore_input(forwards, 0));
}

fn neutron_program(b: &mut Bench) {
    for ipt in Iptables::available(b) {
        let who = format!("Neutron PF ({})", ipt.name());
        for n in [1_000, 10_000] {
            let f = neutron_forwards(forwards(n, GATEWAY_IP), 0);
            let mut samples = vec![];
            for _ in 0..b.reps(3) {
                let ns = Namespaces::new("neutron", 1);
                ipt.apply(&ns.0[0], NEUTRON_ROUTER_BASE);
                samples.push(time(|| neutron_program_from_empty(ipt, &ns.0[0], &f)).0);
            }
            b.row(
                &format!("{who}: program {} from empty (iptables-restore)", count(n)),
                ms(median(samples)),
                "median; the agent's two restores, without its iptables-save before each",
            );
        }
        let ns = Namespaces::new("neutron-add", 1);
        let name = &ns.0[0];
        ipt.apply(name, NEUTRON_ROUTER_BASE);
        neutron_program_from_empty(
            ipt,
            name,
            &neutron_forwards(forwards(10_000, GATEWAY_IP), 0),
        );
        let (mut restores, mut saves) = (vec![], vec![]);
        for k in 0..b.reps(20) {
            let mut extra = neutron_forwards(forwards(1, GATEWAY_IP), 10_000 + k as u32);
            extra[0].external_ports = PortRange::single(30_000 + k as u16).unwrap();
            let input = neutron_restore_input(&extra, 10_000 + k);
            saves.push(
                time(|| simnode::run(&["ip", "netns", "exec", name, ipt.save()], None).unwrap()).0,
            );
            restores.push(time(|| ipt.apply(name, &input)).0);
        }
        b.row(
            &format!("{who}: +1 mapping at 10,000 (iptables-restore)"),
            ms(median(restores)),
            "median",
        );
        b.row(
            &format!("{who}: iptables-save at 10,000"),
            ms(median(saves)),
            "median; the agent runs it before every restore, to diff against",
        );
    }
}

fn original_program(b: &mut Bench) {
    let n = if b.quick { 200 } else { 1_000 };
    let ns = Namespaces::new("orig", 1);
    let name = ns.0[0].clone();
    let ipt = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", &name, "iptables"];
        all.extend_from_slice(args);
        simnode::run(&all, None).unwrap();
    };
    ipt(&["-t", "nat", "-N", "custom-PREROUTING"]);
    ipt(&["-t", "nat", "-N", "custom-POSTROUTING"]);
    ipt(&["-t", "nat", "-I", "PREROUTING", "-j", "custom-PREROUTING"]);
    ipt(&["-t", "nat", "-I", "POSTROUTING", "-j", "custom-POSTROUTING"]);
    let (total, ()) = time(|| {
        for f in forwards(n, GATEWAY_IP) {
            let (dport, to, vm) = (
                f.external_ports.first().to_string(),
                format!("{}:22", f.internal_ip),
                f.internal_ip.to_string(),
            );
            ipt(&[
                "-t",
                "nat",
                "-I",
                "custom-PREROUTING",
                "-d",
                "203.0.113.10",
                "-p",
                "tcp",
                "--dport",
                &dport,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]);
            ipt(&[
                "-t",
                "nat",
                "-I",
                "custom-POSTROUTING",
                "-d",
                &vm,
                "-p",
                "tcp",
                "--dport",
                "22",
                "-j",
                "MASQUERADE",
            ]);
        }
    });
    b.row(
        &format!(
            "original PRaaS ({}): program {} from empty (iptables -I pair per mapping)",
            Iptables::default_name(),
            count(n)
        ),
        ms(total),
        &format!(
            "{} per mapping; 10,000 not run (linear: ≈ {:.0} s)",
            ms(total / n as u32),
            total.as_secs_f64() * 10.0
        ),
    );
}

/// TCP connect times from the client namespace to the gateway's last mapped port. The
/// sockets are made in advance in one visit to the namespace, so that only `connect` (the
/// handshake through the router) is timed.
fn connect_times(node: &SimNode, port: u16, samples: usize) -> Vec<Duration> {
    let dst = SocketAddrV4::new(GATEWAY_IP, port);
    // Warm up ARP and caches.
    SimNode::connect(&node.client_ns, None, dst).expect("connect through the router");
    let sockets: Vec<Socket> = netns::run_in_path(&netns::path_of(&node.client_ns), || {
        (0..samples)
            .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .unwrap()
    .unwrap();
    let addr = SockAddr::from(dst);
    sockets
        .iter()
        .map(|s| time(|| s.connect(&addr).expect("connect")).0)
        .collect()
}

fn connect_time(b: &mut Bench) {
    let samples = b.reps(500);
    let load_before = load_average();
    let mut results = vec![];
    {
        let node = SimNode::new(SimNodeOptions::default()).unwrap();
        let _server = node.serve_tcp(0, 22).unwrap();
        let vm = node.vms[0].ip;
        let s = sync();
        for n in [10, 10_000] {
            let f = tcp_forwards_ending_at_vm(n, vm);
            s.sync(&node.router_ns, &RuleSet::from_forwards(&f).unwrap())
                .unwrap();
            results.push((
                "PRaaS nftables".to_string(),
                n,
                connect_times(&node, FIRST_PORT + n as u16 - 1, samples),
            ));
        }
        s.remove(&node.router_ns).unwrap();
    }
    // The Neutron baseline in a node of its own per flavour and size, so that the whole router
    // (the agent's gateway rules and its port forwardings) is written with that one flavour.
    for ipt in Iptables::available(b) {
        for n in [10, 10_000] {
            let node = SimNode::new(SimNodeOptions {
                neutron_rules: false,
                ..Default::default()
            })
            .unwrap();
            let _server = node.serve_tcp(0, 22).unwrap();
            let r = node.router_ns.name();
            ipt.apply(r, &node.neutron_rules());
            let f = neutron_forwards(tcp_forwards_ending_at_vm(n, node.vms[0].ip), 0);
            neutron_program_from_empty(ipt, r, &f);
            results.push((
                format!("Neutron PF ({})", ipt.name()),
                n,
                connect_times(&node, FIRST_PORT + n as u16 - 1, samples),
            ));
        }
    }
    let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    for (who, n, times) in &results {
        b.row(
            &format!(
                "{who}: TCP connect through the router, {} mappings",
                count(*n)
            ),
            us(median(times.clone())),
            &format!(
                "median of {samples}, fastest {}; to the last mapping",
                us(*times.iter().min().unwrap())
            ),
        );
    }
    b.row(
        "connect stage: load average (1 min) before / after",
        format!("{load_before} / {}", load_average()),
        "other work on the machine slows the Neutron rows most",
    );
    // Medians, and the fastest connects as the figure least touched by other work.
    let at = |who: &str, n: usize| {
        results.iter().find(|r| r.0 == who && r.1 == n).map(|r| {
            (
                median(r.2.clone()).as_secs_f64(),
                r.2.iter().min().unwrap().as_secs_f64(),
            )
        })
    };
    let ours = at("PRaaS nftables", 10_000).unwrap();
    b.row(
        "PRaaS nftables: connect time ratio 10,000 / 10 mappings",
        format!("{:.2}", ours.0 / at("PRaaS nftables", 10).unwrap().0),
        "target ≤ 1.2",
    );
    for ipt in [Iptables::Nft, Iptables::Legacy] {
        let who = format!("Neutron PF ({})", ipt.name());
        if let Some(theirs) = at(&who, 10_000) {
            b.row(
                &format!("{who} / PRaaS nftables connect time at 10,000 mappings"),
                format!("{:.1}×", theirs.0 / ours.0),
                &format!(
                    "target ≥ 50×; medians (fastest against fastest: {:.1}×)",
                    theirs.1 / ours.1
                ),
            );
        }
    }
}

fn many_routers(b: &mut Bench) {
    let routers = 1_000;
    let ns = Arc::new(Namespaces::new("many", routers));
    let desired = Arc::new(
        (0..routers)
            .map(|i| {
                let gw = Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 2);
                RuleSet::from_forwards(&forwards(10, gw)).unwrap()
            })
            .collect::<Vec<_>>(),
    );
    let s = Arc::new(sync());
    let next = Arc::new(AtomicUsize::new(0));
    let threads = 4;
    let (elapsed, ()) = time(|| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (ns, desired, s, next) = (ns.clone(), desired.clone(), s.clone(), next.clone());
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= routers {
                        break;
                    }
                    s.sync(&ns.router(i), &desired[i]).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    b.row(
        "PRaaS nftables: 1,000 routers × 10 mappings, nothing to programmed and verified",
        ms(elapsed),
        &format!("{threads} worker threads; target ≤ 2 s"),
    );
}

/// Reading the per-mapping usage counters (one dump of the usage set per namespace), and what
/// keeping them costs a full sync of an intact table (the usage set is listed, not flushed).
fn usage(b: &mut Bench) {
    let backend = NftBackend::new().unwrap();
    let ns = Namespaces::new("usage", 1);
    let router = ns.router(0);
    let rules = RuleSet::from_forwards(&forwards(10_000, GATEWAY_IP)).unwrap();
    assert_eq!(rules.counted.len(), 10_000);
    sync().sync(&router, &rules).unwrap();
    let mut reads = vec![];
    for _ in 0..b.reps(100) {
        let (t, usage) = time(|| backend.usage(&router).unwrap().expect("nftables counts"));
        assert_eq!(usage.len(), 10_000);
        reads.push(t);
    }
    b.row(
        "PRaaS nftables: read the usage counters of 10,000 mappings (one dump)",
        ms(median(reads.clone())),
        &format!("median; p99 {}", ms(percentile(reads, 0.99))),
    );
    let mut resyncs = vec![];
    for _ in 0..b.reps(20) {
        let fresh = sync();
        resyncs.push(time(|| fresh.sync(&router, &rules).unwrap()).0);
    }
    b.row(
        "PRaaS nftables: full sync of an intact table at 10,000, read back and verified",
        ms(median(resyncs)),
        "median; a restarted agent or the periodic resync; counters kept",
    );
    drop(ns);

    let routers = 1_000;
    let many = Namespaces::new("usage-many", routers);
    let s = sync();
    for i in 0..routers {
        let gw = Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 2);
        s.sync(
            &many.router(i),
            &RuleSet::from_forwards(&forwards(10, gw)).unwrap(),
        )
        .unwrap();
    }
    let mut passes = vec![];
    for _ in 0..b.reps(10) {
        passes.push(
            time(|| {
                for i in 0..routers {
                    assert_eq!(s.usage(&many.router(i)).unwrap().unwrap().len(), 10);
                }
            })
            .0,
        );
    }
    b.row(
        "PRaaS nftables: read the usage counters of 1,000 routers × 10 mappings",
        ms(median(passes)),
        "median; one dump per namespace on its kept socket, one thread",
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: nothing to check here.
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the dataplane benchmark needs root (network namespaces)");
        std::process::exit(2);
    }
    let mut b = Bench {
        quick: args.iter().any(|a| a == "--quick"),
        rows: vec![],
    };
    let only = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    type Stage = (&'static str, fn(&mut Bench));
    let stages: [Stage; 8] = [
        ("program", ours_program),
        ("methods", apply_methods),
        ("add-one", ours_add_one),
        ("neutron", neutron_program),
        ("original", original_program),
        ("connect", connect_time),
        ("routers", many_routers),
        ("usage", usage),
    ];
    for (name, stage) in stages {
        if only.as_deref().is_none_or(|o| o == name) {
            stage(&mut b);
        }
    }
    println!("| measurement | result | note |\n|---|---|---|");
    for (what, figure, note) in &b.rows {
        println!("| {what} | {figure} | {note} |");
    }
}
