//! Keeps router namespaces equal to their desired rule sets.
//!
//! [`RouterSync`] remembers what each namespace was last programmed with (as kube-proxy's
//! nftables mode does, so that it never has to list the kernel's tables to decide what to do):
//! a change is sent as an element diff; a namespace it knows nothing about, or one whose last
//! transaction failed, gets a full rewrite of our table, which is then read back and compared.
//! Flows of removed or re-pointed forwards are deleted from conntrack once the rules are gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::{
    Backend, Changes, DataplaneError, ExternalKey, Fingerprint, MasqueradeKey, RouterNamespace,
    RuleSet, Target, Usage,
};

/// Deletes conntrack entries of forwards that no longer exist.
pub trait FlowCleaner: Send + Sync {
    /// Deletes the flows that were translated by `stale` forwards; returns how many.
    fn delete_flows(
        &self,
        namespace: &RouterNamespace,
        stale: &[(ExternalKey, Target)],
    ) -> Result<usize, DataplaneError>;
}

/// How a sync reached the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Nothing differed from what was programmed.
    Unchanged,
    /// Element changes on top of the programmed table.
    Incremental,
    /// Our table rewritten whole, then read back and verified.
    Full,
}

/// Result of one sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    pub mode: SyncMode,
    /// Forward elements added and removed (a re-pointed forward counts in both).
    pub added: usize,
    pub removed: usize,
    /// Conntrack entries deleted.
    pub flows_deleted: usize,
}

/// What [`RouterSync::check`] found in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing was programmed here, or the backend cannot tell cheaply.
    Unknown,
    /// Nothing was committed in the namespace since we last looked.
    Unchanged,
    /// Something was committed (Neutron's rules, another table), and ours is intact.
    Intact,
    /// Ours is not what we programmed any more: the namespace is forgotten, so that the next
    /// sync rewrites it.
    Drifted(Drift),
}

/// What was found instead of what was programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The namespace was deleted and created again under the same name.
    pub rebuilt: bool,
    /// What differs, e.g. `our table is missing`.
    pub found: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rebuilt {
            write!(f, "the namespace was built again; {}", self.found)
        } else {
            f.write_str(&self.found)
        }
    }
}

/// What the kernel holds in one namespace as far as we know.
#[derive(Debug, Default)]
struct Known {
    /// What we programmed, `None` when unknown.
    rules: Option<RuleSet>,
    /// The namespace's fingerprint when `rules` was last known to be there.
    fingerprint: Option<Fingerprint>,
}

/// Programs namespaces through a backend, incrementally when it can.
pub struct RouterSync {
    backend: Arc<dyn Backend>,
    cleaner: Arc<dyn FlowCleaner>,
    /// Per namespace: what the kernel holds as far as we know. The inner lock serializes syncs
    /// of one namespace; different namespaces proceed in parallel.
    committed: Mutex<HashMap<RouterNamespace, Arc<Mutex<Known>>>>,
}

