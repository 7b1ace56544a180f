//! What routers' mappings hold of their external ports, counted from the port claims
//! (`external_ports`, one row per claimed port) rather than from the mappings' rows: how many
//! ports of the configured range are taken, for the routers a tenant lists, in one grouped
//! query.

use std::collections::HashMap;

use sqlx::Row;

use super::{Dialect, Store, StoreError};
use crate::model::{PortRange, Protocol};

/// Routers per statement.
const CHUNK: usize = 500;

/// What a router's mappings of one protocol hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortCount {
    /// How many mappings.
    pub mappings: u64,
    /// How many of their external ports lie in the range asked about.
    pub ports_in_range: u64,
}

impl Store {
    /// For each router of `routers` and protocol that has mappings: how many, and how many of
    /// their external ports lie in `range`. A (router, protocol) without mappings has no
    /// entry. One grouped query of the port claims per 500 routers.
    pub async fn port_counts(
        &self,
        routers: &[String],
        range: PortRange,
    ) -> Result<HashMap<(String, Protocol), PortCount>, StoreError> {
        // MySQL sums integers as DECIMAL, which the Any driver does not read as an integer.
        let in_range = match self.dialect {
            Dialect::Sqlite => "SUM(CASE WHEN port >= ? AND port <= ? THEN 1 ELSE 0 END)",
            Dialect::MySql => {
                "CAST(SUM(CASE WHEN port >= ? AND port <= ? THEN 1 ELSE 0 END) AS SIGNED)"
            }
        };
        let mut counts = HashMap::new();
        for chunk in routers.chunks(CHUNK) {
            let sql = format!(
                "SELECT router_id, protocol, COUNT(DISTINCT mapping_id), {in_range} \
                 FROM external_ports WHERE router_id IN ({}) GROUP BY router_id, protocol",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql)
                .bind(i64::from(range.first()))
                .bind(i64::from(range.last()));
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let router_id: String = row.try_get(0)?;
                let protocol: String = row.try_get(1)?;
                let protocol = protocol
                    .parse::<Protocol>()
                    .map_err(|_| StoreError::Corrupt {
                        id: format!("(external ports of router {router_id})"),
                        reason: format!("unknown protocol {protocol:?}"),
                    })?;
                let count = |i: usize| -> Result<u64, StoreError> {
                    Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
                };
                counts.insert(
                    (router_id, protocol),
                    PortCount {
                        mappings: count(2)?,
                        ports_in_range: count(3)?,
                    },
                );
            }
        }
        Ok(counts)
    }
}
