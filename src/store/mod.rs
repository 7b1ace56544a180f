//! The store: PAT mappings in SQL, the source of truth of the service.
//!
//! SQLite by default (one file, the all-in-one node), MariaDB/MySQL when several nodes share
//! the state, chosen by an OpenStack-style `[database] connection` URL. Both go through sqlx's
//! `Any` driver with the same queries; the schema has one migration directory per dialect
//! (`migrations/`). Uniqueness of external ports and internal sockets is enforced by the
//! database: every claimed port is a row under a primary key, so concurrent requests and
//! overlapping ranges can never both succeed.

pub mod agents;
pub mod allocate;
mod cache;
pub mod model;
pub mod overview;
mod ports;
pub mod quota;
mod row;
pub mod usage;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use ipnet::Ipv4Net;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::sync::Mutex;

pub use agents::{AgentRecord, AgentReport, ServedRouters};
pub use allocate::{Policy, Strategy};
pub use model::{ExternalPorts, Hold, ListFilter, Mapping, MappingUpdate, NewMapping, Status};
pub use overview::{CycleRecord, Lease, ServiceRecord, Trouble};
pub use ports::PortCount;
pub use quota::{QuotaChange, Quotas, Usage};
pub use usage::{MappingUsage, UsageDelta};

use crate::model::{PortRange, Protocol, Resource};
use row::StoredRow;

/// Blind random tries before the used ports are read: with a range a sixth full, eight tries
/// all collide once in millions of allocations, while reading 10,000 used ports costs
/// milliseconds.
const BLIND_ATTEMPTS: usize = 8;

/// How many candidates an allocation tries before it reports the range exhausted: each failure
/// means another request took the port in between, and the next candidate is re-read.
const ALLOCATION_ATTEMPTS: usize = 16;

/// How long opening the database may take before it is reported unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Store::migrate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// An empty database: the schema was created (at this migration version).
    Created {
        version: i64,
    },
    /// The schema was brought from `from` applied migrations to version `to`.
    Upgraded {
        from: i64,
        to: i64,
    },
    Current {
        version: i64,
    },
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Migration::Created { version } => {
                write!(f, "database schema created (version {version})")
            }
            Migration::Upgraded { from, to } => {
                write!(f, "database schema upgraded from version {from} to {to}")
            }
            Migration::Current { version } => {
                write!(f, "database schema is current (version {version})")
            }
        }
    }
}

/// Errors of the store, each saying what conflicted with what.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{protocol} port {port} of router {router_id} is already used by mapping {mapping_id}"
    )]
    ExternalPortInUse {
        router_id: String,
        protocol: Protocol,
        port: u16,
        mapping_id: String,
    },

    #[error("{ip}:{port}/{protocol} behind router {router_id} is already mapped by mapping {mapping_id}")]
    InternalSocketMapped {
        router_id: String,
        ip: Ipv4Addr,
        protocol: Protocol,
        port: u16,
        mapping_id: String,
    },

    #[error("no {len} free {protocol} port(s) left in range {range} on router {router_id}")]
    RangeExhausted {
        router_id: String,
        protocol: Protocol,
        range: PortRange,
        len: u32,
    },

    /// The write would take `project_id` past its limit of `resource`: it holds `used` and
    /// the write needed `requested` more.
    #[error(
        "quota exceeded for {resource} of project {project_id}: {used} of {limit} in use, \
         {requested} more requested"
    )]
    QuotaExceeded {
        project_id: String,
        resource: Resource,
        used: u64,
        limit: u64,
        requested: u64,
    },

    #[error("mapping {id} does not exist")]
    NotFound { id: String },

    #[error("invalid database connection {url:?}: {reason}")]
    Connection { url: String, reason: String },

    #[error("cannot connect to the database {url}")]
    Unreachable {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("stored mapping {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },

    #[error("database error")]
    Database(#[from] sqlx::Error),

    #[error("database schema migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The database was migrated by a newer PRaaS: this binary must be upgraded first.
    #[error(
        "the database schema is at version {database}, newer than this praas knows ({known}): \
         upgrade praas on this node"
    )]
    SchemaNewer { database: i64, known: i64 },
}

/// Which SQL server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

