//! A simulated Neutron network node in throwaway network namespaces, for tests, benchmarks and
//! the demo.
//!
//! ```text
//!  client ns ("the Internet")        router ns qrouter-<id>               switch ns       VM ns
//!  ext0 203.0.113.1/24  <--veth-->  qg-… 203.0.113.10/24 (gateway)
//!  lo   198.51.100.2, 192.0.2.2     qr-… 10.0.0.1/24       <--veth-->  br0  <--veth-->  eth0 10.0.0.5
//!                                   default via 203.0.113.1                   <--veth-->  eth0 10.0.0.6 …
//! ```
//!
//! With `neutron_rules`, the router namespace also carries the Neutron L3 agent's own gateway
//! rules (SNAT of outgoing traffic, the mangle mark on `qg-` ingress and the SNAT of DNATed
//! traffic that did not enter through the gateway), as `neutron/agent/l3/router_info.py` writes
//! them, so that PRaaS is exercised next to what really shares the namespace with it.
//!
//! Every namespace made here is deleted when the [`SimNode`] is dropped. Addresses are from the
//! documentation ranges; traffic never leaves the namespaces.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};

use crate::dataplane::{netns, NamespaceKind, RouterNamespace};
use crate::process::{self, RunError};

/// Gateway address of the simulated router.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The upstream router on the external network (the client namespace's link address).
pub const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Further client source addresses, on the client namespace's loopback.
pub const CLIENT_SOURCES: [Ipv4Addr; 2] =
    [Ipv4Addr::new(198, 51, 100, 2), Ipv4Addr::new(192, 0, 2, 2)];
/// The router's address on the tenant subnet.
pub const INTERNAL_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// How long traffic helpers wait for an answer.
pub const IO_TIMEOUT: Duration = Duration::from_millis(1500);

/// What to build.
#[derive(Debug, Clone)]
pub struct SimNodeOptions {
    pub vms: usize,
    pub neutron_rules: bool,
    pub kind: NamespaceKind,
    /// Addresses and router id as a real cloud allocated them; `None`: the fixed documentation
    /// addresses above and a generated router id.
    pub layout: Option<SimLayout>,
}

impl Default for SimNodeOptions {
    fn default() -> Self {
        SimNodeOptions {
            vms: 2,
            neutron_rules: true,
            kind: NamespaceKind::Qrouter,
            layout: None,
        }
    }
}

/// The router and VMs as Neutron allocated them, to build the node an L3 agent would have.
#[derive(Debug, Clone)]
pub struct SimLayout {
    pub router_id: String,
    /// The router's gateway address with the external subnet's prefix.
    pub gateway: ipnet::Ipv4Net,
    /// The external subnet's gateway (the client namespace's link address).
    pub upstream: Ipv4Addr,
    /// The router's interface address with the tenant subnet's prefix.
    pub internal: ipnet::Ipv4Net,
    /// One VM per address (`vms` is ignored).
    pub vm_ips: Vec<Ipv4Addr>,
}

/// A VM behind the router.
#[derive(Debug, Clone)]
pub struct SimVm {
    pub namespace: String,
    pub ip: Ipv4Addr,
}

/// A router namespace with its external client and VMs.
pub struct SimNode {
    pub router_id: String,
    pub router_ns: RouterNamespace,
    /// The router's gateway address (where clients connect).
    pub gateway_ip: Ipv4Addr,
    pub gateway_device: String,
    pub client_ns: String,
    pub vms: Vec<SimVm>,
    namespaces: Vec<String>,
    /// What the router namespace is wired with, to build it again.
    wiring: RouterWiring,
}

/// How the router namespace is connected: what [`SimNode::rebuild_router`] builds again.
#[derive(Debug, Clone)]
struct RouterWiring {
    id: String,
    switch_ns: String,
    gateway: ipnet::Ipv4Net,
    upstream: Ipv4Addr,
    internal: ipnet::Ipv4Net,
    neutron_rules: bool,
}

/// Errors while building the fixture: which command failed and what it printed.
#[derive(Debug, thiserror::Error)]
pub enum SimNodeError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether a test may touch the kernel (namespaces, netfilter). Outside root it prints one line
/// saying why `test` is skipped and returns false; under CI (`CI=true`, which runs as root) a
/// missing privilege panics instead, so the real-kernel tier can never pass by skipping.
pub fn kernel_tests_enabled(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must run the kernel tests as root");
    }
    skipped(test, "needs root (network namespaces and netfilter)");
    false
}

/// Says that `test` is skipped and why: one line on stderr, and one in the file named by
/// `PRAAS_SKIPPED` when set (the test harness keeps a passing test's output to itself, so
/// `scripts/test` lists and counts the skips from there).
pub fn skipped(test: &str, reason: &str) {
    let line = format!("skipped {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("PRAAS_SKIPPED") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// A name unique to this process and call, short enough for interface names (≤ 15 bytes).
fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:05x}{:04x}", std::process::id() & 0xfffff, n & 0xffff)
}

