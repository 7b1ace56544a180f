//! OVN dataplane benchmark: PRaaS's load balancers against Neutron's own OVN port forwarding
//! layout, on one router in the one-chassis OVN of `scripts/ovn` (real northd, ovn-controller
//! and ovs-vswitchd with the userspace datapath).
//!
//! Run as root: `cargo bench --bench ovn` (10,000 forwards), or lighter:
//! `cargo bench --bench ovn -- --forwards 200 --reps 5 --samples 50`.
//! Prints a Markdown table; `docs/benchmarks.md` holds the figures of the last run.
//!
//! The workload: `forwards` TCP ports forwarded to VMs, 20 ports a VM. Three layouts of it,
//! each on a router of its own built as Neutron's OVN driver builds one:
//! - **PRaaS**: the real driver (`OvnBackend` under `RouterSync`, as the agent runs it): every
//!   port a VIP `gateway:port` of the VM's load balancer `praas-<router>-tcp-<vm>` (20 VIPs).
//! - **Neutron PF**: Neutron's OVN port forwarding as its driver writes it: one floating IP a
//!   VM, one load balancer per floating IP and protocol (`pf-floatingip-<fip>-tcp`, 20 VIPs),
//!   each attached to the router and to the tenant switch.
//! - **Neutron PF, ranges**: the same ports as two forwards of 10-port ranges a VM, which
//!   Neutron unrolls to one load balancer per port (20 load balancers a floating IP, one VIP
//!   each).
//!
//! The baselines are written by this program through the same OVSDB client, each change in
//! one transaction (programming from empty too: Neutron itself would write one transaction per
//! API call, which is slower; the figure is the layout's cost, not Neutron's API's).
//!
//! `-- --layout routers` (also part of the full run) measures the OVN worker's own check of
//! every router it serves after one change in the database, on a private northbound
//! ovsdb-server (no northd, no chassis: the worker's CPU alone) with 1,000 routers
//! (`--routers N`): reading every router back, as the check did when any row changed, against
//! every router's fingerprint from one pass and a read-back of the one that moved.
//!
//! Stages per layout: program from empty (until committed and until the chassis reports it
//! applied, `hv_cfg`); +1 forward and -1 at that size (p50, p99); a change in the northbound
//! database until the first forwarded packet, at 10 forwards and at `forwards` (p50, p99);
//! TCP connect time through the forward at both sizes; the daemons' CPU time for programming
//! and their memory after; logical and OpenFlow flow counts.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use praas::dataplane::ovn::{ApplyWait, Northbound, OvnBackend};
use praas::dataplane::sync::{Check, RouterSync};
use praas::dataplane::{
    Backend, Forward, NamespaceKind, PortRange, Protocol, RouterNamespace, RuleSet,
};
use praas::ovsdb::{Remote, TlsFiles};
use praas::testbed::fake_dataplane::NoFlows;
use praas::testbed::ovn::{OvnEnv, OvnNamespace};
use praas::testbed::ovn_router::{NeutronRouter, RouterLayout};
use praas::testbed::ovsdb_server::NorthboundServer;
use praas::testbed::simnode::{self, Server};
use praas::testbed::thousands as count;
use serde_json::{json, Value};
use socket2::{Domain, SockAddr, Socket, Type};

/// Ports forwarded to one VM (one floating IP's worth in the Neutron layouts).
const PORTS_PER_VM: usize = 20;
/// The first external port of a VM's forwards.
const FIRST_PORT: u16 = 10_000;
/// The port the measured VM serves.
const VM_PORT: u16 = 22;
const TIMEOUT: Duration = Duration::from_secs(600);

struct Options {
    forwards: usize,
    reps: usize,
    samples: usize,
}

struct Bench {
    rows: Vec<(String, String, String)>,
}

impl Bench {
    fn row(&mut self, what: &str, figure: String, note: &str) {
        eprintln!("{what}: {figure} {note}");
        self.rows.push((what.into(), figure, note.into()));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Praas,
    NeutronPf,
    NeutronPfRanges,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Praas => "PRaaS",
            Layout::NeutronPf => "Neutron PF",
            Layout::NeutronPfRanges => "Neutron PF, ranges",
        }
    }
}