/// Translates an OpenStack (SQLAlchemy) database URL into one sqlx understands.
///
/// `sqlite:////abs/path.db` (absolute), `sqlite:///relative.db`, `sqlite://` (in memory),
/// `mysql+pymysql://user:pass@host/db`, `mysql://…`, `mariadb://…`.
pub fn translate_url(url: &str) -> Result<(String, Dialect), StoreError> {
    let bad = |reason: &str| StoreError::Connection {
        url: crate::util::redacted(url),
        reason: reason.into(),
    };
    if url == "sqlite::memory:" || url == "sqlite://" {
        return Ok(("sqlite::memory:".into(), Dialect::Sqlite));
    }
    if let Some(rest) = url.strip_prefix("sqlite://") {
        // SQLAlchemy: three slashes then a relative path, four for an absolute one.
        let path = rest
            .strip_prefix('/')
            .ok_or_else(|| bad("expected sqlite:///relative or sqlite:////absolute"))?;
        let (path, _) = path.split_once('?').unwrap_or((path, ""));
        if path.is_empty() {
            return Err(bad("no database file"));
        }
        return Ok((format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite));
    }
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("not a URL"))?;
    match scheme.split('+').next() {
        Some("mysql") | Some("mariadb") => {
            // Driver parameters of the Python world (charset, ...) mean nothing here.
            let (base, _) = rest.split_once('?').unwrap_or((rest, ""));
            if !base.contains('/') {
                return Err(bad("no database name"));
            }
            Ok((format!("mysql://{base}"), Dialect::MySql))
        }
        _ => Err(bad("unsupported database (use sqlite or mysql)")),
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Who a lease elects: one of several processes acts, the others stand by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRole {
    /// The monitor that reads Neutron.
    Monitor,
    /// The agent that programs OVN's northbound database (`[dataplane] driver = ovn`).
    OvnWorker,
}

impl LeaseRole {
    fn row(self) -> i64 {
        match self {
            LeaseRole::Monitor => 1,
            LeaseRole::OvnWorker => 2,
        }
    }
}

/// The mapping store.
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite has one writer at a time; serializing writers here turns "database is locked"
    /// into waiting. MariaDB's row locks need no such thing.
    sqlite_writer: Option<Mutex<()>>,
    feed: Arc<ChangeFeed>,
    listing: cache::ListingCache,
    /// Entries of `mapping_changes` kept ([`CHANGES_KEPT`] unless a test asks for fewer).
    changes_kept: i64,
    /// Most mappings the listing cache holds ([`CACHED_ROWS`] unless a test asks for fewer).
    cached_rows: i64,
    /// The limits of projects without their own ([`quota`]).
    quota_defaults: Quotas,
}

/// The changes this process makes, for an agent in the same process: (generation, mapping id)
/// per write, without a query. An agent elsewhere sees the generation move and reads which
/// mappings changed from `mapping_changes` ([`Store::changed_between`]).
///
/// An entry is published just before its transaction commits, so that once a generation is
/// visible in the database, the entry that wrote it is already here: had it been published
/// after, a reader could see the generation first, take it for another process's change and
/// reconcile everything. An entry whose transaction then fails is harmless: readers re-read
/// the mapping, and they act on an entry only once its generation is visible.
#[derive(Default)]
pub struct ChangeFeed {
    entries: std::sync::Mutex<Vec<(i64, String)>>,
    notify: tokio::sync::Notify,
    /// Commits that failed after their entry was published. The generation such an entry
    /// names may then be committed by another process (another Galera node certified first),
    /// so a reader that sees this move must not trust the entries around it.
    failed: std::sync::atomic::AtomicU64,
}

impl ChangeFeed {
    fn publish(&self, generation: i64, mapping_id: &str) {
        self.entries
            .lock()
            .unwrap()
            .push((generation, mapping_id.to_string()));
    }

