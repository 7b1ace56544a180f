//! What one create costs against the real Neutron, next to what one Neutron call costs.
//!
//! `praas server` is started through the runtime as the binary starts it (Keystone
//! authentication, Neutron checks, SQLite), on the dev cloud of `scripts/dev-cloud`, and
//! project A's member creates mappings of its VM's port over HTTP. The baseline, measured in
//! the same run, is one `GET /v2.0/ports/{id}` to the same Neutron with the same client.
//! Target: create median ≤ 2 × the port GET median.
//!
//! ```sh
//! scripts/dev-cloud up                        # once
//! cargo bench --bench create_latency          # ≈ 1 minute
//! cargo bench --bench create_latency -- --quick
//! ```
//! Nothing is changed in Neutron: mappings go to a throwaway SQLite store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use praas::config::{Allocation, Config};
use praas::model::{Limit, PortRange};
use praas::openstack::{clouds, NeutronDirectory, RouterDirectory, Session};
use praas::runtime::{self, Role};
use serde_json::{json, Value};

struct Cloud {
    dir: PathBuf,
    resources: Value,
}

impl Cloud {
    fn find() -> Option<Cloud> {
        let dir = PathBuf::from(
            std::env::var("PRAAS_CLOUD_DIR").unwrap_or_else(|_| "/var/tmp/praas-dev-cloud".into()),
        );
        let text = std::fs::read_to_string(dir.join("resources.json")).ok()?;
        Some(Cloud {
            resources: serde_json::from_str(&text).ok()?,
            dir,
        })
    }

    fn a(&self, key: &str) -> String {
        self.resources["projects"]["a"][key]
            .as_str()
            .unwrap_or_else(|| panic!("resources.json has no projects.a.{key}"))
            .to_string()
    }

    fn vm_port(&self) -> String {
        self.resources["projects"]["a"]["vms"][0]["port_id"]
            .as_str()
            .expect("a VM port")
            .to_string()
    }

