//! Monitor benchmark: API calls and wall time of one cycle at 10,000 mappings over 1,000
//! routers, against a recorded-response Neutron (an in-memory stand-in that answers the same
//! filtered, paged requests), and the original's algorithm counted the same way (every port
//! of the cloud listed once per mapped address).
//!
//! `cargo bench --bench monitor` (`-- --quick` for 1,000 mappings over 100 routers). No root.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use praas::dataplane::{PortRange, Protocol};
use praas::monitor::{Monitor, PortGone};
use praas::openstack::{clouds, NeutronDirectory, Session};
use praas::store::{ExternalPorts, NewMapping, Policy, Store, Strategy};
use serde_json::{json, Value};

struct Cloud {
    routers: Collection,
    ports: Collection,
    subnets: Collection,
    requests: AtomicU64,
    bytes: AtomicU64,
    base: String,
}

fn pairs(query: &Option<String>) -> Vec<(String, String)> {
    let q = query.clone().unwrap_or_default();
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Items with indexes on `id` and `device_id`, so that the stand-in's own lookups cost little
/// next to what is measured (Neutron answers these filters from database indexes too).
struct Collection {
    items: Vec<Value>,
    by: HashMap<(&'static str, String), Vec<usize>>,
}

impl Collection {
    fn new(items: Vec<Value>) -> Self {
        let mut by: HashMap<(&'static str, String), Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            for key in ["id", "device_id"] {
                if let Some(v) = item[key].as_str() {
                    by.entry((key, v.to_string())).or_default().push(i);
                }
            }
        }
        Collection { items, by }
    }

    fn filter(&self, query: &[(String, String)]) -> Vec<Value> {
        let indexed = ["id", "device_id"]
            .into_iter()
            .find(|k| query.iter().any(|(q, _)| q == k));
        match indexed {
            Some(key) => {
                let mut rows: Vec<usize> = query
                    .iter()
                    .filter(|(q, _)| q == key)
                    .flat_map(|(_, v)| {
                        self.by
                            .get(&(key, v.clone()))
                            .into_iter()
                            .flatten()
                            .copied()
                    })
                    .collect();
                rows.sort_unstable();
                rows.dedup();
                let candidates: Vec<Value> =
                    rows.into_iter().map(|i| self.items[i].clone()).collect();
                filter(&candidates, query)
            }
            None => filter(&self.items, query),
        }
    }
}

/// Neutron's filtering as far as PRaaS and the original use it: repeated keys are alternatives,
/// `fixed_ips=ip_address=…|subnet_id=…` matches a fixed IP; `limit` pages (no marker needed
/// here: every filtered answer fits in one page).
fn filter(items: &[Value], query: &[(String, String)]) -> Vec<Value> {
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, v) in query {
        if k != "limit" {
            by_key.entry(k.as_str()).or_default().push(v.as_str());
        }
    }
    items
        .iter()
        .filter(|item| {
            by_key.iter().all(|(k, values)| match *k {
                "fixed_ips" => values.iter().any(|v| {
                    let (field, want) = v.split_once('=').unwrap_or(("", ""));
                    item["fixed_ips"]
                        .as_array()
                        .is_some_and(|ips| ips.iter().any(|ip| ip[field] == want))
                }),
                _ => values.iter().any(|v| item[*k] == *v),
            })
        })
        .cloned()
        .collect()
}

fn answer(cloud: &Cloud, key: &str, items: Vec<Value>) -> impl IntoResponse {
    let body = json!({ key: items }).to_string();
    cloud.requests.fetch_add(1, Ordering::Relaxed);
    cloud.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    ([("content-type", "application/json")], body)
}

async fn serve(cloud: Arc<Cloud>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route(
            "/v3/auth/tokens",
            post(|State(c): State<Arc<Cloud>>| async move {
                let body = json!({"token": {
                    "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                    "user": {"id": "praas"}, "project": {"id": "service"}, "roles": [],
                    "catalog": [{"type": "network", "endpoints": [
                        {"interface": "public", "url": c.base.clone(), "region_id": "RegionOne"}]}]}});
                ([("x-subject-token", "token")], Json(body))
            }),
        )
        .route(
            "/v2.0/ports",
            get(|State(c): State<Arc<Cloud>>, RawQuery(q): RawQuery| async move {
                let items = c.ports.filter(&pairs(&q));
                answer(&c, "ports", items)
            }),
        )
        .route(
            "/v2.0/routers",
            get(|State(c): State<Arc<Cloud>>, RawQuery(q): RawQuery| async move {
                let items = c.routers.filter(&pairs(&q));
                answer(&c, "routers", items)
            }),
        )
        .route(
            "/v2.0/subnets",
            get(|State(c): State<Arc<Cloud>>, RawQuery(q): RawQuery| async move {
                let items = c.subnets.filter(&pairs(&q));
                answer(&c, "subnets", items)
            }),
        )
        .route(
            "/v2.0/{collection}/{id}",
            get(|State(c): State<Arc<Cloud>>, Path((_, _)): Path<(String, String)>| async move {
                c.requests.fetch_add(1, Ordering::Relaxed);
                StatusCode::NOT_FOUND
            }),
        )
        .with_state(cloud);
    axum::serve(listener, app).await.unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // run by `cargo test --all-targets`: nothing to check
    }
    let (routers, per_router) = if args.iter().any(|a| a == "--quick") {
        (100, 10)
    } else {
        (1_000, 10)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(routers, per_router));
}

