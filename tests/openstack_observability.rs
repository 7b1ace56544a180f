//! What an operator watches, on real processes: `praas all-in-one` (the binary) on the dev
//! cloud's Keystone and Neutron, serving a router of the test's own on a simulated network
//! node. A tenant maps a VM's port with a real token and sends real traffic through the
//! router's gateway; then the port is deleted in Neutron and the monitor deletes the mapping.
//! `GET /metrics` is scraped at each step, its counters must have moved with the flows, and
//! `promtool check metrics` must accept it; `praas status` must show the process, the agent,
//! the monitor's lease and last cycle, and the mappings by status.
//!
//! Needs root (namespaces) and the dev cloud; without them it skips with a line (and fails
//! in CI).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kernel_tests_enabled;
use common::metrics::{promtool_accepts, sample, scrape};
use praas::testbed::free_port;
use praas::testbed::simnode::SimNode;
use serde_json::Value;
use support::{Cloud, OwnRouter, KEYSTONE};

/// `praas status` with `args`, for the configuration `config`.
fn status(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["status", "--config-file"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "praas status: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The praas process, killed when dropped.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET url` with `token`: the answer's JSON, or `None` when there is none.
async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Option<Value> {
    http.get(url)
        .header("x-auth-token", token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_follow_a_mapping_through_traffic_and_its_port_s_deletion() {
    let test = "metrics_and_status_follow_a_mapping_through_traffic_and_its_port_s_deletion";
    if !kernel_tests_enabled(test) {
        return;
    }
    let Some(cloud) = Cloud::find(test) else {
        return;
    };
    let _shared = KEYSTONE.read().await;
    let own = OwnRouter::create(&cloud, 1).await;
    let node = own.node(&cloud).await;
    let _server = node.serve_tcp(0, 22).unwrap();

    let dir = std::env::temp_dir().join(format!("praas-observe-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let host = format!("observe-{}", uuid::Uuid::new_v4().simple());
    let config = dir.join("praas.conf");
    std::fs::write(
        &config,
        format!(
            "[praas]\nport_app = {port}\nbind_address = 127.0.0.1\nport_allocation = sequential\n\
             host = {host}\nreport_interval = 1\nsecond_monitoring = 1\n\
             [database]\nconnection = sqlite:///{}/praas.db\n\
             [dataplane]\nusage_interval = 1\n\
             [openstack]\nclouds_file = {}\n",
            dir.display(),
            cloud.dir.join("clouds.yaml").display()
        ),
    )
    .unwrap();
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_praas"))
            .args(["all-in-one", "--config-file"])
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("praas.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("ready", Duration::from_secs(30), async || {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Before any mapping: the build, the role, and nothing mapped.
    let text = scrape(&base).await;
    promtool_accepts(&text);
    assert_eq!(
        sample(
            &text,
            "praas_build_info",
            &[
                ("role", "all-in-one"),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "praas_mappings", &[("status", "ACTIVE")]),
        Some(0.0)
    );

    // A tenant maps the VM's port with the Proxy CLI, waiting until it is ACTIVE.
    let token = cloud.token("a-member").await;
    let (vm_port, vm_ip) = own.vms[0].clone();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .arg("pat")
        .arg("--clouds-file")
        .arg(cloud.dir.join("clouds.yaml"))
        .args(["--os-cloud", "a-member", "--os-url", &base])
        .args(["create", "--router", &own.id, "--port", &vm_port])
        .args(["--internal-protocol-port", "22", "--wait", "-f", "json"])
        .env_remove("OS_CLOUD")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        created["status"], "ACTIVE",
        "--wait returns once ACTIVE: {created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    let external = created["external_port"].as_u64().unwrap() as u16;
    assert_eq!(created["internal_ip_address"], vm_ip.to_string());

    // Real traffic through the router's gateway address.
    let gateway = own.gateway(&cloud).await.unwrap();
    let client = node.client_ns.clone();
    let answer = tokio::task::spawn_blocking(move || {
        SimNode::tcp_exchange(&client, None, SocketAddrV4::new(gateway, external), "hello")
    })
    .await
    .unwrap()
    .unwrap();
    assert!(answer.ends_with("hello"), "{answer}");

    // The kernel counted the connection: the agent adds it to the mapping within a second.
    let shown = eventually("the mapping's usage", Duration::from_secs(10), async || {
        let m = get_json(&http, &format!("{base}/v1/mappings/{id}"), &token).await?;
        (m["mapping"]["packets"].as_u64() > Some(0)).then_some(m)
    })
    .await;
    let mapping = &shown["mapping"];
    // A TCP exchange: handshake, data and answer, and the close, both ways.
    assert!(mapping["packets"].as_u64() >= Some(6), "{shown}");
    assert!(mapping["bytes"].as_u64() > Some(6 * 40), "{shown}");
    assert!(mapping["last_used"].is_string(), "{shown}");

    let text = eventually(
        "the usage in /metrics",
        Duration::from_secs(5),
        async || {
            let text = scrape(&base).await;
            (sample(&text, "praas_mapping_packets_total", &[("mapping_id", &id)]) > Some(0.0))
                .then_some(text)
        },
    )
    .await;
    promtool_accepts(&text);
    assert!(
        sample(
            &text,
            "praas_mapping_bytes_total",
            &[("mapping_id", &id), ("router_id", &own.id)]
        ) > Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "praas_forwarded_packets_total", &[]) >= Some(6.0),
        "{text}"
    );
    assert!(
        sample(&text, "praas_forwarded_bytes_total", &[]) > Some(240.0),
        "{text}"
    );
    let requests = |method: &str, route: &str, status: &str| {
        sample(
            &text,
            "praas_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/v1/mappings", "201"), Some(1.0), "{text}");
    assert!(
        requests("GET", "/v1/mappings/{id}", "200") >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "praas_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/v1/mappings")]
        ) == Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "praas_mappings", &[("status", "ACTIVE")]),
        Some(1.0)
    );
    assert!(sample(&text, "praas_agent_passes_total", &[("kind", "full")]) >= Some(1.0));
    assert!(
        sample(&text, "praas_agent_namespaces", &[]) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "praas_agent_failing_namespaces", &[]),
        Some(0.0)
    );
    let applied: f64 = ["changes", "full"]
        .iter()
        .filter_map(|mode| {
            sample(
                &text,
                "praas_agent_apply_duration_seconds_count",
                &[("mode", mode)],
            )
        })
        .sum();
    assert!(applied >= 1.0, "{text}");
    // The caller's token was validated by Keystone, the router and port read from Neutron.
    let openstack = |service: &str, operation: &str| {
        sample(
            &text,
            "praas_openstack_request_duration_seconds_count",
            &[("service", service), ("operation", operation)],
        )
        .unwrap_or(0.0)
    };
    assert!(openstack("keystone", "validate") >= 1.0, "{text}");
    assert!(openstack("keystone", "login") >= 1.0, "{text}");
    assert!(openstack("neutron", "read") >= 2.0, "{text}");
    assert_eq!(
        sample(&text, "praas_monitor_lease_held", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, "praas_monitor_cycles_total", &[]) >= Some(1.0));

    // The VM's port is deleted: the monitor deletes the mapping, and counts it.
    support::neutron_call(
        &cloud,
        "admin",
        reqwest::Method::DELETE,
        &format!("ports/{vm_port}"),
        None,
    )
    .await;
    let text = eventually(
        "the monitor's deletion",
        Duration::from_secs(15),
        async || {
            let text = scrape(&base).await;
            (sample(&text, "praas_monitor_deletions_total", &[]) == Some(1.0)).then_some(text)
        },
    )
    .await;
    promtool_accepts(&text);
    assert_eq!(
        sample(&text, "praas_mappings", &[("status", "ACTIVE")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "praas_monitor_abandoned_cycles_total", &[]),
        Some(0.0)
    );
    assert!(
        sample(&text, "praas_monitor_cycle_neutron_requests_sum", &[]) >= Some(2.0),
        "a cycle with a mapping reads its router and its port: {text}"
    );
    assert!(sample(&text, "praas_monitor_cycle_duration_seconds_count", &[]) >= Some(1.0));
    assert_eq!(
        sample(&text, "praas_monitor_lease_holder", &[]),
        Some(1.0),
        "the lease, read from the database: {text}"
    );

    // OpenMetrics when asked for, as Prometheus does.
    let resp = http
        .get(format!("{base}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(resp.text().await.unwrap().ends_with("# EOF\n"));

    // The operator's overview, as JSON and as a table.
    let overview: Value = serde_json::from_str(&status(&config, &["--json"])).unwrap();
    let service = &overview["services"][0];
    assert_eq!(service["role"], "all-in-one", "{overview}");
    assert_eq!(service["host"], host.as_str());
    assert_eq!(service["alive"], true);
    assert_eq!(service["address"], format!("127.0.0.1:{port}"));
    let agent = &overview["agents"][0];
    assert_eq!(agent["host"], host.as_str(), "{overview}");
    assert_eq!(agent["alive"], true);
    assert!(agent["routers"].as_u64() >= Some(1), "{overview}");
    assert_eq!(overview["monitor"]["active"], true, "{overview}");
    let cycle = &overview["monitor"]["last_cycle"];
    assert_eq!(cycle["error"], Value::Null, "{overview}");
    assert!(cycle["neutron_requests"].is_u64(), "{overview}");
    assert_eq!(overview["mappings"]["total"], 0, "{overview}");
    let table = status(&config, &[]);
    for expected in [
        "Servers and monitors",
        "all-in-one",
        &host,
        "alive",
        "last cycle:",
        "total",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from:\n{table}"
        );
    }

    drop(process);
    let log = std::fs::read_to_string(dir.join("praas.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    own.remove(&cloud).await;
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
