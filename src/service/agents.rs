//! The agents that program the network nodes, as the service sees them: who reported when and
//! serves what (admins only), and why a mapping has stayed `PENDING`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{forbidden_unless, Caller, MappingService, ServiceError};
use crate::store::{AgentRecord, Mapping, Status};

/// The default of `[praas] agent_down_time`.
pub const DEFAULT_AGENT_DOWN_TIME: Duration = Duration::from_secs(30);

/// An agent and whether it counts as alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub record: AgentRecord,
    /// It reported within `agent_down_time`.
    pub alive: bool,
}

impl MappingService {
    /// The agents that ever reported, optionally only those serving `router_id` (admins only).
    pub async fn agents(
        &self,
        caller: &Caller,
        router_id: Option<&str>,
    ) -> Result<Vec<AgentStatus>, ServiceError> {
        forbidden_unless(caller.is_admin(), "list agents")?;
        let since = self.alive_since();
        Ok(self
            .store
            .agents()
            .await?
            .into_iter()
            .filter(|a| router_id.is_none_or(|r| a.routers.iter().any(|id| id == r)))
            .map(|record| AgentStatus {
                alive: record.heartbeat_ms >= since.timestamp_millis(),
                record,
            })
            .collect())
    }

    /// Heartbeats at or after this time are of live agents.
    fn alive_since(&self) -> DateTime<Utc> {
        Utc::now() - chrono::Duration::from_std(self.agent_down_time).unwrap_or_default()
    }

    /// Gives a reason to each `PENDING` mapping, unchanged for longer than `agent_down_time`,
    /// whose router no live agent serves: nothing is programming it, and the caller should be
    /// told so rather than wait. Costs one query when there is such a mapping, none otherwise.
    pub(super) async fn explain_pending(
        &self,
        mappings: &mut [Mapping],
    ) -> Result<(), ServiceError> {
        let since = self.alive_since();
        let waiting = |m: &Mapping| {
            m.status == Status::Pending
                && m.status_reason.is_none()
                && DateTime::parse_from_rfc3339(&m.updated_at)
                    .is_ok_and(|at| at.with_timezone(&Utc) < since)
        };
        let routers: BTreeSet<String> = mappings
            .iter()
            .filter(|m| waiting(m))
            .map(|m| m.router_id.clone())
            .collect();
        if routers.is_empty() {
            return Ok(());
        }
        let served = self.store.routers_served_since(&routers, since).await?;
        let seconds = self.agent_down_time.as_secs();
        for m in mappings.iter_mut().filter(|m| waiting(m)) {
            if !served.contains(&m.router_id) {
                m.status_reason = Some(format!(
                    "no live agent serves router {}: no network node holding its namespace has \
                     reported in the last {seconds} s",
                    m.router_id
                ));
            }
        }
        Ok(())
    }
}
