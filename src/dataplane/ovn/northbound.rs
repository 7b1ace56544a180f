//! OVN's northbound database as the OVN driver sees it: one OVSDB connection, a replica of the
//! rows the driver reads (kept by a `monitor`), transactions that report when they are
//! visible in the replica and applied by OVN.
//!
//! Every transaction the driver sends also bumps `NB_Global.nb_cfg` (as `ovn-nbctl --wait`
//! does) and reads the new value back: once the replica's `nb_cfg` reaches it, the replica
//! holds the transaction's effect (monitor updates arrive whole, in commit order), and once
//! `hv_cfg` reaches it, every chassis has applied it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tracing::{debug, info, warn};

use crate::ovsdb::{value, Connection, OvsdbError, Remote, TlsFiles};

pub const DATABASE: &str = "OVN_Northbound";

/// A row as the monitor sent it: column name to OVSDB JSON value.
pub type Row = Map<String, Value>;

/// The columns the driver reads, per table.
fn monitored() -> Value {
    json!({
        "Logical_Router": {"columns": ["name", "load_balancer", "ports", "policies"]},
        "Logical_Router_Policy": {"columns": ["priority", "match", "action", "external_ids"]},
        "Logical_Router_Port": {"columns": ["name", "networks", "gateway_chassis", "ha_chassis_group", "options"]},
        "Logical_Switch": {"columns": ["name", "load_balancer", "ports"]},
        "Logical_Switch_Port": {"columns": ["name", "type", "options"]},
        "Load_Balancer": {"columns": ["name", "vips", "protocol", "options", "external_ids"]},
        "NB_Global": {"columns": ["nb_cfg", "sb_cfg", "hv_cfg"]},
    })
}

/// The monitored rows, by table and uuid.
#[derive(Debug, Default)]
pub struct Replica {
    /// Connections made so far: rows seen under an earlier one may be gone.
    pub epoch: u64,
    /// Bumped by every change the monitor reports (and every new connection).
    pub generation: u64,
    pub tables: HashMap<String, HashMap<String, Row>>,
}

impl Replica {
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables
            .get(table)
            .into_iter()
            .flat_map(|rows| rows.iter())
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    fn nb_global(&self, column: &str) -> Option<i64> {
        self.rows("NB_Global")
            .next()
            .and_then(|(_, row)| row.get(column))
            .and_then(Value::as_i64)
    }

    /// `NB_Global.nb_cfg`: the last sequence number a client asked OVN to apply.
    pub fn nb_cfg(&self) -> Option<i64> {
        self.nb_global("nb_cfg")
    }

    /// `NB_Global.hv_cfg`: the sequence number every chassis has applied.
    pub fn hv_cfg(&self) -> Option<i64> {
        self.nb_global("hv_cfg")
    }

    /// `NB_Global.sb_cfg`: the sequence number northd has written to the southbound database.
    pub fn sb_cfg(&self) -> Option<i64> {
        self.nb_global("sb_cfg")
    }

    fn apply(&mut self, updates: &Value) {
        let Some(tables) = updates.as_object() else {
            return;
        };
        for (table, rows) in tables {
            let Some(rows) = rows.as_object() else {
                continue;
            };
            let stored = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows {
                match change.get("new").and_then(Value::as_object) {
                    // A modification may carry only what changed: merge.
                    Some(new) => {
                        let row = stored.entry(uuid.clone()).or_default();
                        for (column, value) in new {
                            row.insert(column.clone(), value.clone());
                        }
                    }
                    None => {
                        stored.remove(uuid);
                    }
                }
            }
        }
        self.generation += 1;
    }
}

/// How long to wait for OVN to report a change applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyWait {
    /// Until every chassis has applied it (`hv_cfg`), as `ovn-nbctl --wait=hv`.
    Chassis,
    /// Until northd has written it to the southbound database (`sb_cfg`).
    Southbound,
    /// Not at all: done once committed in the northbound database.
    None,
}

impl std::str::FromStr for ApplyWait {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hv" | "chassis" => Ok(ApplyWait::Chassis),
            "sb" | "southbound" => Ok(ApplyWait::Southbound),
            "none" => Ok(ApplyWait::None),
            other => Err(format!("unknown wait {other:?} (expected hv, sb or none)")),
        }
    }
}

/// Why a northbound transaction did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum NorthboundError {
    #[error("no OVN northbound server of {remotes} could be reached")]
    Unreachable {
        remotes: String,
        #[source]
        source: OvsdbError,
    },
    #[error("the northbound database")]
    Ovsdb(#[source] OvsdbError),
    #[error("the northbound database did not show the change within {0:?}")]
    NotVisible(Duration),
    #[error(
        "OVN did not report the change applied ({what} {reached} of {wanted}) within {timeout:?}"
    )]
    NotApplied {
        what: &'static str,
        reached: i64,
        wanted: i64,
        timeout: Duration,
    },
}

