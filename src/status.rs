//! `praas status`: what an operator looks at first, read from the shared database (as
//! `praas db-sync` does, with the roles' configuration): the servers and monitors with their
//! heartbeats, the agents with their heartbeats, last sync and last error, the monitor's lease
//! holder and last cycle, mappings by status, and the mappings that are not working with their
//! reasons. A table, or JSON with `--json`.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::store::{Store, StoreError};

/// How many troubled mappings are shown.
pub const TROUBLES_SHOWN: u32 = 10;

#[derive(Debug, Serialize)]
pub struct Overview {
    /// Servers (and all-in-ones) and monitors.
    pub services: Vec<ServiceLine>,
    pub agents: Vec<AgentLine>,
    pub monitor: MonitorLine,
    /// Mappings per status, and `total`.
    pub mappings: std::collections::BTreeMap<String, i64>,
    /// Mappings in `ERROR` or `DOWN`, most recently updated first.
    pub troubles: Vec<TroubleLine>,
}

#[derive(Debug, Serialize)]
pub struct ServiceLine {
    pub role: String,
    pub host: String,
    pub address: String,
    pub version: String,
    /// It reported within `agent_down_time`.
    pub alive: bool,
    pub started_at: String,
    pub heartbeat_at: String,
}

#[derive(Debug, Serialize)]
pub struct AgentLine {
    pub host: String,
    /// It reported within `agent_down_time`.
    pub alive: bool,
    pub heartbeat_at: String,
    pub last_sync_at: Option<String>,
    pub last_error: Option<String>,
    pub routers: usize,
}

#[derive(Debug, Serialize)]
pub struct MonitorLine {
    /// Who holds the lease (`praas-monitor:<host>:<pid>`), if anyone ever did.
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<String>,
    /// The lease has not run out: a monitor is acting.
    pub active: bool,
    pub last_cycle: Option<CycleLine>,
}

#[derive(Debug, Serialize)]
pub struct CycleLine {
    pub holder: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub neutron_requests: Option<u64>,
    pub mappings: usize,
    pub deleted: usize,
    pub updated: usize,
    /// Why it was abandoned, when it was.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TroubleLine {
    pub id: String,
    pub router_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub updated_at: String,
}

/// Reads the overview; an agent is alive when it reported within `agent_down_time`.
pub async fn overview(store: &Store, agent_down_time: Duration) -> Result<Overview, StoreError> {
    let now_ms = Utc::now().timestamp_millis();
    let down_ms = i64::try_from(agent_down_time.as_millis()).unwrap_or(i64::MAX);
    let services = store
        .services()
        .await?
        .into_iter()
        .map(|s| ServiceLine {
            alive: now_ms.saturating_sub(s.heartbeat_ms) <= down_ms,
            role: s.role,
            host: s.host,
            address: s.address,
            version: s.version,
            started_at: s.started_at,
            heartbeat_at: s.heartbeat_at,
        })
        .collect();
    let agents = store
        .agents()
        .await?
        .into_iter()
        .map(|a| AgentLine {
            alive: now_ms.saturating_sub(a.heartbeat_ms) <= down_ms,
            host: a.host,
            heartbeat_at: a.heartbeat_at,
            last_sync_at: a.last_sync_at,
            last_error: a.last_error,
            routers: a.routers.len(),
        })
        .collect();
    let lease = store.lease().await?;
    let last_cycle = store.last_monitor_cycle().await?.map(|c| CycleLine {
        holder: c.holder,
        started_at: c.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        duration_ms: u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
        neutron_requests: c.neutron_requests,
        mappings: c.mappings,
        deleted: c.deleted,
        updated: c.updated,
        error: c.error,
    });
    let monitor = MonitorLine {
        active: lease.as_ref().is_some_and(|l| l.expires_ms > now_ms),
        lease_expires_at: lease.as_ref().map(|l| l.expires_at()),
        lease_holder: lease.map(|l| l.holder),
        last_cycle,
    };
    let mut mappings = store.count_by_status().await?;
    for status in crate::store::Status::ALL {
        mappings.entry(status.as_str().to_string()).or_insert(0);
    }
    let total = mappings.values().sum();
    mappings.insert("total".into(), total);
    let troubles = store
        .troubles(TROUBLES_SHOWN)
        .await?
        .into_iter()
        .map(|t| TroubleLine {
            id: t.id,
            router_id: t.router_id,
            status: t.status,
            reason: t.reason,
            updated_at: t.updated_at,
        })
        .collect();
    Ok(Overview {
        services,
        agents,
        monitor,
        mappings,
        troubles,
    })
}

