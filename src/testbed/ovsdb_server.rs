//! A private OVN northbound database for tests: an `ovsdb-server` on a unix socket in a
//! scratch directory, on a database made from the installed `ovn-nb.ovsschema`. No root, no
//! northd, no chassis: what the OVN driver's row-level tests need. Stopped and deleted on drop.
//! [`NorthboundCluster`] is the same database clustered (raft) over three servers, as
//! production OVN runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::simnode::skipped;

/// Where Debian's `ovn-common` puts the northbound schema.
pub const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

/// Why the server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbServerError {
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("ovsdb-server did not open {} within 10 s", socket.display())]
    NotListening { socket: PathBuf },
}

pub struct NorthboundServer {
    dir: PathBuf,
    child: Option<Child>,
}

fn run(program: &str, args: &[&str]) -> Result<String, OvsdbServerError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| OvsdbServerError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(OvsdbServerError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether OVN's database tools are installed; otherwise says why `test` is skipped (and under
/// CI, `CI=true`, fails it).
fn tools_installed(test: &str) -> bool {
    let missing = ["ovsdb-server", "ovsdb-tool", "ovn-nbctl", "ovs-appctl"]
        .into_iter()
        .find(|p| !installed(p))
        .map(str::to_string)
        .or_else(|| (!Path::new(NB_SCHEMA).exists()).then(|| NB_SCHEMA.to_string()));
    let Some(missing) = missing else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI must have OVN installed (scripts/install-deps): {missing} is missing");
    }
    skipped(
        test,
        &format!("needs OVN's tools ({missing} is missing; scripts/install-deps installs them)"),
    );
    false
}

