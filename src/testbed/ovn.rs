//! A one-chassis OVN (`scripts/ovn`) and namespaces attached to it, for the tests and the demo
//! of the OVN dataplane.
//!
//! ```text
//!  external client ns                 br-ex ──patch── br-int              VM ns
//!  eth0 203.0.113.50/24  <--veth-->   (physnet1)        │      <--veth-->  eth0 10.0.0.5/24
//!                                                       │ iface-id=<logical switch port>
//!                  ovn-controller (chassis), ovn-northd, NB and SB databases on loopback
//! ```
//!
//! [`OvnEnv::start`] brings the environment up once per process (`scripts/ovn up`, a few tenths
//! of a second from cold) and, if it started it, brings it down when the last user drops it; one
//! already running (`scripts/ovn up` by hand) is left running. [`OvnNamespace`] is a VM (a
//! namespace whose veth peer is a port of br-int bound to a logical switch port) or an external
//! client (a namespace on br-ex, the external network of `physnet1`); it is deleted, with its
//! OVS port and veth, when dropped. Every veth end gets `ethtool -K <dev> tx off`: with TX
//! checksum offload, the userspace datapath's NAT and load balancing break every flow.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::simnode::{self, Server, SimNode};
use crate::process::{self, RunError};

/// The programs the environment runs or the helpers call.
pub const PROGRAMS: [&str; 12] = [
    "ovsdb-server",
    "ovsdb-tool",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
    "ovn-northd",
    "ovn-controller",
    "ovn-nbctl",
    "ovn-sbctl",
    "ovn-appctl",
    "ethtool",
    "ip",
];

/// How long an nbctl, sbctl or vsctl call may wait (for `--wait=hv`, `wait-until`, a lock).
const CTL_TIMEOUT_SECS: u32 = 30;

/// Errors of the environment and its namespaces: which command failed and what it printed.
#[derive(Debug, thiserror::Error)]
pub enum OvnError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`scripts/ovn env` printed no {0}")]
    MissingSetting(&'static str),
}

/// Why the OVN environment cannot run here (not root, programs missing), or `None`.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, OVS tap devices)".into());
    }
    let missing: Vec<&str> = PROGRAMS.iter().copied().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "OVN is not installed (missing {}; scripts/install-deps installs it)",
            missing.join(", ")
        ))
    }
}

/// Whether a test may use the OVN environment. Otherwise it prints one line saying why `test` is
/// skipped and returns false; under CI (`CI=true`, root, packages installed by
/// `scripts/install-deps`) it panics instead, so that the OVN tier cannot pass by skipping.
pub fn tests_enabled(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must run the OVN tests: {reason}");
    }
    simnode::skipped(test, &reason);
    false
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// Runs a command and returns its stdout.
fn run(args: &[&str]) -> Result<String, OvnError> {
    run_with(args, None)
}

/// Runs a command with `input` on stdin and returns its stdout.
fn run_with(args: &[&str], input: Option<&str>) -> Result<String, OvnError> {
    let command = args.join(" ");
    process::run(args[0], &args[1..], input).map_err(|e| match e {
        RunError::Spawn(source) => OvnError::Spawn { command, source },
        RunError::Failed(stderr) => OvnError::Command { command, stderr },
    })
}

/// The running environment: where its databases answer.
#[derive(Debug)]
pub struct OvnEnv {
    /// The northbound database, `tcp:127.0.0.1:<port>`.
    pub nb: String,
    /// The southbound database, `tcp:127.0.0.1:<port>`.
    pub sb: String,
    /// The northbound database's unix socket.
    pub nb_socket: PathBuf,
    /// The southbound database's unix socket.
    pub sb_socket: PathBuf,
    /// The Open vSwitch database, `unix:<path>`.
    pub ovs_db: String,
    /// The chassis' name (its system-id).
    pub chassis: String,
    /// The state directory: the daemons' pid files, control sockets and logs.
    pub rundir: PathBuf,
    /// How long `scripts/ovn up` took, when this process started the environment.
    started_in: Option<Duration>,
    /// Whether dropping this brings the environment down.
    owner: bool,
}

/// The environment this process uses, while some test holds it.
static SHARED: Mutex<Shared> = Mutex::new(Shared {
    env: Weak::new(),
    owned: false,
});

struct Shared {
    env: Weak<OvnEnv>,
    /// This process brought the environment up and has not brought it down yet. A test that
    /// starts while the last one's drop has not yet taken the lock finds it running, and takes
    /// over bringing it down (the pending drop then leaves it alone).
    owned: bool,
}

