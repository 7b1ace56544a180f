//! Quotas against real processes: `praas server` as the binary runs, configured with
//! `[quota] mappings_per_project = 10`, takes 64 creates of one project at once over HTTP.
//! Exactly 10 are created, the 54 others are 409 `quota_exceeded` saying 10 of 10 are in use,
//! and every server shows that usage. On SQLite (one server), on MariaDB (two servers sharing
//! the database) and on Galera (two servers on two nodes, when `PRAAS_TEST_GALERA_URLS` names
//! a cluster; a failure under CI without one). Router facts come from a simulated router
//! namespace, so the tests need root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use praas::testbed::free_port;
use praas::testbed::simnode::{SimNode, SimNodeOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `praas server` of the built binary, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, name: &str, database: &str) -> Server {
        let port = free_port();
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "[praas]\nport_app = {port}\nbind_address = 127.0.0.1\nauth_strategy = noauth\n\
                 [database]\nconnection = {database}\n[dataplane]\nenabled = false\n\
                 [quota]\nmappings_per_project = 10\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_praas"))
            .args(["server", "--config-file"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server { child, port, log }
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port)).await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || started.elapsed() > Duration::from_secs(30) {
                panic!(
                    "praas server not ready ({exited:?}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request as project p1's member.
    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = http
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(30))
            .header("x-project-id", "p1")
            .header("x-roles", "member,reader");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server per database URL (the same URL twice: two servers on one database), 64
/// creates of project p1 spread over them at once.
async fn sixty_four_creates_through(databases: &[String]) {
    let node = tokio::task::spawn_blocking(|| {
        SimNode::new(SimNodeOptions {
            vms: 1,
            neutron_rules: false,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let dir = std::env::temp_dir().join(format!("praas-quota-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // The schema once, as an operator runs db-sync before starting the servers.
    let config = dir.join("db-sync.conf");
    std::fs::write(
        &config,
        format!("[database]\nconnection = {}\n", databases[0]),
    )
    .unwrap();
    let synced = Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["db-sync", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(synced.status.success(), "{synced:?}");
    let mut servers: Vec<Server> = databases
        .iter()
        .enumerate()
        .map(|(i, db)| Server::start(&dir, &format!("server-{i}"), db))
        .collect();
    for s in &mut servers {
        s.wait_ready().await;
    }
    let servers = std::sync::Arc::new(servers);
    let http = reqwest::Client::new();
    let vm = node.vms[0].ip.to_string();
    let creates: Vec<_> = (0..64u16)
        .map(|i| {
            let (servers, http, router, vm) = (
                servers.clone(),
                http.clone(),
                node.router_id.clone(),
                vm.clone(),
            );
            tokio::spawn(async move {
                let server = &servers[usize::from(i) % servers.len()];
                let mapping = json!({"mapping": {"router_id": router,
                    "internal_ip_address": vm, "internal_port": 1000 + i}});
                server
                    .call(&http, reqwest::Method::POST, "/v1/mappings", Some(mapping))
                    .await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for c in creates {
        let (status, body) = c.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(
                    (&body["error"]["code"], &body["error"]["quota"]),
                    (
                        &json!("quota_exceeded"),
                        &json!({"project_id": "p1", "resource": "mappings",
                            "used": 10, "limit": 10, "requested": 1})
                    ),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (10, 54));
    // Every server shows the project's usage, and holds exactly 10 mappings.
    for server in servers.iter() {
        let (status, details) = server
            .call(&http, reqwest::Method::GET, "/v1/quotas/p1/details", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{details}");
        assert_eq!(
            details,
            json!({"quota": {"mappings": {"used": 10, "limit": 10, "reserved": 0},
                "external_ports": {"used": 10, "limit": 1010, "reserved": 0}}})
        );
        let (_, listed) = server
            .call(&http, reqwest::Method::GET, "/v1/mappings", None)
            .await;
        assert_eq!(listed["mappings"].as_array().map(Vec::len), Some(10));
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_creates_at_once_through_one_server_on_sqlite() {
    if !common::kernel_tests_enabled("quota_processes on SQLite") {
        return;
    }
    sixty_four_creates_through(&[common::sqlite_url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_creates_at_once_through_two_servers_on_mariadb() {
    let test = "sixty_four_creates_at_once_through_two_servers_on_mariadb";
    if !common::kernel_tests_enabled(test) {
        return;
    }
    let Some(url) = common::mariadb_url(test).await else {
        return;
    };
    sixty_four_creates_through(&[url.clone(), url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_creates_at_once_through_two_servers_on_two_galera_nodes() {
    let test = "sixty_four_creates_at_once_through_two_servers_on_two_galera_nodes";
    if !common::kernel_tests_enabled(test) {
        return;
    }
    let Some(urls) = common::galera_urls(test).await else {
        return;
    };
    sixty_four_creates_through(&urls[..2]).await;
}
