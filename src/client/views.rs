//! Mappings as the CLI shows them: a listing with the original Proxy CLI's columns (Status,
//! Server, Server Port, Router Port, Gateway, Description, here with the id and protocol too;
//! `--long` adds the rest), and every field of one mapping for `show`, `create` and `set`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::output::{Listing, Record};
use crate::api::v1::MappingView;

/// The columns of `praas pat list`.
pub const COLUMNS: [&str; 8] = [
    "ID",
    "Status",
    "Server",
    "Server Port",
    "Router Port",
    "Gateway",
    "Protocol",
    "Description",
];

/// What `--long` adds.
pub const LONG_COLUMNS: [&str; 9] = [
    "Router",
    "Internal IP Address",
    "Internal Port ID",
    "Allowed CIDRs",
    "Masquerade",
    "Packets",
    "Bytes",
    "Last Used",
    "Project",
];

/// A port or a range: a number for one port, `N:M` for several.
fn ports(single: Option<u16>, range: &str) -> Value {
    match single {
        Some(p) => json!(p),
        None => json!(range),
    }
}

/// The server behind a mapping: its name when known (`servers`: port id → name), else the
/// address it reaches.
fn server(m: &MappingView, servers: &HashMap<String, String>) -> String {
    m.internal_port_id
        .as_ref()
        .and_then(|p| servers.get(p))
        .cloned()
        .unwrap_or_else(|| m.internal_ip_address.to_string())
}

/// The listing of `mappings`.
pub fn listing(mappings: &[MappingView], servers: &HashMap<String, String>, long: bool) -> Listing {
    let mut columns: Vec<&str> = COLUMNS.to_vec();
    if long {
        columns.extend(LONG_COLUMNS);
    }
    let mut l = Listing::new(&columns);
    for m in mappings {
        let mut row = vec![
            json!(m.id),
            json!(m.status.as_str()),
            json!(server(m, servers)),
            ports(m.internal_port, &m.internal_port_range),
            ports(m.external_port, &m.external_port_range),
            json!(m.external_ip_address.to_string()),
            json!(m.protocol),
            json!(m.description),
        ];
        if long {
            row.extend([
                json!(m.router_id),
                json!(m.internal_ip_address.to_string()),
                json!(m.internal_port_id),
                json!(m.allowed_cidrs),
                json!(m.masquerade),
                json!(m.packets),
                json!(m.bytes),
                json!(m.last_used),
                json!(m.project_id),
            ]);
        }
        l.rows.push(row);
    }
    l
}

/// Every field of `m`, named as the API names them, the server's name among them.
pub fn record(m: &MappingView, servers: &HashMap<String, String>) -> Record {
    Record::new()
        .field("id", m.id.as_str())
        .field("status", m.status.as_str())
        .field("status_reason", json!(m.status_reason))
        .field("server", server(m, servers))
        .field("internal_ip_address", m.internal_ip_address.to_string())
        .field("internal_port_id", json!(m.internal_port_id))
        .field(
            "internal_port",
            ports(m.internal_port, &m.internal_port_range),
        )
        .field("router_id", m.router_id.as_str())
        .field("external_ip_address", m.external_ip_address.to_string())
        .field(
            "external_port",
            ports(m.external_port, &m.external_port_range),
        )
        .field("protocol", m.protocol.as_str())
        .field("description", m.description.as_str())
        .field("allowed_cidrs", json!(m.allowed_cidrs))
        .field("masquerade", m.masquerade)
        .field("packets", json!(m.packets))
        .field("bytes", json!(m.bytes))
        .field("last_used", json!(m.last_used))
        .field("project_id", m.project_id.as_str())
        .field("created_at", m.created_at.as_str())
        .field("updated_at", m.updated_at.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::output::{Format, OutputOptions};
    use crate::store::Status;

    fn view(id: &str, port: Option<&str>, external: Option<u16>, range: &str) -> MappingView {
        MappingView {
            id: id.into(),
            project_id: "p".into(),
            router_id: "r".into(),
            external_ip_address: "203.0.113.10".parse().unwrap(),
            external_port: external,
            external_port_range: range.into(),
            internal_ip_address: "10.0.0.5".parse().unwrap(),
            internal_port_id: port.map(str::to_string),
            internal_port: external.map(|_| 22),
            internal_port_range: if external.is_some() { "22:22" } else { range }.into(),
            protocol: "tcp".into(),
            description: "ssh".into(),
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            masquerade: false,
            status: Status::Active,
            status_reason: None,
            created_at: "2026-12-04T10:00:00Z".into(),
            updated_at: "2026-12-04T10:00:00Z".into(),
            packets: Some(12),
            bytes: Some(1800),
            last_used: Some("2026-12-04T10:05:00Z".into()),
        }
    }

    fn options(format: Format) -> OutputOptions {
        OutputOptions {
            format,
            ..Default::default()
        }
    }

    #[test]
    fn the_list_shows_the_server_s_name_and_a_range_as_n_m() {
        let servers = HashMap::from([("port-web".to_string(), "web".to_string())]);
        let mappings = [
            view("m1", Some("port-web"), Some(4000), "4000:4000"),
            view("m2", None, None, "4010:4019"),
        ];
        let l = listing(&mappings, &servers, false);
        insta::assert_snapshot!("list_table", l.render(&options(Format::Table)).unwrap());
        insta::assert_snapshot!("list_value", l.render(&options(Format::Value)).unwrap());
        let long = listing(&mappings, &servers, true);
        insta::assert_snapshot!(
            "list_long_json",
            long.render(&options(Format::Json)).unwrap()
        );
    }

    #[test]
    fn show_has_every_field() {
        let servers = HashMap::from([("port-web".to_string(), "web".to_string())]);
        let r = record(
            &view("m1", Some("port-web"), Some(4000), "4000:4000"),
            &servers,
        );
        insta::assert_snapshot!("show_table", r.render(&options(Format::Table)).unwrap());
        insta::assert_snapshot!("show_yaml", r.render(&options(Format::Yaml)).unwrap());
    }
}