async fn run(n_routers: usize, per_router: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut routers = vec![];
    let mut ports = vec![];
    let mut subnets = vec![];
    let mut mappings = vec![];
    for r in 0..n_routers {
        let router_id = uuid::Uuid::new_v4().to_string();
        let subnet_id = uuid::Uuid::new_v4().to_string();
        let (hi, lo) = ((r / 250) as u8, (r % 250) as u8);
        let gateway = Ipv4Addr::new(203, 0, 113, 0); // one address for all: it is not looked at
        routers.push(json!({"id": router_id, "project_id": "p", "distributed": false,
            "external_gateway_info": {"external_fixed_ips": [{"subnet_id": "ext", "ip_address": gateway.to_string()}]}}));
        subnets
            .push(json!({"id": subnet_id, "cidr": format!("10.{hi}.{lo}.0/24"), "ip_version": 4}));
        ports.push(json!({"id": uuid::Uuid::new_v4().to_string(), "project_id": "p", "device_id": router_id,
            "device_owner": "network:router_interface",
            "fixed_ips": [{"subnet_id": subnet_id, "ip_address": format!("10.{hi}.{lo}.1")}]}));
        for v in 0..per_router {
            let port_id = uuid::Uuid::new_v4().to_string();
            let ip = format!("10.{hi}.{lo}.{}", 10 + v);
            ports.push(json!({"id": port_id, "project_id": "p", "device_id": format!("vm-{r}-{v}"),
                "device_owner": "compute:nova", "mac_address": "fa:16:3e:00:00:00", "name": format!("vm-{r}-{v}"),
                "status": "ACTIVE", "admin_state_up": true, "network_id": "net", "security_groups": ["default"],
                "fixed_ips": [{"subnet_id": subnet_id, "ip_address": ip}]}));
            mappings.push((router_id.clone(), port_id, ip, gateway));
        }
    }
    let cloud = Arc::new(Cloud {
        routers: Collection::new(routers),
        ports: Collection::new(ports),
        subnets: Collection::new(subnets),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        base: base.clone(),
    });
    tokio::spawn(serve(cloud.clone(), listener));

    let dir = std::env::temp_dir().join(format!("praas-bench-monitor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let policy = Policy {
        range: PortRange::new(4000, 4100).unwrap(),
        strategy: Strategy::Sequential,
    };
    for (router_id, port_id, ip, gateway) in &mappings {
        store
            .create(
                NewMapping {
                    project_id: "p".into(),
                    router_id: router_id.clone(),
                    distributed: false,
                    external_ip_address: *gateway,
                    protocol: Protocol::Tcp,
                    external_ports: ExternalPorts::Allocate { len: 1 },
                    internal_ip_address: ip.parse().unwrap(),
                    internal_port_id: Some(port_id.clone()),
                    internal_ports: PortRange::single(22).unwrap(),
                    description: String::new(),
                    allowed_cidrs: vec![],
                    masquerade: false,
                },
                &policy,
            )
            .await
            .unwrap();
    }
    let yaml = format!(
        "clouds:\n  openstack:\n    auth:\n      auth_url: {base}\n      username: praas\n      \
         password: fake\n      project_name: service\n"
    );
    let session = Arc::new(
        Session::new(
            clouds::parse(&yaml, "openstack").unwrap(),
            Duration::from_secs(30),
        )
        .unwrap(),
    );
    session.auth_token().await.unwrap();
    let monitor = Monitor::new(
        store.clone(),
        Arc::new(NeutronDirectory::new(session.clone())),
        PortGone::Delete,
    );
    let mut rows = vec![];
    let mut times = vec![];
    let mut requests = 0;
    let mut bytes = 0;
    for _ in 0..3 {
        let (r0, b0) = (
            cloud.requests.load(Ordering::Relaxed),
            cloud.bytes.load(Ordering::Relaxed),
        );
        let t = Instant::now();
        let report = monitor.cycle(Duration::from_secs(90)).await.unwrap();
        times.push(t.elapsed());
        assert_eq!((report.deleted, report.updated), (0, 0), "{report:?}");
        requests = cloud.requests.load(Ordering::Relaxed) - r0;
        bytes = cloud.bytes.load(Ordering::Relaxed) - b0;
    }
    times.sort();
    let n = mappings.len();
    rows.push((
        format!("PRaaS cycle, {n} mappings over {n_routers} routers"),
        format!("{requests} requests, {:.1} MB", bytes as f64 / 1e6),
        format!("{:.0} ms (median of 3)", times[1].as_secs_f64() * 1e3),
    ));

    // The original: for every mapped address, every port of the cloud, looked through for one
    // whose first fixed IP is that address. Timed on a sample, the rest in proportion.
    let http = reqwest::Client::new();
    let sample = 20.min(n);
    let (r0, b0) = (
        cloud.requests.load(Ordering::Relaxed),
        cloud.bytes.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    for (_, _, ip, _) in mappings.iter().take(sample) {
        let all: Value = http
            .get(format!("{base}/v2.0/ports"))
            .header("x-auth-token", "token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = all["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["fixed_ips"][0]["ip_address"] == ip.as_str());
        assert!(found);
    }
    let per_ip = t.elapsed() / sample as u32;
    let per_ip_bytes = (cloud.bytes.load(Ordering::Relaxed) - b0) / sample as u64;
    assert_eq!(cloud.requests.load(Ordering::Relaxed) - r0, sample as u64);
    rows.push((
        format!("original's algorithm, {n} mapped addresses"),
        format!(
            "{n} requests, {:.0} MB",
            (per_ip_bytes * n as u64) as f64 / 1e6
        ),
        format!(
            "≈ {:.0} s ({:.1} ms per address, measured on {sample}, times {n})",
            (per_ip * n as u32).as_secs_f64(),
            per_ip.as_secs_f64() * 1e3
        ),
    ));
    println!("| measurement | API calls | wall time |\n|---|---|---|");
    for (what, calls, time) in rows {
        println!("| {what} | {calls} | {time} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
