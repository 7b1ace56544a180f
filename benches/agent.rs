//! Agent benchmark: a network node with 1,000 router namespaces and 10 mappings each.
//!
//! Run as root: `cargo bench --bench agent` (`-- --routers N` for another size).
//! Prints a Markdown table; `docs/benchmarks.md` holds the figures of the last run.
//!
//! Real parts: 1,000 empty `qrouter-*` namespaces made here, the nftables backend, conntrack,
//! and a SQLite store (the default) holding the mappings. Measured:
//! - cold start: a new agent's first pass, from the store to every namespace programmed, read
//!   back and verified, and every mapping's status recorded (target ≤ 2 s);
//! - the node check the agent makes every second at rest (is every namespace still what was
//!   programmed), and what it costs when one namespace was flushed behind its back;
//! - the process's resident memory afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use praas::agent::Agent;
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::Driver;
use praas::placement::LocalNamespaces;
use praas::store::{ExternalPorts, ListFilter, NewMapping, Policy, Status, Store, Strategy};
use praas::testbed::simnode;

const PER_ROUTER: usize = 10;

/// Router namespaces made here (named like Neutron's, with an id recognisable as ours), deleted
/// on drop.
struct Routers(Vec<String>);

impl Routers {
    fn new(n: usize) -> Routers {
        let ids: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "5e1fbe{:02x}-{i:04x}-4000-8000-000000000000",
                    std::process::id() & 0xff
                )
            })
            .collect();
        let script: String = ids
            .iter()
            .map(|id| format!("netns add qrouter-{id}\n"))
            .collect();
        let routers = Routers(ids);
        simnode::run(&["ip", "-batch", "-"], Some(&script)).expect("creating namespaces");
        routers
    }
}

impl Drop for Routers {
    fn drop(&mut self) {
        let script: String = self
            .0
            .iter()
            .map(|id| format!("netns del qrouter-{id}\n"))
            .collect();
        let _ = simnode::run(&["ip", "-force", "-batch", "-"], Some(&script));
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets without `--bench`: nothing to check here.
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the agent benchmark needs root (network namespaces)");
        std::process::exit(2);
    }
    let n: usize = args
        .iter()
        .position(|a| a == "--routers")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rows: Vec<(String, String, String)> = vec![];
    let mut row = |what: &str, figure: String, note: &str| {
        eprintln!("{what}: {figure} {note}");
        rows.push((what.to_string(), figure, note.to_string()));
    };

    let started = Instant::now();
    let routers = Routers::new(n);
    eprintln!("{n} namespaces made in {}", ms(started.elapsed()));
    let dir = std::env::temp_dir().join(format!("praas-bench-agent-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    let started = Instant::now();
    for (r, id) in routers.0.iter().enumerate() {
        for m in 0..PER_ROUTER {
            store
                .create(
                    NewMapping {
                        project_id: "bench".into(),
                        router_id: id.clone(),
                        distributed: false,
                        external_ip_address: "203.0.113.10".parse().unwrap(),
                        protocol: if m % 2 == 0 { "tcp" } else { "udp" }.parse().unwrap(),
                        external_ports: ExternalPorts::Allocate { len: 1 },
                        internal_ip_address: std::net::Ipv4Addr::new(
                            10,
                            (r / 250) as u8,
                            (r % 250) as u8,
                            m as u8 + 2,
                        ),
                        internal_port_id: None,
                        internal_ports: "22".parse().unwrap(),
                        description: String::new(),
                        allowed_cidrs: vec![],
                        masquerade: false,
                    },
                    &policy,
                )
                .await
                .unwrap();
        }
    }
    eprintln!(
        "{} mappings stored in {}",
        n * PER_ROUTER,
        ms(started.elapsed())
    );
    let rss_before = rss_mib();

    let sync = Arc::new(RouterSync::new(
        Arc::from(Driver::Nftables.backend().unwrap()),
        Arc::new(Conntrack),
    ));
    let mut agent = Agent::new(
        store.clone(),
        sync,
        Arc::new(LocalNamespaces::default()),
        Duration::from_secs(3600),
    );
    let started = Instant::now();
    let report = agent.pass().await.unwrap();
    let cold = started.elapsed();
    assert_eq!(report.namespaces, n, "{report:?}");
    assert_eq!(report.active, n * PER_ROUTER, "{report:?}");
    let active = store
        .list(&ListFilter::default())
        .await
        .unwrap()
        .iter()
        .filter(|m| m.status == Status::Active)
        .count();
    assert_eq!(active, n * PER_ROUTER);
    row(
        &format!("cold start, {n} routers × {PER_ROUTER} mappings"),
        ms(cold),
        "first pass: list, program, read back and verify every namespace, record every status (target ≤ 2 s)",
    );

    // At rest: what the agent does every second.
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        let report = agent.check_node().await.unwrap();
        assert_eq!(
            report.namespaces, 0,
            "nothing to repair at rest: {report:?}"
        );
    }
    row(
        &format!("node check at rest, {n} namespaces"),
        ms(started.elapsed() / rounds),
        "per look (once a second): list the namespace directory, one generation request per namespace",
    );

    let victim = format!("qrouter-{}", routers.0[n / 2]);
    simnode::run(
        &[
            "ip", "netns", "exec", &victim, "nft", "delete", "table", "ip", "praas",
        ],
        None,
    )
    .unwrap();
    let started = Instant::now();
    let report = agent.check_node().await.unwrap();
    let repair = started.elapsed();
    assert_eq!(
        (report.namespaces, report.active),
        (1, PER_ROUTER),
        "{report:?}"
    );
    row(
        "node check with one namespace flushed",
        ms(repair),
        "finds it, rewrites and verifies its table",
    );
    row(
        &format!("resident memory, {} mappings", n * PER_ROUTER),
        format!("{:.1} MiB", rss_mib()),
        &format!(
            "whole benchmark process (store pool, agent state, {n} netfilter sockets); {rss_before:.1} MiB before the agent"
        ),
    );
    drop(agent);
    drop(routers);
    let _ = std::fs::remove_dir_all(&dir);
    println!("| measurement | result | note |\n|---|---|---|");
    for (what, figure, note) in rows {
        println!("| {what} | {figure} | {note} |");
    }
}
