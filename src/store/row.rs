//! A stored mapping row and its decoding, shared by the row-by-row reads and by SQLite's
//! one-document listing.

use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Mapping, StoreError};
use crate::model::{PortRange, Protocol};

/// Columns of `mappings`, in the order of [`StoredRow`].
pub(super) const COLUMNS: [&str; 20] = [
    "id",
    "project_id",
    "router_id",
    "distributed",
    "external_ip_address",
    "protocol",
    "external_port_first",
    "external_port_last",
    "internal_ip_address",
    "internal_port_id",
    "internal_port_first",
    "internal_port_last",
    "description",
    "allowed_cidrs",
    "masquerade",
    "status",
    "status_reason",
    "held",
    "created_at",
    "updated_at",
];

/// `COLUMNS` joined for a `SELECT`.
pub(super) fn column_list() -> String {
    COLUMNS.join(", ")
}

/// For SQLite: every selected row as one JSON array of arrays, built inside SQLite.
///
/// sqlx's SQLite driver hands each row over from its worker thread separately, which made a
/// listing of 10,000 mappings cost ≈ 150 ms; one text value of the same rows costs ≈ 20 ms
/// (docs/benchmarks.md). `inner` must select [`column_list`].
pub(super) fn sqlite_json_select(inner: &str) -> String {
    format!(
        "SELECT json_group_array(json_array({})) FROM ({inner})",
        COLUMNS.join(", ")
    )
}

/// One row of `mappings`, as stored: decoded by name from SQL rows, by position from
/// SQLite's JSON listing.
#[derive(Debug, Deserialize)]
pub(super) struct StoredRow {
    id: String,
    project_id: String,
    router_id: String,
    distributed: i64,
    external_ip_address: String,
    protocol: String,
    external_port_first: i64,
    external_port_last: i64,
    internal_ip_address: String,
    internal_port_id: Option<String>,
    internal_port_first: i64,
    internal_port_last: i64,
    description: String,
    allowed_cidrs: String,
    masquerade: i64,
    status: String,
    status_reason: Option<String>,
    held: i64,
    created_at: String,
    updated_at: String,
}

impl StoredRow {
    pub(super) fn from_sql(row: &AnyRow) -> Result<StoredRow, StoreError> {
        Ok(StoredRow {
            id: row.try_get("id")?,
            project_id: row.try_get("project_id")?,
            router_id: row.try_get("router_id")?,
            distributed: row.try_get("distributed")?,
            external_ip_address: row.try_get("external_ip_address")?,
            protocol: row.try_get("protocol")?,
            external_port_first: row.try_get("external_port_first")?,
            external_port_last: row.try_get("external_port_last")?,
            internal_ip_address: row.try_get("internal_ip_address")?,
            internal_port_id: row.try_get("internal_port_id")?,
            internal_port_first: row.try_get("internal_port_first")?,
            internal_port_last: row.try_get("internal_port_last")?,
            description: row.try_get("description")?,
            allowed_cidrs: row.try_get("allowed_cidrs")?,
            masquerade: row.try_get("masquerade")?,
            status: row.try_get("status")?,
            status_reason: row.try_get("status_reason")?,
            held: row.try_get("held")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// Rows from [`sqlite_json_select`]'s document.
    pub(super) fn from_json_document(doc: &str) -> Result<Vec<StoredRow>, StoreError> {
        serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
            id: "(listing)".into(),
            reason: format!("rows could not be decoded: {e}"),
        })
    }

    /// Checks every field; a value no API call could have stored is reported as corrupt.
    pub(super) fn into_mapping(self) -> Result<Mapping, StoreError> {
        let id = self.id;
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.clone(),
            reason,
        };
        let port = |name: &str, v: i64| -> Result<u16, StoreError> {
            u16::try_from(v).map_err(|_| corrupt(format!("{name} = {v} is not a port")))
        };
        let range = |name: &str, a: i64, b: i64| -> Result<PortRange, StoreError> {
            PortRange::new(port(name, a)?, port(name, b)?).map_err(|e| corrupt(e.to_string()))
        };
        let ip = |name: &str, v: &str| -> Result<Ipv4Addr, StoreError> {
            v.parse()
                .map_err(|_| corrupt(format!("{name} = {v:?} is not an IPv4 address")))
        };
        Ok(Mapping {
            project_id: self.project_id,
            router_id: self.router_id,
            distributed: self.distributed != 0,
            external_ip_address: ip("external_ip_address", &self.external_ip_address)?,
            protocol: Protocol::from_str(&self.protocol).map_err(|e| corrupt(e.to_string()))?,
            external_ports: range(
                "external_port",
                self.external_port_first,
                self.external_port_last,
            )?,
            internal_ip_address: ip("internal_ip_address", &self.internal_ip_address)?,
            internal_port_id: self.internal_port_id,
            internal_ports: range(
                "internal_port",
                self.internal_port_first,
                self.internal_port_last,
            )?,
            description: self.description,
            allowed_cidrs: self
                .allowed_cidrs
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|_| corrupt(format!("allowed CIDR {s:?}")))
                })
                .collect::<Result<_, _>>()?,
            masquerade: self.masquerade != 0,
            status: self.status.parse().map_err(corrupt)?,
            status_reason: self.status_reason,
            held: self.held != 0,
            created_at: self.created_at,
            updated_at: self.updated_at,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_decode_by_position() {
        let doc = r#"[["7d1c","p","r",0,"203.0.113.10","udp",4000,4001,"10.0.0.5",null,53,54,"d","192.0.2.0/24",1,"ACTIVE",null,0,"t0","t1"]]"#;
        let rows = StoredRow::from_json_document(doc).unwrap();
        let m = rows.into_iter().next().unwrap().into_mapping().unwrap();
        assert_eq!(m.id, "7d1c");
        assert_eq!(m.protocol, Protocol::Udp);
        assert_eq!(m.external_ports, PortRange::new(4000, 4001).unwrap());
        assert_eq!(m.internal_ports, PortRange::new(53, 54).unwrap());
        assert_eq!(m.allowed_cidrs, vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(m.masquerade);
        assert_eq!(m.internal_port_id, None);
    }

    #[test]
    fn corrupt_rows_name_the_mapping_and_the_field() {
        let doc = r#"[["7d1c","p","r",0,"203.0.113.10","tcp",70000,70000,"10.0.0.5",null,22,22,"","",0,"ACTIVE",null,0,"t0","t1"]]"#;
        let row = StoredRow::from_json_document(doc).unwrap().pop().unwrap();
        let err = row.into_mapping().unwrap_err().to_string();
        assert!(err.contains("7d1c") && err.contains("70000"), "{err}");
        assert!(StoredRow::from_json_document("[[1]]").is_err());
    }
}
