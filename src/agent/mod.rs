//! The agent: keeps this node's router namespaces equal to the store.
//!
//! It reads every mapping, groups them by router namespace, and hands each namespace's rule set
//! to [`RouterSync`] (element diffs when it can, a verified rewrite when it must), then records
//! the outcome as each mapping's status. It runs when the API reports a change (all-in-one), when
//! the store's generation moves (an agent beside a separate server), and periodically with a
//! full rewrite and read-back of every namespace, which repairs whatever changed behind its back.
//! Namespaces that are not on this node belong to another network node's agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::dataplane::sync::RouterSync;
use crate::dataplane::{netns, RouterNamespace, RuleSet};
use crate::store::{ListFilter, Mapping, Status, Store, StoreError};

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
    changed: Arc<Notify>,
    resync_every: Duration,
    /// Namespaces programmed by an earlier pass, so that one whose last mapping went away is
    /// emptied.
    programmed: BTreeSet<RouterNamespace>,
}

impl Agent {
    pub fn new(
        store: Arc<Store>,
        sync: Arc<RouterSync>,
        changed: Arc<Notify>,
        resync_every: Duration,
    ) -> Self {
        Agent {
            store,
            sync,
            changed,
            resync_every,
            programmed: BTreeSet::new(),
        }
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut generation = None;
        let mut last_full = Instant::now();
        loop {
            let current = match self.store.generation().await {
                Ok(g) => Some(g),
                Err(e) => {
                    warn!(error = ?e, "cannot read the store's generation");
                    None
                }
            };
            let full = last_full.elapsed() >= self.resync_every;
            if full {
                self.sync.invalidate_all();
                last_full = Instant::now();
            }
            if full || current.is_none() || current != generation {
                match self.pass().await {
                    Ok(report) => {
                        generation = current;
                        debug!(?report, full, "agent pass");
                    }
                    Err(e) => warn!(error = ?e, "agent pass failed; retrying"),
                }
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// One reconciliation of every namespace on this node with the store.
    pub async fn pass(&mut self) -> Result<PassReport, StoreError> {
        let mappings = self.store.list(&ListFilter::default()).await?;
        let mut by_namespace: BTreeMap<RouterNamespace, Vec<Mapping>> = BTreeMap::new();
        for m in mappings {
            by_namespace.entry(m.namespace()).or_default().push(m);
        }
        for gone in &self.programmed {
            by_namespace.entry(gone.clone()).or_default();
        }
        let mut report = PassReport::default();
        let mut programmed = BTreeSet::new();
        for (namespace, mappings) in by_namespace {
            if !netns::exists(namespace.name()) {
                report.absent_namespaces += 1;
                continue;
            }
            report.namespaces += 1;
            let (rules, invalid) = rules_of(&mappings);
            for (m, reason) in &invalid {
                self.store
                    .set_status(std::slice::from_ref(&m.id), Status::Error, Some(reason))
                    .await?;
                report.errors += 1;
            }
            let valid: Vec<String> = mappings
                .iter()
                .filter(|m| !invalid.iter().any(|(i, _)| i.id == m.id))
                .map(|m| m.id.clone())
                .collect();
            let sync = self.sync.clone();
            let ns = namespace.clone();
            let outcome = tokio::task::spawn_blocking(move || sync.sync(&ns, &rules)).await;
            match outcome {
                Ok(Ok(outcome)) => {
                    programmed.insert(namespace.clone());
                    let pending: Vec<String> = mappings
                        .iter()
                        .filter(|m| {
                            valid.contains(&m.id)
                                && (m.status != Status::Active || m.status_reason.is_some())
                        })
                        .map(|m| m.id.clone())
                        .collect();
                    self.store
                        .set_status(&pending, Status::Active, None)
                        .await?;
                    report.active += valid.len();
                    if outcome.added + outcome.removed > 0 {
                        info!(%namespace, added = outcome.added, removed = outcome.removed,
                            flows_deleted = outcome.flows_deleted, mode = ?outcome.mode, "namespace programmed");
                    }
                }
                Ok(Err(e)) => {
                    warn!(%namespace, error = %e, "programming failed");
                    report.failed_namespaces += 1;
                    report.errors += valid.len();
                    self.store
                        .set_status(&valid, Status::Error, Some(&e.to_string()))
                        .await?;
                }
                Err(join) => {
                    warn!(%namespace, error = %join, "programming task failed");
                    report.failed_namespaces += 1;
                }
            }
        }
        self.programmed = programmed;
        Ok(report)
    }
}

/// The rule set of one namespace's mappings, and the mappings that cannot be programmed.
fn rules_of(mappings: &[Mapping]) -> (RuleSet, Vec<(&Mapping, String)>) {
    let mut invalid = vec![];
    let mut forwards = vec![];
    for m in mappings {
        let f = m.forward();
        match f.validate() {
            Ok(()) => forwards.push(f),
            Err(e) => invalid.push((m, e.to_string())),
        }
    }
    match RuleSet::from_forwards(&forwards) {
        Ok(rules) => (rules, invalid),
        // The store keeps external ports unique per router, so this means two gateways
        // disagree; program nothing of this namespace rather than something arbitrary.
        Err(e) => {
            let reason = e.to_string();
            (
                RuleSet::default(),
                mappings.iter().map(|m| (m, reason.clone())).collect(),
            )
        }
    }
}
