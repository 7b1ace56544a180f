//! Quotas: how many mappings and external ports a project may hold.
//!
//! Limits are the store's defaults (`[quota]` of the configuration) unless an admin set a
//! project's own (`quotas` table, one row per project and resource, as Neutron keeps them).
//! Usage is never stored: it is counted from the project's mappings, inside the transaction
//! that would add to it, so that it cannot drift from what exists.
//!
//! Counting is only safe if two transactions adding to the same project cannot both count
//! before either commits. Each such transaction therefore first moves the project's row of
//! `quota_locks`, then counts: on one database the second waits for the first's row lock and
//! counts after its commit (on MariaDB its snapshot is taken at its first plain read, which
//! comes after the lock); on SQLite writers are one at a time anyway; on two Galera nodes,
//! where a row lock is not seen by the other node, both wrote the row, so the one certified
//! second fails (or is aborted by the first's write set arriving while it holds the row), and
//! [`super::retrying`] runs it again, counting anew. A project whose limits are all unlimited
//! skips the row and the count.

use sqlx::{Any, Row, Transaction};

use super::{Dialect, Store, StoreError};
use crate::model::{Limit, Resource};

/// The limits of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub mappings: Limit,
    pub external_ports: Limit,
}

impl Quotas {
    /// No limit on anything: what a store has until told its defaults.
    pub const UNLIMITED: Quotas = Quotas {
        mappings: Limit::Unlimited,
        external_ports: Limit::Unlimited,
    };

    pub fn get(&self, resource: Resource) -> Limit {
        match resource {
            Resource::Mappings => self.mappings,
            Resource::ExternalPorts => self.external_ports,
        }
    }

    fn set(&mut self, resource: Resource, limit: Limit) {
        match resource {
            Resource::Mappings => self.mappings = limit,
            Resource::ExternalPorts => self.external_ports = limit,
        }
    }

    fn is_unlimited(&self) -> bool {
        Resource::ALL
            .iter()
            .all(|r| self.get(*r) == Limit::Unlimited)
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::UNLIMITED
    }
}

/// A change to a project's own limits; `None` leaves a resource as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaChange {
    pub mappings: Option<Limit>,
    pub external_ports: Option<Limit>,
}

impl QuotaChange {
    fn changes(&self) -> impl Iterator<Item = (Resource, Limit)> {
        [
            (Resource::Mappings, self.mappings),
            (Resource::ExternalPorts, self.external_ports),
        ]
        .into_iter()
        .filter_map(|(r, l)| Some((r, l?)))
    }
}

/// What a project holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub mappings: u64,
    pub external_ports: u64,
}

impl Usage {
    pub fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Mappings => self.mappings,
            Resource::ExternalPorts => self.external_ports,
        }
    }
}

impl Store {
    /// The limits of projects that have none of their own (`[quota]`); unlimited unless set.
    pub fn with_quota_defaults(mut self, defaults: Quotas) -> Self {
        self.quota_defaults = defaults;
        self
    }

    pub fn quota_defaults(&self) -> Quotas {
        self.quota_defaults
    }

    /// The limits that apply to `project_id`: its own where an admin set them, else the
    /// defaults.
    pub async fn quotas_of(&self, project_id: &str) -> Result<Quotas, StoreError> {
        let rows = sqlx::query("SELECT resource, hard_limit FROM quotas WHERE project_id = ?")
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
        let mut quotas = self.quota_defaults;
        for row in rows {
            let (resource, limit) = own_limit(project_id, &row)?;
            quotas.set(resource, limit);
        }
        Ok(quotas)
    }

