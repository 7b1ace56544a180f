//! Dataplane benchmark: PRaaS's nftables backend against the two ways this is done today.
//!
//! Run as root: `cargo bench --bench dataplane` (add `-- --quick` for fewer repetitions).
//! Prints a Markdown table; `docs/benchmarks.md` holds the figures of the last run.
//!
//! Baselines, built here in throwaway namespaces:
//! - original PRaaS: one `ip netns exec … iptables -t nat -I` DNAT + MASQUERADE rule pair per
//!   mapping (a process per rule, as it did);
//! - Neutron port forwarding (L3 agent): one chain per mapping plus a jump to it, the whole set
//!   applied with one `iptables-restore`.

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
use praas::simnode::{self, SimNode, SimNodeOptions, GATEWAY_IP};
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
            &format!("PRaaS nftables: program {n} from empty (one transaction)"),
            ms(median(raw)),
            "median",
        );
        b.row(
            &format!("PRaaS nftables: program {n} from empty, read back and verified"),
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

fn neutron_restore_input(forwards: &[Forward], with_header: bool) -> String {
    let mut s = String::from("*nat\n");
    if with_header {
        s += ":neutron-l3-agent-fip-pf - [0:0]\n-A PREROUTING -j neutron-l3-agent-fip-pf\n";
    }
    for f in forwards {
        s += &format!(":neutron-l3-agent-pf-{} - [0:0]\n", f.id);
    }
    for f in forwards {
        s += &format!(
            "-A neutron-l3-agent-fip-pf -j neutron-l3-agent-pf-{}\n",
            f.id
        );
        s += &format!(
            "-A neutron-l3-agent-pf-{} -d {}/32 -p {} -m {} --dport {} -j DNAT --to-destination {}:{}\n",
            f.id,
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

fn neutron_apply(ns: &str, input: &str) {
    simnode::run(
        &["ip", "netns", "exec", ns, "iptables-restore", "--noflush"],
        Some(input),
    )
    .unwrap();
}

fn neutron_program(b: &mut Bench) {
    for n in [1_000, 10_000] {
        let f = forwards(n, GATEWAY_IP);
        let input = neutron_restore_input(&f, true);
        let mut samples = vec![];
        for _ in 0..b.reps(3) {
            let ns = Namespaces::new("neutron", 1);
            samples.push(time(|| neutron_apply(&ns.0[0], &input)).0);
        }
        b.row(
            &format!("Neutron PF style: program {n} from empty (iptables-restore)"),
            ms(median(samples)),
            "median",
        );
    }
    let ns = Namespaces::new("neutron-add", 1);
    neutron_apply(
        &ns.0[0],
        &neutron_restore_input(&forwards(10_000, GATEWAY_IP), true),
    );
    let mut samples = vec![];
    for k in 0..b.reps(20) {
        let mut extra = forwards(1, GATEWAY_IP);
        extra[0].id = format!("x{k}");
        extra[0].external_ports = PortRange::single(30_000 + k as u16).unwrap();
        let input = neutron_restore_input(&extra, false);
        samples.push(time(|| neutron_apply(&ns.0[0], &input)).0);
    }
    b.row(
        "Neutron PF style: +1 mapping at 10,000",
        ms(median(samples)),
        "median",
    );
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
        &format!("original PRaaS: program {n} from empty (iptables -I pair per mapping)"),
        ms(total),
        &format!(
            "{} per mapping; 10,000 not run (linear: ≈ {:.0} s)",
            ms(total / n as u32),
            total.as_secs_f64() * 10.0
        ),
    );
}

/// Median TCP connect time from the client namespace to the gateway's last mapped port. The
/// sockets are made in advance in one visit to the namespace, so that only `connect` (the
/// handshake through the router) is timed.
fn connect_median(node: &SimNode, port: u16, samples: usize) -> Duration {
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
    median(
        sockets
            .iter()
            .map(|s| time(|| s.connect(&addr).expect("connect")).0)
            .collect(),
    )
}

fn connect_time(b: &mut Bench) {
    let node = SimNode::new(SimNodeOptions::default()).unwrap();
    let _server = node.serve_tcp(0, 22).unwrap();
    let samples = b.reps(500);
    let vm = node.vms[0].ip;
    let mut results = vec![];
    let s = sync();
    for n in [10, 10_000] {
        let f = tcp_forwards_ending_at_vm(n, vm);
        s.sync(&node.router_ns, &RuleSet::from_forwards(&f).unwrap())
            .unwrap();
        results.push((
            "PRaaS nftables",
            n,
            connect_median(&node, FIRST_PORT + n as u16 - 1, samples),
        ));
    }
    s.remove(&node.router_ns).unwrap();
    for n in [10, 10_000] {
        let f = tcp_forwards_ending_at_vm(n, vm);
        let r = node.router_ns.name();
        let _ = simnode::run(
            &[
                "ip",
                "netns",
                "exec",
                r,
                "iptables",
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-j",
                "neutron-l3-agent-fip-pf",
            ],
            None,
        );
        let flush = "*nat\n:neutron-l3-agent-fip-pf - [0:0]\nCOMMIT\n";
        neutron_apply(r, flush);
        neutron_apply(r, &neutron_restore_input(&f, true));
        results.push((
            "Neutron PF style",
            n,
            connect_median(&node, FIRST_PORT + n as u16 - 1, samples),
        ));
    }
    for (who, n, d) in &results {
        b.row(
            &format!("{who}: TCP connect through the router, {n} mappings"),
            format!("{:.1} µs", d.as_secs_f64() * 1e6),
            &format!("median of {samples}"),
        );
    }
    let ours = results[1].2.as_secs_f64() / results[0].2.as_secs_f64();
    let neutron_10k = results[3].2.as_secs_f64() / results[1].2.as_secs_f64();
    b.row(
        "PRaaS nftables: connect time ratio 10,000 / 10 mappings",
        format!("{ours:.2}"),
        "target ≤ 1.2",
    );
    b.row(
        "Neutron PF style / PRaaS connect time at 10,000 mappings",
        format!("{neutron_10k:.1}×"),
        "target ≥ 50×",
    );
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
    let stages: [Stage; 7] = [
        ("program", ours_program),
        ("methods", apply_methods),
        ("add-one", ours_add_one),
        ("neutron", neutron_program),
        ("original", original_program),
        ("connect", connect_time),
        ("routers", many_routers),
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
