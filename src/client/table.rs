//! Mappings as the original Proxy CLI showed them: a table of Status, Server, Server Port,
//! Router Port, Gateway and Description, here with the mapping's id and protocol too.

use crate::api::v1::MappingView;

const HEADERS: [&str; 8] = [
    "ID",
    "Status",
    "Server",
    "Server Port",
    "Router Port",
    "Gateway",
    "Protocol",
    "Description",
];

/// One row per mapping, columns padded to their widest cell. A port range shows as `N:M`.
pub fn render(mappings: &[MappingView]) -> String {
    let ports = |single: Option<u16>, range: &str| match single {
        Some(p) => p.to_string(),
        None => range.to_string(),
    };
    let rows: Vec<[String; 8]> = mappings
        .iter()
        .map(|m| {
            let status = match &m.status_reason {
                Some(reason) => format!("{} ({reason})", m.status.as_str()),
                None => m.status.as_str().to_string(),
            };
            [
                m.id.clone(),
                status,
                m.internal_ip_address.to_string(),
                ports(m.internal_port, &m.internal_port_range),
                ports(m.external_port, &m.external_port_range),
                m.external_ip_address.to_string(),
                m.protocol.clone(),
                m.description.clone(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = rule.clone();
    out += &line(&HEADERS.map(str::to_string));
    out += &rule;
    for row in &rows {
        out += &line(row);
    }
    out += &rule;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Status;

    fn view(id: &str, external: Option<u16>, range: &str, reason: Option<&str>) -> MappingView {
        MappingView {
            id: id.into(),
            project_id: "p".into(),
            router_id: "r".into(),
            external_ip_address: "203.0.113.10".parse().unwrap(),
            external_port: external,
            external_port_range: range.into(),
            internal_ip_address: "10.0.0.5".parse().unwrap(),
            internal_port_id: None,
            internal_port: external.map(|_| 22),
            internal_port_range: if external.is_some() { "22:22" } else { range }.into(),
            protocol: "tcp".into(),
            description: "ssh".into(),
            allowed_cidrs: vec![],
            masquerade: false,
            status: if reason.is_some() {
                Status::Down
            } else {
                Status::Active
            },
            status_reason: reason.map(str::to_string),
            created_at: String::new(),
            updated_at: String::new(),
            packets: None,
            bytes: None,
            last_used: None,
        }
    }

    #[test]
    fn the_table_has_the_original_columns_and_aligned_cells() {
        let text = render(&[
            view("m1", Some(4022), "4022:4022", None),
            view(
                "m2",
                None,
                "5000:5009",
                Some("router r has no external gateway"),
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[1].contains("| Status ") && lines[1].contains("| Router Port |"));
        assert!(
            lines[3].contains("| 4022 ") && lines[3].contains("| 22 "),
            "{text}"
        );
        assert!(lines[4].contains("| 5000:5009   | 5000:5009   |"), "{text}");
        assert!(lines[4].contains("DOWN (router r has no external gateway)"));
        // Every line as wide as the rules.
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert_eq!(render(&[]).lines().count(), 4);
    }
}