struct Shared {
    replica: Mutex<Replica>,
    changed: Condvar,
}

/// A connection to the northbound database with its replica; connects again on demand after
/// the connection is lost.
///
/// A clustered (raft) northbound database is used through its leader only, as `ovn-nbctl` and
/// Neutron do: a follower cut off from the cluster would serve stale rows. Each server's
/// `_Server` database says whether it is the leader; a remote that is not is passed over, and a
/// connection whose server stops being the leader is given up, so that the next use connects
/// to the new one.
pub struct Northbound {
    remotes: Vec<Remote>,
    tls: TlsFiles,
    timeout: Duration,
    connection: Mutex<Option<Live>>,
    shared: Arc<Shared>,
}

/// The open connection and whether its server has since stopped being usable (a clustered
/// database's leader no more).
struct Live {
    conn: Arc<Connection>,
    demoted: Arc<AtomicBool>,
}

/// The monitor of `_Server.Database`, apart from the northbound one on the same connection.
const SERVER_MONITOR: &str = "praas-server";

impl Northbound {
    pub fn new(remotes: Vec<Remote>, tls: TlsFiles, timeout: Duration) -> Northbound {
        Northbound {
            remotes,
            tls,
            timeout,
            connection: Mutex::new(None),
            shared: Arc::new(Shared {
                replica: Mutex::new(Replica::default()),
                changed: Condvar::new(),
            }),
        }
    }

