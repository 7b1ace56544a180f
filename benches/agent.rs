//! Agent benchmark: a network node with 1,000 router namespaces and 10 mappings each.
//!
//! Run as root: `cargo bench --bench agent` (`-- --routers N` for another size; `-- --database
//! mysql://…` for an empty MariaDB database instead of SQLite, which also counts the agent's
//! queries at rest).
//! Prints a Markdown table; `docs/benchmarks.md` holds the figures of the last run.
//!
//! Real parts: 1,000 empty `qrouter-*` namespaces made here, the nftables backend, conntrack,
//! and a SQLite store (the default) holding the mappings. Measured:
//! - cold start: a new agent's first pass, from the store to every namespace programmed, read
//!   back and verified, and every mapping's status recorded (target ≤ 2 s);
//! - the node check the agent makes every second at rest (is every namespace still what was
//!   programmed), and what it costs when one namespace was flushed behind its back;
//! - the process's resident memory afterwards;
//! - then, with 100 mappings per router (100,000), the resident memory of `praas server` (after
//!   an admin's first page, which reads and caches every row) and of `praas agent` (after its
//!   first pass), each a process of the built binary on the same SQLite database.

use praas::testbed::free_port;
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

/// Stores mappings number `per_router` of every router (a few thousand per second).
async fn store_mappings(store: &Store, routers: &Routers, per_router: std::ops::Range<usize>) {
    let policy = Policy {
        range: "4000:4100".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    for (r, id) in routers.0.iter().enumerate() {
        for m in per_router.clone() {
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
}

/// The resident memory of process `pid` (`self` for this one), in MiB.
fn rss_of(pid: &str) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// The resident memory of process `pid` now and at its peak, for the table.
fn rss_and_peak(pid: &str) -> String {
    format!(
        "{:.1} MiB (peak {:.1} MiB)",
        status_mib(pid, "VmRSS:"),
        status_mib(pid, "VmHWM:")
    )
}

/// A `kB` line of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: &str, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn rss_mib() -> f64 {
    rss_of("self")
}

/// Starts `praas <role>` of the built binary on `database`; returns it and its API port once
/// its `/readyz` answers 200.
async fn start_role(
    role: &str,
    dir: &std::path::Path,
    database: &str,
) -> (std::process::Child, u16) {
    let (api, status) = (free_port(), free_port());
    let config = dir.join(format!("{role}.conf"));
    std::fs::write(
        &config,
        format!(
            "[praas]\nport_app = {api}\nbind_address = 127.0.0.1\nauth_strategy = noauth\n\
             agent_status_port = {status}\nhost = bench-{role}\n\
             [database]\nconnection = {database}\n[dataplane]\ndriver = nftables\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .args([role, "--config-file"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = if role == "agent" { status } else { api };
    let started = Instant::now();
    loop {
        let answer = reqwest::get(format!("http://127.0.0.1:{ready}/readyz")).await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "praas {role} never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, api)
}

/// An admin's first page of 10,000 mappings from the server at `api`; returns how long it took.
async fn admin_first_page(api: u16) -> Duration {
    let started = Instant::now();
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{api}/v1/mappings?limit=10000"))
        .header("x-project-id", "bench")
        .header("x-roles", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["mappings"].as_array().map(Vec::len), Some(10_000));
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // As the roles do (`praas::util::limit_malloc_arenas`).
    praas::util::limit_malloc_arenas();
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
    // An empty MariaDB database instead of SQLite (`--database mysql://…`); then the agent's
    // queries at rest are counted too.
    let database_arg = args
        .iter()
        .position(|a| a == "--database")
        .and_then(|i| args.get(i + 1))
        .cloned();
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
        Store::open(
            &database_arg
                .clone()
                .unwrap_or_else(|| format!("sqlite:///{}/praas.db", dir.display())),
        )
        .await
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let started = Instant::now();
    store_mappings(&store, &routers, 0..PER_ROUTER).await;
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

    // The roles as processes of the binary, on the same node and database: first the server
    // at 10,000 mappings, where its listing cache holds every row, then both with 100
    // mappings per router: 100,000 at 1,000 routers.
    let database = database_arg
        .clone()
        .unwrap_or_else(|| format!("sqlite:///{}/praas.db", dir.display()));
    let (mut server, api) = start_role("server", &dir, &database).await;
    let listing = admin_first_page(api).await;
    row(
        &format!(
            "`praas server` resident memory, {} mappings",
            n * PER_ROUTER
        ),
        rss_and_peak(&server.id().to_string()),
        &format!(
            "after a first page of 10,000 as an admin (in {}), which reads and caches every row",
            ms(listing)
        ),
    );
    let _ = server.kill();
    let _ = server.wait();
    let started = Instant::now();
    store_mappings(&store, &routers, PER_ROUTER..10 * PER_ROUTER).await;
    let total = store.list(&ListFilter::default()).await.unwrap().len();
    eprintln!("{total} mappings stored in {}", ms(started.elapsed()));
    // What a server keeps once an admin has listed (past `CACHED_ROWS` the listing cache
    // stays empty and the page is read from the database).
    let (mut server, api) = start_role("server", &dir, &database).await;
    let listing = admin_first_page(api).await;
    row(
        &format!("`praas server` resident memory, {total} mappings"),
        rss_and_peak(&server.id().to_string()),
        &format!(
            "after a first page of 10,000 as an admin (in {}), read from the database past 20,000 mappings",
            ms(listing)
        ),
    );
    let _ = server.kill();
    let _ = server.wait();
    let started = Instant::now();
    let (mut agent, _) = start_role("agent", &dir, &database).await;
    row(
        &format!("`praas agent` resident memory, {total} mappings on {n} routers"),
        rss_and_peak(&agent.id().to_string()),
        &format!(
            "after its first pass (ready in {}): every namespace programmed and verified",
            ms(started.elapsed())
        ),
    );
    if database.starts_with("mysql") {
        // What the agent asks of the database at rest: MariaDB's per-user statistics of the
        // test user, which only the agent uses now (this process's pool is idle).
        let stats = || {
            let out = std::process::Command::new("mysql")
                .args(["-N", "-e", "SET GLOBAL userstat = ON; SELECT SELECT_COMMANDS, UPDATE_COMMANDS, \
                    OTHER_COMMANDS, ROWS_READ FROM information_schema.USER_STATISTICS WHERE USER = 'praas_test'"])
                .output()
                .expect("mysql (as root, over the local socket)");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let v: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            assert_eq!(v.len(), 4, "userstat: {text:?}");
            v
        };
        let before = stats();
        let window = Duration::from_secs(30);
        tokio::time::sleep(window).await;
        let after = stats();
        let rate = |i: usize| (after[i] - before[i]) / window.as_secs_f64();
        row(
            &format!("`praas agent` database load at rest, {total} mappings"),
            format!("{:.2} statements/s", rate(0) + rate(1) + rate(2)),
            &format!(
                "over {} s: {:.2} SELECT/s, {:.2} UPDATE/s, {:.2} other/s, {:.1} rows read/s",
                window.as_secs(),
                rate(0),
                rate(1),
                rate(2),
                rate(3)
            ),
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
    drop(routers);
    let _ = std::fs::remove_dir_all(&dir);

    println!("| measurement | result | note |\n|---|---|---|");
    for (what, figure, note) in rows {
        println!("| {what} | {figure} | {note} |");
    }
}
