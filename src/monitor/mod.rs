//! The monitor: keeps every mapping true to OpenStack.
//!
//! Every `[praas] second_monitoring` seconds it reads, in bulk, the ports and routers behind all
//! mappings (requests per 50 ids, not per VM), and for each mapping decides ([`decide`]):
//! - router deleted → mapping deleted;
//! - port deleted or no longer bound to a device → mapping deleted (or held `DOWN`, by
//!   configuration);
//! - router without gateway → held `DOWN` until the gateway returns;
//! - fixed IP changed → re-pointed to the port's address on a subnet of the router (the user
//!   keeps the external port); none there → held `ERROR` with the reason;
//! - gateway address changed → the mapping follows it.
//!
//! A held mapping stays stored but is not programmed. Every change is an audit event
//! (`service::audit`) naming the mapping, its project, and old → new, and shows in the API as `status`, `status_reason` and
//! `updated_at`. Anything in doubt (Neutron or Keystone unreachable, an error answer) changes
//! nothing: the cycle is abandoned, counted, and tried again at the next one. When several
//! monitors run, the one holding the lease in the database acts; the others wait.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::openstack::neutron::NeutronDirectory;
use crate::openstack::{OpenStackError, PortInfo, RouterInfo};
use crate::service::audit::{self, Actor};
use crate::store::{
    CycleRecord, Hold, ListFilter, Mapping, MappingUpdate, Status, Store, StoreError,
};

pub use crate::model::PortGone;

/// Errors that abandon a cycle; nothing was changed by it before the first store write.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("reading OpenStack")]
    OpenStack(#[from] OpenStackError),
    #[error("the store")]
    Store(#[from] StoreError),
}

/// Bulk reads of the facts behind mappings.
#[async_trait::async_trait]
pub trait NetworkView: Send + Sync {
    /// The ports among `ids` that exist. An error means nothing is known.
    async fn ports(&self, ids: &[String]) -> Result<HashMap<String, PortInfo>, OpenStackError>;
    /// The routers among `ids` that exist.
    async fn routers(&self, ids: &[String]) -> Result<HashMap<String, RouterInfo>, OpenStackError>;
    /// The requests sent so far (for the calls per cycle), when the view counts them.
    fn requests(&self) -> Option<u64> {
        None
    }
}

#[async_trait::async_trait]
impl NetworkView for NeutronDirectory {
    async fn ports(&self, ids: &[String]) -> Result<HashMap<String, PortInfo>, OpenStackError> {
        self.ports_by_id(ids).await
    }

    async fn routers(&self, ids: &[String]) -> Result<HashMap<String, RouterInfo>, OpenStackError> {
        self.routers_by_id(ids).await
    }

    fn requests(&self) -> Option<u64> {
        Some(NeutronDirectory::requests(self))
    }
}

/// What a cycle does to one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Keep,
    Delete { reason: String },
    Update(Change),
}

/// A change to a mapping, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub internal_ip: Option<Ipv4Addr>,
    pub external_ip: Option<Ipv4Addr>,
    /// The router was converted between legacy and distributed (DVR): its gateway, and the
    /// mapping's rules, move between `qrouter-` and `snat-`.
    pub distributed: Option<bool>,
    pub hold: Option<Hold>,
    pub reason: String,
}

