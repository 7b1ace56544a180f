//! What a `Type=notify` unit sees: `praas server` run as systemd runs it (NOTIFY_SOCKET set)
//! says READY=1 once it serves, and STOPPING=1 on SIGTERM; its log goes to `[praas] log_file`
//! as JSON lines when asked. Needs no root.

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
