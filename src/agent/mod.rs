//! The agent: keeps this node's router namespaces equal to the store.
//!
//! It reads every mapping, groups them by router namespace, and hands each namespace's rule set
//! to [`RouterSync`] (element diffs when it can, a verified rewrite when it must), then records
//! the outcome as each mapping's status. Changes committed by this process (all-in-one) arrive
//! through the store's change feed: only those mappings are fetched, and only their namespaces
//! reprogrammed (the agent keeps every namespace's mappings from its last pass); a generation that
//! moved without them (another process, e.g. a separate server) makes it reconcile everything;
//! and periodically it rewrites and reads back every namespace, which repairs whatever changed
//! behind its back.
//! Namespaces that are not on this node belong to another network node's agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::dataplane::sync::RouterSync;
use crate::dataplane::{netns, RouterNamespace, RuleSet};
use crate::store::{ChangeFeed, ListFilter, Mapping, Status, Store, StoreError};

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
    feed: Arc<ChangeFeed>,
    resync_every: Duration,
    /// Every namespace's mappings and rule set, as of the last pass: a change committed by this
    /// process is applied here by fetching only that mapping and updating only its elements.
    /// A namespace stays until it has been emptied in the kernel.
    known: BTreeMap<RouterNamespace, NamespaceState>,
}

/// What the agent knows of one namespace.
#[derive(Debug, Default)]
struct NamespaceState {
    mappings: BTreeMap<String, Mapping>,
    /// The forwards of the mappings that can be programmed.
    rules: RuleSet,
    /// Mappings that cannot be programmed, and why.
    invalid: BTreeMap<String, String>,
}

impl NamespaceState {
    fn upsert(&mut self, m: Mapping) {
        self.remove(&m.id);
        if let Err(e) = self.rules.insert_forward(&m.forward()) {
            self.invalid.insert(m.id.clone(), e.to_string());
        }
        self.mappings.insert(m.id.clone(), m);
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.mappings.remove(id) else {
            return false;
        };
        if self.invalid.remove(id).is_none() {
            self.rules.remove_forward(&old.forward());
        }
        true
    }
}

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

/// Decides between a per-mapping and a full pass. `drained` are the (generation, mapping id)
/// pairs this process committed; they cover the changes since `seen` exactly when every
/// generation in `seen+1 ..= current` is among them. Anything else (a change by another
/// process, a failed read, the first turn) means reconciling everything.
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
        .filter(|(g, _)| *g > seen)
        .map(|(_, id)| id.clone())
        .collect();
    if ids.is_empty() {
        Work::Nothing
    } else {
        Work::Mappings(ids)
    }
}