/// Decides what `m` needs, given its router (`None`: deleted) and its port (`None`: the mapping
/// names no port; `Some(None)`: deleted).
pub fn decide(
    m: &Mapping,
    router: Option<&RouterInfo>,
    port: Option<Option<&PortInfo>>,
    port_gone: PortGone,
) -> Action {
    let Some(router) = router else {
        return Action::Delete {
            reason: format!("router {} was deleted", m.router_id),
        };
    };
    let hold = |status: Status, reason: String| {
        let already = m.held && m.status == status && m.status_reason.as_deref() == Some(&reason);
        if already {
            Action::Keep
        } else {
            Action::Update(Change {
                internal_ip: None,
                external_ip: None,
                distributed: None,
                hold: Some(Hold::Keep {
                    status,
                    reason: reason.clone(),
                }),
                reason,
            })
        }
    };
    let port = match port {
        Some(None) => {
            let reason = format!(
                "port {} was deleted",
                m.internal_port_id.as_deref().unwrap_or_default()
            );
            return match port_gone {
                PortGone::Delete => Action::Delete { reason },
                PortGone::Down => hold(Status::Down, reason),
            };
        }
        Some(Some(p)) if p.device_id.is_empty() => {
            let reason = format!("port {} is no longer bound to an instance", p.id);
            return match port_gone {
                PortGone::Delete => Action::Delete { reason },
                PortGone::Down => hold(Status::Down, reason),
            };
        }
        Some(Some(p)) => Some(p),
        None => None,
    };
    let Some(gateway) = router.gateway_ip else {
        return hold(
            Status::Down,
            format!("router {} has no external gateway", router.id),
        );
    };
    // The mapped address while the port holds it on a subnet of the router (an interface
    // removed takes the subnet away), else the port's address that the router reaches.
    let internal = match port {
        Some(p) => match p
            .fixed_ip(m.internal_ip_address)
            .filter(|f| router.reaches(f))
            .or_else(|| p.fixed_ips.iter().find(|f| router.reaches(f)))
        {
            Some(f) => f.ip,
            None => {
                return hold(
                    Status::Error,
                    format!(
                        "port {} has no address on a subnet of router {} (it had {})",
                        p.id, router.id, m.internal_ip_address
                    ),
                )
            }
        },
        None if !router.serves(m.internal_ip_address) => {
            return hold(
                Status::Error,
                format!(
                    "{} is no longer on a subnet of router {}",
                    m.internal_ip_address, router.id
                ),
            )
        }
        None => m.internal_ip_address,
    };
    let mut reasons = vec![];
    if internal != m.internal_ip_address {
        reasons.push(format!(
            "internal address {} -> {internal}",
            m.internal_ip_address
        ));
    }
    if gateway != m.external_ip_address {
        reasons.push(format!("gateway {} -> {gateway}", m.external_ip_address));
    }
    let converted = router.distributed != m.distributed;
    if converted {
        let kind = |d: bool| if d { "distributed" } else { "legacy" };
        reasons.push(format!(
            "router converted from {} to {}",
            kind(m.distributed),
            kind(router.distributed)
        ));
    }
    if m.held {
        reasons.push(format!(
            "released from {} ({})",
            m.status.as_str(),
            m.status_reason.as_deref().unwrap_or_default()
        ));
    }
    if reasons.is_empty() {
        return Action::Keep;
    }
    Action::Update(Change {
        internal_ip: (internal != m.internal_ip_address).then_some(internal),
        external_ip: (gateway != m.external_ip_address).then_some(gateway),
        distributed: converted.then_some(router.distributed),
        hold: m.held.then_some(Hold::Release),
        reason: reasons.join(", "),
    })
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub mappings: usize,
    pub deleted: usize,
    pub updated: usize,
    /// Not the lease holder: nothing was looked at.
    pub standby: bool,
    /// Deletions held back until the next cycle confirms them (see [`MASS_DELETION`]).
    pub held_back: usize,
}

/// A cycle that would delete at least this many mappings, and more than half of all, acts only
/// when the next cycle finds the same: a Neutron that suddenly shows far fewer ports or routers
/// (a database failover, a service user that lost its cloud-wide view) looks exactly like a
/// mass deletion, and deleting on doubt cannot be undone.
pub const MASS_DELETION: usize = 10;

/// How long a notification waits for the rest of its burst before the cycle.
const BURST: Duration = Duration::from_millis(200);
/// The least time between the starts of two cycles when notifications wake the monitor.
pub const NOTIFIED_GAP: Duration = Duration::from_secs(1);

/// What the monitor has done since it started: the `praas_monitor_*` metrics (registered by
/// [`MonitorCounters::register`]), also read by the tests.
#[derive(Debug)]
pub struct MonitorCounters {
    /// Cycles finished, failed ones and those of a standby included.
    pub cycles: Counter,
    /// Cycles abandoned because Neutron, Keystone or the database could not be read.
    pub failed_cycles: Counter,
    pub deleted: Counter,
    /// Mappings re-pointed or held (new address, gateway, namespace, or held `DOWN`).
    pub updated: Counter,
    /// Deletions held back by a suspected mass deletion, until the next cycle confirms them.
    pub held_back: Counter,
    /// 1 while this monitor holds the lease (as of its last cycle).
    pub lease_held: Gauge,
    /// How long an active cycle took (standby cycles are not timed).
    cycle_seconds: Histogram,
    /// Neutron requests an active cycle made.
    cycle_requests: Histogram,
}

impl Default for MonitorCounters {
    fn default() -> Self {
        MonitorCounters {
            cycles: Counter::default(),
            failed_cycles: Counter::default(),
            deleted: Counter::default(),
            updated: Counter::default(),
            held_back: Counter::default(),
            lease_held: Gauge::default(),
            cycle_seconds: Histogram::new(crate::metrics::seconds_buckets(0.005, 14)),
            cycle_requests: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 14),
            ),
        }
    }
}

