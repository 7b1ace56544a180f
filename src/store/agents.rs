//! Agents' heartbeats: which network node each agent runs on, which routers it serves, how its
//! last pass went (tables `agents` and `agent_routers`).
//!
//! An agent writes one row when it reports; the routers it serves are written as differences
//! from its previous report (the whole list on its first report, and after a failed one), so
//! that a node with a thousand routers costs one small statement per heartbeat at rest.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;

use super::{Dialect, Store, StoreError};

/// Statement parameters per `IN (...)` or multi-row insert.
const CHUNK: usize = 500;
/// The longest `last_error` kept (the column's size), in characters.
pub const MAX_ERROR_CHARS: usize = 1000;

/// What an agent reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub host: String,
    pub started_at: DateTime<Utc>,
    /// The end of its last pass that programmed every namespace it serves.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Its last failure, until a pass succeeds again.
    pub last_error: Option<String>,
}

/// How the served routers changed since the agent's previous report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedRouters {
    /// Every router it serves (its first report, or after a failed one).
    All(BTreeSet<String>),
    Changed {
        added: BTreeSet<String>,
        removed: BTreeSet<String>,
    },
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub host: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Milliseconds since the epoch of `heartbeat_at`, to tell whether the agent is alive.
    pub heartbeat_ms: i64,
    pub last_sync_at: Option<String>,
    pub last_error: Option<String>,
    pub routers: Vec<String>,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Store {
    /// Records an agent's heartbeat, now, with the routers it serves.
    pub async fn report_agent(
        &self,
        report: &AgentReport,
        routers: &ServedRouters,
    ) -> Result<(), StoreError> {
        super::retrying(|| self.report_agent_once(report, routers)).await
    }

    async fn report_agent_once(
        &self,
        report: &AgentReport,
        routers: &ServedRouters,
    ) -> Result<(), StoreError> {
        let _writer = self.writer().await;
        let now = Utc::now().timestamp_millis();
        let mut tx = self.pool.begin().await?;
        let upsert = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO agents (host, started_at, heartbeat_at, last_sync_at, last_error) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                 last_sync_at = excluded.last_sync_at, last_error = excluded.last_error"
            }
            Dialect::MySql => {
                "INSERT INTO agents (host, started_at, heartbeat_at, last_sync_at, last_error) \
                 VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 started_at = VALUES(started_at), heartbeat_at = VALUES(heartbeat_at), \
                 last_sync_at = VALUES(last_sync_at), last_error = VALUES(last_error)"
            }
        };
        sqlx::query(upsert)
            .bind(&report.host)
            .bind(report.started_at.timestamp_millis())
            .bind(now)
            .bind(report.last_sync_at.map(|t| t.timestamp_millis()))
            .bind(
                report
                    .last_error
                    .as_ref()
                    .map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>()),
            )
            .execute(&mut *tx)
            .await?;
        let (added, removed): (Vec<&String>, Vec<&String>) = match routers {
            ServedRouters::All(all) => {
                sqlx::query("DELETE FROM agent_routers WHERE host = ?")
                    .bind(&report.host)
                    .execute(&mut *tx)
                    .await?;
                (all.iter().collect(), vec![])
            }
            ServedRouters::Changed { added, removed } => {
                (added.iter().collect(), removed.iter().collect())
            }
        };
        for chunk in removed.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM agent_routers WHERE host = ? AND router_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql).bind(&report.host);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        let insert = match self.dialect {
            Dialect::Sqlite => "INSERT OR IGNORE INTO agent_routers (host, router_id) VALUES ",
            Dialect::MySql => "INSERT IGNORE INTO agent_routers (host, router_id) VALUES ",
        };
        for chunk in added.chunks(CHUNK) {
            let sql = format!("{insert}{}", vec!["(?, ?)"; chunk.len()].join(", "));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(&report.host).bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every agent that ever reported, by host, with the routers it serves.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT host, started_at, heartbeat_at, last_sync_at, last_error FROM agents ORDER BY host",
        )
        .fetch_all(&self.pool)
        .await?;
        let served =
            sqlx::query("SELECT host, router_id FROM agent_routers ORDER BY host, router_id")
                .fetch_all(&self.pool)
                .await?;
        let mut by_host: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for row in served {
            by_host
                .entry(row.try_get(0)?)
                .or_default()
                .push(row.try_get(1)?);
        }
        let mut agents = Vec::with_capacity(rows.len());
        for row in rows {
            let host: String = row.try_get(0)?;
            let heartbeat_ms: i64 = row.try_get(2)?;
            agents.push(AgentRecord {
                routers: by_host.remove(&host).unwrap_or_default(),
                host,
                started_at: rfc3339(row.try_get(1)?),
                heartbeat_at: rfc3339(heartbeat_ms),
                heartbeat_ms,
                last_sync_at: row.try_get::<Option<i64>, _>(3)?.map(rfc3339),
                last_error: row.try_get(4)?,
            });
        }
        Ok(agents)
    }

    /// Which of `routers` some agent that reported at or after `since` serves.
    pub async fn routers_served_since(
        &self,
        routers: &BTreeSet<String>,
        since: DateTime<Utc>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut served = BTreeSet::new();
        let routers: Vec<&String> = routers.iter().collect();
        for chunk in routers.chunks(CHUNK) {
            let sql = format!(
                "SELECT DISTINCT r.router_id FROM agent_routers r JOIN agents a ON a.host = r.host \
                 WHERE a.heartbeat_at >= ? AND r.router_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql).bind(since.timestamp_millis());
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                served.insert(row.try_get(0)?);
            }
        }
        Ok(served)
    }
}