    fn remotes_text(&self) -> String {
        self.remotes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The open connection, or a new one to the first remote that answers (with the replica
    /// filled again from it).
    fn connection(&self) -> Result<Arc<Connection>, NorthboundError> {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(live) = slot.as_ref() {
            let conn = &live.conn;
            if conn.closed().is_none() && !live.demoted.load(Ordering::SeqCst) {
                return Ok(conn.clone());
            }
            if conn.closed().is_some() {
                warn!(remote = conn.remote(), reason = ?conn.closed(), "lost the OVN northbound connection; connecting again");
            } else {
                warn!(
                    remote = conn.remote(),
                    "the OVN northbound server is no longer the cluster's leader; connecting again"
                );
            }
            *slot = None;
        }
        let mut last = None;
        for remote in &self.remotes {
            match self.open(remote) {
                Ok(live) => {
                    let conn = live.conn.clone();
                    *slot = Some(live);
                    return Ok(conn);
                }
                Err(e) => {
                    debug!(%remote, error = %crate::util::Chain(&e), "northbound server not usable");
                    last = Some(e);
                }
            }
        }
        Err(NorthboundError::Unreachable {
            remotes: self.remotes_text(),
            source: last.unwrap_or_else(|| OvsdbError::Remote {
                remote: String::new(),
                reason: "no remote given".into(),
            }),
        })
    }

    /// The remote of the open connection, if one is open.
    pub fn connected_to(&self) -> Option<String> {
        let slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .filter(|live| live.conn.closed().is_none() && !live.demoted.load(Ordering::SeqCst))
            .map(|live| live.conn.remote().to_string())
    }

    fn open(&self, remote: &Remote) -> Result<Live, OvsdbError> {
        let shared = self.shared.clone();
        // Notifications that arrive before the initial contents are applied after them: the
        // monitor's reply and its first update cannot be reordered by the server, but the
        // reply is handled on this thread and the update on the reader's.
        let started = Arc::new(Mutex::new(false));
        let early: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let demoted = Arc::new(AtomicBool::new(false));
        let (started_cb, early_cb, demoted_cb) = (started.clone(), early.clone(), demoted.clone());
        let remote_text = remote.to_string();
        let conn = Connection::open(
            remote,
            &self.tls,
            self.timeout,
            Box::new(move |params| {
                let Some(updates) = params.get(1) else {
                    return;
                };
                if params.get(0).and_then(Value::as_str) == Some(SERVER_MONITOR) {
                    if let Some(why) =
                        ServerRole::from_updates(updates).and_then(ServerRole::unusable)
                    {
                        warn!(remote = %remote_text, why, "giving up the OVN northbound connection");
                        demoted_cb.store(true, Ordering::SeqCst);
                    }
                    return;
                }
                if !*started_cb.lock().unwrap_or_else(|e| e.into_inner()) {
                    early_cb
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(updates.clone());
                    return;
                }
                let mut replica = shared.replica.lock().unwrap_or_else(|e| e.into_inner());
                replica.apply(updates);
                shared.changed.notify_all();
            }),
        )?;
        // Leader only: what this server says of the northbound database, before reading it.
        match conn.monitor(
            "_Server",
            SERVER_MONITOR,
            json!({"Database": {"columns": ["name", "model", "connected", "leader"]}}),
        ) {
            Ok(initial) => {
                if let Some(why) = ServerRole::from_updates(&initial).and_then(ServerRole::unusable)
                {
                    return Err(OvsdbError::Remote {
                        remote: remote.to_string(),
                        reason: why.into(),
                    });
                }
            }
            // An ovsdb-server older than 2.9 has no _Server database: never clustered.
            Err(OvsdbError::Rpc { ref error, .. }) if error == "unknown database" => {}
            Err(e) => return Err(e),
        }
        let initial = conn.monitor(DATABASE, "praas", monitored())?;
        {
            let mut replica = self
                .shared
                .replica
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let epoch = replica.epoch + 1;
            *replica = Replica {
                epoch,
                generation: replica.generation + 1,
                tables: HashMap::new(),
            };
            replica.apply(&initial);
            let mut started = started.lock().unwrap_or_else(|e| e.into_inner());
            for updates in early.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                replica.apply(&updates);
            }
            *started = true;
            self.shared.changed.notify_all();
        }
        info!(%remote, "connected to the OVN northbound database");
        Ok(Live {
            conn: Arc::new(conn),
            demoted,
        })
    }

    /// Connects if needed; an error says why the database cannot be used now.
    pub fn ensure_connected(&self) -> Result<(), NorthboundError> {
        self.connection().map(|_| ())
    }

    /// Reads the replica (connecting first if needed).
    pub fn read<T>(&self, f: impl FnOnce(&Replica) -> T) -> Result<T, NorthboundError> {
        self.ensure_connected()?;
        let replica = self
            .shared
            .replica
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(f(&replica))
    }

    /// Commits `operations` in one transaction that also bumps `nb_cfg`, then waits until the
    /// replica shows it and OVN reports it applied as `wait` says. Returns the results of
    /// `operations`.
    pub fn transact(
        &self,
        operations: Vec<Value>,
        wait: ApplyWait,
        apply_timeout: Duration,
    ) -> Result<Vec<Value>, NorthboundError> {
        let conn = self.connection()?;
        let count = operations.len();
        let mut ops = operations;
        ops.push(json!({"op": "mutate", "table": "NB_Global", "where": [],
            "mutations": [["nb_cfg", "+=", 1]]}));
        ops.push(json!({"op": "select", "table": "NB_Global", "where": [], "columns": ["nb_cfg"]}));
        let mut results = match conn.transact(DATABASE, ops) {
            Ok(results) => results,
            Err(e) => {
                if e.is_connection() {
                    self.drop_connection(&conn);
                }
                return Err(NorthboundError::Ovsdb(e));
            }
        };
        let wanted = results
            .get(count + 1)
            .and_then(|r| r.get("rows"))
            .and_then(|rows| rows.get(0))
            .and_then(|row| row.get("nb_cfg"))
            .and_then(Value::as_i64);
        results.truncate(count);
        // Without an NB_Global row (a database nobody initialised) there is nothing to wait on.
        let Some(wanted) = wanted else {
            return Ok(results);
        };
        let start = Instant::now();
        self.wait_until(self.timeout, |r| r.nb_cfg().is_some_and(|v| v >= wanted))
            .map_err(|()| NorthboundError::NotVisible(self.timeout))?;
        self.wait_applied_to(wanted, wait, start, apply_timeout)?;
        Ok(results)
    }

    /// Waits until OVN reports applied, as `wait` says, every change committed so far that the
    /// replica has seen (its `nb_cfg`): for a caller that committed with [`ApplyWait::None`]
    /// and waits apart, as the OVN benchmark does to time the commit and the chassis apart.
    pub fn wait_applied(&self, wait: ApplyWait, timeout: Duration) -> Result<(), NorthboundError> {
        let Some(wanted) = self.read(Replica::nb_cfg)? else {
            return Ok(());
        };
        self.wait_applied_to(wanted, wait, Instant::now(), timeout)
    }

    /// Waits until OVN reports change `wanted` applied as `wait` says, at most `timeout` from
    /// `since`. As `ovn-nbctl --wait`: northd writes hv_cfg from the chassis' reports and sb_cfg
    /// once its southbound transaction commits; both must have reached the change.
    fn wait_applied_to(
        &self,
        wanted: i64,
        wait: ApplyWait,
        since: Instant,
        timeout: Duration,
    ) -> Result<(), NorthboundError> {
        let what = match wait {
            ApplyWait::None => return Ok(()),
            ApplyWait::Southbound => "sb_cfg",
            ApplyWait::Chassis => "hv_cfg",
        };
        let left = timeout.saturating_sub(since.elapsed());
        if self
            .wait_until(left, |r| applied(r, wait) >= wanted)
            .is_err()
        {
            return Err(NorthboundError::NotApplied {
                what,
                reached: applied(
                    &self
                        .shared
                        .replica
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
                    wait,
                ),
                wanted,
                timeout,
            });
        }
        Ok(())
    }

    fn drop_connection(&self, conn: &Arc<Connection>) {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_some_and(|live| Arc::ptr_eq(&live.conn, conn))
        {
            *slot = None;
        }
    }

    /// Waits until `done` holds for the replica; `Err` on timeout.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&Replica) -> bool) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        let mut replica = self
            .shared
            .replica
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&replica) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(());
            }
            replica = self
                .shared
                .changed
                .wait_timeout(replica, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The replica's generation and epoch: they move whenever a monitored row changes.
    pub fn generation(&self) -> Result<(u64, u64), NorthboundError> {
        self.read(|r| (r.epoch, r.generation))
    }
}