impl OvnEnv {
    /// `scripts/ovn` of this source tree.
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ovn")
    }

    /// The environment, brought up unless it already runs. The tests of one process share it;
    /// when this process started it, it is brought down once the last of them drops it.
    pub fn start() -> Result<Arc<OvnEnv>, OvnError> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(env) = shared.env.upgrade() {
            return Ok(env);
        }
        let script = Self::script();
        let script = script.to_string_lossy();
        let running = Command::new(&*script)
            .arg("status")
            .output()
            .map_err(|source| OvnError::Spawn {
                command: format!("{script} status"),
                source,
            })?
            .status
            .success();
        let started_in = if running {
            None
        } else {
            let t = Instant::now();
            if let Err(e) = run(&[&script, "up"]) {
                // Whatever did start is this process's to stop.
                let _ = run(&[&script, "down"]);
                return Err(e);
            }
            Some(t.elapsed())
        };
        let mut env = Self::from_settings(&run(&[&script, "env"])?)?;
        env.started_in = started_in;
        env.owner = started_in.is_some() || shared.owned;
        shared.owned = env.owner;
        let env = Arc::new(env);
        shared.env = Arc::downgrade(&env);
        Ok(env)
    }

    /// Parses what `scripts/ovn env` prints (`export KEY=value` lines).
    fn from_settings(text: &str) -> Result<OvnEnv, OvnError> {
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().trim_start_matches("export ").split_once('='))
            .collect();
        let get = |key: &'static str| {
            vars.get(key)
                .map(|v| v.to_string())
                .ok_or(OvnError::MissingSetting(key))
        };
        Ok(OvnEnv {
            nb: get("OVN_NB_DB")?,
            sb: get("OVN_SB_DB")?,
            nb_socket: get("PRAAS_OVN_NB_SOCK")?.into(),
            sb_socket: get("PRAAS_OVN_SB_SOCK")?.into(),
            ovs_db: get("PRAAS_OVS_DB")?,
            chassis: get("PRAAS_OVN_CHASSIS")?,
            rundir: get("OVS_RUNDIR")?.into(),
            started_in: None,
            owner: false,
        })
    }

    /// How long `scripts/ovn up` took, or `None` when the environment was already running.
    pub fn started_in(&self) -> Option<Duration> {
        self.started_in
    }

    /// Runs `ovn-nbctl` against the northbound database.
    pub fn nbctl<S: AsRef<str>>(&self, args: &[S]) -> Result<String, OvnError> {
        self.ctl("ovn-nbctl", &self.nb, args)
    }

    /// Runs `ovn-sbctl` against the southbound database.
    pub fn sbctl<S: AsRef<str>>(&self, args: &[S]) -> Result<String, OvnError> {
        self.ctl("ovn-sbctl", &self.sb, args)
    }

    /// Runs `ovs-vsctl` against the Open vSwitch database.
    pub fn vsctl<S: AsRef<str>>(&self, args: &[S]) -> Result<String, OvnError> {
        self.ctl("ovs-vsctl", &self.ovs_db, args)
    }

    fn ctl<S: AsRef<str>>(&self, program: &str, db: &str, args: &[S]) -> Result<String, OvnError> {
        let (db, timeout) = (
            format!("--db={db}"),
            format!("--timeout={CTL_TIMEOUT_SECS}"),
        );
        let mut all = vec![program, &db, &timeout];
        all.extend(args.iter().map(AsRef::as_ref));
        run(&all)
    }

    /// The connection tracking table of the userspace datapath (`ovs-appctl
    /// dpctl/dump-conntrack`), one entry a line: where OVN's NAT and load balancing keep
    /// their connections, every zone in one table.
    pub fn conntrack(&self) -> Result<Vec<String>, OvnError> {
        let pid_file = self.rundir.join("ovs-vswitchd.pid");
        let pid = std::fs::read_to_string(&pid_file).map_err(|source| OvnError::Spawn {
            command: format!("reading {}", pid_file.display()),
            source,
        })?;
        let target = self
            .rundir
            .join(format!("ovs-vswitchd.{}.ctl", pid.trim()))
            .to_string_lossy()
            .into_owned();
        Ok(run(&["ovs-appctl", "-t", &target, "dpctl/dump-conntrack"])?
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Waits until the chassis has bound logical switch port `port` (its VM is attached).
    pub fn wait_port_up(&self, port: &str) -> Result<(), OvnError> {
        self.nbctl(&["wait-until", "Logical_Switch_Port", port, "up=true"])
            .map(drop)
    }
}

impl Drop for OvnEnv {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if shared.env.strong_count() > 0 {
            // Taken over by a test that started meanwhile.
            return;
        }
        let script = Self::script();
        if let Err(e) = run(&[&script.to_string_lossy(), "down"]) {
            eprintln!("OVN environment: {e}");
        }
        shared.owned = false;
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, short enough for interface names (≤ 15 bytes).
fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:05x}{:04x}", std::process::id() & 0xfffff, n & 0xffff)
}

/// A network namespace attached to an OVS bridge of the environment by a veth pair: a VM on
/// br-int, or a client on the external network (br-ex). Deleted when dropped.
#[derive(Debug)]
pub struct OvnNamespace {
    /// The namespace (`praas-ovn-…`); its device is `eth0`.
    pub namespace: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The veth end in the root namespace, a port of `bridge`.
    host_device: String,
    bridge: &'static str,
    ovs_db: String,
    /// What exists so far, for Drop.
    made: Made,
}

