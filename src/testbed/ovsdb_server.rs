//! A private OVN northbound database for tests: an `ovsdb-server` on a unix socket in a
//! scratch directory, on a database made from the installed `ovn-nb.ovsschema`. No root, no
//! northd, no chassis: what the OVN driver's row-level tests need. Stopped and deleted on drop.

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

impl NorthboundServer {
    /// Starts one, or says why `test` is skipped and returns `None` when OVN's tools are not
    /// installed. Under CI (`CI=true`) missing tools fail the test instead.
    pub fn start_for(test: &str) -> Option<NorthboundServer> {
        let missing = ["ovsdb-server", "ovsdb-tool", "ovn-nbctl"]
            .into_iter()
            .find(|p| !installed(p))
            .map(str::to_string)
            .or_else(|| (!Path::new(NB_SCHEMA).exists()).then(|| NB_SCHEMA.to_string()));
        if let Some(missing) = missing {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: CI must have OVN installed (scripts/install-deps): {missing} is missing");
            }
            skipped(
                test,
                &format!(
                    "needs OVN's tools ({missing} is missing; scripts/install-deps installs them)"
                ),
            );
            return None;
        }
        Some(NorthboundServer::start().expect("a private northbound ovsdb-server"))
    }

    pub fn start() -> Result<NorthboundServer, OvsdbServerError> {
        let dir = std::env::temp_dir().join(format!("praas-nb-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|source| OvsdbServerError::Spawn {
            command: format!("mkdir {}", dir.display()),
            source,
        })?;
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
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let args = [
            format!("--remote=punix:{}", socket.display()),
            format!("--unixctl={}", self.dir.join("ctl").display()),
            format!("--log-file={}", self.dir.join("ovsdb-server.log").display()),
            "--no-chdir".to_string(),
            self.dir.join("nb.db").display().to_string(),
        ];
        let child = Command::new("ovsdb-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| OvsdbServerError::Spawn {
                command: format!("ovsdb-server {}", args.join(" ")),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err(OvsdbServerError::NotListening { socket });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