/// Rows padded to their widest cell, under `headers`.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

impl Overview {
    /// The overview as an operator reads it in a terminal.
    pub fn render(&self) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out = String::from("Servers and monitors\n");
        if self.services.is_empty() {
            out += "  none has reported\n";
        } else {
            let rows: Vec<Vec<String>> = self
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.role.clone(),
                        s.host.clone(),
                        if s.alive { "alive" } else { "DOWN" }.into(),
                        s.heartbeat_at.clone(),
                        s.address.clone(),
                        s.version.clone(),
                    ]
                })
                .collect();
            out += &table(
                &["Role", "Host", "State", "Heartbeat", "Address", "Version"],
                &rows,
            );
        }
        out += "\nAgents\n";
        if self.agents.is_empty() {
            out += "  none has reported\n";
        } else {
            let rows: Vec<Vec<String>> = self
                .agents
                .iter()
                .map(|a| {
                    vec![
                        a.host.clone(),
                        if a.alive { "alive" } else { "DOWN" }.into(),
                        a.heartbeat_at.clone(),
                        or_dash(&a.last_sync_at),
                        a.routers.to_string(),
                        or_dash(&a.last_error),
                    ]
                })
                .collect();
            out += &table(
                &[
                    "Host",
                    "State",
                    "Heartbeat",
                    "Last sync",
                    "Routers",
                    "Last error",
                ],
                &rows,
            );
        }
        out += "\nMonitor\n";
        out += &match (&self.monitor.lease_holder, self.monitor.active) {
            (Some(holder), true) => format!(
                "  active: {holder}, lease until {}\n",
                or_dash(&self.monitor.lease_expires_at)
            ),
            (Some(holder), false) => format!(
                "  NONE ACTIVE: the last lease ({holder}) ran out at {}\n",
                or_dash(&self.monitor.lease_expires_at)
            ),
            (None, _) => "  NONE ACTIVE: no monitor ever ran on this database\n".into(),
        };
        if let Some(c) = &self.monitor.last_cycle {
            let requests = c
                .neutron_requests
                .map(|n| format!(", {n} Neutron requests"))
                .unwrap_or_default();
            out += &match &c.error {
                None => format!(
                    "  last cycle: {} by {}, {} ms{requests}: {} mappings, {} deleted, {} updated\n",
                    c.started_at, c.holder, c.duration_ms, c.mappings, c.deleted, c.updated
                ),
                Some(e) => format!(
                    "  last cycle: {} by {}, ABANDONED after {} ms: {e}\n",
                    c.started_at, c.holder, c.duration_ms
                ),
            };
        }
        out += "\nMappings\n";
        let rows: Vec<Vec<String>> = self
            .mappings
            .iter()
            .filter(|(k, _)| k.as_str() != "total")
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .chain(std::iter::once(vec![
                "total".into(),
                self.mappings.get("total").copied().unwrap_or(0).to_string(),
            ]))
            .collect();
        out += &table(&["Status", "Count"], &rows);
        if !self.troubles.is_empty() {
            out += "\nNot working (most recently updated first)\n";
            let rows: Vec<Vec<String>> = self
                .troubles
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.router_id.clone(),
                        t.status.clone(),
                        or_dash(&t.reason),
                    ]
                })
                .collect();
            out += &table(&["Mapping", "Router", "Status", "Reason"], &rows);
        }
        out
    }
}
