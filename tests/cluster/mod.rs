//! A simulated cloud of two network nodes for the multi-node and chaos tests: the namespaces
//! and devices of an HA router with a replica on each node and a second router on node B, each
//! node's own namespace directory, and the roles of the real binary, each agent in its own
//! mount namespace whose `/run/netns` holds only its node's router namespaces.
//!
//! ```text
//!  client 203.0.113.1 ─┐                       ┌─ node A: qrouter-HA (active: 203.0.113.10, 10.0.0.1)
//!   (198.51.100.2)     ├── external switch ────┤
//!                      │                       └─ node B: qrouter-HA (standby: no addresses)
//!                      │                                  qrouter-B2 (203.0.113.50, its own)
//!                      └── tenant switch ── VM 10.0.0.5 (behind both HA replicas)
//! ```
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use praas::testbed::simnode::{self, SimNode};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

pub fn sh(args: &[&str]) {
    simnode::run(args, None).unwrap_or_else(|e| panic!("{e}"));
}

pub fn batch(ns: &str, script: &str) {
    simnode::run(&["ip", "-n", ns, "-batch", "-"], Some(script)).unwrap_or_else(|e| panic!("{e}"));
}

/// A node's own namespace directory: a shared mount, so that namespaces exposed in it later
/// also appear in the agent's private `/run/netns` (a slave of it).
pub struct NodeDir {
    pub path: PathBuf,
    pub exposed: Vec<PathBuf>,
}

impl NodeDir {
    pub fn new(path: PathBuf) -> NodeDir {
        std::fs::create_dir_all(&path).unwrap();
        let p = path.to_str().unwrap();
        sh(&["mount", "--bind", p, p]);
        sh(&["mount", "--make-shared", p]);
        NodeDir {
            path,
            exposed: vec![],
        }
    }

    /// Shows the namespace `real` on this node as `name` (e.g. `qrouter-<id>`).
    pub fn expose(&mut self, real: &str, name: &str) {
        let at = self.path.join(name);
        std::fs::write(&at, "").unwrap();
        sh(&[
            "mount",
            "--bind",
            &format!("/run/netns/{real}"),
            at.to_str().unwrap(),
        ]);
        self.exposed.push(at);
    }
}