/// The address of the `vm`-th VM of the workload (not a real VM: a backend of the VIPs).
fn backend(vm: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1 + (vm / 250) as u8, 2 + (vm % 250) as u8)
}

/// The floating IP of the `vm`-th VM in the Neutron layouts: documentation ranges, routed by
/// the client via the router's gateway.
fn floating_ip(vm: usize) -> Ipv4Addr {
    assert!(vm < 508, "at most 508 floating IPs (10,160 forwards)");
    if vm < 254 {
        Ipv4Addr::new(198, 51, 100, 1 + vm as u8)
    } else {
        Ipv4Addr::new(192, 0, 2, 1 + (vm - 254) as u8)
    }
}

/// The benchmark's router and the clients and VM around it, deleted on drop.
struct Site {
    client: OvnNamespace,
    _vm: OvnNamespace,
    _server: Server,
    router: NeutronRouter,
    nb: Arc<Northbound>,
    sync: RouterSync,
}

impl Site {
    fn new(env: &Arc<OvnEnv>, layout: Layout) -> Site {
        let slot = match layout {
            Layout::Praas => 201,
            Layout::NeutronPf => 202,
            Layout::NeutronPfRanges => 203,
        };
        let gateway = Ipv4Addr::new(203, 0, 113, 200);
        let router = NeutronRouter::build(
            env,
            RouterLayout {
                router_id: format!("bench{slot}"),
                slot,
                gateway: Ipv4Net::new(gateway, 24).unwrap(),
                internal: Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 1), 16).unwrap(),
                vms: vec![Ipv4Addr::new(10, 200, 0, 10)],
            },
        )
        .expect("the benchmark's router");
        // A client address of each layout's own: OVS 3.1's userspace conntrack can keep entries
        // of flushed NAT connections, and a new connection that matches one asserts in
        // ovs-vswitchd; another address keeps one layout's entries from the next one's tuples.
        let client_ip = Ipv4Addr::new(203, 0, 113, slot - 190);
        let client = OvnNamespace::external(env, Ipv4Net::new(client_ip, 24).unwrap(), None)
            .expect("the client on br-ex");
        // The floating IPs are off the external subnet: routed to the gateway, whose port
        // takes every packet addressed to its MAC.
        let routes = format!(
            "route add 198.51.100.0/24 via {gateway}\nroute add 192.0.2.0/24 via {gateway}\n"
        );
        simnode::run(
            &["ip", "-n", &client.namespace, "-batch", "-"],
            Some(&routes),
        )
        .expect("routes to the floating IPs");
        let vm = router.attach_vm(0).expect("the measured VM");
        let server = vm.serve_tcp(VM_PORT).expect("a TCP server in the VM");
        let nb = Arc::new(Northbound::new(
            vec![Remote::parse(&env.nb).unwrap()],
            TlsFiles::default(),
            TIMEOUT,
        ));
        // Not waiting in the driver: the benchmark waits for the chassis apart, to time both.
        let backend = OvnBackend::new(nb.clone(), ApplyWait::None, TIMEOUT);
        let sync = RouterSync::new(Arc::new(backend), Arc::new(NoFlows));
        let site = Site {
            client,
            _vm: vm,
            _server: server,
            router,
            nb,
            sync,
        };
        // What an interrupted run left.
        site.remove_baselines();
        site.wait_chassis();
        site
    }

    fn namespace(&self) -> RouterNamespace {
        RouterNamespace::for_router(&self.router.layout.router_id, NamespaceKind::OvnRouter)
    }

    fn wait_chassis(&self) {
        self.nb
            .wait_applied(ApplyWait::Chassis, TIMEOUT)
            .expect("the chassis applies the change");
    }

    /// Commits ops in one transaction (the nb_cfg bump added), returning once committed.
    fn commit(&self, ops: Vec<Value>) {
        self.nb
            .transact(ops, ApplyWait::None, TIMEOUT)
            .expect("northbound transaction");
    }
}

