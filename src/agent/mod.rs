//! The agent: keeps this node's router namespaces equal to the store.
//!
//! It serves the routers whose namespaces this node holds ([`Placement`]) and reads only
//! their mappings (another node's routers are its agent's), groups them by router namespace,
//! and hands each namespace's rule set
//! to [`RouterSync`] (element diffs when it can, a verified rewrite when it must), then records
//! the outcome as each mapping's status. Changes committed by this process (all-in-one) arrive
//! through the store's change feed: only those mappings are fetched, and only their namespaces
//! reprogrammed (the agent keeps every namespace's mappings from its last pass). Changes of
//! other processes (a separate server, the monitor) are read by revision: the generation
//! moved, and the store's change log names the mappings written since the last look; only
//! when the log no longer reaches back that far does it reconcile everything. Periodically it
//! rewrites and reads back every namespace, which repairs whatever changed behind its back.
//! Namespaces that are not on this node belong to another network node's agent.
//!
//! Between passes it watches the node ([`watch`]): a router namespace that appears (the L3
//! agent built it, or built it again) is programmed at once, one that leaves is forgotten, and
//! every second each served namespace's [`Fingerprint`](crate::dataplane::Fingerprint) is
//! compared with the one taken after our last commit: only a namespace where something was
//! committed since is read back, and one whose rules are not ours any more (a flushed ruleset,
//! a deleted table, a namespace built again) is rewritten within that second. Each repair is
//! logged with what was found and counted.

pub mod usage;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::dataplane::sync::{Check, RouterSync, SyncMode, SyncOutcome};
use crate::dataplane::{Changes, DataplaneError, Forward, RouterNamespace, RuleSet};
use crate::placement::{Placement, PlacementError};
use crate::store::{AgentReport, ChangeFeed, Mapping, ServedRouters, Status, Store, StoreError};