/// The sequence number OVN has applied, as `wait` counts it (-1: not known).
fn applied(replica: &Replica, wait: ApplyWait) -> i64 {
    let sb = replica.sb_cfg().unwrap_or(-1);
    match wait {
        ApplyWait::Chassis => sb.min(replica.hv_cfg().unwrap_or(-1)),
        ApplyWait::Southbound | ApplyWait::None => sb,
    }
}

/// What a server's `_Server.Database` row says of the northbound database.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerRole {
    /// `standalone`, `clustered` or `relay`.
    model: String,
    /// A clustered server: whether it is connected to the cluster, and its leader.
    connected: bool,
    leader: bool,
}

impl ServerRole {
    /// The northbound database's row in a `_Server` monitor's initial contents or update, if
    /// it is there.
    fn from_updates(updates: &Value) -> Option<ServerRole> {
        let rows = updates.get("Database")?.as_object()?;
        rows.values().find_map(|change| {
            let row = change.get("new")?;
            if row.get("name")?.as_str()? != DATABASE {
                return None;
            }
            let flag = |column: &str| row.get(column).and_then(Value::as_bool);
            Some(ServerRole {
                model: row.get("model")?.as_str()?.to_string(),
                connected: flag("connected").unwrap_or(false),
                leader: flag("leader").unwrap_or(false),
            })
        })
    }

    /// Why a server in this role must not be used, or `None`.
    fn unusable(self) -> Option<&'static str> {
        if self.model != "clustered" {
            None
        } else if !self.connected {
            Some("this member of the clustered northbound database is cut off from its cluster")
        } else if !self.leader {
            Some("not the leader of the clustered northbound database (PRaaS uses the leader)")
        } else {
            None
        }
    }
}

/// The uuid of the row `row` in a monitor's rows, for readers that keep `(uuid, row)` pairs.
pub fn reference_set(row: &Row, column: &str) -> Vec<String> {
    row.get(column).map(value::uuid_set).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_follows_inserts_partial_modifications_and_deletions() {
        let mut r = Replica::default();
        r.apply(&json!({"Load_Balancer": {
            "u1": {"new": {"name": "praas-r1-tcp", "vips": ["map", [["192.0.2.1:4000", "10.0.0.5:22"]]]}}
        }}));
        assert_eq!(
            r.row("Load_Balancer", "u1").unwrap()["name"],
            "praas-r1-tcp"
        );
        r.apply(&json!({"Load_Balancer": {
            "u1": {"old": {"vips": ["map", []]}, "new": {"vips": ["map", []]}}
        }}));
        let row = r.row("Load_Balancer", "u1").unwrap();
        assert_eq!(row["name"], "praas-r1-tcp", "columns not sent are kept");
        assert_eq!(row["vips"], json!(["map", []]));
        r.apply(&json!({"Load_Balancer": {"u1": {"old": {}}}}));
        assert!(r.row("Load_Balancer", "u1").is_none());
        assert_eq!(r.generation, 3);
        r.apply(&json!({"NB_Global": {"g": {"new": {"nb_cfg": 7, "hv_cfg": 6, "sb_cfg": 7}}}}));
        assert_eq!(
            (r.nb_cfg(), r.hv_cfg(), r.sb_cfg()),
            (Some(7), Some(6), Some(7))
        );
    }
}