/// Runs a command, with `input` on stdin if given, and returns its stdout.
pub fn run(args: &[&str], input: Option<&str>) -> Result<String, SimNodeError> {
    let command = args.join(" ");
    process::run(args[0], &args[1..], input).map_err(|e| match e {
        RunError::Spawn(source) => SimNodeError::Spawn { command, source },
        RunError::Failed(stderr) => SimNodeError::Command { command, stderr },
    })
}

/// Runs an `ip -batch` script (one command per line).
fn ip_batch(script: &str) -> Result<(), SimNodeError> {
    run(&["ip", "-batch", "-"], Some(script)).map(drop)
}

impl SimNode {
    /// Builds the namespaces, devices, addresses and (optionally) Neutron's rules.
    pub fn new(options: SimNodeOptions) -> Result<SimNode, SimNodeError> {
        let id = unique_suffix();
        let layout = options.layout.clone().unwrap_or_else(|| SimLayout {
            // A valid UUID (as Neutron router ids are), recognisable as ours by its 5e1f prefix.
            router_id: format!("5e1f{}-{}-4000-8000-000000000000", &id[1..5], &id[5..]),
            gateway: ipnet::Ipv4Net::new(GATEWAY_IP, 24).expect("valid prefix"),
            upstream: UPSTREAM_IP,
            internal: ipnet::Ipv4Net::new(INTERNAL_GATEWAY, 24).expect("valid prefix"),
            vm_ips: (0..options.vms)
                .map(|i| Ipv4Addr::new(10, 0, 0, 5 + i as u8))
                .collect(),
        });
        let router_id = layout.router_id.clone();
        let router_ns = RouterNamespace::for_router(&router_id, options.kind);
        let client_ns = format!("praas-sim-{id}-ext");
        let switch_ns = format!("praas-sim-{id}-sw");
        let vms: Vec<SimVm> = layout
            .vm_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| SimVm {
                namespace: format!("praas-sim-{id}-vm{i}"),
                ip: *ip,
            })
            .collect();
        let (gateway, upstream, internal) = (layout.gateway, layout.upstream, layout.internal);
        let internal_gateway = internal.addr();
        let mut node = SimNode {
            router_id,
            gateway_ip: gateway.addr(),
            gateway_device: format!("qg-{id}"),
            router_ns,
            client_ns,
            vms,
            namespaces: vec![],
            wiring: RouterWiring {
                id: id.clone(),
                switch_ns: switch_ns.clone(),
                gateway,
                upstream,
                internal,
                neutron_rules: options.neutron_rules,
            },
        };
        let r = node.router_ns.name().to_string();
        let (c, s) = (node.client_ns.clone(), switch_ns.clone());

        let mut script = String::new();
        let mut all = vec![r.clone(), c.clone(), s.clone()];
        all.extend(node.vms.iter().map(|v| v.namespace.clone()));
        for ns in &all {
            script += &format!("netns add {ns}\n");
        }
        // Recorded before anything else can fail, so that Drop removes whatever was made.
        node.namespaces = all;
        ip_batch(&script)?;