/// Why a pass could not be made; the next turn reconciles everything again.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading the mappings")]
    Store(#[from] StoreError),
    #[error("finding the routers this node serves")]
    Placement(#[from] PlacementError),
    #[error("checking the namespaces of this node")]
    Task(#[from] tokio::task::JoinError),
}

/// How often the store's generation is read to notice changes made by another process.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub namespaces: usize,
    pub failed_namespaces: usize,
    pub absent_namespaces: usize,
    pub active: usize,
    pub errors: usize,
}

pub struct Agent {
    store: Arc<Store>,
    sync: Arc<RouterSync>,
    placement: Arc<dyn Placement>,
    feed: Arc<ChangeFeed>,
    resync_every: Duration,
    /// Every namespace's mappings and rule set, as of the last pass: a change committed by this
    /// process is applied here by fetching only that mapping and updating only its elements.
    /// A namespace stays until it has been emptied in the kernel.
    known: BTreeMap<RouterNamespace, NamespaceState>,
    /// The router namespaces this node held when last looked at; `None` before the first look.
    served: Option<BTreeSet<RouterNamespace>>,
    counters: Arc<Counters>,
    /// Heartbeats to the store, when this agent reports (see [`Agent::reporting`]).
    reporter: Option<Reporter>,
    /// The end of the last pass after which every served namespace was programmed.
    last_sync_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last failure, until a pass succeeds again.
    last_error: Option<String>,
    /// The store's count of failed commits when last looked at (see `ChangeFeed`).
    failed_commits: u64,
    /// Woken when another process announces a commit (see [`crate::changes`]).
    announced: Option<Arc<tokio::sync::Notify>>,
    /// Reads the kernel's per-mapping counters, when asked to (see [`Agent::counting_usage`]).
    usage: Option<usage::UsageMeter>,
}

/// What the agent reports, and what it reported last.
struct Reporter {
    host: String,
    every: Duration,
    started_at: chrono::DateTime<chrono::Utc>,
    /// The routers the store holds for this host (`None`: unknown, send them all).
    reported: Option<BTreeSet<String>>,
    last: Option<Instant>,
}

/// What the agent has done since it started: the `praas_agent_*` metrics (registered by
/// [`Counters::register`]), also read by `/readyz` and the tests.
#[derive(Debug)]
pub struct Counters {
    /// Passes over every mapping: the first, periodic resyncs, and changes the change feed did
    /// not account for (another process's, or after a failure).
    pub full_passes: Counter,
    /// Passes over the mappings that changed.
    pub change_passes: Counter,
    pub failed_passes: Counter,
    /// Namespaces whose rules were found changed behind our back, and rewritten.
    pub repairs: Counter,
    /// Router namespaces that appeared on this node after the first look, and were programmed.
    pub namespaces_appeared: Counter,
    /// Router namespaces this node serves, at the last look.
    pub namespaces: Gauge,
    /// Served namespaces whose last programming failed.
    pub failing_namespaces: Gauge,
    passes: Family<PassLabels, Counter>,
    /// How long programming one namespace took, by how it was done.
    apply_seconds: Family<ApplyLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplyLabels {
    /// `changes` (elements added and removed), `full` (the table rewritten and verified) or
    /// `unchanged`.
    mode: &'static str,
}

impl Default for Counters {
    fn default() -> Self {
        let passes: Family<PassLabels, Counter> = Family::default();
        Counters {
            full_passes: passes.get_or_create_owned(&PassLabels { kind: "full" }),
            change_passes: passes.get_or_create_owned(&PassLabels { kind: "changes" }),
            passes,
            failed_passes: Counter::default(),
            repairs: Counter::default(),
            namespaces_appeared: Counter::default(),
            namespaces: Gauge::default(),
            failing_namespaces: Gauge::default(),
            apply_seconds: Family::new_with_constructor(|| {
                Histogram::new(crate::metrics::seconds_buckets(0.0001, 16))
            }),
        }
    }
}

impl Counters {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("agent");
        r.register(
            "passes",
            "Passes over this node's mappings: full (every mapping) or changes (those that changed)",
            self.passes.clone(),
        );
        r.register(
            "pass_failures",
            "Passes that could not be made (the store or the node could not be read)",
            self.failed_passes.clone(),
        );
        r.register(
            "repairs",
            "Namespaces whose rules were found changed behind the agent's back, and rewritten",
            self.repairs.clone(),
        );
        r.register(
            "namespaces_appeared",
            "Router namespaces that appeared on this node and were programmed",
            self.namespaces_appeared.clone(),
        );
        r.register(
            "namespaces",
            "Router namespaces this node serves",
            self.namespaces.clone(),
        );
        r.register(
            "failing_namespaces",
            "Served router namespaces whose last programming failed",
            self.failing_namespaces.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to program one router namespace, by mode: changes, full or unchanged",
            self.apply_seconds.clone(),
        );
    }

    fn applied(&self, mode: SyncMode, took: Duration) {
        let mode = match mode {
            SyncMode::Unchanged => "unchanged",
            SyncMode::Incremental => "changes",
            SyncMode::Full => "full",
        };
        self.apply_seconds
            .get_or_create(&ApplyLabels { mode })
            .observe(took.as_secs_f64());
    }
}

/// What the agent knows of one namespace.
#[derive(Debug, Default)]
struct NamespaceState {
    /// By mapping id (see [`Kept`]'s ordering).
    mappings: BTreeSet<Kept>,
    /// The forwards of the mappings that can be programmed.
    rules: RuleSet,
    /// Mappings that cannot be programmed, and why.
    invalid: BTreeMap<String, String>,
    /// The namespace holds exactly `rules`, as the last programming of it succeeded: a change
    /// can be applied as a difference, without handing over (or diffing) the whole set.
    in_sync: bool,
    /// Programming attempts that failed in a row, and when to try again (see [`retry_after`]).
    failures: u32,
    retry_at: Option<Instant>,
}

/// How long after `failures` failed attempts in a row a namespace is programmed again: at the
/// next look after the first failure, then after one second, doubling up to a minute. A repair
/// that raced someone else's change is redone at once, while a namespace the kernel keeps
/// refusing does not fill the log every second.
fn retry_after(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        f => Duration::from_secs(1u64 << (f - 2).min(6)).min(Duration::from_secs(60)),
    }
}

/// What the agent keeps of a mapping: what it programs, and the status it last recorded (not
/// the whole `Mapping`: a node may serve a hundred thousand). Ordered and looked up by the
/// mapping id, which the forward holds, so that a set of them holds each id once.
#[derive(Debug)]
struct Kept {
    /// The forward, whose `id` is the mapping's.
    forward: Forward,
    held: bool,
    status: Status,
    status_reason: Option<String>,
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.forward.id == other.forward.id
    }
}

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.forward.id.cmp(&other.forward.id)
    }
}

impl std::borrow::Borrow<str> for Kept {
    fn borrow(&self) -> &str {
        &self.forward.id
    }
}

impl From<Mapping> for Kept {
    fn from(m: Mapping) -> Self {
        Kept {
            forward: m.forward(),
            held: m.held,
            status: m.status,
            status_reason: m.status_reason,
        }
    }
}

impl NamespaceState {
    fn upsert(&mut self, m: Mapping) {
        let kept = Kept::from(m);
        self.remove(&kept.forward.id);
        // A mapping the monitor holds is known but not programmed.
        if !kept.held {
            if let Err(e) = self.rules.insert_forward(&kept.forward) {
                self.invalid.insert(kept.forward.id.clone(), e.to_string());
            }
        }
        self.mappings.insert(kept);
    }

    /// The forward of mapping `id` as programmed (not of an invalid one).
    fn programmed(&self, id: &str) -> Option<Forward> {
        let m = self.mappings.get(id)?;
        (!m.held && !self.invalid.contains_key(id)).then(|| m.forward.clone())
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.mappings.take(id) else {
            return false;
        };
        if self.invalid.remove(id).is_none() && !old.held {
            self.rules.remove_forward(&old.forward);
        }
        true
    }
}