impl Agent {
    pub fn new(store: Arc<Store>, sync: Arc<RouterSync>, resync_every: Duration) -> Self {
        let feed = store.feed();
        Agent {
            store,
            sync,
            feed,
            resync_every,
            known: BTreeMap::new(),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut seen: Option<i64> = None;
        let mut last_full = Instant::now();
        loop {
            // Drain before reading the generation: whatever was drained committed before it.
            let drained = self.feed.take();
            let current = match self.store.generation().await {
                Ok(g) => Some(g),
                Err(e) => {
                    warn!(error = ?e, "cannot read the store's generation");
                    None
                }
            };
            let mut work = plan(seen, current, &drained);
            if last_full.elapsed() >= self.resync_every {
                // Periodic resync: forget what the namespaces hold, rewrite and read back all.
                self.sync.invalidate_all();
                work = Work::Everything;
            }
            let result = match &work {
                Work::Nothing => Ok(PassReport::default()),
                Work::Mappings(ids) => self.pass_mappings(ids).await,
                Work::Everything => self.pass().await,
            };
            match result {
                Ok(report) => {
                    if work == Work::Everything {
                        last_full = Instant::now();
                    }
                    if work != Work::Nothing {
                        debug!(?report, "agent pass");
                    }
                    seen = current;
                }
                // Nothing is marked as seen: the next turn reconciles everything again.
                Err(e) => {
                    warn!(error = ?e, "agent pass failed; retrying");
                    seen = None;
                }
            }
            tokio::select! {
                _ = self.feed.changed() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Reconciles every namespace on this node with the store.
    pub async fn pass(&mut self) -> Result<PassReport, StoreError> {
        let mappings = self.store.list(&ListFilter::default()).await?;
        // Namespaces known before keep an (emptied) entry, so that their forwards are removed.
        let mut known: BTreeMap<RouterNamespace, NamespaceState> = self
            .known
            .keys()
            .map(|ns| (ns.clone(), NamespaceState::default()))
            .collect();
        for m in mappings {
            known.entry(m.namespace()).or_default().upsert(m);
        }
        self.known = known;
        let all: BTreeSet<RouterNamespace> = self.known.keys().cloned().collect();
        self.program(&all, None).await
    }

    /// Applies the changes of `ids` (fetched one by one) and reprograms their namespaces.
    pub async fn pass_mappings(
        &mut self,
        ids: &BTreeSet<String>,
    ) -> Result<PassReport, StoreError> {
        let mut touched = BTreeSet::new();
        for id in ids {
            for (ns, state) in self.known.iter_mut() {
                if state.remove(id) {
                    touched.insert(ns.clone());
                }
            }
            if let Some(m) = self.store.get(id).await? {
                touched.insert(m.namespace());
                self.known.entry(m.namespace()).or_default().upsert(m);
            }
        }
        self.program(&touched, Some(ids)).await
    }

    /// Programs each of `namespaces` present on this node and records statuses: of the mappings
    /// in `changed`, or of every mapping whose status is not yet what it should be.
    async fn program(
        &mut self,
        namespaces: &BTreeSet<RouterNamespace>,
        changed: Option<&BTreeSet<String>>,
    ) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        for namespace in namespaces {
            let Some(state) = self.known.get(namespace) else {
                continue;
            };
            if !netns::exists(namespace.name()) {
                report.absent_namespaces += 1;
                if state.mappings.is_empty() {
                    self.known.remove(namespace);
                }
                continue;
            }
            report.namespaces += 1;
            let concerned = |id: &String| changed.is_none_or(|c| c.contains(id));
            let mut record: Vec<StatusChange> = state
                .invalid
                .iter()
                .filter(|(id, reason)| {
                    concerned(id)
                        && state.mappings.get(*id).is_some_and(|m| {
                            m.status != Status::Error || m.status_reason.as_ref() != Some(reason)
                        })
                })
                .map(|(id, reason)| (id.clone(), Status::Error, Some(reason.clone())))
                .collect();
            report.errors += state.invalid.len();
            let valid: Vec<&Mapping> = state
                .mappings
                .values()
                .filter(|m| !state.invalid.contains_key(&m.id) && concerned(&m.id))
                .collect();
            let rules = state.rules.clone();
            let empty = state.mappings.is_empty();
            let sync = self.sync.clone();
            let ns = namespace.clone();
            match tokio::task::spawn_blocking(move || sync.sync(&ns, &rules)).await {
                Ok(Ok(outcome)) => {
                    if outcome.added + outcome.removed > 0 {
                        info!(%namespace, added = outcome.added, removed = outcome.removed,
                            flows_deleted = outcome.flows_deleted, mode = ?outcome.mode, "namespace programmed");
                    }
                    report.active += valid.len();
                    record.extend(
                        valid
                            .iter()
                            .filter(|m| m.status != Status::Active || m.status_reason.is_some())
                            .map(|m| (m.id.clone(), Status::Active, None)),
                    );
                }
                Ok(Err(e)) => {
                    warn!(%namespace, error = %e, "programming failed");
                    report.failed_namespaces += 1;
                    report.errors += valid.len();
                    let reason = e.to_string();
                    record.extend(
                        valid
                            .iter()
                            .map(|m| (m.id.clone(), Status::Error, Some(reason.clone()))),
                    );
                }
                Err(join) => {
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
                    if let Some(m) = state.mappings.get_mut(id) {
                        m.status = status;
                        m.status_reason = reason.clone();
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
        pairs.iter().map(|(g, r)| (*g, r.to_string())).collect()
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
}