        // `ip -batch` takes no `-n` per line: one batch per namespace, in an order in which
        // every device exists before it is configured.
        let mut client = "link set lo up\n".to_string();
        for src in CLIENT_SOURCES {
            client += &format!("addr add {src}/32 dev lo\n");
        }
        let steps: Vec<(&str, String)> = vec![
            (
                &s,
                "link set lo up\nlink add br0 type bridge\nlink set br0 up\n".to_string(),
            ),
            (&c, client),
        ];
        for (ns, script) in steps {
            run(&["ip", "-n", ns, "-batch", "-"], Some(&script))?;
        }
        node.wire_router()?;
        let mut steps: Vec<(&str, String)> = vec![];
        let mut switch = String::new();
        for (i, vm) in node.vms.iter().enumerate() {
            steps.push((
                &vm.namespace,
                format!(
                    "link set lo up\n\
                     link add eth0 type veth peer name v{i} netns {s}\n\
                     addr add {}/{} dev eth0\n\
                     link set eth0 up\n\
                     route add default via {internal_gateway}\n",
                    vm.ip,
                    internal.prefix_len()
                ),
            ));
            switch += &format!("link set v{i} master br0 up\n");
        }
        steps.push((&s, switch));
        for (ns, script) in steps {
            run(&["ip", "-n", ns, "-batch", "-"], Some(&script))?;
        }
        Ok(node)
    }

    /// Wires the (empty) router namespace: its gateway device towards the client, its
    /// interface on the tenant switch, forwarding, and Neutron's rules when asked for.
    fn wire_router(&self) -> Result<(), SimNodeError> {
        let w = &self.wiring;
        let (r, c, s) = (self.router_ns.name(), &self.client_ns, &w.switch_ns);
        let (qg, qr) = (&self.gateway_device, format!("qr-{}", w.id));
        let (gateway, upstream, internal) = (w.gateway, w.upstream, w.internal);
        run(
            &["ip", "-n", r, "-batch", "-"],
            Some(&format!(
                "link set lo up\n\
                 link add {qg} type veth peer name ext0 netns {c}\n\
                 addr add {gateway} dev {qg}\n\
                 link set {qg} up\n\
                 route add default via {upstream}\n\
                 link add {qr} type veth peer name r0 netns {s}\n\
                 addr add {internal} dev {qr}\n\
                 link set {qr} up\n"
            )),
        )?;
        run(
            &["ip", "-n", c, "-batch", "-"],
            Some(&format!(
                "addr add {upstream}/{} dev ext0\nlink set ext0 up\n",
                gateway.prefix_len()
            )),
        )?;
        run(
            &["ip", "-n", s, "link", "set", "r0", "master", "br0", "up"],
            None,
        )?;
        run(
            &[
                "ip",
                "netns",
                "exec",
                r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            None,
        )?;
        if w.neutron_rules {
            self.install_neutron_rules()?;
        }
        Ok(())
    }

    /// Deletes the router namespace and builds it again under the same name, empty of our
    /// rules, as the L3 agent does when it restarts or the router is rescheduled back.
    pub fn rebuild_router(&self) -> Result<(), SimNodeError> {
        let r = self.router_ns.name();
        run(&["ip", "netns", "del", r], None)?;
        // The kernel destroys a namespace (and its veth pairs, whose peers live on in the client
        // and switch namespaces) once nothing refers to it any more, e.g. a socket kept open in
        // it: wait for that before wiring a new one with the same device names.
        let started = std::time::Instant::now();
        while run(&["ip", "-n", &self.client_ns, "link", "show", "ext0"], None).is_ok() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(SimNodeError::Command {
                    command: format!("ip netns del {r}"),
                    stderr: "the deleted namespace's devices are still there after 10 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        run(&["ip", "netns", "add", r], None)?;
        self.wire_router()
    }

    /// The L3 agent's gateway rules for this router, in iptables-restore form.
    pub fn neutron_rules(&self) -> String {
        let (qg, gw) = (&self.gateway_device, self.gateway_ip);
        format!(
            "*mangle\n\
             :neutron-l3-agent-PREROUTING - [0:0]\n\
             :neutron-l3-agent-mark - [0:0]\n\
             -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
             -A neutron-l3-agent-PREROUTING -j neutron-l3-agent-mark\n\
             -A neutron-l3-agent-mark -i {qg} -j MARK --set-xmark 0x2/0xffff\n\
             COMMIT\n\
             *nat\n\
             :neutron-l3-agent-PREROUTING - [0:0]\n\
             :neutron-l3-agent-POSTROUTING - [0:0]\n\
             :neutron-l3-agent-snat - [0:0]\n\
             :neutron-l3-agent-float-snat - [0:0]\n\
             :neutron-postrouting-bottom - [0:0]\n\
             -A PREROUTING -j neutron-l3-agent-PREROUTING\n\
             -A POSTROUTING -j neutron-l3-agent-POSTROUTING\n\
             -A POSTROUTING -j neutron-postrouting-bottom\n\
             -A neutron-l3-agent-POSTROUTING ! -i {qg} ! -o {qg} -m conntrack ! --ctstate DNAT -j ACCEPT\n\
             -A neutron-l3-agent-snat -j neutron-l3-agent-float-snat\n\
             -A neutron-l3-agent-snat -o {qg} -j SNAT --to-source {gw} --random-fully\n\
             -A neutron-l3-agent-snat -m mark ! --mark 0x2/0xffff -m conntrack --ctstate DNAT -j SNAT --to-source {gw} --random-fully\n\
             -A neutron-postrouting-bottom -m comment --comment \"Perform source NAT on outgoing traffic.\" -j neutron-l3-agent-snat\n\
             COMMIT\n"
        )
    }

    fn install_neutron_rules(&self) -> Result<(), SimNodeError> {
        let r = self.router_ns.name();
        run(
            &["ip", "netns", "exec", r, "iptables-restore", "--noflush"],
            Some(&self.neutron_rules()),
        )
        .map(drop)
    }

    /// Starts a TCP echo server in VM `vm` on `port`.
    pub fn serve_tcp(&self, vm: usize, port: u16) -> io::Result<Server> {
        Server::tcp_in(&self.vms[vm].namespace, port)
    }

    /// Starts a UDP echo server in VM `vm` on `port`.
    pub fn serve_udp(&self, vm: usize, port: u16) -> io::Result<Server> {
        Server::udp_in(&self.vms[vm].namespace, port)
    }

    /// Opens a TCP connection from namespace `ns`, from source `src` if given.
    pub fn connect(ns: &str, src: Option<Ipv4Addr>, dst: SocketAddrV4) -> io::Result<Connection> {
        let socket = netns::run_in_path(&netns::path_of(ns), || -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProtocol::TCP))?;
            if let Some(src) = src {
                s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
            }
            Ok(s)
        })??;
        socket.connect_timeout(&SockAddr::from(dst), IO_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Connection {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// One TCP request/answer from namespace `ns`: returns the server's line.
    pub fn tcp_exchange(
        ns: &str,
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        msg: &str,
    ) -> io::Result<String> {
        Self::connect(ns, src, dst)?.exchange(msg)
    }

    /// One UDP datagram and its answer from namespace `ns`.
    pub fn udp_exchange(
        ns: &str,
        src: Option<Ipv4Addr>,
        dst: SocketAddrV4,
        msg: &str,
    ) -> io::Result<String> {
        let socket = netns::run_in_path(&netns::path_of(ns), || {
            UdpSocket::bind(SocketAddrV4::new(src.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))
        })??;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        socket.send_to(msg.as_bytes(), dst)?;
        let mut buf = [0u8; 1500];
        let (n, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    }

    /// Moves VM `vm` to `address` (as its DHCP client would after Neutron changed the port's
    /// fixed IP), keeping its default route through the router.
    pub fn readdress_vm(
        &mut self,
        vm: usize,
        address: ipnet::Ipv4Net,
        router: Ipv4Addr,
    ) -> Result<(), SimNodeError> {
        let ns = &self.vms[vm].namespace;
        run(
            &["ip", "-n", ns, "-batch", "-"],
            Some(&format!(
                "addr flush dev eth0\naddr add {address} dev eth0\nroute replace default via {router}\n"
            )),
        )?;
        self.vms[vm].ip = address.addr();
        Ok(())
    }

    /// Moves the router's gateway to `address` (as the L3 agent does when Neutron changes the
    /// router's external fixed IP), keeping the default route to `upstream`.
    pub fn readdress_gateway(
        &mut self,
        address: ipnet::Ipv4Net,
        upstream: Ipv4Addr,
    ) -> Result<(), SimNodeError> {
        run(
            &["ip", "-n", self.router_ns.name(), "-batch", "-"],
            Some(&format!(
                "addr flush dev {qg}\naddr add {address} dev {qg}\nroute replace default via {upstream}\n",
                qg = self.gateway_device
            )),
        )?;
        self.gateway_ip = address.addr();
        (self.wiring.gateway, self.wiring.upstream) = (address, upstream);
        Ok(())
    }

    /// Every namespace this node made.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let script: String = self
            .namespaces
            .iter()
            .map(|ns| format!("netns del {ns}\n"))
            .collect();
        if !script.is_empty() {
            // -force: keep deleting the rest if one is already gone.
            let _ = run(&["ip", "-force", "-batch", "-"], Some(&script));
        }
    }
}

/// A client connection that can exchange several lines.
pub struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Sends `msg` and returns the server's answer line. EOF is an error.
    pub fn exchange(&mut self, msg: &str) -> io::Result<String> {
        self.stream.write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim().to_string())
    }
}