impl Site {
    /// Deletes the baselines' load balancers of this router (PRaaS's go with the router's
    /// rows).
    fn remove_baselines(&self) {
        let router = self.router.router();
        let _ = self.nb.transact(
            vec![json!({"op": "delete", "table": "Load_Balancer",
                "where": [["external_ids", "includes",
                    ["map", [["neutron:router_name", router]]]]]})],
            ApplyWait::None,
            TIMEOUT,
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.remove_baselines();
    }
}

/// The workload's forwards in PRaaS's terms: VM `i` gets external ports
/// `FIRST_PORT + 20 i ..` (a port each), to its ports 1000.. .
fn praas_forwards(n: usize, gateway: Ipv4Addr) -> Vec<Forward> {
    (0..n)
        .map(|k| {
            let (vm, j) = (k / PORTS_PER_VM, k % PORTS_PER_VM);
            Forward {
                id: format!("f{k}"),
                protocol: Protocol::Tcp,
                external_ip: gateway,
                external_ports: PortRange::single(FIRST_PORT + k as u16).unwrap(),
                internal_ip: backend(vm),
                internal_ports: PortRange::single(1000 + j as u16).unwrap(),
                allowed_cidrs: vec![],
                masquerade: false,
            }
        })
        .collect()
}

/// The measured forward in PRaaS's terms: the port after the workload's, to the real VM.
fn praas_measured(n: usize, gateway: Ipv4Addr) -> Forward {
    Forward {
        id: "measured".into(),
        protocol: Protocol::Tcp,
        external_ip: gateway,
        external_ports: PortRange::single(FIRST_PORT + n as u16).unwrap(),
        internal_ip: Ipv4Addr::new(10, 200, 0, 10),
        internal_ports: PortRange::single(VM_PORT).unwrap(),
        allowed_cidrs: vec![],
        masquerade: false,
    }
}

/// One Neutron load balancer: its name and VIPs.
struct NeutronLb {
    name: String,
    fip: usize,
    vips: Vec<(String, String)>,
}

/// The workload in Neutron's layout: per VM a floating IP and one load balancer with its 20
/// VIPs, or (ranges) one load balancer per port.
fn neutron_lbs(n: usize, ranges: bool) -> Vec<NeutronLb> {
    let vms = n.div_ceil(PORTS_PER_VM);
    let mut lbs = Vec::new();
    for vm in 0..vms {
        let ports = PORTS_PER_VM.min(n - vm * PORTS_PER_VM);
        let vips: Vec<(String, String)> = (0..ports)
            .map(|j| {
                (
                    format!("{}:{}", floating_ip(vm), FIRST_PORT + j as u16),
                    format!("{}:{}", backend(vm), 1000 + j),
                )
            })
            .collect();
        if ranges {
            for (j, vip) in vips.into_iter().enumerate() {
                lbs.push(NeutronLb {
                    name: format!("pf-floatingip-fip{vm}-tcp-{}", FIRST_PORT + j as u16),
                    fip: vm,
                    vips: vec![vip],
                });
            }
        } else {
            lbs.push(NeutronLb {
                name: format!("pf-floatingip-fip{vm}-tcp"),
                fip: vm,
                vips,
            });
        }
    }
    lbs
}

/// The measured forward in Neutron's layout: a new floating IP's first forward, to the real VM.
fn neutron_measured(n: usize) -> (NeutronLb, SocketAddrV4) {
    let fip = n.div_ceil(PORTS_PER_VM);
    let vip = SocketAddrV4::new(floating_ip(fip), FIRST_PORT);
    (
        NeutronLb {
            name: format!("pf-floatingip-fip{fip}-tcp"),
            fip,
            vips: vec![(vip.to_string(), format!("10.200.0.10:{VM_PORT}"))],
        },
        vip,
    )
}

/// Inserting `lbs` and attaching them to the router and the tenant switch, as operations of
/// one transaction.
fn neutron_insert(site: &Site, lbs: &[NeutronLb]) -> Vec<Value> {
    let router = site.router.router();
    let mut ops = Vec::with_capacity(lbs.len() + 2);
    let mut refs = Vec::with_capacity(lbs.len());
    for (i, lb) in lbs.iter().enumerate() {
        let uuid_name = format!("lb{i}");
        ops.push(
            json!({"op": "insert", "table": "Load_Balancer", "uuid-name": uuid_name,
            "row": {
                "name": lb.name,
                "protocol": "tcp",
                "vips": ["map", lb.vips.iter().map(|(v, b)| json!([v, b])).collect::<Vec<_>>()],
                "external_ids": ["map", [
                    ["neutron:device_owner", "port_forwarding_plugin"],
                    ["neutron:fip_id", format!("fip{}", lb.fip)],
                    ["neutron:router_name", router],
                ]],
            }}),
        );
        refs.push(json!(["named-uuid", uuid_name]));
    }
    for (table, name) in [
        ("Logical_Router", router.clone()),
        ("Logical_Switch", site.router.tenant_switch()),
    ] {
        ops.push(
            json!({"op": "mutate", "table": table, "where": [["name", "==", name]],
            "mutations": [["load_balancer", "insert", ["set", refs]]]}),
        );
    }
    ops
}

fn neutron_delete(name: &str) -> Vec<Value> {
    vec![json!({"op": "delete", "table": "Load_Balancer", "where": [["name", "==", name]]})]
}

/// Programs layout `layout` with `n` forwards from empty; returns (committed, applied).
fn program(site: &Site, layout: Layout, n: usize) -> (Duration, Duration) {
    let t = Instant::now();
    match layout {
        Layout::Praas => {
            let rules = RuleSet::from_forwards(&praas_forwards(n, site.router.gateway())).unwrap();
            site.sync
                .sync(&site.namespace(), &rules)
                .expect("PRaaS sync");
        }
        Layout::NeutronPf | Layout::NeutronPfRanges => {
            let ranges = layout == Layout::NeutronPfRanges;
            site.commit(neutron_insert(site, &neutron_lbs(n, ranges)));
        }
    }
    let committed = t.elapsed();
    site.wait_chassis();
    (committed, t.elapsed())
}

/// Adds (`add`) or removes the measured forward, on top of `n`, returning once committed.
fn change_measured(site: &Site, layout: Layout, n: usize, add: bool) -> SocketAddrV4 {
    match layout {
        Layout::Praas => {
            let gateway = site.router.gateway();
            let mut forwards = praas_forwards(n, gateway);
            let measured = praas_measured(n, gateway);
            let vip = SocketAddrV4::new(gateway, measured.external_ports.first());
            if add {
                forwards.push(measured);
            }
            let rules = RuleSet::from_forwards(&forwards).unwrap();
            site.sync
                .sync(&site.namespace(), &rules)
                .expect("PRaaS sync");
            vip
        }
        Layout::NeutronPf | Layout::NeutronPfRanges => {
            let (lb, vip) = neutron_measured(n);
            if add {
                site.commit(neutron_insert(site, std::slice::from_ref(&lb)));
            } else {
                site.commit(neutron_delete(&lb.name));
            }
            vip
        }
    }
}

/// +1 and -1 at `n`: (commit, applied) for each, `reps` times.
fn add_remove(site: &Site, layout: Layout, n: usize, reps: usize) -> [Vec<Duration>; 4] {
    let mut out: [Vec<Duration>; 4] = Default::default();
    for _ in 0..reps {
        for (add, at) in [(true, 0), (false, 2)] {
            let t = Instant::now();
            change_measured(site, layout, n, add);
            out[at].push(t.elapsed());
            site.wait_chassis();
            out[at + 1].push(t.elapsed());
        }
    }
    out
}

/// One connection attempt from the client, given up after `timeout`.
fn try_connect(dst: SocketAddrV4, timeout: Duration) -> bool {
    let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return false;
    };
    s.connect_timeout(&SockAddr::from(dst), timeout).is_ok()
}