impl MonitorCounters {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("monitor");
        r.register(
            "cycles",
            "Monitor cycles run, abandoned ones and a standby's included",
            self.cycles.clone(),
        );
        r.register(
            "abandoned_cycles",
            "Cycles that changed nothing because Neutron, Keystone or the database could not be read",
            self.failed_cycles.clone(),
        );
        r.register(
            "deletions",
            "Mappings deleted because their router or port was deleted",
            self.deleted.clone(),
        );
        r.register(
            "updates",
            "Mappings re-pointed (new fixed IP, gateway or namespace) or held down",
            self.updated.clone(),
        );
        r.register(
            "deletions_held_back",
            "Deletions held back until the next cycle confirmed a suspected mass deletion",
            self.held_back.clone(),
        );
        r.register(
            "lease_held",
            "1 while this monitor holds the lease and acts, 0 while it stands by",
            self.lease_held.clone(),
        );
        r.register(
            "cycle_duration_seconds",
            "Time of the cycles this monitor ran as the lease holder",
            self.cycle_seconds.clone(),
        );
        r.register(
            "cycle_neutron_requests",
            "Neutron requests per cycle run as the lease holder",
            self.cycle_requests.clone(),
        );
    }
}

pub struct Monitor {
    store: Arc<Store>,
    view: Arc<dyn NetworkView>,
    port_gone: PortGone,
    /// Who this monitor is, in the lease.
    holder: String,
    counters: Arc<MonitorCounters>,
    /// The deletions of the last cycle that held a mass deletion back (empty: none).
    unconfirmed: std::sync::Mutex<BTreeSet<String>>,
}