    fn session(&self, cloud: &str) -> Arc<Session> {
        let config = clouds::load(&self.dir.join("clouds.yaml"), cloud).unwrap();
        Arc::new(Session::new(config, Duration::from_secs(10)).unwrap())
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort();
    v[((v.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A PRaaS server on the dev cloud, and project A's member calling it.
struct Server {
    running: runtime::Running,
    base: String,
    token: String,
    http: reqwest::Client,
    router: String,
    port: String,
    /// The next VM port to map (each mapping needs a socket of its own).
    next: AtomicU16,
    dir: PathBuf,
}

impl Server {
    async fn start(cloud: &Cloud, router_cache_seconds: u64) -> Server {
        let dir = std::env::temp_dir().join(format!("praas-bench-create-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = Config::default();
        cfg.database.connection = format!("sqlite:///{}/praas.db", dir.display());
        cfg.openstack.clouds_file = Some(cloud.dir.join("clouds.yaml"));
        cfg.openstack.router_cache_seconds = router_cache_seconds;
        cfg.praas.bind_address = std::net::Ipv4Addr::LOCALHOST.into();
        cfg.praas.port_app = 0;
        cfg.praas.router_port_range = PortRange::new(1024, 65000).unwrap();
        cfg.praas.port_allocation = Allocation::Random;
        // Thousands of mappings in one project: no quota, so that creates measure only themselves.
        cfg.quota.mappings_per_project = Limit::Unlimited;
        cfg.quota.external_ports_per_project = Limit::Unlimited;
        let running = runtime::start(&cfg, Role::Server).await.unwrap();
        let base = format!("http://{}", running.api_addr().unwrap());
        Server {
            running,
            base,
            token: cloud.session("a-member").auth_token().await.unwrap(),
            http: reqwest::Client::new(),
            router: cloud.a("router_id"),
            port: cloud.vm_port(),
            next: AtomicU16::new(1),
            dir,
        }
    }

    /// One create as the Proxy CLI sends it; its latency.
    async fn create(&self, with_router: bool) -> Duration {
        let internal_port = self.next.fetch_add(1, Ordering::Relaxed);
        let mut mapping = json!({"internal_port_id": self.port, "internal_port": internal_port});
        if with_router {
            mapping["router_id"] = json!(self.router);
        }
        let started = Instant::now();
        let resp = self
            .http
            .post(format!("{}/v1/mappings", self.base))
            .header("x-auth-token", &self.token)
            .json(&json!({ "mapping": mapping }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        let took = started.elapsed();
        assert_eq!(status.as_u16(), 201, "{body}");
        took
    }

    async fn stop(self) {
        self.running.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn sequential(server: &Server, n: usize, with_router: bool) -> Vec<Duration> {
    // One create first: the token's validation and the router's facts are then cached, as
    // in a service that has been running.
    server.create(with_router).await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(server.create(with_router).await);
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 50 } else { 300 };
    let Some(cloud) = Cloud::find() else {
        println!("create_latency: skipped: no dev cloud (scripts/dev-cloud up)");
        return;
    };
    let neutron = NeutronDirectory::new(cloud.session("openstack"));
    let port = cloud.vm_port();

    // Baseline: one Neutron port GET, the call every create must make.
    neutron
        .port(&port)
        .await
        .unwrap()
        .expect("the VM port exists");
    let mut gets = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        neutron.port(&port).await.unwrap();
        gets.push(started.elapsed());
    }
    let get_median = median(&mut gets);

    // Neutron's own throughput for that call, 16 clients at once: what bounds creates/s.
    let neutron = Arc::new(neutron);
    let concurrent_gets = if quick { 320 } else { 1600 };
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (neutron, port) = (neutron.clone(), port.clone());
        clients.spawn(async move {
            for _ in 0..concurrent_gets / 16 {
                neutron.port(&port).await.unwrap();
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let gets_per_second = concurrent_gets as f64 / started.elapsed().as_secs_f64();

    let server = Server::start(&cloud, 10).await;
    let mut with_router = sequential(&server, n, true).await;
    let mut without_router = sequential(&server, n / 2, false).await;
    // 16 clients at once.
    let server = Arc::new(server);
    let total = if quick { 320 } else { 1600 };
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let server = server.clone();
        clients.spawn(async move {
            let mut took = vec![];
            for _ in 0..total / 16 {
                took.push(server.create(true).await);
            }
            took
        });
    }
    let mut concurrent = vec![];
    while let Some(t) = clients.join_next().await {
        concurrent.extend(t.unwrap());
    }
    let elapsed = started.elapsed();
    Arc::into_inner(server).unwrap().stop().await;

    let uncached_server = Server::start(&cloud, 0).await;
    let mut uncached = sequential(&uncached_server, n / 2, true).await;
    uncached_server.stop().await;

    let create_median = median(&mut with_router);
    println!("| measurement | result | note |");
    println!("|---|---|---|");
    println!(
        "| Neutron `GET /v2.0/ports/{{id}}` (baseline, same client) | {} | median of {n}; p99 {} |",
        ms(get_median),
        ms(p99(&mut gets))
    );
    println!(
        "| create, router given (`POST /v1/mappings`, Keystone + Neutron checks) | {} | median of {n}; p99 {} |",
        ms(create_median),
        ms(p99(&mut with_router))
    );
    println!(
        "| Neutron port GETs, 16 clients at once (baseline) | {gets_per_second:.0} GETs/s | {concurrent_gets} GETs |"
    );
    println!(
        "| create median / port GET median | {:.2} | target ≤ 2 |",
        create_median.as_secs_f64() / get_median.as_secs_f64()
    );
    println!(
        "| create, router found from the port (no `router_id`) | {} | median of {}; p99 {} |",
        ms(median(&mut without_router)),
        without_router.len(),
        ms(p99(&mut without_router))
    );
    println!(
        "| create with the router cache off (`router_cache_seconds = 0`) | {} | median of {}; p99 {} |",
        ms(median(&mut uncached)),
        uncached.len(),
        ms(p99(&mut uncached))
    );
    println!(
        "| 16 clients at once | {:.0} creates/s | {total} creates in {:.2} s; median {}, p99 {} |",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        ms(median(&mut concurrent)),
        ms(p99(&mut concurrent))
    );
}
