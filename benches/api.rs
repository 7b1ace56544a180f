//! Mapping service benchmark: create throughput and latency through the API with the agent
//! programming a real router namespace, listing 10,000 mappings, and the time from `POST`
//! returning to the rule being in the kernel.
//!
//! Run as root: `cargo bench --bench api` (`-- --quick` for fewer mappings, `-- --only
//! sqlite|mariadb` for one database). MariaDB is used
//! when `PRAAS_TEST_MYSQL_URL` (or the loopback test user of `scripts/services`) answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use praas::agent::Agent;
use praas::api::health::Readiness;
use praas::api::{self};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::netlink::sockets;
use praas::dataplane::nft::wire::{self, NftSocket};
use praas::dataplane::nft::FORWARDS_MAP;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::{
    Driver, ExternalKey, PortRange, Protocol, RouterNamespace, RuleSet, Target,
};
use praas::openstack::RouterInfo;
use praas::placement::LocalNamespaces;
use praas::runtime;
use praas::store::{Policy, Store, Strategy};
use praas::testbed::simnode;
use praas::testbed::StaticDirectory;
use serde_json::json;
use tower::ServiceExt;

const GATEWAY: &str = "203.0.113.10";

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]
}

struct Setup {
    app: Router,
    store: Arc<Store>,
    router_id: String,
    namespace: RouterNamespace,
    agent: tokio::task::JoinHandle<()>,
}

async fn setup(connection: &str) -> Setup {
    let router_id = uuid::Uuid::new_v4().to_string();
    let namespace = RouterNamespace::named(format!("qrouter-{router_id}"));
    simnode::run(&["ip", "netns", "add", namespace.name()], None).unwrap();
    let store = Arc::new(Store::open(connection).await.unwrap());
    store.migrate().await.unwrap();
    let sync = Arc::new(RouterSync::new(
        Arc::from(Driver::Nftables.backend().unwrap()),
        Arc::new(Conntrack),
    ));
    let agent = if std::env::var_os("PRAAS_BENCH_NO_AGENT").is_some() {
        tokio::spawn(async {})
    } else {
        tokio::spawn(
            Agent::new(
                store.clone(),
                sync,
                Arc::new(LocalNamespaces::default()),
                Duration::from_secs(3600),
            )
            .run(),
        )
    };
    let directory = StaticDirectory {
        routers: vec![RouterInfo {
            id: router_id.clone(),
            name: "bench".into(),
            project_id: Some("bench".into()),
            gateway_ip: Some(GATEWAY.parse().unwrap()),
            distributed: false,
            subnets: vec!["10.0.0.0/8".parse().unwrap()],
            subnet_ids: vec![],
        }],
        ports: None,
    };
    let app = runtime::api(
        store.clone(),
        Arc::new(directory),
        api::Authenticator::noauth(),
        Policy {
            range: PortRange::new(1024, 65000).unwrap(),
            strategy: Strategy::Random,
        },
        Readiness::store(store.clone()),
    );
    Setup {
        app,
        store,
        router_id,
        namespace,
        agent,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.agent.abort();
        sockets::forget(&self.namespace);
        let _ = simnode::run(&["ip", "netns", "del", self.namespace.name()], None);
    }
}