/// From the northbound change (adding the measured forward) until the first connection through
/// it succeeds, `samples` times; the forward is removed and applied between samples.
fn first_packet(site: &Site, layout: Layout, n: usize, samples: usize) -> Vec<Duration> {
    let path = praas::dataplane::netns::path_of(&site.client.namespace);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let vip = change_measured(site, layout, n, true);
        let found = praas::dataplane::netns::run_in_path(&path, || {
            while t.elapsed() < Duration::from_secs(60) {
                if try_connect(vip, Duration::from_millis(2)) {
                    return Some(t.elapsed());
                }
            }
            None
        })
        .expect("the client's namespace")
        .unwrap_or_else(|| panic!("{}: no connection to {vip} within 60 s", layout.name()));
        out.push(found);
        site.wait_chassis();
        change_measured(site, layout, n, false);
        site.wait_chassis();
    }
    out
}

/// TCP connect times through the measured forward, which is programmed and applied.
fn connect_times(site: &Site, layout: Layout, n: usize, samples: usize) -> Vec<Duration> {
    let vip = change_measured(site, layout, n, true);
    site.wait_chassis();
    let path = praas::dataplane::netns::path_of(&site.client.namespace);
    let times = praas::dataplane::netns::run_in_path(&path, || {
        // The first ones resolve the gateway's MAC and warm the datapath's caches.
        for _ in 0..20 {
            if try_connect(vip, Duration::from_secs(1)) {
                break;
            }
        }
        (0..samples)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                let t = Instant::now();
                s.connect(&SockAddr::from(vip))
                    .expect("connect through the forward");
                t.elapsed()
            })
            .collect::<Vec<_>>()
    })
    .expect("the client's namespace");
    change_measured(site, layout, n, false);
    site.wait_chassis();
    times
}