#[derive(Debug, Default)]
struct Made {
    namespace: bool,
    veth: bool,
    port: bool,
}

impl OvnNamespace {
    /// A VM on logical switch port `port`: a namespace whose veth peer is a port of br-int with
    /// `external_ids:iface-id=<port>`, with `mac` (the logical port's address), `address` and a
    /// default route via `gateway`.
    pub fn vm(
        env: &OvnEnv,
        port: &str,
        mac: &str,
        address: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<OvnNamespace, OvnError> {
        Self::attach(env, "br-int", Some(port), Some(mac), address, Some(gateway))
    }

    /// A client on the external network: a namespace whose veth peer is a port of br-ex (the
    /// bridge of `physnet1`), with `address` and, if given, a default route via `gateway`.
    pub fn external(
        env: &OvnEnv,
        address: Ipv4Net,
        gateway: Option<Ipv4Addr>,
    ) -> Result<OvnNamespace, OvnError> {
        Self::attach(env, "br-ex", None, None, address, gateway)
    }

    fn attach(
        env: &OvnEnv,
        bridge: &'static str,
        iface_id: Option<&str>,
        mac: Option<&str>,
        address: Ipv4Net,
        gateway: Option<Ipv4Addr>,
    ) -> Result<OvnNamespace, OvnError> {
        let id = unique_suffix();
        let mut ns = OvnNamespace {
            namespace: format!("praas-ovn-{id}"),
            ip: address.addr(),
            host_device: format!("pov{id}"),
            bridge,
            ovs_db: env.ovs_db.clone(),
            made: Made::default(),
        };
        let (n, host) = (ns.namespace.clone(), ns.host_device.clone());
        run(&["ip", "netns", "add", &n])?;
        ns.made.namespace = true;
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &n,
        ])?;
        ns.made.veth = true;
        let mut inside = String::from("link set lo up\n");
        if let Some(mac) = mac {
            inside += &format!("link set eth0 address {mac}\n");
        }
        inside += &format!("addr add {address} dev eth0\nlink set eth0 up\n");
        if let Some(gateway) = gateway {
            inside += &format!("route add default via {gateway}\n");
        }
        run_with(&["ip", "-n", &n, "-batch", "-"], Some(&inside))?;
        run(&["ip", "link", "set", &host, "up"])?;
        // Both ends: checksums are left to the peer otherwise, and OVS's NAT breaks them.
        run(&["ethtool", "-K", &host, "tx", "off"])?;
        run(&[
            "ip", "netns", "exec", &n, "ethtool", "-K", "eth0", "tx", "off",
        ])?;
        let mut add = vec!["add-port".to_string(), bridge.into(), host.clone()];
        if let Some(iface_id) = iface_id {
            add.extend([
                "--".into(),
                "set".into(),
                "Interface".into(),
                host.clone(),
                format!("external_ids:iface-id={iface_id}"),
            ]);
        }
        // Recorded first: a failed add-port may still have added the port.
        ns.made.port = true;
        env.vsctl(&add)?;
        Ok(ns)
    }

    /// Starts a TCP echo server in the namespace on `port` (answers `from=<client> <line>`).
    pub fn serve_tcp(&self, port: u16) -> io::Result<Server> {
        Server::tcp_in(&self.namespace, port)
    }

    /// Starts a UDP echo server in the namespace on `port`.
    pub fn serve_udp(&self, port: u16) -> io::Result<Server> {
        Server::udp_in(&self.namespace, port)
    }

    /// One TCP request and its answer line, from this namespace to `dst`.
    pub fn tcp_exchange(&self, dst: SocketAddrV4, msg: &str) -> io::Result<String> {
        SimNode::tcp_exchange(&self.namespace, None, dst, msg)
    }

    /// One UDP datagram and its answer, from this namespace to `dst`.
    pub fn udp_exchange(&self, dst: SocketAddrV4, msg: &str) -> io::Result<String> {
        SimNode::udp_exchange(&self.namespace, None, dst, msg)
    }
}

impl Drop for OvnNamespace {
    fn drop(&mut self) {
        let timeout = format!("--timeout={CTL_TIMEOUT_SECS}");
        let db = format!("--db={}", self.ovs_db);
        if self.made.port {
            let _ = run(&[
                "ovs-vsctl",
                &db,
                &timeout,
                "--if-exists",
                "del-port",
                self.bridge,
                &self.host_device,
            ]);
        }
        // Deleting one end deletes the pair, at once (a deleted namespace's devices go later).
        if self.made.veth {
            let _ = run(&["ip", "link", "del", &self.host_device]);
        }
        if self.made.namespace {
            let _ = run(&["ip", "netns", "del", &self.namespace]);
        }
    }
}