/// An echo server in a VM namespace. It answers `from=<client address> <message>` so that tests
/// see the source address the VM saw. Stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn answer(peer: SocketAddr, msg: &str) -> String {
    format!("from={} {}\n", peer.ip(), msg.trim())
}

impl Server {
    /// Starts a TCP echo server on `port` of every address of namespace `namespace`.
    pub fn tcp_in(namespace: &str, port: u16) -> io::Result<Server> {
        let listener = netns::run_in_path(&netns::path_of(namespace), || {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        })??;
        Server::tcp(listener)
    }

    /// Starts a UDP echo server on `port` of every address of namespace `namespace`.
    pub fn udp_in(namespace: &str, port: u16) -> io::Result<Server> {
        let socket = netns::run_in_path(&netns::path_of(namespace), || {
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        })??;
        Server::udp(socket)
    }

    fn tcp(listener: TcpListener) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        Ok(Self::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut out = match stream.try_clone() {
                                Ok(s) => s,
                                Err(_) => return,
                            };
                            for line in BufReader::new(stream).lines() {
                                let Ok(line) = line else { break };
                                if out.write_all(answer(peer, &line).as_bytes()).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        }))
    }

    fn udp(socket: UdpSocket) -> io::Result<Server> {
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Self::spawn(move |stop| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(
                        answer(peer, &String::from_utf8_lossy(&buf[..n])).as_bytes(),
                        peer,
                    );
                }
            }
        }))
    }

    fn spawn(body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Server {
            stop,
            thread: Some(std::thread::spawn(move || body(flag))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