/// Starts `ovsdb-server` with `args` and waits until it accepts connections on `socket`.
fn spawn_server(args: &[String], socket: &Path) -> Result<Child, OvsdbServerError> {
    let _ = std::fs::remove_file(socket);
    let child = Command::new("ovsdb-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| OvsdbServerError::Spawn {
            command: format!("ovsdb-server {}", args.join(" ")),
            source,
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            return Err(OvsdbServerError::NotListening {
                socket: socket.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

fn scratch_dir(prefix: &str) -> Result<PathBuf, OvsdbServerError> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|source| OvsdbServerError::Spawn {
        command: format!("mkdir {}", dir.display()),
        source,
    })?;
    Ok(dir)
}

impl NorthboundServer {
    /// Starts one, or says why `test` is skipped and returns `None` when OVN's tools are not
    /// installed. Under CI (`CI=true`) missing tools fail the test instead.
    pub fn start_for(test: &str) -> Option<NorthboundServer> {
        if !tools_installed(test) {
            return None;
        }
        Some(NorthboundServer::start().expect("a private northbound ovsdb-server"))
    }
    pub fn start() -> Result<NorthboundServer, OvsdbServerError> {
        let dir = scratch_dir("praas-nb")?;
        let db = dir.join("nb.db");
        run("ovsdb-tool", &["create", &db.to_string_lossy(), NB_SCHEMA])?;
        let mut server = NorthboundServer { dir, child: None };
        server.spawn()?;
        server.nbctl(&["init"])?;
        Ok(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("nb.sock")
    }

    fn spawn(&mut self) -> Result<(), OvsdbServerError> {
        let args = [
            format!("--remote=punix:{}", self.socket().display()),
            format!("--unixctl={}", self.dir.join("ctl").display()),
            format!("--log-file={}", self.dir.join("ovsdb-server.log").display()),
            "--no-chdir".to_string(),
            self.dir.join("nb.db").display().to_string(),
        ];
        self.child = Some(spawn_server(&args, &self.socket())?);
        Ok(())
    }

    /// The remote to give the client: `unix:<socket>`.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// Runs `ovn-nbctl` against this database.
    pub fn nbctl(&self, args: &[&str]) -> Result<String, OvsdbServerError> {
        let db = format!("--db={}", self.remote());
        let mut all = vec![db.as_str(), "--no-leader-only"];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    /// Stops the server (the database file stays): the connection of a client breaks.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same database and socket.
    pub fn restart(&mut self) -> Result<(), OvsdbServerError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for NorthboundServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A northbound database clustered (raft) over three `ovsdb-server`s on loopback, each
/// answering clients on a unix socket of its own. Stopped and deleted on drop.
pub struct NorthboundCluster {
    dir: PathBuf,
    members: Vec<Option<Child>>,
}

impl NorthboundCluster {
    /// Starts one (see [`NorthboundServer::start_for`] for when it is skipped).
    pub fn start_for(test: &str) -> Option<NorthboundCluster> {
        if !tools_installed(test) {
            return None;
        }
        Some(NorthboundCluster::start().expect("a clustered northbound database"))
    }

    pub fn start() -> Result<NorthboundCluster, OvsdbServerError> {
        let dir = scratch_dir("praas-nb-cluster")?;
        let raft: Vec<String> = (0..3)
            .map(|_| format!("tcp:127.0.0.1:{}", super::free_port()))
            .collect();
        let mut cluster = NorthboundCluster {
            dir,
            members: Vec::new(),
        };
        for (i, address) in raft.iter().enumerate() {
            let db = cluster.db(i);
            if i == 0 {
                run("ovsdb-tool", &["create-cluster", &db, NB_SCHEMA, address])?;
            } else {
                run(
                    "ovsdb-tool",
                    &["join-cluster", &db, "OVN_Northbound", address, &raft[0]],
                )?;
            }
        }
        for i in 0..3 {
            let args = [
                format!("--remote=punix:{}", cluster.socket(i).display()),
                format!("--unixctl={}", cluster.ctl(i)),
                format!(
                    "--log-file={}",
                    cluster.dir.join(format!("ovsdb-server{i}.log")).display()
                ),
                "--no-chdir".to_string(),
                cluster.db(i),
            ];
            let child = spawn_server(&args, &cluster.socket(i))?;
            cluster.members.push(Some(child));
        }
        // Every member joined and a leader elected: what nbctl (leader only) waits for.
        cluster.wait_leader(Duration::from_secs(20))?;
        for i in 0..3 {
            cluster.wait_member_connected(i, Duration::from_secs(20))?;
        }
        cluster.nbctl(&["init"])?;
        Ok(cluster)
    }

    fn db(&self, i: usize) -> String {
        self.dir.join(format!("nb{i}.db")).display().to_string()
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("nb{i}.sock"))
    }

    fn ctl(&self, i: usize) -> String {
        self.dir.join(format!("ctl{i}")).display().to_string()
    }

    /// The client remote of member `i`, `unix:<socket>`.
    pub fn remote(&self, i: usize) -> String {
        format!("unix:{}", self.socket(i).display())
    }

    /// What `cluster/status` of member `i` says, or `None` when it does not answer.
    fn status(&self, i: usize) -> Option<String> {
        self.members.get(i)?.as_ref()?;
        run(
            "ovs-appctl",
            &["-t", &self.ctl(i), "cluster/status", "OVN_Northbound"],
        )
        .ok()
    }

    /// The member that is the leader now, if one is.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            self.status(i)
                .is_some_and(|s| s.lines().any(|l| l.trim() == "Role: leader"))
        })
    }

    /// Waits until a leader is elected; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, OvsdbServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(OvsdbServerError::Failed {
                    command: "ovs-appctl cluster/status OVN_Northbound".into(),
                    stderr: format!("no leader elected within {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_member_connected(&self, i: usize, timeout: Duration) -> Result<(), OvsdbServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .status(i)
                .is_some_and(|s| s.lines().any(|l| l.trim() == "Status: cluster member"))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(OvsdbServerError::Failed {
                    command: format!("ovs-appctl -t {} cluster/status", self.ctl(i)),
                    stderr: format!("member {i} did not join within {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes the leader hand its leadership to another member while it keeps running (raft's
    /// leadership transfer, through ovsdb-server's failure test), and waits for the new
    /// leader; returns it.
    pub fn transfer_leadership(&self) -> Result<usize, OvsdbServerError> {
        let old = self.wait_leader(Duration::from_secs(10))?;
        run(
            "ovs-appctl",
            &[
                "-t",
                &self.ctl(old),
                "cluster/failure-test",
                "transfer-leadership",
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.leader() {
                Some(new) if new != old => return Ok(new),
                _ if Instant::now() > deadline => {
                    return Err(OvsdbServerError::Failed {
                        command: "cluster/failure-test transfer-leadership".into(),
                        stderr: format!("member {old} was still the leader after 20 s"),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Kills member `i` (as a crash would): its clients' connections break.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members.get_mut(i).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `ovn-nbctl` against the cluster, as operators do: every member given, the leader
    /// used.
    pub fn nbctl(&self, args: &[&str]) -> Result<String, OvsdbServerError> {
        let remotes: Vec<String> = (0..self.members.len())
            .filter(|&i| self.members[i].is_some())
            .map(|i| self.remote(i))
            .collect();
        let db = format!("--db={}", remotes.join(","));
        let mut all = vec![db.as_str(), "--timeout=20"];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }
}

impl Drop for NorthboundCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
