//! What a `Type=notify` unit sees: `praas server` run as systemd runs it (NOTIFY_SOCKET set)
//! says READY=1 once it serves, and STOPPING=1 on SIGTERM; its log goes to `[praas] log_file`
//! as JSON lines when asked. Needs no root. `praas agent` says READY=1 only once every router
//! namespace of the node is programmed (needs root).

use praas::testbed::free_port;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The next datagram on `socket`, waiting at most `limit`.
fn receive(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn the_server_tells_systemd_it_is_ready_once_it_serves_and_when_it_stops() {
    let dir = std::env::temp_dir().join(format!("praas-notify-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    let config = dir.join("praas.conf");
    std::fs::write(
        &config,
        format!(
            "[praas]\nport_app = {port}\nbind_address = 127.0.0.1\nauth_strategy = noauth\n\
             log_file = {}/praas.log\nlog_format = json\n\
             [database]\nconnection = sqlite:///{}/praas.db\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["db-sync", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let started = Instant::now();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["server", "--config-file"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = receive(&socket, Duration::from_secs(30));
    let readyz = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let stopping = receive(&socket, Duration::from_secs(10));
    let status = server.wait().unwrap();
    // The log went to [praas] log_file, one JSON object per line.
    let log = std::fs::read_to_string(dir.join("praas.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "API listening" && e["level"] == "INFO"),
        "{log}"
    );
    assert_eq!(
        ready.as_deref(),
        Some("READY=1\n"),
        "after {:?}",
        started.elapsed()
    );
    // READY=1 was sent once the API answered.
    assert_eq!(readyz.map(|r| r.status().as_u16()).ok(), Some(200));
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\n"));
    assert!(status.success(), "{status:?}");
}

/// An empty router namespace, deleted on drop.
struct Namespace(praas::dataplane::RouterNamespace);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = praas::testbed::simnode::run(&["ip", "netns", "del", self.0.name()], None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_tells_systemd_it_is_ready_only_once_the_node_is_programmed() {
    use praas::dataplane::{Backend, RouterNamespace};
    use praas::store::{ExternalPorts, NewMapping, Policy, Store, Strategy};

    let test = "an_agent_tells_systemd_it_is_ready_only_once_the_node_is_programmed";
    if !praas::testbed::simnode::kernel_tests_enabled(test) {
        return;
    }
    let router_id = uuid::Uuid::new_v4().to_string();
    let ns = Namespace(RouterNamespace::named(format!("qrouter-{router_id}")));
    praas::testbed::simnode::run(&["ip", "netns", "add", ns.0.name()], None).unwrap();
    let dir = std::env::temp_dir().join(format!("praas-notify-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite:///{}/praas.db", dir.display());
    let store = Store::open(&database).await.unwrap();
    store.migrate().await.unwrap();
    // Enough mappings that the first pass takes a while.
    const MAPPINGS: usize = 500;
    let policy = Policy {
        range: "4000:4999".parse().unwrap(),
        strategy: Strategy::Sequential,
    };
    for i in 0..MAPPINGS {
        let new = NewMapping {
            project_id: "p1".into(),
            router_id: router_id.clone(),
            distributed: false,
            external_ip_address: "203.0.113.10".parse().unwrap(),
            protocol: "tcp".parse().unwrap(),
            external_ports: ExternalPorts::Allocate { len: 1 },
            internal_ip_address: format!("10.0.{}.{}", i / 200, 2 + i % 200).parse().unwrap(),
            internal_port_id: None,
            internal_ports: "22".parse().unwrap(),
            description: String::new(),
            allowed_cidrs: vec![],
            masquerade: false,
        };
        store.create(new, &policy).await.unwrap();
    }
    drop(store);

    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let status_port = free_port();
    let config = dir.join("praas.conf");
    std::fs::write(
        &config,
        format!(
            "[praas]\nbind_address = 127.0.0.1\nagent_status_port = {status_port}\n\
             host = notify-{router_id}\n[database]\nconnection = {database}\n"
        ),
    )
    .unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_praas"))
        .args(["agent", "--config-file"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = tokio::task::spawn_blocking(move || receive(&socket, Duration::from_secs(60)))
        .await
        .unwrap();
    // At READY=1 the namespace already holds every forward.
    let programmed = praas::dataplane::nft::NftBackend::new()
        .unwrap()
        .read_back(&ns.0)
        .unwrap()
        .map(|rules| rules.forwards.len());
    let readyz = reqwest::get(format!("http://127.0.0.1:{status_port}/readyz")).await;
    // SAFETY: kill(2) on the child this test started.
    unsafe {
        libc::kill(agent.id() as i32, libc::SIGTERM);
    }
    let status = agent.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ready.as_deref(), Some("READY=1\n"));
    assert_eq!(programmed, Some(MAPPINGS));
    assert_eq!(readyz.map(|r| r.status().as_u16()).ok(), Some(200));
    assert!(status.success(), "{status:?}");
}
