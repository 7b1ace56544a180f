//! What the kernel counted for each mapping (`mapping_usage`): packets and bytes of both
//! directions of its forwarded connections, summed over the agents that program it (an HA
//! router's replicas each add what their node forwarded), and when they last moved.
//!
//! Agents add differences (what their kernel counted since their last reading), so that a
//! counter restarted in the kernel (a rewritten table, a rebuilt namespace) or an agent that
//! restarts never makes the total go back. Writing usage does not move the change counter:
//! it is not a change to program. A mapping's row goes with it; a row an agent adds for a
//! mapping deleted meanwhile is removed by [`Store::prune_usage`].

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;

use super::{Dialect, Store, StoreError};

/// Rows per statement.
const CHUNK: usize = 300;
/// Past this many ids, [`Store::mapping_usage`] reads the whole table once.
const WHOLE_TABLE_FROM: usize = 3 * CHUNK;

/// A mapping's counted traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MappingUsage {
    pub packets: u64,
    pub bytes: u64,
    /// When an agent last saw the counters move.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl MappingUsage {
    /// `last_used_at` as the API shows it.
    pub fn last_used(&self) -> Option<String> {
        self.last_used_at
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

/// What one agent counted for a mapping since its previous report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub mapping_id: String,
    pub packets: u64,
    pub bytes: u64,
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Adds `deltas` (counted up to `at`) to the mappings' usage, in one transaction.
    pub async fn add_usage(
        &self,
        deltas: &[UsageDelta],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        super::retrying(|| self.add_usage_once(deltas, at)).await
    }

    async fn add_usage_once(
        &self,
        deltas: &[UsageDelta],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _writer = self.writer().await;
        let upsert = match self.dialect {
            Dialect::Sqlite => {
                " ON CONFLICT (mapping_id) DO UPDATE SET packets = packets + excluded.packets, \
                 bytes = bytes + excluded.bytes, last_used_at = excluded.last_used_at"
            }
            Dialect::MySql => {
                " ON DUPLICATE KEY UPDATE packets = packets + VALUES(packets), \
                 bytes = bytes + VALUES(bytes), last_used_at = VALUES(last_used_at)"
            }
        };
        let mut tx = self.pool.begin().await?;
        for chunk in deltas.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO mapping_usage (mapping_id, packets, bytes, last_used_at) VALUES {}{upsert}",
                vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for d in chunk {
                query = query
                    .bind(&d.mapping_id)
                    .bind(as_i64(d.packets))
                    .bind(as_i64(d.bytes))
                    .bind(at.timestamp_millis());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The usage of each of `ids` that has any. Many ids are read as the whole table in one
    /// query rather than in many.
    pub async fn mapping_usage(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, MappingUsage>, StoreError> {
        let mut found: HashMap<String, MappingUsage> = HashMap::with_capacity(ids.len());
        let whole = ids.len() > WHOLE_TABLE_FROM;
        let chunks: Vec<&[&str]> = if whole {
            vec![&[]]
        } else {
            ids.chunks(CHUNK).collect()
        };
        for chunk in chunks {
            let sql = if whole {
                "SELECT mapping_id, packets, bytes, last_used_at FROM mapping_usage".to_string()
            } else {
                format!(
                    "SELECT mapping_id, packets, bytes, last_used_at FROM mapping_usage WHERE mapping_id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                )
            };
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.insert(
                    row.try_get(0)?,
                    MappingUsage {
                        packets: row.try_get::<i64, _>(1)?.max(0) as u64,
                        bytes: row.try_get::<i64, _>(2)?.max(0) as u64,
                        last_used_at: row
                            .try_get::<Option<i64>, _>(3)?
                            .and_then(DateTime::<Utc>::from_timestamp_millis),
                    },
                );
            }
        }
        if whole {
            let wanted: std::collections::HashSet<&str> = ids.iter().copied().collect();
            found.retain(|id, _| wanted.contains(id.as_str()));
        }
        Ok(found)
    }

    /// Removes usage rows whose mapping is gone (added by an agent while it was deleted).
    /// Returns how many.
    pub async fn prune_usage(&self) -> Result<u64, StoreError> {
        let _writer = self.writer().await;
        let done = sqlx::query(
            "DELETE FROM mapping_usage WHERE NOT EXISTS \
             (SELECT 1 FROM mappings WHERE mappings.id = mapping_usage.mapping_id)",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