    /// Every project that has limits of its own, with the limits that apply to it, by project.
    pub async fn projects_with_own_quotas(&self) -> Result<Vec<(String, Quotas)>, StoreError> {
        let rows = sqlx::query(
            "SELECT project_id, resource, hard_limit FROM quotas ORDER BY project_id, resource",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut found: Vec<(String, Quotas)> = vec![];
        for row in rows {
            let project: String = row.try_get(0)?;
            let (resource, limit) = own_limit(&project, &row)?;
            match found.last_mut() {
                Some((p, quotas)) if *p == project => quotas.set(resource, limit),
                _ => {
                    let mut quotas = self.quota_defaults;
                    quotas.set(resource, limit);
                    found.push((project, quotas));
                }
            }
        }
        Ok(found)
    }

    /// Sets limits of `project_id`'s own; returns the limits that now apply to it. A limit
    /// below what the project holds removes nothing: it refuses what would add to it.
    pub async fn set_quotas(
        &self,
        project_id: &str,
        change: &QuotaChange,
    ) -> Result<Quotas, StoreError> {
        super::retrying(|| self.set_quotas_once(project_id, change)).await?;
        self.quotas_of(project_id).await
    }

    async fn set_quotas_once(
        &self,
        project_id: &str,
        change: &QuotaChange,
    ) -> Result<(), StoreError> {
        let _writer = self.writer().await;
        let upsert = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?, ?, ?) \
                 ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = excluded.hard_limit"
            }
            Dialect::MySql => {
                "INSERT INTO quotas (project_id, resource, hard_limit) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE hard_limit = VALUES(hard_limit)"
            }
        };
        let mut tx = self.pool.begin().await?;
        for (resource, limit) in change.changes() {
            sqlx::query(upsert)
                .bind(project_id)
                .bind(resource.as_str())
                .bind(limit.as_i64())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets `project_id`'s own limits: the defaults apply again. Whether it had any.
    pub async fn reset_quotas(&self, project_id: &str) -> Result<bool, StoreError> {
        super::retrying(|| async {
            let _writer = self.writer().await;
            let done = sqlx::query("DELETE FROM quotas WHERE project_id = ?")
                .bind(project_id)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    /// What `project_id` holds now.
    pub async fn usage(&self, project_id: &str) -> Result<Usage, StoreError> {
        let mut conn = self.pool.acquire().await?;
        count_usage(&mut conn, self.dialect, project_id).await
    }

    /// The limits a write adding to `project_id`'s usage must respect, or `None` when every
    /// limit is unlimited. Makes sure the project's row of `quota_locks` exists, so that the
    /// write's transaction only has to move it (creating it there would make concurrent first
    /// writers of a project deadlock on the new key).
    pub(super) async fn quotas_to_enforce(
        &self,
        project_id: &str,
    ) -> Result<Option<Quotas>, StoreError> {
        let quotas = self.quotas_of(project_id).await?;
        if quotas.is_unlimited() {
            return Ok(None);
        }
        // Two Galera nodes creating the row at once conflict like any other write: again.
        super::retrying(|| async {
            let exists = sqlx::query("SELECT 1 FROM quota_locks WHERE project_id = ?")
                .bind(project_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if exists {
                return Ok(());
            }
            let created =
                sqlx::query("INSERT INTO quota_locks (project_id, revision) VALUES (?, 0)")
                    .bind(project_id)
                    .execute(&self.pool)
                    .await;
            match created {
                // Another writer created it first: as good.
                Err(e) if super::is_unique_violation(&e) => Ok(()),
                other => other.map(|_| ()).map_err(StoreError::from),
            }
        })
        .await?;
        Ok(Some(quotas))
    }
}

/// One row of `quotas`, checked.
fn own_limit(project_id: &str, row: &sqlx::any::AnyRow) -> Result<(Resource, Limit), StoreError> {
    let resource: String = row.try_get("resource")?;
    let value: i64 = row.try_get("hard_limit")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        id: format!("(quota of project {project_id})"),
        reason,
    };
    let resource = resource
        .parse::<Resource>()
        .map_err(|e| corrupt(e.to_string()))?;
    let limit = Limit::from_i64(value).map_err(|e| corrupt(e.to_string()))?;
    Ok((resource, limit))
}

/// The project's mappings and external ports, counted (one index range scan).
async fn count_usage(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    project_id: &str,
) -> Result<Usage, StoreError> {
    // MySQL sums integers as DECIMAL, which the Any driver does not read as an integer.
    let sql = match dialect {
        Dialect::Sqlite => {
            "SELECT COUNT(*), COALESCE(SUM(external_port_last - external_port_first + 1), 0) \
             FROM mappings WHERE project_id = ?"
        }
        Dialect::MySql => {
            "SELECT COUNT(*), CAST(COALESCE(SUM(external_port_last - external_port_first + 1), 0) AS SIGNED) \
             FROM mappings WHERE project_id = ?"
        }
    };
    let row = sqlx::query(sql).bind(project_id).fetch_one(conn).await?;
    let count = |i: usize| -> Result<u64, StoreError> {
        Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
    };
    Ok(Usage {
        mappings: count(0)?,
        external_ports: count(1)?,
    })
}

/// Inside a writing transaction, before anything else of the project is read: moves the
/// project's row of `quota_locks` (see the module's comment), counts what the project holds,
/// and refuses the write when adding `adding` (how much of each resource it adds) would pass a
/// limit. Resources are checked in order, mappings first.
pub(super) async fn enforce(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    project_id: &str,
    quotas: &Quotas,
    adding: &[(Resource, u64)],
) -> Result<(), StoreError> {
    let moved = sqlx::query("UPDATE quota_locks SET revision = revision + 1 WHERE project_id = ?")
        .bind(project_id)
        .execute(&mut **tx)
        .await?;
    if moved.rows_affected() != 1 {
        // Created by `quotas_to_enforce` and never deleted: someone removed it by hand.
        return Err(StoreError::Corrupt {
            id: format!("(quota lock of project {project_id})"),
            reason: "the row is missing; it is created again by the next request".into(),
        });
    }
    let used = count_usage(tx, dialect, project_id).await?;
    for &(resource, requested) in adding {
        let limit = quotas.get(resource);
        let used = used.get(resource);
        if requested > 0 && !limit.allows(used.saturating_add(requested)) {
            return Err(StoreError::QuotaExceeded {
                project_id: project_id.to_string(),
                resource,
                used,
                limit: u64::try_from(limit.as_i64()).unwrap_or(0),
                requested,
            });
        }
    }
    Ok(())
}