impl NodeDir {
    /// Unmounts what was exposed and the directory itself, and deletes it.
    pub fn release(&mut self) {
        for at in self.exposed.drain(..) {
            let _ = simnode::run(&["umount", at.to_str().unwrap()], None);
        }
        if self.path.exists() {
            let _ = simnode::run(&["umount", self.path.to_str().unwrap()], None);
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Drop for NodeDir {
    fn drop(&mut self) {
        self.release();
    }
}

/// The namespaces and devices of the picture above, deleted on drop.
pub struct Topology {
    pub namespaces: Vec<String>,
    pub client: String,
    pub vm: String,
    pub replica_a: String,
    pub replica_b: String,
    pub solo: String,
}

impl Topology {
    pub fn new(id: &str) -> Topology {
        let name = |n: &str| format!("praas-mn-{id}-{n}");
        let t = Topology {
            namespaces: ["ext", "int", "cl", "vm", "ra", "rb", "b2"]
                .iter()
                .map(|n| name(n))
                .collect(),
            client: name("cl"),
            vm: name("vm"),
            replica_a: name("ra"),
            replica_b: name("rb"),
            solo: name("b2"),
        };
        let script: String = t
            .namespaces
            .iter()
            .map(|n| format!("netns add {n}\n"))
            .collect();
        simnode::run(&["ip", "-batch", "-"], Some(&script)).unwrap();
        let (ext, int) = (name("ext"), name("int"));
        for sw in [&ext, &int] {
            batch(
                sw,
                "link set lo up\nlink add br0 type bridge\nlink set br0 up\n",
            );
        }
        batch(
            &t.client,
            &format!(
                "link set lo up\naddr add 198.51.100.2/32 dev lo\n\
                 link add c0 type veth peer name cl netns {ext}\n\
                 addr add 203.0.113.1/24 dev c0\nlink set c0 up\n"
            ),
        );
        batch(
            &t.vm,
            &format!(
                "link set lo up\nlink add eth0 type veth peer name vm netns {int}\n\
                 addr add {VM}/24 dev eth0\nlink set eth0 up\nroute add default via 10.0.0.1\n"
            ),
        );
        // Both replicas are wired alike; only the active one holds the addresses.
        for (replica, tag) in [(&t.replica_a, "a"), (&t.replica_b, "b")] {
            batch(
                replica,
                &format!(
                    "link set lo up\n\
                     link add qg-ha{tag} type veth peer name e{tag} netns {ext}\nlink set qg-ha{tag} up\n\
                     link add qr-ha{tag} type veth peer name i{tag} netns {int}\nlink set qr-ha{tag} up\n"
                ),
            );
            sh(&[
                "ip",
                "netns",
                "exec",
                replica,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
        }
        batch(
            &ext,
            "link set cl master br0 up\nlink set ea master br0 up\nlink set eb master br0 up\n",
        );
        batch(
            &int,
            "link set vm master br0 up\nlink set ia master br0 up\nlink set ib master br0 up\n",
        );
        t.activate(&t.replica_a);
        // The second router: its own gateway and subnet, on veth pairs of its own.
        batch(
            &t.solo,
            "link set lo up\nlink add qg-solo type veth peer name qg-solo-peer\n\
             addr add 203.0.113.50/24 dev qg-solo\nlink set qg-solo up\n\
             link add qr-solo type veth peer name qr-solo-peer\n\
             addr add 10.9.0.1/24 dev qr-solo\nlink set qr-solo up\n",
        );
        t
    }

    /// Gives `replica` the router's addresses, as keepalived does on the active one.
    pub fn activate(&self, replica: &str) {
        let tag = if replica == self.replica_a { "a" } else { "b" };
        batch(
            replica,
            &format!(
                "addr add {GATEWAY}/24 dev qg-ha{tag}\naddr add 10.0.0.1/24 dev qr-ha{tag}\n\
                 route add default via 203.0.113.1\n"
            ),
        );
    }

    /// Moves the addresses from A to B; the client and the VM forget A's MAC address (what
    /// keepalived's gratuitous ARP makes them do).
    pub fn fail_over(&self) {
        batch(
            &self.replica_a,
            "addr flush dev qg-haa\naddr flush dev qr-haa\n",
        );
        self.activate(&self.replica_b);
        for ns in [&self.client, &self.vm] {
            sh(&["ip", "-n", ns, "neigh", "flush", "all"]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let script: String = self
            .namespaces
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        let _ = simnode::run(&["ip", "-force", "-batch", "-"], Some(&script));
    }
}

/// A role of the real binary, killed on drop. It runs in its own mount namespace whose
/// `/run/netns` is `netns` (a node's directory): what `ip netns` on that node would list.
pub struct Role {
    pub child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
    role: String,
    config: PathBuf,
    netns: PathBuf,
}

impl Role {
    pub fn start(name: &str, role: &str, config: &Path, netns: &Path, log: PathBuf) -> Role {
        let mut r = Role {
            child: None,
            name: name.into(),
            log,
            role: role.into(),
            config: config.into(),
            netns: netns.into(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(r#"mount --rbind "$0" /run/netns && exec "$1" "$2" --config-file "$3""#)
            .arg(&self.netns)
            .arg(env!("CARGO_BIN_EXE_praas"))
            .arg(&self.role)
            .arg(&self.config)
            .env("RUST_LOG", "praas=info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after a kill (or kills it first).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether its process is alive (a role whose database was unreachable at start exits,
    /// as it would under systemd, which would start it again).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP echo server (one line per connection) in a namespace, stopped on drop.
pub struct Echo {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub fn start(ns: &str, port: u16) -> Echo {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener =
            praas::dataplane::netns::run_in_path(&praas::dataplane::netns::path_of(ns), || {
                TcpListener::bind(("0.0.0.0", port))
            })
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut line = String::new();
                        if BufReader::new(s.try_clone().unwrap())
                            .read_line(&mut line)
                            .is_ok()
                        {
                            let _ = s.write_all(line.as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub use praas::testbed::free_port;

/// A role's configuration. No quota: the chaos test's clients hold more mappings of one project
/// than the default allows.
pub fn config(dir: &Path, name: &str, database: &str, port: u16, status_port: u16) -> PathBuf {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(
        &path,
        format!(
            "[praas]\nport_app = {port}\nbind_address = 127.0.0.1\nauth_strategy = noauth\n\
             port_allocation = sequential\nhost = {name}\nagent_status_port = {status_port}\n\
             report_interval = 1\nagent_down_time = 5\n\
             [database]\nconnection = {database}\n[dataplane]\ndriver = nftables\n\
             [notifications]\ntransport_url = {}\n\
             [quota]\nmappings_per_project = -1\nexternal_ports_per_project = -1\n",
            crate::common::RABBIT_URL
        ),
    )
    .unwrap();
    path
}

/// A request to a server as an admin of project p1; 502 stands for no answer at all (the
/// server is down, or did not answer within 10 s).
pub async fn call(
    port: u16,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(10))
        .header("x-project-id", "p1")
        .header("x-roles", "admin,member,reader");
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }
        Err(_) => (StatusCode::BAD_GATEWAY, Value::Null),
    }
}

/// Waits for `check` to hold, for at most `limit`; on failure prints the roles' logs.
pub async fn wait(
    what: &str,
    limit: Duration,
    roles: &[&Role],
    mut check: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > limit {
            let logs: Vec<String> = roles.iter().map(|r| r.log_tail()).collect();
            panic!("{what} not within {limit:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn forwards(client: &str, port: u16) -> bool {
    SimNode::tcp_exchange(client, None, SocketAddrV4::new(GATEWAY, port), "hello").is_ok()
}

/// The whole simulated cloud: the topology, both nodes' directories, and four roles of the real
/// binary on the Galera cluster (`galera`: one URL per node), with RabbitMQ announcements:
/// `roles[0]` server 1 (Galera node 1, sees node A), `roles[1]` server 2 (Galera node 2, sees
/// node B), `roles[2]` the agent of node A (Galera node 3), `roles[3]` the agent of node B
/// (Galera node 1). Every role is ready when this returns.
pub struct Cloud {
    // Dropped in this order: the roles, the nodes' directories, the namespaces.
    pub roles: Vec<Role>,
    pub nodes: [NodeDir; 2],
    pub topo: Topology,
    /// The servers' API ports.
    pub api: [u16; 2],
    /// The agents' status ports.
    pub status: [u16; 2],
    pub ha: String,
    pub solo: String,
    pub dir: PathBuf,
}

impl Cloud {
    /// What the cloud needs, each missing one skipped with its reason (a failure under CI):
    /// root, the Galera cluster (whose node URLs are returned) and RabbitMQ, which carries the
    /// servers' announcements to the agents.
    pub async fn prerequisites(test: &str) -> Option<Vec<String>> {
        if !crate::common::kernel_tests_enabled(test) {
            return None;
        }
        let galera = crate::common::galera_urls(test).await?;
        crate::common::rabbitmq_enabled(test).then_some(galera)
    }

    pub async fn start(galera: &[String]) -> Cloud {
        let id = format!("{:05x}", std::process::id() & 0xfffff);
        let ha = format!("5e1f{id:0>4.4}-0a0a-4000-8000-000000000000");
        let solo = format!("5e1f{id:0>4.4}-0b0b-4000-8000-000000000000");
        let topo = Topology::new(&id);
        let dir = std::env::temp_dir().join(format!("praas-cloud-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut node_a = NodeDir::new(dir.join("node-a"));
        let mut node_b = NodeDir::new(dir.join("node-b"));
        node_a.expose(&topo.replica_a, &format!("qrouter-{ha}"));
        node_b.expose(&topo.replica_b, &format!("qrouter-{ha}"));
        node_b.expose(&topo.solo, &format!("qrouter-{solo}"));
        let (api, status) = ([free_port(), free_port()], [free_port(), free_port()]);
        let conf =
            |name: &str, db: &str, port: u16, status: u16| config(&dir, name, db, port, status);
        let cfg = [
            conf("server-1", &galera[0], api[0], free_port()),
            conf("server-2", &galera[1], api[1], free_port()),
            conf("node-a", &galera[2], free_port(), status[0]),
            conf("node-b", &galera[0], free_port(), status[1]),
        ];
        // The schema first, once, as an operator runs `praas db-sync` before starting roles.
        let synced = Command::new(env!("CARGO_BIN_EXE_praas"))
            .args(["db-sync", "--config-file"])
            .arg(&cfg[0])
            .status()
            .unwrap();
        assert!(synced.success(), "db-sync");
        let log = |n: &str| dir.join(format!("{n}.log"));
        let roles = vec![
            Role::start("server-1", "server", &cfg[0], &node_a.path, log("server-1")),
            Role::start("server-2", "server", &cfg[1], &node_b.path, log("server-2")),
            Role::start(
                "agent node-a",
                "agent",
                &cfg[2],
                &node_a.path,
                log("node-a"),
            ),
            Role::start(
                "agent node-b",
                "agent",
                &cfg[3],
                &node_b.path,
                log("node-b"),
            ),
        ];
        let cloud = Cloud {
            topo,
            nodes: [node_a, node_b],
            roles,
            api,
            status,
            ha,
            solo,
            dir,
        };
        for i in 0..4 {
            cloud.wait_ready(i).await;
        }
        cloud
    }

    /// The port of role `i`'s `/readyz`.
    pub fn ready_port(&self, i: usize) -> u16 {
        if i < 2 {
            self.api[i]
        } else {
            self.status[i - 2]
        }
    }

    pub async fn wait_ready(&self, i: usize) {
        let all: Vec<&Role> = self.roles.iter().collect();
        let port = self.ready_port(i);
        wait("a role ready", Duration::from_secs(30), &all, async || {
            call(port, Method::GET, "/readyz", None).await.0 == StatusCode::OK
        })
        .await;
    }

    /// Stops every role and deletes the logs (kept when a test fails, for its message).
    pub fn stop(&mut self) {
        self.roles.clear();
        for node in &mut self.nodes {
            node.release();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