impl Monitor {
    pub fn new(store: Arc<Store>, view: Arc<dyn NetworkView>, port_gone: PortGone) -> Self {
        let host = hostname();
        Monitor {
            store,
            view,
            port_gone,
            holder: format!(
                "{host}:{}:{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            counters: Arc::default(),
            unconfirmed: std::sync::Mutex::default(),
        }
    }

    pub fn counters(&self) -> Arc<MonitorCounters> {
        self.counters.clone()
    }

    /// One reconciliation: reads everything first, then changes what needs changing.
    pub async fn cycle(&self, lease: Duration) -> Result<CycleReport, MonitorError> {
        if !self.store.acquire_lease(&self.holder, lease).await? {
            return Ok(CycleReport {
                standby: true,
                ..Default::default()
            });
        }
        let mappings = self.store.list(&ListFilter::default()).await?;
        let router_ids: Vec<String> = mappings
            .iter()
            .map(|m| m.router_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let port_ids: Vec<String> = mappings
            .iter()
            .filter_map(|m| m.internal_port_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Any failure here abandons the cycle before anything is changed.
        let routers = self.view.routers(&router_ids).await?;
        let ports = self.view.ports(&port_ids).await?;
        let decisions: Vec<(&Mapping, Action)> = mappings
            .iter()
            .map(|m| {
                let port = m.internal_port_id.as_ref().map(|id| ports.get(id));
                (
                    m,
                    decide(m, routers.get(&m.router_id), port, self.port_gone),
                )
            })
            .collect();
        let deletions: BTreeSet<String> = decisions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Delete { .. }))
            .map(|(m, _)| m.id.clone())
            .collect();
        let hold_back = self.unconfirmed_mass_deletion(&deletions, mappings.len());
        // The reads may have taken long: a standby may have taken over meanwhile.
        if !self.store.acquire_lease(&self.holder, lease).await? {
            return Ok(CycleReport {
                standby: true,
                ..Default::default()
            });
        }
        let mut report = CycleReport {
            mappings: mappings.len(),
            held_back: if hold_back { deletions.len() } else { 0 },
            ..Default::default()
        };
        for (m, action) in decisions {
            match action {
                Action::Keep => {}
                Action::Delete { .. } if hold_back => {}
                Action::Delete { reason } => {
                    if let Some(deleted) = self.store.delete(&m.id).await? {
                        audit::deleted(&Actor::Monitor, &deleted, Some(&reason));
                        report.deleted += 1;
                    }
                }
                Action::Update(change) => {
                    let update = MappingUpdate {
                        internal_ip_address: change.internal_ip,
                        external_ip_address: change.external_ip,
                        distributed: change.distributed,
                        hold: change.hold.clone(),
                        ..Default::default()
                    };
                    match self.store.update(&m.id, &update).await {
                        Ok(new) => {
                            audit::updated(&Actor::Monitor, m, &new, Some(&change.reason));
                            report.updated += 1;
                        }
                        // Deleted meanwhile by its owner: nothing to keep true.
                        Err(StoreError::NotFound { .. }) => {}
                        // The new address is mapped already (another mapping holds the socket):
                        // hold this one with the reason rather than fail the cycle.
                        Err(e @ StoreError::InternalSocketMapped { .. }) => {
                            let reason = format!("cannot follow the port: {e}");
                            warn!(mapping = %m.id, %reason, "monitor: mapping held");
                            let hold = MappingUpdate {
                                hold: Some(Hold::Keep {
                                    status: Status::Error,
                                    reason,
                                }),
                                ..Default::default()
                            };
                            match self.store.update(&m.id, &hold).await {
                                Ok(new) => {
                                    audit::updated(&Actor::Monitor, m, &new, None);
                                    report.updated += 1
                                }
                                Err(StoreError::NotFound { .. }) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(report)
    }

    /// Whether `deletions` (out of `mappings`) are a mass deletion that the previous cycle did
    /// not already find; remembers them for the next cycle to confirm.
    fn unconfirmed_mass_deletion(&self, deletions: &BTreeSet<String>, mappings: usize) -> bool {
        let mass = deletions.len() >= MASS_DELETION && deletions.len() * 2 > mappings;
        let mut last = self.unconfirmed.lock().expect("not poisoned");
        let confirmed = !last.is_empty() && deletions.is_subset(&last);
        if mass && !confirmed {
            warn!(
                deletions = deletions.len(),
                mappings,
                "monitor: Neutron shows most mapped ports or routers gone; deleting only if the next cycle finds the same"
            );
            *last = deletions.clone();
            return true;
        }
        last.clear();
        false
    }

    /// Runs a cycle every `interval`, and soon after each wake-up (a notification), until the
    /// task is dropped; failed cycles change nothing and are retried at the next turn.
    pub async fn run(self, interval: Duration, wake: Arc<tokio::sync::Notify>) {
        self.run_until(interval, wake, std::future::pending()).await
    }

    /// As [`Monitor::run`], until `stop` completes; then the lease is given up, so that a
    /// standby monitor takes over at its next cycle instead of after the lease runs out. A
    /// cycle cut short by `stop` leaves every mapping consistent: each change is its own
    /// transaction.
    pub async fn run_until(
        self,
        interval: Duration,
        wake: Arc<tokio::sync::Notify>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::select! {
            _ = self.turns(interval, &wake) => {}
            _ = stop => {}
        }
        self.release().await;
    }

    async fn turns(&self, interval: Duration, wake: &tokio::sync::Notify) {
        let lease = interval * 3;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_cycle: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = wake.notified() => {
                    // Events come in bursts (port.update then router.update...): one cycle.
                    // A busy cloud sends a stream of them: at most one notified cycle per
                    // NOTIFIED_GAP, so Neutron is not read back to back.
                    let earliest = last_cycle.map_or_else(tokio::time::Instant::now, |t| t + NOTIFIED_GAP);
                    tokio::time::sleep_until(earliest.max(tokio::time::Instant::now() + BURST)).await;
                }
            }
            last_cycle = Some(tokio::time::Instant::now());
            let started = std::time::Instant::now();
            let started_at = chrono::Utc::now();
            let requests_before = self.view.requests();
            let result = self.cycle(lease).await;
            let took = started.elapsed();
            self.counters.cycles.inc();
            let requests = self
                .view
                .requests()
                .zip(requests_before)
                .map(|(after, before)| after.saturating_sub(before));
            let outcome = match &result {
                Ok(report) if report.standby => {
                    self.counters.lease_held.set(0);
                    continue;
                }
                Ok(report) => {
                    self.counters.lease_held.set(1);
                    self.counters.deleted.inc_by(report.deleted as u64);
                    self.counters.updated.inc_by(report.updated as u64);
                    self.counters.held_back.inc_by(report.held_back as u64);
                    if report.deleted + report.updated > 0 {
                        info!(?report, "monitor cycle");
                    }
                    CycleRecord {
                        holder: self.holder.clone(),
                        started_at,
                        duration: took,
                        neutron_requests: requests,
                        mappings: report.mappings,
                        deleted: report.deleted,
                        updated: report.updated,
                        error: None,
                    }
                }
                Err(e) => {
                    self.counters.failed_cycles.inc();
                    warn!(error = %crate::util::Chain(e), "monitor cycle abandoned; nothing changed, retrying next cycle");
                    CycleRecord {
                        holder: self.holder.clone(),
                        started_at,
                        duration: took,
                        neutron_requests: requests,
                        mappings: 0,
                        deleted: 0,
                        updated: 0,
                        error: Some(crate::util::Chain(e).to_string()),
                    }
                }
            };
            self.counters.cycle_seconds.observe(took.as_secs_f64());
            if let Some(n) = requests {
                self.counters.cycle_requests.observe(n as f64);
            }
            // For `praas status`; a database that cannot take it now gets the next one.
            if let Err(e) = self.store.record_monitor_cycle(&outcome).await {
                warn!(error = %crate::util::Chain(&e), "cannot record the monitor's cycle");
            }
        }
    }

    /// Gives the lease up.
    pub async fn release(&self) {
        if let Err(e) = self.store.release_lease(&self.holder).await {
            warn!(error = %crate::util::Chain(&e), "could not release the monitor lease");
        }
    }
}

/// This node's name, to tell monitors apart (empty if it cannot be read).
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

pub mod notifications;

#[cfg(test)]
mod tests;