/// The routers of router namespaces.
fn routers_of(namespaces: &BTreeSet<RouterNamespace>) -> BTreeSet<String> {
    namespaces
        .iter()
        .filter_map(|ns| RouterNamespace::router_of(ns.name()))
        .map(|(id, _)| id.to_string())
        .collect()
}

/// How many routers' mappings a full pass reads per query.
const ROUTERS_PER_READ: usize = 50;

/// A mapping's new status and its reason.
type StatusChange = (String, Status, Option<String>);

/// What a loop turn has to reconcile.
#[derive(Debug, PartialEq, Eq)]
enum Work {
    Nothing,
    /// Only these mappings changed, and every change since the last pass is accounted for.
    Mappings(BTreeSet<String>),
    Everything,
}

/// Decides between a per-mapping and a full pass from what this process knows: `drained` are
/// the (generation, mapping id) pairs it wrote; they cover the changes since `seen` exactly
/// when every generation in `seen+1 ..= current` is among them. Anything else (a change by
/// another process, a failed read, the first turn) is `Everything`, which the caller narrows
/// with the store's change log when it can. Entries above `current` are not visible yet and
/// wait for a later turn.
fn plan(seen: Option<i64>, current: Option<i64>, drained: &[(i64, String)]) -> Work {
    let (Some(seen), Some(current)) = (seen, current) else {
        return Work::Everything;
    };
    if current < seen {
        return Work::Everything; // the database was replaced
    }
    let local: BTreeSet<i64> = drained.iter().map(|(g, _)| *g).collect();
    if !(seen + 1..=current).all(|g| local.contains(&g)) {
        return Work::Everything;
    }
    let ids: BTreeSet<String> = drained
        .iter()
        .filter(|(g, _)| *g > seen && *g <= current)
        .map(|(_, id)| id.clone())
        .collect();
    if ids.is_empty() {
        Work::Nothing
    } else {
        Work::Mappings(ids)
    }
}

impl Agent {
    pub fn new(
        store: Arc<Store>,
        sync: Arc<RouterSync>,
        placement: Arc<dyn Placement>,
        resync_every: Duration,
    ) -> Self {
        let feed = store.feed();
        Agent {
            store,
            sync,
            placement,
            feed,
            resync_every,
            known: BTreeMap::new(),
            served: None,
            counters: Arc::default(),
            reporter: None,
            last_sync_at: None,
            last_error: None,
            failed_commits: 0,
            announced: None,
            usage: None,
        }
    }

    /// Makes the agent read the kernel's per-mapping counters every `every` and add them to
    /// the store (the API's `packets`, `bytes`, `last_used`); per-mapping metric series are
    /// kept while the node programs at most `series_limit` mappings.
    pub fn counting_usage(mut self, every: Duration, series_limit: usize) -> Self {
        self.usage = Some(usage::UsageMeter::new(every, series_limit));
        self
    }

    /// The usage metrics, when the agent counts usage.
    pub fn usage_metrics(&self) -> Option<usage::UsageMetrics> {
        self.usage.as_ref().map(|u| u.metrics().clone())
    }