/// Removes what `program` wrote, and waits until applied.
fn unprogram(site: &Site, layout: Layout, n: usize) {
    match layout {
        Layout::Praas => {
            site.sync
                .sync(&site.namespace(), &RuleSet::default())
                .expect("PRaaS sync to empty");
        }
        Layout::NeutronPf | Layout::NeutronPfRanges => {
            let ranges = layout == Layout::NeutronPfRanges;
            let ops = neutron_lbs(n, ranges)
                .iter()
                .flat_map(|lb| neutron_delete(&lb.name))
                .collect();
            site.commit(ops);
        }
    }
    site.wait_chassis();
}

/// How many load balancers the northbound database holds.
fn load_balancers(site: &Site) -> usize {
    site.nb
        .read(|r| r.rows("Load_Balancer").count())
        .expect("the replica")
}

/// CPU time (user + system) of a daemon of the environment so far, and its resident memory.
struct Daemon {
    name: &'static str,
    pid: u32,
}

impl Daemon {
    fn all(env: &OvnEnv) -> Vec<Daemon> {
        [
            ("ovn-northd", "ovn-northd.pid"),
            ("ovn-controller", "ovn-controller.pid"),
            ("ovs-vswitchd", "ovs-vswitchd.pid"),
            ("NB ovsdb-server", "ovnnb_db.pid"),
            ("SB ovsdb-server", "ovnsb_db.pid"),
        ]
        .into_iter()
        .filter_map(|(name, file)| {
            let pid = std::fs::read_to_string(env.rundir.join(file)).ok()?;
            Some(Daemon {
                name,
                pid: pid.trim().parse().ok()?,
            })
        })
        .collect()
    }

    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // After the command's closing parenthesis: field 14 (utime) and 15 (stime) in ticks.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

/// Logical flows in the southbound database and OpenFlow flows on br-int.
fn flow_counts(env: &OvnEnv) -> (usize, usize) {
    let logical = env
        .sbctl(&["--bare", "--columns=_uuid", "list", "Logical_Flow"])
        .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    let mgmt = format!("unix:{}", env.rundir.join("br-int.mgmt").display());
    let openflow = simnode::run(&["ovs-ofctl", "dump-aggregate", &mgmt], None)
        .ok()
        .and_then(|out| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix("flow_count="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    (logical, openflow)
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else if d < Duration::from_secs(10) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn p50_p99(v: &[Duration]) -> String {
    format!("{} / {}", ms(percentile(v, 0.5)), ms(percentile(v, 0.99)))
}

fn us_p50_p99(v: &[Duration]) -> String {
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    format!("{} / {}", us(percentile(v, 0.5)), us(percentile(v, 0.99)))
}

fn run_layout(b: &mut Bench, env: &Arc<OvnEnv>, layout: Layout, o: &Options) {
    let name = layout.name();
    let n = o.forwards;
    let site = Site::new(env, layout);
    eprintln!("== {name}: {n} forwards");

    // At 10 forwards first: the small end of first packet and connect time.
    program(&site, layout, 10);
    let first_small = first_packet(&site, layout, 10, o.samples);
    let connect_small = connect_times(&site, layout, 10, o.samples);
    unprogram(&site, layout, 10);

    let flows_before = flow_counts(env);
    let daemons = Daemon::all(env);
    let cpu_before: Vec<Duration> = daemons.iter().map(Daemon::cpu).collect();
    let lbs_before = load_balancers(&site);
    let (committed, applied) = program(&site, layout, n);
    let lbs = load_balancers(&site) - lbs_before;
    let cpu: Vec<Duration> = daemons
        .iter()
        .zip(&cpu_before)
        .map(|(d, before)| d.cpu().saturating_sub(*before))
        .collect();
    let (logical, openflow) = flow_counts(env);
    let rss: Vec<f64> = daemons.iter().map(Daemon::rss_mib).collect();

    let [add_commit, add_applied, del_commit, del_applied] = add_remove(&site, layout, n, o.reps);
    let first_large = first_packet(&site, layout, n, o.samples);
    let connect_large = connect_times(&site, layout, n, o.samples);
    vswitchd_alive(env);

    let size = count(n);
    b.row(
        &format!(
            "{name}: program {size} forwards from empty ({} load balancers)",
            count(lbs)
        ),
        format!("{} / {}", ms(committed), ms(applied)),
        "committed / applied on the chassis (hv_cfg)",
    );
    b.row(
        &format!("{name}: +1 forward at {size}"),
        format!("{} / {}", p50_p99(&add_commit), p50_p99(&add_applied)),
        &format!("committed p50 / p99, applied p50 / p99; {} runs", o.reps),
    );
    b.row(
        &format!("{name}: −1 forward at {size}"),
        format!("{} / {}", p50_p99(&del_commit), p50_p99(&del_applied)),
        &format!("committed p50 / p99, applied p50 / p99; {} runs", o.reps),
    );
    for (at, v) in [(10, &first_small), (n, &first_large)] {
        b.row(
            &format!(
                "{name}: NB change → first forwarded connection, at {}",
                count(at)
            ),
            p50_p99(v),
            &format!("p50 / p99 of {}; polled every 2 ms", o.samples),
        );
    }
    for (at, v) in [(10, &connect_small), (n, &connect_large)] {
        b.row(
            &format!("{name}: TCP connect through the forward, at {}", count(at)),
            us_p50_p99(v),
            &format!("p50 / p99 of {}", o.samples),
        );
    }
    b.row(
        &format!("{name}: flows at {size}"),
        format!(
            "+{} logical / +{} OpenFlow",
            count(logical.saturating_sub(flows_before.0)),
            count(openflow.saturating_sub(flows_before.1))
        ),
        "added by the forwards: southbound Logical_Flow rows / br-int's flows",
    );
    let cpu_text: Vec<String> = daemons
        .iter()
        .zip(&cpu)
        .filter(|(_, c)| !c.is_zero())
        .map(|(d, c)| format!("{} {}", d.name, ms(*c)))
        .collect();
    b.row(
        &format!("{name}: daemons' CPU to program {size}"),
        cpu_text.join(", "),
        "user + system time, from the commit until hv_cfg",
    );
    let rss_text: Vec<String> = daemons
        .iter()
        .zip(&rss)
        .map(|(d, r)| format!("{} {r:.0}", d.name))
        .collect();
    b.row(
        &format!("{name}: daemons' memory at {size}"),
        format!("{} MiB", rss_text.join(", ")),
        "resident",
    );

    unprogram(&site, layout, n);
    drop(site);
}

/// Runs a layout; when ovs-vswitchd aborts meanwhile (OVS 3.1's userspace conntrack assertion,
/// see `docs/operations.md`), starts it again and runs the layout again from the start, at
/// most twice, and says so in the results. Other failures end the run.
fn run_layout_again_after_aborts(b: &mut Bench, env: &Arc<OvnEnv>, layout: Layout, o: &Options) {
    for attempt in 1..=3 {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_layout(b, env, layout, o)
        }));
        match run {
            Ok(()) => return,
            Err(panic) if attempt < 3 && !vswitchd_running(env) => {
                eprintln!(
                    "ovs-vswitchd aborted during {}: starting it again",
                    layout.name()
                );
                simnode::run(&[&OvnEnv::script().to_string_lossy(), "up"], None)
                    .expect("scripts/ovn up");
                b.row(
                    &format!("{}: ovs-vswitchd aborted, run again", layout.name()),
                    format!("attempt {attempt}"),
                    "the figures above and below come from a complete attempt",
                );
                drop(panic);
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn vswitchd_running(env: &OvnEnv) -> bool {
    std::fs::read_to_string(env.rundir.join("ovs-vswitchd.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Fails the layout if ovs-vswitchd died meanwhile (its figures would not mean anything).
fn vswitchd_alive(env: &OvnEnv) {
    assert!(
        vswitchd_running(env),
        "ovs-vswitchd died during the run; see ovs-vswitchd.log in {}",
        env.rundir.display()
    );
}

/// `routers` Neutron-like routers (a tenant switch with a VM port, a gateway port on a
/// chassis), as operations of one transaction.
fn routers_ops(routers: usize) -> Vec<Value> {
    let mut ops = Vec::new();
    for i in 0..routers {
        let (a, b) = ((i / 250) as u8, (i % 250) as u8);
        let named = |what: &str| json!(["named-uuid", format!("{what}{i}")]);
        let insert = |table: &str, what: &str, row: Value| json!({"op": "insert", "table": table, "uuid-name": format!("{what}{i}"), "row": row});
        ops.push(insert(
            "Logical_Switch_Port",
            "rp",
            json!({"name": format!("rp{i}"), "type": "router",
                "options": ["map", [["router-port", format!("lrp-int-{i}")]]]}),
        ));
        ops.push(insert(
            "Logical_Switch_Port",
            "vm",
            json!({"name": format!("vm{i}"),
                "addresses": format!("fa:16:3e:01:{a:02x}:{b:02x} 10.{a}.{b}.5")}),
        ));
        ops.push(insert(
            "Logical_Switch",
            "ls",
            json!({"name": format!("neutron-net{i}"),
                "ports": ["set", [named("rp"), named("vm")]]}),
        ));
        ops.push(insert(
            "Logical_Router_Port",
            "int",
            json!({"name": format!("lrp-int-{i}"), "mac": format!("fa:16:3e:02:{a:02x}:{b:02x}"),
                "networks": format!("10.{a}.{b}.1/24")}),
        ));
        ops.push(insert(
            "Gateway_Chassis",
            "gc",
            json!({"name": format!("gc{i}"), "chassis_name": "chassis-1", "priority": 1}),
        ));
        ops.push(insert(
            "Logical_Router_Port",
            "gw",
            json!({"name": format!("lrp-gw-{i}"), "mac": format!("fa:16:3e:03:{a:02x}:{b:02x}"),
                "networks": "203.0.113.1/24", "gateway_chassis": named("gc")}),
        ));
        ops.push(insert(
            "Logical_Router",
            "lr",
            json!({"name": format!("neutron-r{i}"), "ports": ["set", [named("int"), named("gw")]]}),
        ));
    }
    ops
}

fn run_routers(b: &mut Bench, routers: usize) {
    assert!(routers <= 62_500, "--routers: at most 62,500");
    eprintln!("== the OVN worker's check of {routers} routers");
    let server = NorthboundServer::start().expect("a private northbound ovsdb-server");
    let nb = Arc::new(Northbound::new(
        vec![Remote::parse(&server.remote()).unwrap()],
        TlsFiles::default(),
        TIMEOUT,
    ));
    nb.transact(routers_ops(routers), ApplyWait::None, TIMEOUT)
        .expect("the routers");
    let backend = Arc::new(OvnBackend::new(nb.clone(), ApplyWait::None, TIMEOUT));
    let sync = RouterSync::new(backend.clone(), Arc::new(NoFlows));
    let namespaces: Vec<RouterNamespace> = (0..routers)
        .map(|i| RouterNamespace::for_router(&format!("r{i}"), NamespaceKind::OvnRouter))
        .collect();
    // Ten forwards to each router's VM, as the agent's first pass writes them.
    let gateway = Ipv4Addr::new(203, 0, 113, 1);
    let rules_of = |i: usize| {
        let vm = Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, 5);
        let forwards: Vec<Forward> = (0..10)
            .map(|k| Forward {
                id: format!("f{i}-{k}"),
                protocol: Protocol::Tcp,
                external_ip: gateway,
                external_ports: PortRange::single(4000 + k).unwrap(),
                internal_ip: vm,
                internal_ports: PortRange::single(22).unwrap(),
                allowed_cidrs: vec![],
                masquerade: false,
            })
            .collect();
        RuleSet::from_forwards(&forwards).unwrap()
    };
    let t = Instant::now();
    for (i, ns) in namespaces.iter().enumerate() {
        sync.sync(ns, &rules_of(i)).expect("sync");
    }
    let programmed = t.elapsed();
    let check_all = |expect_drift: usize| -> Duration {
        let t = Instant::now();
        let drifted = namespaces
            .iter()
            .filter(|ns| matches!(sync.check(ns).expect("check"), Check::Drifted(_)))
            .count();
        let took = t.elapsed();
        assert_eq!(drifted, expect_drift);
        took
    };
    // What every check did before fingerprints per router: read back every router.
    let read_back_all = || -> Duration {
        let t = Instant::now();
        for ns in &namespaces {
            backend.read_back(ns).expect("read back");
        }
        t.elapsed()
    };
    let moved = |before: (u64, u64)| {
        let t = Instant::now();
        while nb.generation().unwrap() == before {
            assert!(
                t.elapsed() < TIMEOUT,
                "the change never reached the replica"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // The check the agent makes each second, once, so that every router's fingerprint is known.
    check_all(0);
    let mut rounds: [Vec<Duration>; 3] = Default::default();
    for round in 0..5 {
        // A change elsewhere: a port added to the first router's tenant switch.
        let before = nb.generation().unwrap();
        server
            .nbctl(&["lsp-add", "neutron-net0", &format!("extra{round}")])
            .unwrap();
        moved(before);
        rounds[0].push(read_back_all());
        rounds[1].push(check_all(0));
        // A change of ours: a VIP of the first router's load balancer edited by hand.
        let before = nb.generation().unwrap();
        server
            .nbctl(&[
                "set",
                "Load_Balancer",
                "praas-r0-tcp-10.0.0.5",
                &format!("vips:\"203.0.113.1:4000\"=\"10.0.0.{}:22\"", 100 + round),
            ])
            .unwrap();
        moved(before);
        rounds[2].push(check_all(1));
        // Repaired, as the agent's next pass does.
        sync.sync(&namespaces[0], &rules_of(0)).unwrap();
        check_all(0);
    }
    let n = count(routers);
    b.row(
        &format!("OVN worker, {n} routers × 10 forwards: first pass"),
        ms(programmed),
        "one transaction per router, private ovsdb-server (no northd, no chassis)",
    );
    b.row(
        &format!("OVN worker, {n} routers: every router read back (the check before)"),
        p50_p99(&rounds[0]),
        "after a port was added to one router's switch; p50 / p99 of 5",
    );
    b.row(
        &format!("OVN worker, {n} routers: check of every router, now"),
        p50_p99(&rounds[1]),
        "after the same change: fingerprints from one pass, none moved; p50 / p99 of 5",
    );
    b.row(
        &format!("OVN worker, {n} routers: check after one router's VIP was edited"),
        p50_p99(&rounds[2]),
        "one pass, that router read back and found drifted; p50 / p99 of 5",
    );
}

fn value_of<T: std::str::FromStr>(args: &[String], flag: &str, default: T) -> T {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: nothing to check here.
        return;
    }
    if let Some(reason) = praas::testbed::ovn::unavailable() {
        eprintln!("the OVN benchmark cannot run here: {reason}");
        std::process::exit(2);
    }
    let o = Options {
        forwards: value_of(&args, "--forwards", 10_000),
        reps: value_of(&args, "--reps", 20),
        samples: value_of(&args, "--samples", 100),
    };
    assert!(
        (10..=10_160).contains(&o.forwards),
        "--forwards: 10 to 10,160"
    );
    let only = args
        .iter()
        .position(|a| a == "--layout")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let env = OvnEnv::start().expect("scripts/ovn up");
    let mut b = Bench { rows: vec![] };
    for (key, layout) in [
        ("praas", Layout::Praas),
        ("neutron", Layout::NeutronPf),
        ("ranges", Layout::NeutronPfRanges),
    ] {
        if only.as_deref().is_none_or(|o| o == key) {
            run_layout_again_after_aborts(&mut b, &env, layout, &o);
        }
    }
    if only.as_deref().is_none_or(|o| o == "routers") {
        run_routers(&mut b, value_of(&args, "--routers", 1_000));
    }
    println!("| measurement | result | note |\n|---|---|---|");
    for (what, figure, note) in &b.rows {
        println!("| {what} | {figure} | {note} |");
    }
}