async fn post(app: &Router, router_id: &str, i: usize) -> (StatusCode, serde_json::Value) {
    let body = json!({"mapping": {"router_id": router_id,
        "internal_ip_address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255), "internal_port": 22}});
    let req = Request::post("/v1/mappings")
        .header("content-type", "application/json")
        .header("x-project-id", "bench")
        .header("x-roles", "member,reader")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Whether the kernel holds the forward of `port` (one netlink lookup).
fn in_kernel(namespace: &RouterNamespace, port: u16, vm: std::net::Ipv4Addr) -> bool {
    let key = ExternalKey {
        ip: GATEWAY.parse().unwrap(),
        protocol: Protocol::Tcp,
        port,
    };
    let rules = RuleSet {
        forwards: [(key, Target { ip: vm, port: 22 })].into(),
        ..Default::default()
    };
    let wanted = wire::elements_of(&rules).remove(0).1;
    sockets::with(namespace, |s| {
        NftSocket::new(s).lookup(FORWARDS_MAP, &wanted)
    })
    .ok()
    .and_then(Result::ok)
    .is_some_and(|found| !found.is_empty())
}

async fn bench(
    label: &str,
    connection: &str,
    total: usize,
    rows: &mut Vec<(String, String, String)>,
) {
    let s = setup(connection).await;
    let concurrency = 16;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(total);
    let mut next = 0;
    while next < total {
        let batch: Vec<_> = (next..(next + concurrency).min(total))
            .map(|i| {
                let (app, router) = (s.app.clone(), s.router_id.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let (status, body) = post(&app, &router, i).await;
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                    t.elapsed()
                })
            })
            .collect();
        next += batch.len();
        for b in batch {
            latencies.push(b.await.unwrap());
        }
    }
    let elapsed = started.elapsed();
    if std::env::var_os("PRAAS_BENCH_CHUNKS").is_some() {
        for (i, chunk) in latencies.chunks(1000).enumerate() {
            let mut c = chunk.to_vec();
            eprintln!(
                "{label} creates {}..{}: p50 {} p99 {}",
                i * 1000,
                i * 1000 + c.len(),
                ms(percentile(&mut c, 0.5)),
                ms(percentile(&mut c, 0.99))
            );
        }
    }
    let rate = total as f64 / elapsed.as_secs_f64();
    let (p50, p99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );
    rows.push((
        format!("{label}: {total} creates, {concurrency} concurrent, agent programming"),
        format!("{rate:.0} creates/s"),
        format!("latency p50 {}, p99 {}", ms(p50), ms(p99)),
    ));

    // Listing everything, as an admin would.
    let mut lists = vec![];
    for _ in 0..5 {
        let req = Request::get("/v1/mappings?limit=10000")
            .header("x-project-id", "admin")
            .header("x-roles", "admin")
            .body(Body::empty())
            .unwrap();
        let t = Instant::now();
        let resp = s.app.clone().oneshot(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        lists.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["mappings"].as_array().unwrap().len(), total.min(10_000));
    }
    rows.push((
        format!(
            "{label}: GET /v1/mappings listing {} mappings",
            total.min(10_000)
        ),
        ms(percentile(&mut lists, 0.5)),
        "median of 5".into(),
    ));

    // The store's part of that listing.
    let mut reads = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let all = s
            .store
            .list(&praas::store::ListFilter::default())
            .await
            .unwrap();
        reads.push(t.elapsed());
        assert_eq!(all.len(), total);
    }
    rows.push((
        format!("{label}: of which the store read"),
        ms(percentile(&mut reads, 0.5)),
        "median of 5; from the listing cache".into(),
    ));
    // And the JSON encoding of the answer.
    let mut encodings = vec![];
    for _ in 0..5 {
        let all = s
            .store
            .list(&praas::store::ListFilter::default())
            .await
            .unwrap();
        let t = Instant::now();
        let list = praas::api::v1::MappingList {
            mappings: all.into_iter().map(Into::into).collect(),
        };
        let bytes = serde_json::to_vec(&list).unwrap();
        encodings.push(t.elapsed());
        assert!(!bytes.is_empty());
    }
    rows.push((
        format!("{label}: of which the JSON encoding"),
        ms(percentile(&mut encodings, 0.5)),
        "median of 5".into(),
    ));
    // A process whose cache is cold (or after a change made elsewhere) reads every row.
    let mut cold = vec![];
    for _ in 0..5 {
        let other = Store::open(connection).await.unwrap();
        let t = Instant::now();
        let all = other
            .list(&praas::store::ListFilter::default())
            .await
            .unwrap();
        cold.push(t.elapsed());
        assert_eq!(all.len(), total);
    }
    rows.push((
        format!("{label}: the store read with a cold cache"),
        ms(percentile(&mut cold, 0.5)),
        "median of 5; every row read and decoded".into(),
    ));

    // From POST returning to the forward being in the kernel, one mapping at a time.
    let mut to_kernel = vec![];
    for i in 0..100 {
        let n = total + i;
        let (status, body) = post(&s.app, &s.router_id, n).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let port = body["mapping"]["external_port"].as_u64().unwrap() as u16;
        let vm = body["mapping"]["internal_ip_address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let t = Instant::now();
        let ns = s.namespace.clone();
        tokio::task::spawn_blocking(move || {
            while !in_kernel(&ns, port, vm) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "forward never reached the kernel"
                );
            }
        })
        .await
        .unwrap();
        to_kernel.push(t.elapsed());
    }
    let (p50, p99) = (
        percentile(&mut to_kernel, 0.5),
        percentile(&mut to_kernel, 0.99),
    );
    rows.push((
        format!("{label}: POST returned → forward in the kernel (at {total} mappings)"),
        ms(p50),
        format!("p50; p99 {}", ms(p99)),
    ));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // run by `cargo test --all-targets`: nothing to check
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the API benchmark needs root (a router namespace and the dataplane)");
        std::process::exit(2);
    }
    let total = if args.iter().any(|a| a == "--quick") {
        1_000
    } else {
        10_000
    };
    // `--only sqlite` or `--only mariadb` runs one database.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.to_lowercase());
    let runs = |label: &str| only.as_deref().is_none_or(|o| o == label.to_lowercase());
    // Warnings (a failed agent pass, a retried transaction) matter to the figures.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRAAS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = vec![];
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("praas-bench-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if runs("SQLite") {
            bench(
                "SQLite",
                &format!("sqlite:///{}/praas.db", dir.display()),
                total,
                &mut rows,
            )
            .await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        let base = std::env::var("PRAAS_TEST_MYSQL_URL").unwrap_or_else(|_| {
            "mysql://praas_test:praas-test-password@127.0.0.1/praas_test".into()
        });
        sqlx::any::install_default_drivers();
        if !runs("MariaDB") {
            return;
        }
        match sqlx::AnyPool::connect(&base).await {
            Ok(admin) => {
                let name = format!("praas_bench_{}", std::process::id());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
                bench("MariaDB", &url, total, &mut rows).await;
                sqlx::query(&format!("DROP DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
            Err(e) => eprintln!("MariaDB not reachable at {base} ({e}); its rows are missing"),
        }
    });
    println!("| measurement | result | note |\n|---|---|---|");
    for (what, figure, note) in rows {
        println!("| {what} | {figure} | {note} |");
    }
}