    /// How many published entries' commits failed, ever (see the field's comment).
    pub fn failed_commits(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Everything published since the last call.
    pub fn take(&self) -> Vec<(i64, String)> {
        std::mem::take(&mut *self.entries.lock().unwrap())
    }

    /// Waits for the next commit of a published change (or one since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Store {
    /// Connects to the database named by an OpenStack-style URL.
    pub async fn open(connection: &str) -> Result<Store, StoreError> {
        Store::open_pooled(connection, DEFAULT_POOL_SIZE).await
    }

    /// As [`Store::open`], keeping at most `max_connections` to a MySQL/MariaDB server
    /// (`[database] max_pool_size`).
    pub async fn open_pooled(connection: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect) = translate_url(connection)?;
        let mut options = AnyPoolOptions::new().max_connections(max_connections.max(1));
        if dialect == Dialect::Sqlite {
            options = options
                // An in-memory database exists once per connection: keep exactly one.
                .max_connections(if url.contains(":memory:") { 1 } else { 8 })
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                });
        }
        if let Some(dir) = url
            .strip_prefix("sqlite://")
            .and_then(|rest| rest.split('?').next())
            .filter(|path| !path.contains(":memory:"))
            .and_then(|path| std::path::Path::new(path).parent())
            .filter(|dir| !dir.as_os_str().is_empty() && !dir.is_dir())
        {
            return Err(StoreError::Connection {
                url: crate::util::redacted(connection),
                reason: format!(
                    "the directory {} does not exist (create it, owned by the service's user)",
                    dir.display()
                ),
            });
        }
        // An unreachable server is reported within this time, naming it, instead of after
        // sqlx's default of 30 s.
        options = options.acquire_timeout(CONNECT_TIMEOUT);
        let pool = options
            .connect(&url)
            .await
            .map_err(|source| StoreError::Unreachable {
                url: crate::util::redacted(connection),
                source,
            })?;
        Ok(Store {
            pool,
            dialect,
            sqlite_writer: (dialect == Dialect::Sqlite).then(|| Mutex::new(())),
            feed: Arc::default(),
            listing: cache::ListingCache::default(),
            changes_kept: CHANGES_KEPT,
            cached_rows: CACHED_ROWS,
            quota_defaults: Quotas::UNLIMITED,
        })
    }

    /// Keeps only the last `n` entries of the change log when this store writes (tests of the
    /// pruning; deployments keep [`CHANGES_KEPT`]).
    pub fn keeping_changes(mut self, n: i64) -> Self {
        self.changes_kept = n.max(1);
        self
    }

    /// Caches listings only up to `n` mappings (tests; deployments keep [`CACHED_ROWS`]).
    pub fn caching_at_most(mut self, n: i64) -> Self {
        self.cached_rows = n;
        self
    }

    /// This process's changes, as they commit.
    pub fn feed(&self) -> Arc<ChangeFeed> {
        self.feed.clone()
    }

    /// Brings the schema up to date (`praas db-sync`). Idempotent; says what it found.
    pub async fn migrate(&self) -> Result<Migration, StoreError> {
        let before = self.applied_migrations().await;
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::MySql => sqlx::migrate!("migrations/mysql"),
        };
        let version = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        match migrator.run(&self.pool).await {
            Err(sqlx::migrate::MigrateError::VersionMissing(database)) => {
                return Err(StoreError::SchemaNewer {
                    database,
                    known: version,
                })
            }
            other => other?,
        }
        Ok(match before {
            None | Some(0) => Migration::Created { version },
            Some(applied) if (applied as usize) < migrator.iter().count() => Migration::Upgraded {
                from: applied,
                to: version,
            },
            Some(_) => Migration::Current { version },
        })
    }

    /// How many migrations the database has applied; `None` before the first.
    async fn applied_migrations(&self) -> Option<i64> {
        sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|row| row.try_get::<i64, _>(0).ok())
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Ends a writing transaction of `mapping_id` (`now`: as it is after the write, `None`
    /// when deleted): commits it when `written` (the generation it wrote) is there, publishing
    /// the change to the feed first, so that a reader that sees the new
    /// generation in the database always finds its entry (see [`ChangeFeed`]). On an error it
    /// rolls back at once: a transaction left for the pool to roll back later keeps its locks
    /// (InnoDB holds a shared lock on a duplicate key it refused), and every writer near them
    /// waits. A conflict is then completed with the mapping that holds the port or socket.
    async fn finish(
        &self,
        tx: Transaction<'_, Any>,
        written: Result<i64, StoreError>,
        mapping_id: &str,
        now: Option<&Mapping>,
    ) -> Result<(), StoreError> {
        let generation = match written {
            Ok(generation) => generation,
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                return Err(self.name_owner(e).await);
            }
        };
        self.feed.publish(generation, mapping_id);
        let result = tx.commit().await;
        if result.is_err() {
            self.feed
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.feed.notify.notify_one();
        result?;
        let change = match now {
            Some(m) => cache::Written::Mapping(m),
            None => cache::Written::Deleted(mapping_id),
        };
        self.listing.written(generation, change);
        Ok(())
    }

    /// Fills in who holds a port or socket that a write found taken, read after the write
    /// rolled back (unknown if it was released meanwhile).
    async fn name_owner(&self, e: StoreError) -> StoreError {
        let owner = |sql: &'static str, binds: Vec<Bind>| async move {
            let mut query = sqlx::query(sql);
            for b in binds {
                query = match b {
                    Bind::Text(s) => query.bind(s),
                    Bind::Int(i) => query.bind(i),
                };
            }
            match query.fetch_optional(&self.pool).await {
                Ok(Some(row)) => row.try_get::<String, _>(0).unwrap_or_default(),
                _ => String::new(),
            }
        };
        match e {
            StoreError::ExternalPortInUse {
                router_id,
                protocol,
                port,
                ..
            } => {
                let mapping_id = owner(
                    "SELECT mapping_id FROM external_ports WHERE router_id = ? AND protocol = ? AND port = ?",
                    vec![
                        Bind::Text(router_id.clone()),
                        Bind::Text(protocol.as_str().into()),
                        Bind::Int(i64::from(port)),
                    ],
                )
                .await;
                StoreError::ExternalPortInUse {
                    router_id,
                    protocol,
                    port,
                    mapping_id,
                }
            }
            StoreError::InternalSocketMapped {
                router_id,
                ip,
                protocol,
                port,
                ..
            } => {
                let mapping_id = owner(
                    "SELECT mapping_id FROM internal_sockets WHERE router_id = ? AND protocol = ? AND ip = ? AND port = ?",
                    vec![
                        Bind::Text(router_id.clone()),
                        Bind::Text(protocol.as_str().into()),
                        Bind::Text(ip.to_string()),
                        Bind::Int(i64::from(port)),
                    ],
                )
                .await;
                StoreError::InternalSocketMapped {
                    router_id,
                    ip,
                    protocol,
                    port,
                    mapping_id,
                }
            }
            other => other,
        }
    }

    async fn writer(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    /// Creates a mapping, allocating its external ports from `policy` unless they are given.
    /// The project's quota is enforced in the same transaction (see [`quota`]).
    pub async fn create(&self, new: NewMapping, policy: &Policy) -> Result<Mapping, StoreError> {
        let _writer = self.writer().await;
        let id = uuid::Uuid::new_v4().to_string();
        let quotas = self.quotas_to_enforce(&new.project_id).await?;
        let quotas = quotas.as_ref();
        match new.external_ports {
            ExternalPorts::Explicit(ports) => {
                retrying(|| self.insert(&id, &new, ports, quotas)).await
            }
            ExternalPorts::Allocate { len } => {
                let mut last_conflict = None;
                // Random allocation first tries a block blindly: in a sparsely used range it is
                // almost always free, and the database refuses it if not. Only then are the
                // used ports read, and candidates chosen among the free ones.
                if policy.strategy == Strategy::Random {
                    for _ in 0..BLIND_ATTEMPTS {
                        let Some(ports) =
                            allocate::random_block(policy, len, &mut rand::thread_rng())
                        else {
                            break;
                        };
                        match self.insert(&id, &new, ports, quotas).await {
                            Err(e @ StoreError::ExternalPortInUse { .. }) => {
                                last_conflict = Some(e)
                            }
                            Err(StoreError::Database(e)) if is_deadlock(&e) => {
                                last_conflict = Some(e.into())
                            }
                            other => return other,
                        }
                    }
                }
                for _ in 0..ALLOCATION_ATTEMPTS {
                    let used = self
                        .used_ports(&new.router_id, new.protocol, policy.range)
                        .await?;
                    let candidate =
                        allocate::candidates(policy, &used, len, &mut rand::thread_rng())
                            .first()
                            .copied();
                    let Some(ports) = candidate else { break };
                    match self.insert(&id, &new, ports, quotas).await {
                        // Another request took a port in between, or the two transactions
                        // deadlocked on each other's port rows (InnoDB): try again.
                        Err(e @ StoreError::ExternalPortInUse { .. }) => last_conflict = Some(e),
                        Err(StoreError::Database(e)) if is_deadlock(&e) => {
                            last_conflict = Some(e.into())
                        }
                        other => return other,
                    }
                }
                tracing::debug!(conflict = ?last_conflict, "allocation gave up");
                Err(StoreError::RangeExhausted {
                    router_id: new.router_id.clone(),
                    protocol: new.protocol,
                    range: policy.range,
                    len,
                })
            }
        }
    }

    /// The external ports in `range` that mappings of `protocol` claim on `router_id` (one
    /// range scan of the port claims' primary key).
    pub async fn used_ports(
        &self,
        router_id: &str,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<BTreeSet<u16>, StoreError> {
        let rows = sqlx::query("SELECT port FROM external_ports WHERE router_id = ? AND protocol = ? AND port >= ? AND port <= ?")
            .bind(router_id)
            .bind(protocol.as_str())
            .bind(i64::from(range.first()))
            .bind(i64::from(range.last()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<i64, _>(0)? as u16))
            .collect()
    }

    async fn insert(
        &self,
        id: &str,
        new: &NewMapping,
        external: PortRange,
        quotas: Option<&Quotas>,
    ) -> Result<Mapping, StoreError> {
        let at = now();
        let mapping = Mapping {
            id: id.to_string(),
            project_id: new.project_id.clone(),
            router_id: new.router_id.clone(),
            distributed: new.distributed,
            external_ip_address: new.external_ip_address,
            protocol: new.protocol,
            external_ports: external,
            internal_ip_address: new.internal_ip_address,
            internal_port_id: new.internal_port_id.clone(),
            internal_ports: new.internal_ports,
            description: new.description.clone(),
            allowed_cidrs: new.allowed_cidrs.clone(),
            masquerade: new.masquerade,
            status: Status::Pending,
            status_reason: None,
            held: false,
            created_at: at.clone(),
            updated_at: at,
        };
        let mut tx = self.pool.begin().await?;
        let written = async {
            // First: the quota's lock row must be held before anything is read.
            if let Some(quotas) = quotas {
                let adding = [
                    (Resource::Mappings, 1),
                    (Resource::ExternalPorts, u64::from(external.len())),
                ];
                quota::enforce(&mut tx, self.dialect, &mapping.project_id, quotas, &adding).await?;
            }
            claim_external(&mut tx, &mapping).await?;
            claim_internal(&mut tx, &mapping).await?;
            insert_row(&mut tx, &mapping).await?;
            record_change(&mut tx, self.dialect, self.changes_kept, &mapping.id).await
        }
        .await;
        self.finish(tx, written, &mapping.id, Some(&mapping))
            .await?;
        Ok(mapping)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Mapping>, StoreError> {
        let found = sqlx::query(&format!(
            "SELECT {} FROM mappings WHERE id = ?",
            row::column_list()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found.as_ref().map(from_row).transpose()
    }

    /// A mapping read inside `tx`, so that what a change builds on cannot change under it: on
    /// MySQL the row is locked until the transaction ends (a concurrent update or delete of
    /// the same mapping waits, then sees this one's result); on SQLite writers are already one
    /// at a time. Without it, an API port change and a monitor re-point could interleave and
    /// leave the row and its port claims disagreeing.
    async fn get_for_update(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<Option<Mapping>, StoreError> {
        let lock = match self.dialect {
            Dialect::MySql => " FOR UPDATE",
            Dialect::Sqlite => "",
        };
        let found = sqlx::query(&format!(
            "SELECT {} FROM mappings WHERE id = ?{lock}",
            row::column_list()
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        found.as_ref().map(from_row).transpose()
    }

    /// The mappings among `ids` that exist, in id order: one query per 500 ids.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Mapping>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT {} FROM mappings WHERE id IN ({}) ORDER BY id",
                row::column_list(),
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for r in query.fetch_all(&self.pool).await? {
                found.push(from_row(&r)?);
            }
        }
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// The mappings of `routers`, in id order: what an agent serving those routers needs,
    /// without reading (or caching) anyone else's.
    pub async fn list_for_routers(
        &self,
        routers: &BTreeSet<String>,
    ) -> Result<Vec<Mapping>, StoreError> {
        let routers: Vec<&String> = routers.iter().collect();
        let mut found = Vec::new();
        for chunk in routers.chunks(500) {
            let sql = format!(
                "SELECT {} FROM mappings WHERE router_id IN ({})",
                row::column_list(),
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for r in query.fetch_all(&self.pool).await? {
                found.push(from_row(&r)?);
            }
        }
        found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Mappings matching `filter`, in id order.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Mapping>, StoreError> {
        let version = self.version().await?;
        if let Some(hit) = self.listing.list(version, filter) {
            return Ok(hit);
        }
        // A listing of everything fills the cache; a selective one (a project's, a router's)
        // asks the database for just its rows.
        let selective = ListFilter {
            limit: None,
            marker: None,
            ..filter.clone()
        } != ListFilter::default();
        if selective {
            return self.read(filter).await;
        }
        // Past `CACHED_ROWS` the cache would cost more memory than its speed is worth: each
        // listing then reads its page from the database.
        if self.count().await? > self.cached_rows {
            self.listing.clear();
            return self.read(filter).await;
        }
        let all = self.read(&ListFilter::default()).await?;
        Ok(self.listing.fill(version, all, filter))
    }

    /// How many mappings there are.
    async fn count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM mappings")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// The rows matching `filter`, from the database.
    async fn read(&self, filter: &ListFilter) -> Result<Vec<Mapping>, StoreError> {
        let mut sql = format!("SELECT {} FROM mappings WHERE 1 = 1", row::column_list());
        let mut binds: Vec<Bind> = vec![];
        let mut eq = |column: &str, value: Option<String>| {
            if let Some(v) = value {
                sql += &format!(" AND {column} = ?");
                binds.push(Bind::Text(v));
            }
        };
        eq("project_id", filter.project_id.clone());
        eq("router_id", filter.router_id.clone());
        eq("internal_port_id", filter.internal_port_id.clone());
        eq(
            "internal_ip_address",
            filter.internal_ip_address.map(|ip| ip.to_string()),
        );
        eq("protocol", filter.protocol.map(|p| p.as_str().to_string()));
        if let Some(port) = filter.external_port {
            sql += " AND external_port_first <= ? AND external_port_last >= ?";
            binds.push(Bind::Int(i64::from(port)));
            binds.push(Bind::Int(i64::from(port)));
        }
        if let Some(marker) = &filter.marker {
            sql += " AND id > ?";
            binds.push(Bind::Text(marker.clone()));
        }
        sql += " ORDER BY id";
        if let Some(limit) = filter.limit {
            sql += &format!(" LIMIT {limit}");
        }
        let json = self.dialect == Dialect::Sqlite;
        if json {
            sql = row::sqlite_json_select(&sql);
        }
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Text(s) => query.bind(s),
                Bind::Int(i) => query.bind(i),
            };
        }
        if json {
            let doc: String = query.fetch_one(&self.pool).await?.try_get(0)?;
            let mut mappings = StoredRow::from_json_document(&doc)?
                .into_iter()
                .map(StoredRow::into_mapping)
                .collect::<Result<Vec<_>, _>>()?;
            // The aggregate keeps the subquery's order in practice; SQLite does not promise it.
            mappings.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            return Ok(mappings);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Changes a mapping. Port changes re-claim ports under the same guarantees as a create;
    /// the mapping goes back to `PENDING` until the dataplane confirms it.
    /// A change that makes the external range longer is held to the project's quota of
    /// external ports.
    pub async fn update(&self, id: &str, update: &MappingUpdate) -> Result<Mapping, StoreError> {
        // The project never changes, so its quota can be looked up before the transaction.
        let quotas = match update.external_ports {
            Some(_) => match self.get(id).await? {
                Some(m) => self.quotas_to_enforce(&m.project_id).await?,
                None => return Err(StoreError::NotFound { id: id.into() }),
            },
            None => None,
        };
        retrying(|| self.update_once(id, update, quotas.as_ref())).await
    }

    async fn update_once(
        &self,
        id: &str,
        update: &MappingUpdate,
        quotas: Option<&Quotas>,
    ) -> Result<Mapping, StoreError> {
        let _writer = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let Some(mut mapping) = self.get_for_update(&mut tx, id).await? else {
            tx.rollback().await?;
            return Err(StoreError::NotFound { id: id.into() });
        };
        let external_changed = update
            .external_ports
            .is_some_and(|p| p != mapping.external_ports);
        let more_ports = update.external_ports.map_or(0, |p| {
            u64::from(p.len()).saturating_sub(u64::from(mapping.external_ports.len()))
        });
        let internal_changed = update
            .internal_ports
            .is_some_and(|p| p != mapping.internal_ports)
            || update
                .internal_ip_address
                .is_some_and(|ip| ip != mapping.internal_ip_address);
        if let Some(p) = update.external_ports {
            mapping.external_ports = p;
        }
        if let Some(p) = update.internal_ports {
            mapping.internal_ports = p;
        }
        if let Some(ip) = update.internal_ip_address {
            mapping.internal_ip_address = ip;
        }
        if let Some(ip) = update.external_ip_address {
            mapping.external_ip_address = ip;
        }
        if let Some(d) = update.distributed {
            mapping.distributed = d;
        }
        if let Some(d) = &update.description {
            mapping.description = d.clone();
        }
        if let Some(c) = &update.allowed_cidrs {
            mapping.allowed_cidrs = c.clone();
        }
        if let Some(m) = update.masquerade {
            mapping.masquerade = m;
        }
        // Back to PENDING until the dataplane confirms the change, unless the monitor holds
        // the mapping out of it (a held mapping stays held, with its status, through other
        // changes).
        match &update.hold {
            Some(Hold::Keep { status, reason }) => {
                mapping.held = true;
                mapping.status = *status;
                mapping.status_reason = Some(reason.clone());
            }
            Some(Hold::Release) => {
                mapping.held = false;
                mapping.status = Status::Pending;
                mapping.status_reason = None;
            }
            None if mapping.held => {}
            None => {
                mapping.status = Status::Pending;
                mapping.status_reason = None;
            }
        }
        mapping.updated_at = now();
        let written = async {
            // Before anything of the project is read (the mapping's own row is locked).
            if let Some(quotas) = quotas.filter(|_| more_ports > 0) {
                let adding = [(Resource::ExternalPorts, more_ports)];
                quota::enforce(&mut tx, self.dialect, &mapping.project_id, quotas, &adding)
                    .await?;
            }
            if external_changed {
                sqlx::query("DELETE FROM external_ports WHERE mapping_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                claim_external(&mut tx, &mapping).await?;
            }
            if internal_changed {
                sqlx::query("DELETE FROM internal_sockets WHERE mapping_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                claim_internal(&mut tx, &mapping).await?;
            }
            sqlx::query(
                "UPDATE mappings SET external_port_first = ?, external_port_last = ?, internal_ip_address = ?, \
                 internal_port_first = ?, internal_port_last = ?, description = ?, allowed_cidrs = ?, masquerade = ?, \
                 status = ?, status_reason = ?, updated_at = ?, external_ip_address = ?, held = ?, distributed = ? WHERE id = ?",
            )
            .bind(i64::from(mapping.external_ports.first()))
            .bind(i64::from(mapping.external_ports.last()))
            .bind(mapping.internal_ip_address.to_string())
            .bind(i64::from(mapping.internal_ports.first()))
            .bind(i64::from(mapping.internal_ports.last()))
            .bind(&mapping.description)
            .bind(cidrs_to_text(&mapping.allowed_cidrs))
            .bind(i64::from(mapping.masquerade))
            .bind(mapping.status.as_str())
            .bind(mapping.status_reason.clone())
            .bind(&mapping.updated_at)
            .bind(mapping.external_ip_address.to_string())
            .bind(i64::from(mapping.held))
            .bind(i64::from(mapping.distributed))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            record_change(&mut tx, self.dialect, self.changes_kept, id).await
        }
        .await;
        self.finish(tx, written, &mapping.id, Some(&mapping))
            .await?;
        Ok(mapping)
    }

    /// Deletes a mapping and frees its ports; returns what was deleted.
    pub async fn delete(&self, id: &str) -> Result<Option<Mapping>, StoreError> {
        retrying(|| self.delete_once(id)).await
    }

    async fn delete_once(&self, id: &str) -> Result<Option<Mapping>, StoreError> {
        let _writer = self.writer().await;
        let mut tx = self.pool.begin().await?;
        let Some(mapping) = self.get_for_update(&mut tx, id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let written = async {
            for table in [
                "external_ports",
                "internal_sockets",
                "mapping_usage",
                "mappings",
            ] {
                let column = if table == "mappings" {
                    "id"
                } else {
                    "mapping_id"
                };
                sqlx::query(&format!("DELETE FROM {table} WHERE {column} = ?"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            record_change(&mut tx, self.dialect, self.changes_kept, id).await
        }
        .await;
        self.finish(tx, written, &mapping.id, None).await?;
        Ok(Some(mapping))
    }

    /// Records what the dataplane made of mappings. Does not bump the generation: a status is
    /// an outcome of programming, not a change to program. A mapping the monitor holds keeps
    /// its status and reason (an agent pass that began before the hold must not report it
    /// `ACTIVE`).
    pub async fn set_status(
        &self,
        ids: &[String],
        status: Status,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        retrying(|| self.set_status_once(ids, status, reason)).await
    }

    async fn set_status_once(
        &self,
        ids: &[String],
        status: Status,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _writer = self.writer().await;
        // One transaction for the lot: a pass of the agent may confirm thousands at once.
        let mut tx = self.pool.begin().await?;
        for chunk in ids.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "UPDATE mappings SET status = ?, status_reason = ? WHERE held = 0 AND id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql)
                .bind(status.as_str())
                .bind(reason.map(str::to_string));
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
        }
        let counter = bump_counter(&mut tx, self.dialect, STATUSES).await?;
        tx.commit().await?;
        self.listing.written(
            counter,
            cache::Written::Statuses {
                ids,
                status,
                reason,
            },
        );
        Ok(())
    }

    /// Takes or renews the monitor lease for `holder` until `ttl` from now; false while another
    /// holder's lease runs. One statement, so two monitors can never both win.
    pub async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.acquire_lease_of(LeaseRole::Monitor, holder, ttl).await
    }

    /// Gives the monitor lease up (at shutdown), so that a standby takes over at once.
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        self.release_lease_of(LeaseRole::Monitor, holder).await
    }

    /// Takes or renews the lease of `role` for `holder` until `ttl` from now; false while
    /// another holder's lease runs. One statement, so two holders can never both win.
    pub async fn acquire_lease_of(
        &self,
        role: LeaseRole,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Utc::now().timestamp_millis();
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(
            "UPDATE monitor_lease SET holder = ?, expires_at = ? WHERE id = ? AND (holder = ? OR expires_at < ?)",
        )
        .bind(holder)
        .bind(until)
        .bind(role.row())
        .bind(holder)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who holds the lease of `role` now; `None` when nobody does (never taken, given up or
    /// run out).
    pub async fn lease_of(&self, role: LeaseRole) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT holder, expires_at FROM monitor_lease WHERE id = ?")
            .bind(role.row())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (holder, expires): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((!holder.is_empty() && expires > Utc::now().timestamp_millis()).then_some(holder))
    }

    /// Gives the lease of `role` up, so that a standby takes over at once.
    pub async fn release_lease_of(&self, role: LeaseRole, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE monitor_lease SET expires_at = 0 WHERE id = ? AND holder = ?")
            .bind(role.row())
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A counter that every change to the mappings increases.
    pub async fn generation(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT value FROM generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// The mappings changed (written or deleted) after revision `seen` up to `current` of the
    /// change counter, in one query of `mapping_changes`; `None` when the log no longer holds
    /// every revision of that range (pruned, or written before the log existed): then the
    /// caller must look at everything.
    pub async fn changed_between(
        &self,
        seen: i64,
        current: i64,
    ) -> Result<Option<BTreeSet<String>>, StoreError> {
        if current <= seen {
            return Ok(Some(BTreeSet::new()));
        }
        if current - seen > CHANGES_KEPT {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT revision, mapping_id FROM mapping_changes WHERE revision > ? AND revision <= ?",
        )
        .bind(seen)
        .bind(current)
        .fetch_all(&self.pool)
        .await?;
        // One entry per revision (the key): all there exactly when as many as the range.
        if rows.len() as i64 != current - seen {
            return Ok(None);
        }
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(1)?))
            .collect::<Result<_, StoreError>>()
            .map(Some)
    }

    /// Both counters, for the listing cache: changes and recorded statuses.
    async fn version(&self) -> Result<cache::Version, StoreError> {
        let rows = sqlx::query("SELECT id, value FROM generation WHERE id IN (1, 2)")
            .fetch_all(&self.pool)
            .await?;
        let mut version = cache::Version {
            changes: -1,
            statuses: -1,
        };
        for row in rows {
            let value = row.try_get::<i64, _>(1)?;
            match row.try_get::<i64, _>(0)? {
                CHANGES => version.changes = value,
                STATUSES => version.statuses = value,
                _ => {}
            }
        }
        if version.changes < 0 || version.statuses < 0 {
            return Err(StoreError::Corrupt {
                id: "(generation)".into(),
                reason: "a change counter is missing: run praas db-sync".into(),
            });
        }
        Ok(version)
    }
}

/// The rows of `generation`: changes to mappings, and statuses recorded.
const CHANGES: i64 = 1;
const STATUSES: i64 = 2;

enum Bind {
    Text(String),
    Int(i64),
}

/// Up to how many mappings the listing cache holds (≈ 0.8 KiB each); with more, listings read
/// their page from the database, so that a server's memory does not grow with the cloud.
pub const CACHED_ROWS: i64 = 20_000;

/// How many entries of `mapping_changes` are kept: an agent that fell further behind (down
/// for a while, or cut from the database) reads all its routers' mappings instead.
pub const CHANGES_KEPT: i64 = 10_000;

/// Records a change to `mapping_id` inside the writing transaction: bumps the change counter
/// and logs which mapping the new value was about (`mapping_changes`), so that other
/// processes can follow the mappings by revision. Returns the new value.
///
/// The counter is bumped in one statement: the row stays locked until the transaction ends, so
/// values are never shared. Each statement after it holds that lock one round trip longer,
/// which is why old entries are pruned only at every hundredth change (so up to 99 more than
/// `kept` are there).
async fn record_change(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    kept: i64,
    mapping_id: &str,
) -> Result<i64, StoreError> {
    let revision = bump_counter(tx, dialect, CHANGES).await?;
    sqlx::query("INSERT INTO mapping_changes (revision, mapping_id) VALUES (?, ?)")
        .bind(revision)
        .bind(mapping_id)
        .execute(&mut **tx)
        .await?;
    if revision % kept.min(100) == 0 {
        sqlx::query("DELETE FROM mapping_changes WHERE revision <= ?")
            .bind(revision - kept)
            .execute(&mut **tx)
            .await?;
    }
    Ok(revision)
}

/// Bumps row `id` of `generation` (see [`record_change`]).
async fn bump_counter(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    id: i64,
) -> Result<i64, StoreError> {
    match dialect {
        Dialect::Sqlite => {
            let row =
                sqlx::query("UPDATE generation SET value = value + 1 WHERE id = ? RETURNING value")
                    .bind(id)
                    .fetch_one(&mut **tx)
                    .await?;
            Ok(row.try_get::<i64, _>(0)?)
        }
        Dialect::MySql => {
            // LAST_INSERT_ID(expr) hands the new value back in the statement's OK packet.
            let done =
                sqlx::query("UPDATE generation SET value = LAST_INSERT_ID(value + 1) WHERE id = ?")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            done.last_insert_id().ok_or_else(|| StoreError::Corrupt {
                id: "(generation)".into(),
                reason: "the server returned no counter value".into(),
            })
        }
    }
}

/// Writes the row of a new mapping.
async fn insert_row(tx: &mut Transaction<'_, Any>, mapping: &Mapping) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO mappings (id, project_id, router_id, distributed, external_ip_address, protocol, \
             external_port_first, external_port_last, internal_ip_address, internal_port_id, internal_port_first, \
             internal_port_last, description, allowed_cidrs, masquerade, status, status_reason, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&mapping.id)
        .bind(&mapping.project_id)
        .bind(&mapping.router_id)
        .bind(i64::from(mapping.distributed))
        .bind(mapping.external_ip_address.to_string())
        .bind(mapping.protocol.as_str())
        .bind(i64::from(mapping.external_ports.first()))
        .bind(i64::from(mapping.external_ports.last()))
        .bind(mapping.internal_ip_address.to_string())
        .bind(mapping.internal_port_id.clone())
        .bind(i64::from(mapping.internal_ports.first()))
        .bind(i64::from(mapping.internal_ports.last()))
        .bind(&mapping.description)
        .bind(cidrs_to_text(&mapping.allowed_cidrs))
        .bind(i64::from(mapping.masquerade))
        .bind(mapping.status.as_str())
        .bind(mapping.status_reason.clone())
        .bind(&mapping.created_at)
        .bind(&mapping.updated_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How often a transaction that lost a deadlock or a Galera certification is run again. Every
/// write moves the one `generation` row, so writers on two Galera nodes conflict on each
/// commit: eight retries were once not enough for eight such writers.
const CONFLICT_RETRIES: u32 = 16;

/// Connections kept to a MySQL/MariaDB server unless configured (sqlx's and oslo.db's usual).
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// Runs `op` (one whole transaction) again while it loses to a concurrent one: an InnoDB
/// deadlock, or a Galera certification failure (another node committed a conflicting write
/// first; MariaDB reports it as a deadlock, SQLSTATE 40001). Waits a little longer, with
/// jitter, before each new attempt.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(StoreError::Database(e)) if is_deadlock(&e) && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                let ms =
                    rand::Rng::gen_range(&mut rand::thread_rng(), 1..=(5u64 << attempt.min(5)));
                tracing::debug!(
                    attempt,
                    wait_ms = ms,
                    "transaction lost a conflict; running it again"
                );
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return other,
        }
    }
}

/// SQLSTATE 40001: the server chose this transaction as a deadlock victim.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Claims every external port of `m`.
async fn claim_external(tx: &mut Transaction<'_, Any>, m: &Mapping) -> Result<(), StoreError> {
    for port in m.external_ports.iter() {
        let inserted = sqlx::query("INSERT INTO external_ports (router_id, protocol, port, mapping_id) VALUES (?, ?, ?, ?)")
            .bind(&m.router_id)
            .bind(m.protocol.as_str())
            .bind(i64::from(port))
            .bind(&m.id)
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::ExternalPortInUse {
                    router_id: m.router_id.clone(),
                    protocol: m.protocol,
                    port,
                    mapping_id: String::new(), // named after the rollback
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Claims the internal sockets of `m` (one per distinct internal port).
async fn claim_internal(tx: &mut Transaction<'_, Any>, m: &Mapping) -> Result<(), StoreError> {
    let ip = m.internal_ip_address.to_string();
    for port in m.internal_ports.iter() {
        let inserted = sqlx::query("INSERT INTO internal_sockets (router_id, protocol, ip, port, mapping_id) VALUES (?, ?, ?, ?, ?)")
            .bind(&m.router_id)
            .bind(m.protocol.as_str())
            .bind(&ip)
            .bind(i64::from(port))
            .bind(&m.id)
            .execute(&mut **tx)
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::InternalSocketMapped {
                    router_id: m.router_id.clone(),
                    ip: m.internal_ip_address,
                    protocol: m.protocol,
                    port,
                    mapping_id: String::new(), // named after the rollback
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn cidrs_to_text(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn from_row(row: &AnyRow) -> Result<Mapping, StoreError> {
    StoredRow::from_sql(row)?.into_mapping()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openstack_urls_translate() {
        assert_eq!(
            translate_url("sqlite:////var/lib/praas/praas.db")
                .unwrap()
                .0,
            "sqlite:///var/lib/praas/praas.db?mode=rwc"
        );
        assert_eq!(
            translate_url("sqlite:///praas.db").unwrap().0,
            "sqlite://praas.db?mode=rwc"
        );
        assert_eq!(translate_url("sqlite://").unwrap().0, "sqlite::memory:");
        let (url, dialect) =
            translate_url("mysql+pymysql://praas:secret@127.0.0.1/praas?charset=utf8").unwrap();
        assert_eq!(
            (url.as_str(), dialect),
            ("mysql://praas:secret@127.0.0.1/praas", Dialect::MySql)
        );
        assert!(translate_url("postgresql://x@y/z").is_err());
        let err = translate_url("mysql://praas:secret@host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("***") && !err.contains("secret"), "{err}");
    }
}
