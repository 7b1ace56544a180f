//! The audit trail: one event per change of a mapping, whoever made it and through whichever
//! protocol (REST v1, the original Proxy CLI protocol, the monitor).
//!
//! Each event is a log line at `info` on the target `praas::audit`, so that operators can
//! route it apart (`PRAAS_LOG=praas=info,praas::audit=info`, or a journald match on the
//! target). It says who (the caller's user and project, or `monitor`), what (`create`,
//! `update`, `delete`), which mapping and its own project, and for an update every changed
//! field as `old → new`. A change of a project's quota is an event too (`quota set`,
//! `quota reset`), with every limit it moved.

use std::fmt;

use crate::model::Resource;
use crate::store::{Mapping, Quotas};

/// The log target of audit events.
pub const TARGET: &str = "praas::audit";

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A caller of the API (either protocol); `user_id` is unknown under noauth.
    User {
        user_id: Option<String>,
        project_id: String,
    },
    /// The monitor, following Neutron.
    Monitor,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User {
                user_id: Some(user),
                project_id,
            } => write!(f, "user {user} of project {project_id}"),
            Actor::User {
                user_id: None,
                project_id,
            } => write!(f, "a caller of project {project_id}"),
            Actor::Monitor => f.write_str("monitor"),
        }
    }
}

/// One field that a change moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.old, self.new)
    }
}

/// The fields of `old` that `new` changed, in the API's names. Timestamps are left out.
pub fn changes(old: &Mapping, new: &Mapping) -> Vec<FieldChange> {
    let cidrs = |m: &Mapping| {
        if m.allowed_cidrs.is_empty() {
            "everyone".to_string()
        } else {
            m.allowed_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let reason = |m: &Mapping| m.status_reason.clone().unwrap_or_else(|| "-".into());
    let port_id = |m: &Mapping| m.internal_port_id.clone().unwrap_or_else(|| "-".into());
    let fields: [(&'static str, String, String); 12] = [
        (
            "external_ip_address",
            old.external_ip_address.to_string(),
            new.external_ip_address.to_string(),
        ),
        (
            "external_port_range",
            old.external_ports.to_string(),
            new.external_ports.to_string(),
        ),
        (
            "internal_ip_address",
            old.internal_ip_address.to_string(),
            new.internal_ip_address.to_string(),
        ),
        ("internal_port_id", port_id(old), port_id(new)),
        (
            "internal_port_range",
            old.internal_ports.to_string(),
            new.internal_ports.to_string(),
        ),
        (
            "description",
            old.description.clone(),
            new.description.clone(),
        ),
        ("allowed_cidrs", cidrs(old), cidrs(new)),
        (
            "masquerade",
            old.masquerade.to_string(),
            new.masquerade.to_string(),
        ),
        ("status", old.status.to_string(), new.status.to_string()),
        ("status_reason", reason(old), reason(new)),
        ("held", old.held.to_string(), new.held.to_string()),
        (
            "distributed",
            old.distributed.to_string(),
            new.distributed.to_string(),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(field, old, new)| FieldChange { field, old, new })
        .collect()
}

fn joined(changes: &[FieldChange]) -> String {
    changes
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A mapping was created.
pub fn created(actor: &Actor, m: &Mapping) {
    tracing::info!(target: TARGET, actor = %actor, action = "create", mapping = %m.id,
        project = %m.project_id, router = %m.router_id,
        external = %format!("{}:{}/{}", m.external_ip_address, m.external_ports, m.protocol),
        internal = %format!("{}:{}", m.internal_ip_address, m.internal_ports),
        "mapping created");
}

/// `old` became `new`; nothing is logged when no field moved.
pub fn updated(actor: &Actor, old: &Mapping, new: &Mapping, why: Option<&str>) {
    let changes = changes(old, new);
    if changes.is_empty() {
        return;
    }
    tracing::info!(target: TARGET, actor = %actor, action = "update", mapping = %new.id,
        project = %new.project_id, router = %new.router_id, changes = %joined(&changes),
        why = why.unwrap_or("requested"), "mapping updated");
}

/// A mapping was deleted.
pub fn deleted(actor: &Actor, m: &Mapping, why: Option<&str>) {
    tracing::info!(target: TARGET, actor = %actor, action = "delete", mapping = %m.id,
        project = %m.project_id, router = %m.router_id,
        external = %format!("{}:{}/{}", m.external_ip_address, m.external_ports, m.protocol),
        internal = %format!("{}:{}", m.internal_ip_address, m.internal_ports),
        why = why.unwrap_or("requested"), "mapping deleted");
}

/// The limits of `before` that `after` changed, as `mappings: 100 → 10`.
pub fn quota_changes(before: &Quotas, after: &Quotas) -> Vec<String> {
    Resource::ALL
        .into_iter()
        .filter(|r| before.get(*r) != after.get(*r))
        .map(|r| format!("{}: {} → {}", r.as_str(), before.get(r), after.get(r)))
        .collect()
}

/// An admin set `project_id`'s own limits (`reset: false`) or reset them to the defaults.
pub fn quota_changed(
    actor: &Actor,
    project_id: &str,
    before: &Quotas,
    after: &Quotas,
    reset: bool,
) {
    let changes = quota_changes(before, after);
    let changes = if changes.is_empty() {
        "none".to_string()
    } else {
        changes.join("; ")
    };
    if reset {
        tracing::info!(target: TARGET, actor = %actor, action = "quota reset", project = %project_id,
            changes = %changes, "quota reset to the defaults");
    } else {
        tracing::info!(target: TARGET, actor = %actor, action = "quota set", project = %project_id,
            changes = %changes, "quota set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::store::Status;

    fn mapping() -> Mapping {
        Mapping {
            id: "m1".into(),
            project_id: "p1".into(),
            router_id: "r1".into(),
            distributed: false,
            external_ip_address: "203.0.113.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            external_ports: "4000".parse().unwrap(),
            internal_ip_address: "10.0.0.5".parse().unwrap(),
            internal_port_id: Some("port1".into()),
            internal_ports: "22".parse().unwrap(),
            description: String::new(),
            allowed_cidrs: vec![],
            masquerade: false,
            status: Status::Active,
            status_reason: None,
            held: false,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn an_update_lists_every_changed_field_old_to_new_and_nothing_else() {
        let old = mapping();
        let mut new = old.clone();
        new.external_ports = "4022".parse().unwrap();
        new.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
        new.updated_at = "2026-01-02T00:00:00Z".into();
        let shown: Vec<String> = changes(&old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "external_port_range: 4000 → 4022",
                "allowed_cidrs: everyone → 198.51.100.0/24"
            ]
        );
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn the_actor_names_the_user_and_project_or_the_monitor() {
        let user = Actor::User {
            user_id: Some("u1".into()),
            project_id: "p1".into(),
        };
        assert_eq!(user.to_string(), "user u1 of project p1");
        assert_eq!(Actor::Monitor.to_string(), "monitor");
    }

    #[test]
    fn a_quota_change_lists_the_limits_it_moved() {
        use crate::model::Limit;
        let before = Quotas {
            mappings: Limit::AtMost(100),
            external_ports: Limit::AtMost(1010),
        };
        let after = Quotas {
            mappings: Limit::Unlimited,
            ..before
        };
        assert_eq!(quota_changes(&before, &after), ["mappings: 100 → -1"]);
        assert!(quota_changes(&before, &before).is_empty());
    }
}
