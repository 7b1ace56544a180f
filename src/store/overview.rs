//! What `praas status` shows of the store: mappings by status, the monitor's lease, and the
//! mappings most recently marked `ERROR` or `DOWN` with their reasons.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;

use super::{Dialect, Store, StoreError};

/// Who holds the monitor lease, and until when (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: i64,
}

impl Lease {
    pub fn expires_at(&self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.expires_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    }
}

/// A mapping that is not working, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    pub id: String,
    pub router_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub updated_at: String,
}

impl Store {
    /// How many mappings have each status.
    pub async fn count_by_status(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM mappings GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect()
    }

    /// The monitor lease; `None` when no monitor ever held it.
    pub async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT holder, expires_at FROM monitor_lease WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let holder: String = row.try_get(0)?;
        Ok((!holder.is_empty()).then_some(Lease {
            holder,
            expires_ms: row.try_get(1)?,
        }))
    }

    /// The `limit` mappings in `ERROR` or `DOWN` changed last, newest first.
    pub async fn troubles(&self, limit: u32) -> Result<Vec<Trouble>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT id, router_id, status, status_reason, updated_at FROM mappings \
             WHERE status IN ('ERROR', 'DOWN') ORDER BY updated_at DESC, id LIMIT {limit}"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Trouble {
                    id: r.try_get(0)?,
                    router_id: r.try_get(1)?,
                    status: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// What the monitor's cycle did, as `praas status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRecord {
    /// The lease holder that ran it.
    pub holder: String,
    pub started_at: DateTime<Utc>,
    pub duration: std::time::Duration,
    /// Neutron requests it made, when the monitor counts them.
    pub neutron_requests: Option<u64>,
    pub mappings: usize,
    pub deleted: usize,
    pub updated: usize,
    /// Why it was abandoned, when it was.
    pub error: Option<String>,
}

/// A server or monitor as it last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// `server`, `all-in-one` or `monitor`.
    pub role: String,
    pub host: String,
    /// Where it serves (`/healthz`, `/metrics`, and the API for servers).
    pub address: String,
    pub version: String,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Milliseconds since the epoch of `heartbeat_at`.
    pub heartbeat_ms: i64,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Records the monitor's last cycle (one row, replaced each time).
    pub async fn record_monitor_cycle(&self, cycle: &CycleRecord) -> Result<(), StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO monitor_cycles (id, holder, started_at, duration_ms, neutron_requests, \
                 mappings, deleted, updated, error) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, \
                 started_at = excluded.started_at, duration_ms = excluded.duration_ms, \
                 neutron_requests = excluded.neutron_requests, mappings = excluded.mappings, \
                 deleted = excluded.deleted, updated = excluded.updated, error = excluded.error"
            }
            Dialect::MySql => {
                "INSERT INTO monitor_cycles (id, holder, started_at, duration_ms, neutron_requests, \
                 mappings, deleted, updated, error) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE holder = VALUES(holder), started_at = VALUES(started_at), \
                 duration_ms = VALUES(duration_ms), neutron_requests = VALUES(neutron_requests), \
                 mappings = VALUES(mappings), deleted = VALUES(deleted), \
                 updated = VALUES(updated), error = VALUES(error)"
            }
        };
        let error = cycle.error.as_ref().map(|e| {
            e.chars()
                .take(super::agents::MAX_ERROR_CHARS)
                .collect::<String>()
        });
        super::retrying(|| async {
            let _writer = self.writer().await;
            sqlx::query(sql)
                .bind(&cycle.holder)
                .bind(cycle.started_at.timestamp_millis())
                .bind(millis(cycle.duration))
                .bind(cycle.neutron_requests.map(|n| n as i64))
                .bind(cycle.mappings as i64)
                .bind(cycle.deleted as i64)
                .bind(cycle.updated as i64)
                .bind(error.clone())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// The monitor's last recorded cycle; `None` before the first.
    pub async fn last_monitor_cycle(&self) -> Result<Option<CycleRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT holder, started_at, duration_ms, neutron_requests, mappings, deleted, updated, \
             error FROM monitor_cycles WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(CycleRecord {
            holder: r.try_get(0)?,
            started_at: DateTime::<Utc>::from_timestamp_millis(r.try_get(1)?).unwrap_or_default(),
            duration: std::time::Duration::from_millis(r.try_get::<i64, _>(2)?.max(0) as u64),
            neutron_requests: r.try_get::<Option<i64>, _>(3)?.map(|n| n.max(0) as u64),
            mappings: r.try_get::<i64, _>(4)?.max(0) as usize,
            deleted: r.try_get::<i64, _>(5)?.max(0) as usize,
            updated: r.try_get::<i64, _>(6)?.max(0) as usize,
            error: r.try_get(7)?,
        }))
    }

    /// Records that a server or monitor (`role`) on `host`, serving at `address`, is alive.
    pub async fn report_service(
        &self,
        role: &str,
        host: &str,
        address: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO services (role, host, address, version, started_at, heartbeat_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (role, host) DO UPDATE SET \
                 address = excluded.address, version = excluded.version, \
                 started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at"
            }
            Dialect::MySql => {
                "INSERT INTO services (role, host, address, version, started_at, heartbeat_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE address = VALUES(address), \
                 version = VALUES(version), started_at = VALUES(started_at), \
                 heartbeat_at = VALUES(heartbeat_at)"
            }
        };
        super::retrying(|| async {
            let _writer = self.writer().await;
            sqlx::query(sql)
                .bind(role)
                .bind(host)
                .bind(address)
                .bind(env!("CARGO_PKG_VERSION"))
                .bind(started_at.timestamp_millis())
                .bind(Utc::now().timestamp_millis())
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Every server and monitor that ever reported, by role and host.
    pub async fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT role, host, address, version, started_at, heartbeat_at FROM services \
             ORDER BY role, host",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let heartbeat_ms: i64 = r.try_get(5)?;
                Ok(ServiceRecord {
                    role: r.try_get(0)?,
                    host: r.try_get(1)?,
                    address: r.try_get(2)?,
                    version: r.try_get(3)?,
                    started_at: rfc3339(r.try_get(4)?),
                    heartbeat_at: rfc3339(heartbeat_ms),
                    heartbeat_ms,
                })
            })
            .collect()
    }
}