impl RouterSync {
    pub fn new(backend: Arc<dyn Backend>, cleaner: Arc<dyn FlowCleaner>) -> Self {
        RouterSync {
            backend,
            cleaner,
            committed: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    fn slot(&self, namespace: &RouterNamespace) -> Arc<Mutex<Known>> {
        self.committed
            .lock()
            .unwrap()
            .entry(namespace.clone())
            .or_default()
            .clone()
    }

    /// Forgets every namespace: the next sync of each is a full one (periodic resync).
    pub fn invalidate_all(&self) {
        for slot in self.committed.lock().unwrap().values() {
            *slot.lock().unwrap() = Known::default();
        }
    }

    /// Forgets a namespace that left this node, and closes its netfilter socket (which would
    /// otherwise keep the deleted namespace alive in the kernel).
    pub fn forget(&self, namespace: &RouterNamespace) {
        self.committed.lock().unwrap().remove(namespace);
        super::netlink::sockets::forget(namespace);
    }

    /// The namespace's fingerprint after a commit of ours; `None` (and so a read-back at the
    /// next check) when it cannot be read.
    fn fingerprint_now(&self, namespace: &RouterNamespace) -> Option<Fingerprint> {
        self.backend.fingerprint(namespace).unwrap_or_else(|e| {
            debug!(%namespace, error = %crate::util::Chain(&e), "cannot read the namespace's fingerprint");
            None
        })
    }

    /// Whether what we programmed in `namespace` is still there, cheaply: the backend's
    /// fingerprint is compared with the one taken after our last commit, and only a namespace
    /// where something was committed since is read back. A drifted namespace is forgotten, so
    /// that the next [`RouterSync::sync`] rewrites it whole.
    pub fn check(&self, namespace: &RouterNamespace) -> Result<Check, DataplaneError> {
        let slot = self.slot(namespace);
        let mut known = slot.lock().unwrap();
        let Some(expected) = known.rules.as_ref() else {
            return Ok(Check::Unknown);
        };
        // Taken before the read-back: a change after it moves the fingerprint again.
        let Some(now) = self.backend.fingerprint(namespace)? else {
            return Ok(Check::Unknown);
        };
        if known.fingerprint == Some(now) {
            return Ok(Check::Unchanged);
        }
        let rebuilt = known
            .fingerprint
            .is_some_and(|before| before.namespace != now.namespace);
        let found = match self.verify_against(namespace, expected) {
            Ok(()) => {
                known.fingerprint = Some(now);
                return Ok(Check::Intact);
            }
            Err(DataplaneError::Drift { detail, .. }) => detail,
            Err(
                e @ (DataplaneError::DriftRemoval { .. } | DataplaneError::ReadBackParse { .. }),
            ) => crate::util::Chain(&e).to_string(),
            Err(e) => return Err(e),
        };
        *known = Known::default();
        Ok(Check::Drifted(Drift { rebuilt, found }))
    }

    /// Brings `namespace` to `desired`.
    pub fn sync(
        &self,
        namespace: &RouterNamespace,
        desired: &RuleSet,
    ) -> Result<SyncOutcome, DataplaneError> {
        let slot = self.slot(namespace);
        let mut known = slot.lock().unwrap();
        if let Some(current) = known.rules.as_mut() {
            let changes = current.diff(desired);
            if changes.is_empty() {
                return Ok(SyncOutcome {
                    mode: SyncMode::Unchanged,
                    added: 0,
                    removed: 0,
                    flows_deleted: 0,
                });
            }
            match self.backend.update(namespace, &changes) {
                Ok(()) => {
                    current.apply(&changes);
                    known.fingerprint = self.fingerprint_now(namespace);
                    let flows_deleted = self.clean(namespace, &changes);
                    return Ok(SyncOutcome {
                        mode: SyncMode::Incremental,
                        added: changes.add_forwards.len(),
                        removed: changes.remove_forwards.len(),
                        flows_deleted,
                    });
                }
                Err(e) => {
                    // Whatever the kernel holds now, a full rewrite fixes it.
                    warn!(%namespace, error = %crate::util::Chain(&e), "incremental update failed; rewriting the table");
                    *known = Known::default();
                }
            }
        }
        let (outcome, fingerprint) = self.full_sync_locked(namespace, desired)?;
        *known = Known {
            rules: Some(desired.clone()),
            fingerprint,
        };
        Ok(outcome)
    }

    /// Applies `changes` to `namespace` when what it holds is known, without looking at the
    /// whole rule set: the caller's cost stays proportional to the change. `changes` must be
    /// the difference from what the last successful `sync`/`apply_changes` programmed here.
    /// `Ok(None)` when nothing is known (never synced, or forgotten after a failure or a drift)
    /// or the update failed: then the caller must `sync` the whole desired set.
    pub fn apply_changes(
        &self,
        namespace: &RouterNamespace,
        changes: &Changes,
    ) -> Result<Option<SyncOutcome>, DataplaneError> {
        let slot = self.slot(namespace);
        let mut known = slot.lock().unwrap();
        let Some(current) = known.rules.as_mut() else {
            return Ok(None);
        };
        if changes.is_empty() {
            return Ok(Some(SyncOutcome {
                mode: SyncMode::Unchanged,
                added: 0,
                removed: 0,
                flows_deleted: 0,
            }));
        }
        match self.backend.update(namespace, changes) {
            Ok(()) => {
                current.apply(changes);
                known.fingerprint = self.fingerprint_now(namespace);
                let flows_deleted = self.clean(namespace, changes);
                Ok(Some(SyncOutcome {
                    mode: SyncMode::Incremental,
                    added: changes.add_forwards.len(),
                    removed: changes.remove_forwards.len(),
                    flows_deleted,
                }))
            }
            Err(e) => {
                warn!(%namespace, error = %crate::util::Chain(&e), "incremental update failed; the namespace will be rewritten");
                *known = Known::default();
                Ok(None)
            }
        }
    }

    /// Rewrites our table in `namespace`, verifies it, and cleans the flows of forwards that
    /// were in the kernel before but are not desired. Returns the namespace's fingerprint as
    /// verified.
    fn full_sync_locked(
        &self,
        namespace: &RouterNamespace,
        desired: &RuleSet,
    ) -> Result<(SyncOutcome, Option<Fingerprint>), DataplaneError> {
        // What was there decides which flows to clean; unreadable counts as nothing.
        let before = match self.backend.read_back(namespace) {
            Ok(rules) => rules.unwrap_or_default(),
            Err(e) => {
                debug!(%namespace, error = %crate::util::Chain(&e), "could not read back before a full sync");
                RuleSet::default()
            }
        };
        self.backend.full_sync(namespace, desired)?;
        // Before the read-back, so that whatever is committed after it moves the fingerprint.
        let fingerprint = self.fingerprint_now(namespace);
        self.verify_against(namespace, desired)?;
        let changes = before.diff(desired);
        let flows_deleted = self.clean(namespace, &changes);
        info!(
            %namespace,
            backend = self.backend.name(),
            forwards = desired.forwards.len(),
            flows_deleted,
            "namespace fully synced"
        );
        Ok((
            SyncOutcome {
                mode: SyncMode::Full,
                added: changes.add_forwards.len(),
                removed: changes.remove_forwards.len(),
                flows_deleted,
            },
            fingerprint,
        ))
    }

    fn verify_against(
        &self,
        namespace: &RouterNamespace,
        expected: &RuleSet,
    ) -> Result<(), DataplaneError> {
        match self.backend.read_back_expecting(namespace, expected)? {
            None => Err(DataplaneError::Drift {
                namespace: namespace.to_string(),
                detail: "our table is missing".into(),
            }),
            Some(actual) if actual != *expected => {
                let d = actual.diff(expected);
                let mut detail = format!(
                    "{} forwards missing or wrong, {} unexpected",
                    d.add_forwards.len(),
                    d.remove_forwards.len()
                );
                if d.add_forwards.is_empty() && d.remove_forwards.is_empty() {
                    let (missing, unexpected) = (
                        d.add_restricted.len()
                            + d.add_allowed.len()
                            + d.add_masqueraded.len()
                            + d.add_counted.len(),
                        d.remove_restricted.len()
                            + d.remove_allowed.len()
                            + d.remove_masqueraded.len()
                            + d.remove_counted.len(),
                    );
                    detail = format!(
                        "forwards intact; {missing} restriction, masquerade or usage elements missing, {unexpected} unexpected"
                    );
                }
                Err(DataplaneError::Drift {
                    namespace: namespace.to_string(),
                    detail,
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// Reads back `namespace` and compares it with what was programmed. On a difference the
    /// namespace is forgotten, so the next sync repairs it with a full rewrite.
    pub fn verify(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        let slot = self.slot(namespace);
        let mut known = slot.lock().unwrap();
        let Some(expected) = known.rules.as_ref() else {
            return Ok(()); // nothing programmed yet: the next sync is a full one anyway
        };
        let result = self.verify_against(namespace, expected);
        if result.is_err() {
            *known = Known::default();
        }
        result
    }

    /// What the kernel counted per mapping in `namespace` (see [`Backend::usage`]): `None`
    /// when the backend cannot count. Reads the kernel every time, without taking the
    /// namespace's sync lock: counts do not depend on what was programmed, and a sync running
    /// meanwhile only decides which elements the dump shows.
    pub fn usage(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<BTreeMap<MasqueradeKey, Usage>>, DataplaneError> {
        self.backend.usage(namespace)
    }

    /// Removes everything we programmed in `namespace` and the flows it translated.
    pub fn remove(&self, namespace: &RouterNamespace) -> Result<usize, DataplaneError> {
        let slot = self.slot(namespace);
        let mut known = slot.lock().unwrap();
        let before = match known.rules.take() {
            Some(rules) => rules,
            None => self
                .backend
                .read_back(namespace)
                .ok()
                .flatten()
                .unwrap_or_default(),
        };
        self.backend.remove(namespace)?;
        let flows = self.clean(namespace, &before.diff(&RuleSet::default()));
        self.committed.lock().unwrap().remove(namespace);
        Ok(flows)
    }

    /// Deletes flows of removed forwards. A failure here does not undo the rule change: it is
    /// logged, and the flows age out on their own.
    fn clean(&self, namespace: &RouterNamespace, changes: &Changes) -> usize {
        let stale: Vec<(ExternalKey, Target)> = changes.stale_flows().copied().collect();
        if stale.is_empty() {
            return 0;
        }
        match self.cleaner.delete_flows(namespace, &stale) {
            Ok(n) => n,
            Err(e) => {
                warn!(%namespace, error = %crate::util::Chain(&e), "conntrack cleanup failed");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Forward, PortRange, Protocol};
    use crate::testbed::fake_dataplane::{Call, FakeBackend};

    struct RecordingCleaner(Mutex<Vec<(ExternalKey, Target)>>);

    impl FlowCleaner for RecordingCleaner {
        fn delete_flows(
            &self,
            _: &RouterNamespace,
            stale: &[(ExternalKey, Target)],
        ) -> Result<usize, DataplaneError> {
            self.0.lock().unwrap().extend_from_slice(stale);
            Ok(stale.len())
        }
    }

    fn rules(ports: &[(u16, u16)]) -> RuleSet {
        let forwards: Vec<Forward> = ports
            .iter()
            .map(|(ext, int)| Forward {
                id: format!("m{ext}"),
                protocol: Protocol::Tcp,
                external_ip: "203.0.113.10".parse().unwrap(),
                external_ports: PortRange::single(*ext).unwrap(),
                internal_ip: "10.0.0.5".parse().unwrap(),
                internal_ports: PortRange::single(*int).unwrap(),
                allowed_cidrs: vec![],
                masquerade: false,
            })
            .collect();
        RuleSet::from_forwards(&forwards).unwrap()
    }

    fn setup() -> (Arc<FakeBackend>, Arc<RecordingCleaner>, RouterSync) {
        let fake = Arc::new(FakeBackend::new());
        let cleaner = Arc::new(RecordingCleaner(Mutex::new(vec![])));
        let sync = RouterSync::new(fake.clone(), cleaner.clone());
        (fake, cleaner, sync)
    }

    #[test]
    fn first_sync_is_full_and_verified_then_changes_are_incremental() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        assert_eq!(
            sync.sync(&ns, &rules(&[(4000, 22)])).unwrap().mode,
            SyncMode::Full
        );
        let out = sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)])).unwrap();
        assert_eq!(
            (out.mode, out.added, out.removed),
            (SyncMode::Incremental, 1, 0)
        );
        assert_eq!(
            sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)]))
                .unwrap()
                .mode,
            SyncMode::Unchanged
        );
        let calls = fake.calls();
        assert!(
            matches!(calls[1], Call::FullSync { forwards: 1, .. }),
            "{calls:?}"
        );
        assert!(
            matches!(calls[2], Call::ReadBack { .. }),
            "full sync must be verified: {calls:?}"
        );
        assert!(
            matches!(calls.last(), Some(Call::Update { .. })),
            "{calls:?}"
        );
    }

    #[test]
    fn removed_and_repointed_forwards_have_their_flows_cleaned() {
        let (_, cleaner, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)])).unwrap();
        let out = sync.sync(&ns, &rules(&[(4000, 2222)])).unwrap();
        assert_eq!(out.flows_deleted, 2);
        let ports: Vec<u16> = cleaner
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.port)
            .collect();
        assert_eq!(ports, vec![4000, 4001]);
    }

    #[test]
    fn a_failed_update_falls_back_to_a_full_rewrite() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        sync.sync(&ns, &rules(&[(4000, 22)])).unwrap();
        fake.fail_next_writes(1);
        let out = sync.sync(&ns, &rules(&[(4001, 22)])).unwrap();
        assert_eq!(out.mode, SyncMode::Full);
        assert_eq!(fake.table(&ns), Some(rules(&[(4001, 22)])));
    }

    #[test]
    fn a_table_deleted_by_someone_else_is_detected_and_repaired() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        sync.sync(&ns, &rules(&[(4000, 22)])).unwrap();
        fake.delete_table_behind_our_back(&ns);
        let err = sync.verify(&ns).unwrap_err();
        assert!(matches!(err, DataplaneError::Drift { .. }), "{err}");
        assert_eq!(
            sync.sync(&ns, &rules(&[(4000, 22)])).unwrap().mode,
            SyncMode::Full
        );
        sync.verify(&ns).unwrap();
    }

    #[test]
    fn a_check_reads_back_only_a_namespace_whose_fingerprint_moved() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        assert_eq!(sync.check(&ns).unwrap(), Check::Unknown);
        sync.sync(&ns, &rules(&[(4000, 22)])).unwrap();
        sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)])).unwrap();
        let reads = |fake: &FakeBackend| {
            fake.calls()
                .iter()
                .filter(|c| matches!(c, Call::ReadBack { .. }))
                .count()
        };
        let before = reads(&fake);
        // Our own commits moved the fingerprint; it was taken after each of them.
        assert_eq!(sync.check(&ns).unwrap(), Check::Unchanged);
        assert_eq!(
            reads(&fake),
            before,
            "an unchanged namespace is not read back"
        );
        // Neutron commits to its own table: ours is read back once and found intact.
        fake.commit_elsewhere(&ns);
        assert_eq!(sync.check(&ns).unwrap(), Check::Intact);
        assert_eq!(sync.check(&ns).unwrap(), Check::Unchanged);
        assert_eq!(reads(&fake), before + 1);
        // Someone deletes our table: found, and the namespace forgotten so that it is rewritten.
        fake.delete_table_behind_our_back(&ns);
        assert_eq!(
            sync.check(&ns).unwrap(),
            Check::Drifted(Drift {
                rebuilt: false,
                found: "our table is missing".into()
            })
        );
        assert_eq!(sync.check(&ns).unwrap(), Check::Unknown);
        let desired = rules(&[(4000, 22), (4001, 80)]);
        assert_eq!(sync.sync(&ns, &desired).unwrap().mode, SyncMode::Full);
        assert_eq!(sync.check(&ns).unwrap(), Check::Unchanged);
        // The namespace is deleted and built again under the same name.
        fake.rebuild_namespace(&ns);
        let Check::Drifted(drift) = sync.check(&ns).unwrap() else {
            panic!("a rebuilt namespace is drift");
        };
        assert!(drift.rebuilt, "{drift}");
        assert_eq!(
            drift.to_string(),
            "the namespace was built again; our table is missing"
        );
    }

    #[test]
    fn a_failed_full_sync_is_an_error_and_is_retried_whole() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        fake.fail_next_writes(1);
        assert!(sync.sync(&ns, &rules(&[(4000, 22)])).is_err());
        assert_eq!(
            sync.sync(&ns, &rules(&[(4000, 22)])).unwrap().mode,
            SyncMode::Full
        );
    }

    #[test]
    fn changes_apply_only_on_top_of_a_known_state() {
        let (fake, cleaner, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        let delta = rules(&[]).diff(&rules(&[(4000, 22)]));
        // Nothing programmed yet: the caller is told to sync everything.
        assert!(sync.apply_changes(&ns, &delta).unwrap().is_none());
        sync.sync(&ns, &rules(&[(4000, 22)])).unwrap();
        let delta = rules(&[(4000, 22)]).diff(&rules(&[(4001, 22)]));
        let out = sync.apply_changes(&ns, &delta).unwrap().unwrap();
        assert_eq!(
            (out.mode, out.added, out.removed, out.flows_deleted),
            (SyncMode::Incremental, 1, 1, 1)
        );
        assert_eq!(fake.table(&ns), Some(rules(&[(4001, 22)])));
        assert_eq!(cleaner.0.lock().unwrap()[0].0.port, 4000);
        // What was applied is now the known state: a sync to the same set changes nothing.
        assert_eq!(
            sync.sync(&ns, &rules(&[(4001, 22)])).unwrap().mode,
            SyncMode::Unchanged
        );
        // A failed update forgets the state, so the next call asks for everything.
        fake.fail_next_writes(1);
        let delta = rules(&[(4001, 22)]).diff(&rules(&[(4002, 22)]));
        assert!(sync.apply_changes(&ns, &delta).unwrap().is_none());
        assert!(sync.apply_changes(&ns, &delta).unwrap().is_none());
        assert_eq!(
            sync.sync(&ns, &rules(&[(4002, 22)])).unwrap().mode,
            SyncMode::Full
        );
    }

    #[test]
    fn usage_is_read_per_mapping_and_restarts_when_an_element_is_added_again() {
        let (fake, _, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        let socket = |port: u16| MasqueradeKey {
            external_ip: "203.0.113.10".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            protocol: crate::dataplane::Protocol::Tcp,
            internal_port: port,
        };
        let used = |packets, bytes| Usage { packets, bytes };
        assert_eq!(sync.usage(&ns).unwrap(), Some(BTreeMap::new()));
        sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)])).unwrap();
        assert!(fake.count_traffic(&ns, &socket(22), 3, 300));
        assert!(
            !fake.count_traffic(&ns, &socket(443), 1, 1),
            "nothing counts for a socket without an element"
        );
        assert_eq!(
            sync.usage(&ns).unwrap(),
            Some(BTreeMap::from([
                (socket(22), used(3, 300)),
                (socket(80), used(0, 0))
            ]))
        );
        // A resync keeps the counters of the elements that stay.
        sync.invalidate_all();
        assert_eq!(
            sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)]))
                .unwrap()
                .mode,
            SyncMode::Full
        );
        assert_eq!(sync.usage(&ns).unwrap().unwrap()[&socket(22)], used(3, 300));
        // Removed, then added again: counts from 0.
        sync.sync(&ns, &rules(&[(4001, 80)])).unwrap();
        assert!(!sync.usage(&ns).unwrap().unwrap().contains_key(&socket(22)));
        sync.sync(&ns, &rules(&[(4000, 22), (4001, 80)])).unwrap();
        assert_eq!(sync.usage(&ns).unwrap().unwrap()[&socket(22)], used(0, 0));
    }

    #[test]
    fn remove_deletes_the_table_and_its_flows() {
        let (fake, cleaner, sync) = setup();
        let ns = RouterNamespace::named("qrouter-a");
        sync.sync(&ns, &rules(&[(4000, 22)])).unwrap();
        assert_eq!(sync.remove(&ns).unwrap(), 1);
        assert_eq!(fake.table(&ns), None);
        assert_eq!(cleaner.0.lock().unwrap().len(), 1);
    }
}