    /// Reads the kernel's counters of every served namespace when a reading is due, and adds
    /// what each mapping forwarded since the last one to the store and the metrics.
    pub async fn read_usage_if_due(&mut self) {
        // Not before a full pass has programmed the node: the first reading is the baseline
        // of every namespace with mappings.
        if self.counters.full_passes.get() == 0 {
            return;
        }
        let due = self.usage.as_mut().is_some_and(|u| u.due());
        let Some(served) = self.served.clone().filter(|_| due) else {
            return;
        };
        let mut programmed = 0;
        let mut jobs = vec![];
        for (ns, state) in self.known.iter().filter(|(ns, _)| served.contains(*ns)) {
            let Some((router_id, _)) = RouterNamespace::router_of(ns.name()) else {
                continue;
            };
            let mut owners = std::collections::HashMap::new();
            for m in state.mappings.iter() {
                if m.held || state.invalid.contains_key(&m.forward.id) {
                    continue;
                }
                programmed += 1;
                for key in usage::keys(&m.forward) {
                    owners.insert(key, m.forward.id.clone());
                }
            }
            jobs.push((ns.clone(), router_id.to_string(), owners));
        }
        let sync = self.sync.clone();
        let read = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .filter_map(|(namespace, router_id, owners)| match sync.usage(&namespace) {
                    Ok(counts) => Some(usage::Reading {
                        namespace,
                        router_id,
                        counts,
                        owners,
                    }),
                    Err(e) => {
                        debug!(%namespace, error = %crate::util::Chain(&e), "cannot read the usage counters");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        let readings = match read {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reading the usage counters failed");
                return;
            }
        };
        let Some(meter) = self.usage.as_mut() else {
            return;
        };
        meter.keep_only(&served);
        let deltas = meter.account(readings, programmed);
        if deltas.is_empty() {
            return;
        }
        match self.store.add_usage(&deltas, chrono::Utc::now()).await {
            Ok(()) => meter.written(),
            Err(e) => {
                warn!(error = %crate::util::Chain(&e), mappings = deltas.len(), "cannot record the mappings' usage; adding it to the next reading")
            }
        }
    }

    /// Makes the agent look at the store as soon as `announced` is woken (a server's commit,
    /// announced over RabbitMQ), not only every [`POLL_INTERVAL`].
    pub fn woken_by(mut self, announced: Arc<tokio::sync::Notify>) -> Self {
        self.announced = Some(announced);
        self
    }

    /// Makes the agent report a heartbeat under `host` every `every`: the routers whose
    /// namespaces it serves, its last successful sync and its last error (`GET /v1/agents`).
    pub fn reporting(mut self, host: impl Into<String>, every: Duration) -> Self {
        self.reporter = Some(Reporter {
            host: host.into(),
            every,
            started_at: chrono::Utc::now(),
            reported: None,
            last: None,
        });
        self
    }

    /// Writes a heartbeat when one is due. A failed write is retried at the next turn, with
    /// every served router.
    pub async fn report_if_due(&mut self) {
        let Some(reporter) = self.reporter.as_mut() else {
            return;
        };
        if reporter
            .last
            .is_some_and(|at| at.elapsed() < reporter.every)
        {
            return;
        }
        let routers = self.served.as_ref().map(routers_of).unwrap_or_default();
        let change = match &reporter.reported {
            None => ServedRouters::All(routers.clone()),
            Some(before) => ServedRouters::Changed {
                added: routers.difference(before).cloned().collect(),
                removed: before.difference(&routers).cloned().collect(),
            },
        };
        let report = AgentReport {
            host: reporter.host.clone(),
            started_at: reporter.started_at,
            last_sync_at: self.last_sync_at,
            last_error: self.last_error.clone(),
        };
        reporter.last = Some(Instant::now());
        match self.store.report_agent(&report, &change).await {
            Ok(()) => reporter.reported = Some(routers),
            Err(e) => {
                reporter.reported = None;
                warn!(error = %crate::util::Chain(&e), "cannot record the agent's heartbeat");
            }
        }
    }

    /// The agent's counters, which keep counting once it runs.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut watch = watch::NamespaceWatch::new(self.placement.watch_dir());
        let mut seen: Option<i64> = None;
        let mut pending: Vec<(i64, String)> = vec![];
        let mut last_full = Instant::now();
        // When the store was last asked for its generation; `None` makes the next turn ask.
        let mut last_poll: Option<Instant> = None;
        loop {
            let store_due = last_poll.is_none_or(|at| at.elapsed() >= POLL_INTERVAL)
                || last_full.elapsed() >= self.resync_every;
            if store_due {
                last_poll = Some(Instant::now());
                self.store_turn(&mut seen, &mut pending, &mut last_full)
                    .await;
            }
            match self.check_node().await {
                Ok(report) if report != PassReport::default() => {
                    debug!(?report, "namespaces appeared or repaired");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %crate::util::Chain(&e), "checking the node's namespaces failed")
                }
            }
            self.report_if_due().await;
            self.read_usage_if_due().await;
            let announced = self.announced.clone();
            let announced = async {
                match announced {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A change committed here, or announced by another process: look at once.
                _ = self.feed.changed() => last_poll = None,
                _ = announced => last_poll = None,
                _ = watch.next() => {}
            }
        }
    }

    /// One look at the store: reconciles what changed since `seen`, or everything.
    async fn store_turn(
        &mut self,
        seen: &mut Option<i64>,
        pending: &mut Vec<(i64, String)>,
        last_full: &mut Instant,
    ) {
        // Read the generation, then drain: a local change visible in the generation was
        // published before it committed, so its entry is drained too. Entries not visible
        // yet (published, not committed when the generation was read) wait for later.
        let current = match self.store.generation().await {
            Ok(g) => Some(g),
            Err(e) => {
                warn!(error = ?e, "cannot read the store's generation");
                None
            }
        };
        // Read before draining: a commit that fails after this is caught at the next turn.
        let failed_commits = self.feed.failed_commits();
        pending.extend(self.feed.take());
        let mut work = plan(*seen, current, pending);
        if let Some(current) = current {
            pending.retain(|(g, _)| *g > current);
        }
        if failed_commits != self.failed_commits {
            // An entry whose commit failed may name a generation another process
            // committed: the entries cannot tell what changed, so everything is looked at,
            // and entries still waiting are not trusted either.
            self.failed_commits = failed_commits;
            work = Work::Everything;
            pending.clear();
        }
        if last_full.elapsed() >= self.resync_every {
            // Periodic resync: forget what the namespaces hold, rewrite and read back all.
            self.sync.invalidate_all();
            work = Work::Everything;
        } else if let (Work::Everything, Some(seen), Some(current)) = (&work, *seen, current) {
            // Changes this process did not make (or whose entries it cannot trust): the
            // store's change log names their mappings, unless it no longer reaches back to
            // `seen`; then everything is read, as on the first turn.
            match self.store.changed_between(seen, current).await {
                Ok(Some(ids)) if ids.is_empty() => work = Work::Nothing,
                Ok(Some(ids)) => work = Work::Mappings(ids),
                Ok(None) => debug!(
                    seen,
                    current, "the change log does not reach back; reading everything"
                ),
                Err(e) => {
                    warn!(error = %crate::util::Chain(&e), "cannot read the store's change log")
                }
            }
        }
        let started = Instant::now();
        let result = match &work {
            Work::Nothing => Ok(PassReport::default()),
            Work::Mappings(ids) => self.pass_mappings(ids).await,
            Work::Everything => self.pass().await,
        };
        match result {
            Ok(report) => {
                match work {
                    Work::Everything => {
                        *last_full = Instant::now();
                        self.counters.full_passes.inc();
                    }
                    Work::Mappings(_) => {
                        self.counters.change_passes.inc();
                    }
                    Work::Nothing => {}
                }
                if work != Work::Nothing {
                    debug!(?report, elapsed = ?started.elapsed(), "agent pass");
                }
                if work == Work::Everything && report.failed_namespaces == 0 {
                    self.last_sync_at = Some(chrono::Utc::now());
                    self.last_error = None;
                }
                *seen = current;
                // After the pass is counted (the node is ready once its mappings are
                // programmed), however many namespaces there are to clean.
                if work == Work::Everything {
                    if let Err(e) = self.remove_orphans().await {
                        warn!(error = %crate::util::Chain(&e), "removing rules no mapping needs failed");
                    }
                    if self.usage.is_some() {
                        if let Err(e) = self.store.prune_usage().await {
                            debug!(error = %crate::util::Chain(&e), "cannot prune the usage of deleted mappings");
                        }
                    }
                }
            }
            // Nothing is marked as seen: the next turn reconciles everything again.
            Err(e) => {
                self.counters.failed_passes.inc();
                warn!(error = ?e, "agent pass failed; retrying");
                self.last_error = Some(crate::util::Chain(&e).to_string());
                *seen = None;
            }
        }
    }

    /// Looks at the node: forgets namespaces that left it, programs those that appeared, and
    /// rewrites those whose rules were changed behind our back (see the module's comment).
    pub async fn check_node(&mut self) -> Result<PassReport, AgentError> {
        let appeared = self.refresh_served()?;
        let candidates: Vec<RouterNamespace> = match &self.served {
            Some(served) => self
                .known
                .keys()
                .filter(|ns| served.contains(*ns) && !appeared.contains(*ns))
                .cloned()
                .collect(),
            None => vec![],
        };
        let sync = self.sync.clone();
        let checks = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .map(|ns| {
                    let check = sync.check(&ns);
                    (ns, check)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut repair = BTreeSet::new();
        if !appeared.is_empty() {
            // The mappings of the routers whose namespaces appeared, in one query. Without the
            // store they count as not seen yet, to be fetched at a later look; the repairs
            // below need no store and go on.
            match self.store.list_for_routers(&routers_of(&appeared)).await {
                Ok(mappings) => {
                    for m in mappings {
                        let ns = self.placement.namespace(&m.router_id, m.distributed);
                        if appeared.contains(&ns) {
                            self.known.entry(ns).or_default().upsert(m);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %crate::util::Chain(&e), "cannot read the mappings of namespaces that appeared");
                    if let Some(served) = self.served.as_mut() {
                        served.retain(|ns| !appeared.contains(ns));
                    }
                }
            }
            for namespace in appeared.iter().filter(|ns| self.known.contains_key(*ns)) {
                self.counters.namespaces_appeared.inc();
                let mappings = self.known[namespace].mappings.len();
                info!(%namespace, mappings, "router namespace appeared; programming it");
                repair.insert(namespace.clone());
            }
        }
        // Namespaces whose last programming failed, when their retry is due.
        let now = Instant::now();
        if let Some(served) = &self.served {
            repair.extend(
                self.known
                    .iter()
                    .filter(|(ns, state)| {
                        served.contains(*ns) && state.retry_at.is_some_and(|at| at <= now)
                    })
                    .map(|(ns, _)| ns.clone()),
            );
        }
        for (namespace, check) in checks {
            match check {
                Ok(Check::Drifted(drift)) => {
                    warn!(%namespace, found = %drift, "our rules were changed behind our back; repairing");
                    self.counters.repairs.inc();
                    repair.insert(namespace);
                }
                Ok(_) => {}
                // Gone meanwhile (the next look forgets it) or unreadable: the resync retries.
                Err(e) => {
                    debug!(%namespace, error = %crate::util::Chain(&e), "cannot check the namespace")
                }
            }
        }
        if repair.is_empty() {
            return Ok(PassReport::default());
        }
        self.program_served(&repair, None).await
    }

    /// Asks the placement which router namespaces this node holds now: those that left are
    /// forgotten (their next appearance is a new namespace), those that appeared since the last
    /// look are returned. The first look returns every namespace without calling it new.
    fn refresh_served(&mut self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        let now = self.placement.served()?;
        self.counters.namespaces.set(now.len() as i64);
        let Some(before) = self.served.replace(now.clone()) else {
            return Ok(now);
        };
        for gone in before.difference(&now) {
            self.sync.forget(gone);
            // Its mappings are another node's now, or wait for the namespace to come back.
            if let Some(state) = self.known.remove(gone) {
                info!(namespace = %gone, mappings = state.mappings.len(), "router namespace left this node");
            }
        }
        let appeared: BTreeSet<RouterNamespace> = now.difference(&before).cloned().collect();
        for namespace in &appeared {
            self.sync.forget(namespace);
            self.known.remove(namespace);
        }
        Ok(appeared)
    }

    /// Reconciles every namespace on this node with the store.
    pub async fn pass(&mut self) -> Result<PassReport, AgentError> {
        self.refresh_served()?;
        let served = self.served.clone().unwrap_or_default();
        // Namespaces known before keep an (emptied) entry, so that their forwards are removed.
        let mut known: BTreeMap<RouterNamespace, NamespaceState> = self
            .known
            .keys()
            .map(|ns| (ns.clone(), NamespaceState::default()))
            .collect();
        // Only the mappings of the routers this node serves (another node's are its agent's),
        // read a few routers at a time: what is kept of a mapping is a fraction of the row,
        // and the whole node's rows at once would set the process's peak memory.
        let routers: Vec<String> = routers_of(&served).into_iter().collect();
        for page in routers.chunks(ROUTERS_PER_READ) {
            let page: BTreeSet<String> = page.iter().cloned().collect();
            for m in self.store.list_for_routers(&page).await? {
                let ns = self.placement.namespace(&m.router_id, m.distributed);
                // A router's other namespace (`qrouter-` of a DVR router) carries nothing.
                if served.contains(&ns) {
                    known.entry(ns).or_default().upsert(m);
                }
            }
        }
        self.known = known;
        let all: BTreeSet<RouterNamespace> = self.known.keys().cloned().collect();
        self.program_served(&all, None).await
    }

    /// A full pass ([`Agent::pass`]), then the removal of rules no mapping needs
    /// ([`Agent::remove_orphans`]).
    pub async fn full_pass(&mut self) -> Result<PassReport, AgentError> {
        let report = self.pass().await?;
        self.remove_orphans().await?;
        Ok(report)
    }

    /// Removes our rules from served namespaces that no mapping needs any more: mappings
    /// deleted, or moved to the router's other namespace, while no agent was running here.
    /// One read per namespace (for nftables a single netlink request), at full passes only.
    pub async fn remove_orphans(&mut self) -> Result<(), AgentError> {
        let idle: Vec<RouterNamespace> = self
            .served
            .iter()
            .flatten()
            .filter(|ns| !self.known.contains_key(*ns))
            .cloned()
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        let sync = self.sync.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut removed = vec![];
            for namespace in idle {
                match sync.backend().read_back(&namespace) {
                    Ok(None) => {}
                    Ok(Some(rules)) if rules.forwards.is_empty() => {}
                    // Forwards no mapping asks for, or a table we cannot read: ours to remove.
                    Ok(Some(_)) | Err(_) => match sync.remove(&namespace) {
                        Ok(flows) => removed.push((namespace, flows)),
                        Err(e) => {
                            warn!(%namespace, error = %crate::util::Chain(&e), "cannot remove rules no mapping needs")
                        }
                    },
                }
            }
            removed
        })
        .await?;
        for (namespace, flows_deleted) in removed {
            info!(%namespace, flows_deleted, "removed rules that no mapping needs any more");
        }
        Ok(())
    }

    /// Applies the changes of `ids` (fetched in one query) and reprograms their namespaces with
    /// the difference those mappings make, so that the cost follows the change, not the
    /// number of mappings on the router.
    pub async fn pass_mappings(
        &mut self,
        ids: &BTreeSet<String>,
    ) -> Result<PassReport, AgentError> {
        // The forwards of the changed mappings before and after, per namespace. Mappings own
        // disjoint keys, so the difference of these is the namespace's difference.
        let mut before: BTreeMap<RouterNamespace, Vec<Forward>> = BTreeMap::new();
        let mut after: BTreeMap<RouterNamespace, Vec<Forward>> = BTreeMap::new();
        let list: Vec<String> = ids.iter().cloned().collect();
        let current = self.store.get_many(&list).await?;
        for id in ids {
            for (ns, state) in self.known.iter_mut() {
                if let Some(fwd) = state.programmed(id) {
                    before.entry(ns.clone()).or_default().push(fwd);
                }
                if state.remove(id) {
                    before.entry(ns.clone()).or_default();
                }
            }
        }
        if self.served.is_none() {
            self.refresh_served()?;
        }
        for m in current {
            let (id, ns) = (
                m.id.clone(),
                self.placement.namespace(&m.router_id, m.distributed),
            );
            // Another node's router, or one whose namespace has not appeared yet (it is
            // fetched whole when it does).
            if !self.served.as_ref().is_some_and(|s| s.contains(&ns)) {
                continue;
            }
            let state = self.known.entry(ns.clone()).or_default();
            state.upsert(m);
            let fwd = state.programmed(&id);
            after.entry(ns).or_default().extend(fwd);
        }
        let touched: BTreeSet<RouterNamespace> =
            before.keys().chain(after.keys()).cloned().collect();
        let mut deltas = BTreeMap::new();
        for ns in &touched {
            let forwards = |m: &BTreeMap<RouterNamespace, Vec<Forward>>| {
                RuleSet::from_forwards(m.get(ns).map(Vec::as_slice).unwrap_or_default())
            };
            // Forwards that were valid together stay valid together; if not, the namespace
            // gets a whole sync instead.
            if let (Ok(old), Ok(new)) = (forwards(&before), forwards(&after)) {
                deltas.insert(ns.clone(), old.diff(&new));
            }
        }
        // Which namespaces the node holds is looked at each second (see `check_node`), not per
        // change: a namespace that appears meanwhile is programmed whole when it is noticed.
        self.program_served(&touched, Some((ids, &deltas))).await
    }

    /// Programs each of `namespaces` that the node held at the last look, and records statuses:
    /// of the mappings in `changed`, or of every mapping whose status is not yet what it should
    /// be. With `changed`, a namespace in sync is given only its difference.
    async fn program_served(
        &mut self,
        namespaces: &BTreeSet<RouterNamespace>,
        changed: Option<(&BTreeSet<String>, &BTreeMap<RouterNamespace, Changes>)>,
    ) -> Result<PassReport, AgentError> {
        let mut report = PassReport::default();
        let served: BTreeSet<RouterNamespace> = namespaces
            .iter()
            .filter(|ns| self.served.as_ref().is_some_and(|s| s.contains(*ns)))
            .cloned()
            .collect();
        let changed_ids = changed.map(|(ids, _)| ids);
        let sync = self.sync.clone();
        for namespace in namespaces {
            let Some(state) = self.known.get_mut(namespace) else {
                continue;
            };
            if !served.contains(namespace) {
                report.absent_namespaces += 1;
                state.in_sync = false;
                if state.mappings.is_empty() {
                    self.known.remove(namespace);
                }
                continue;
            }
            report.namespaces += 1;
            let concerned = |id: &String| changed_ids.is_none_or(|c| c.contains(id));
            let mut record: Vec<StatusChange> = state
                .invalid
                .iter()
                .filter(|(id, reason)| {
                    concerned(id)
                        && state.mappings.get(id.as_str()).is_some_and(|m| {
                            m.status != Status::Error || m.status_reason.as_ref() != Some(reason)
                        })
                })
                .map(|(id, reason)| (id.clone(), Status::Error, Some(reason.clone())))
                .collect();
            report.errors += state.invalid.len();
            let valid: Vec<&Kept> = match changed_ids {
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| state.mappings.get(id.as_str()))
                    .collect::<Vec<_>>(),
                None => state.mappings.iter().collect::<Vec<_>>(),
            }
            .into_iter()
            .filter(|m| !m.held && !state.invalid.contains_key(&m.forward.id))
            .collect();
            let delta = changed
                .and_then(|(_, deltas)| deltas.get(namespace))
                .filter(|_| state.in_sync)
                .cloned();
            let empty = state.mappings.is_empty();
            let started = Instant::now();
            let outcome = apply(&sync, namespace, delta, &state.rules).await;
            match &outcome {
                Ok(Ok(done)) => {
                    self.counters.applied(done.mode, started.elapsed());
                    (state.failures, state.retry_at) = (0, None)
                }
                _ => {
                    state.failures += 1;
                    state.retry_at = Some(Instant::now() + retry_after(state.failures));
                }
            }
            match outcome {
                Ok(Ok(outcome)) => {
                    state.in_sync = true;
                    if outcome.added + outcome.removed > 0 {
                        info!(%namespace, added = outcome.added, removed = outcome.removed,
                            flows_deleted = outcome.flows_deleted, mode = ?outcome.mode, "namespace programmed");
                    }
                    report.active += valid.len();
                    record.extend(
                        valid
                            .iter()
                            .filter(|m| m.status != Status::Active || m.status_reason.is_some())
                            .map(|m| (m.forward.id.clone(), Status::Active, None)),
                    );
                }
                Ok(Err(e)) => {
                    state.in_sync = false;
                    warn!(%namespace, error = %crate::util::Chain(&e), "programming failed");
                    self.last_error = Some(format!("{namespace}: {}", crate::util::Chain(&e)));
                    report.failed_namespaces += 1;
                    report.errors += valid.len();
                    let reason = crate::util::Chain(&e).to_string();
                    record.extend(
                        valid
                            .iter()
                            .map(|m| (m.forward.id.clone(), Status::Error, Some(reason.clone()))),
                    );
                }
                Err(join) => {
                    state.in_sync = false;
                    warn!(%namespace, error = %join, "programming task failed");
                    report.failed_namespaces += 1;
                    continue;
                }
            }
            if empty {
                self.known.remove(namespace);
            }
            self.record(namespace, record).await?;
        }
        let failing = self.known.values().filter(|s| s.failures > 0).count();
        self.counters.failing_namespaces.set(failing as i64);
        Ok(report)
    }

    /// Stores statuses (one transaction per status and reason) and mirrors them in `known`, so
    /// that the next pass does not record them again.
    async fn record(
        &mut self,
        namespace: &RouterNamespace,
        record: Vec<StatusChange>,
    ) -> Result<(), StoreError> {
        let mut groups: BTreeMap<(Status, Option<String>), Vec<String>> = BTreeMap::new();
        for (id, status, reason) in record {
            groups.entry((status, reason)).or_default().push(id);
        }
        for ((status, reason), ids) in groups {
            self.store
                .set_status(&ids, status, reason.as_deref())
                .await?;
            if let Some(state) = self.known.get_mut(namespace) {
                for id in &ids {
                    if let Some(mut m) = state.mappings.take(id.as_str()) {
                        m.status = status;
                        m.status_reason = reason.clone();
                        state.mappings.insert(m);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Programs `namespace` off the runtime's threads: `delta` alone when given and the
/// namespace's state is known to the sync, else the whole of `rules` (cloned only then).
async fn apply(
    sync: &Arc<RouterSync>,
    namespace: &RouterNamespace,
    delta: Option<Changes>,
    rules: &RuleSet,
) -> Result<Result<SyncOutcome, DataplaneError>, tokio::task::JoinError> {
    if let Some(delta) = delta {
        let (s, ns) = (sync.clone(), namespace.clone());
        match tokio::task::spawn_blocking(move || s.apply_changes(&ns, &delta)).await? {
            Ok(Some(outcome)) => return Ok(Ok(outcome)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    let (s, ns, whole) = (sync.clone(), namespace.clone(), rules.clone());
    tokio::task::spawn_blocking(move || s.sync(&ns, &whole)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(g, r)| (*g, r.to_string())).collect()
    }

    #[test]
    fn failed_namespaces_are_retried_at_the_next_look_then_after_a_second_doubling_up_to_a_minute()
    {
        let secs: Vec<u64> = (1..=10).map(|f| retry_after(f).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn local_changes_that_account_for_every_generation_reprogram_only_their_mappings() {
        let work = plan(Some(10), Some(12), &d(&[(11, "a"), (12, "b")]));
        assert_eq!(
            work,
            Work::Mappings(["a".to_string(), "b".to_string()].into())
        );
    }

    #[test]
    fn a_generation_nobody_here_made_means_everything() {
        // 12 came from another process.
        assert_eq!(plan(Some(10), Some(12), &d(&[(11, "a")])), Work::Everything);
        assert_eq!(plan(Some(10), Some(11), &d(&[])), Work::Everything);
    }

    #[test]
    fn the_first_turn_a_failed_read_or_a_replaced_database_mean_everything() {
        assert_eq!(plan(None, Some(3), &d(&[])), Work::Everything);
        assert_eq!(plan(Some(3), None, &d(&[])), Work::Everything);
        assert_eq!(plan(Some(9), Some(3), &d(&[])), Work::Everything);
    }

    #[test]
    fn nothing_new_is_nothing_to_do_and_old_entries_are_ignored() {
        assert_eq!(plan(Some(10), Some(10), &d(&[])), Work::Nothing);
        // Drained late: already covered by the pass that saw generation 10.
        assert_eq!(plan(Some(10), Some(10), &d(&[(10, "a")])), Work::Nothing);
    }

    #[test]
    fn entries_not_yet_visible_wait() {
        // 12 is published but its transaction has not committed yet.
        assert_eq!(
            plan(Some(10), Some(11), &d(&[(11, "a"), (12, "b")])),
            Work::Mappings(["a".to_string()].into())
        );
        assert_eq!(plan(Some(11), Some(11), &d(&[(12, "b")])), Work::Nothing);
    }
}
