//! A backend that keeps rule sets in memory and records every call, for tests of the layers
//! above the kernel (sync, agent, API). It behaves like the kernel where that matters: an
//! update to a namespace without our table fails, failures can be injected, and usage counters
//! (set by the test) live as long as their element: removed and added again, an element counts
//! from 0.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::dataplane::sync::FlowCleaner;
use crate::dataplane::{
    Backend, Changes, DataplaneError, ExternalKey, Fingerprint, MasqueradeKey, RouterNamespace,
    RuleSet, Target, Usage,
};

/// A flow cleaner that deletes nothing and reports every stale flow as deleted, for tests
/// without conntrack.
pub struct NoFlows;

impl FlowCleaner for NoFlows {
    fn delete_flows(
        &self,
        _: &RouterNamespace,
        stale: &[(ExternalKey, Target)],
    ) -> Result<usize, DataplaneError> {
        Ok(stale.len())
    }
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    FullSync {
        namespace: String,
        forwards: usize,
    },
    /// The changes are boxed: they are large next to the other calls.
    Update {
        namespace: String,
        changes: Box<Changes>,
    },
    ReadBack {
        namespace: String,
    },
    Usage {
        namespace: String,
    },
    Remove {
        namespace: String,
    },
}

#[derive(Default)]
struct State {
    tables: BTreeMap<RouterNamespace, RuleSet>,
    calls: Vec<Call>,
    fail_next: usize,
    /// Per namespace, a counter of everything committed there (the fake's generation), and
    /// how often the namespace was built again.
    generations: BTreeMap<RouterNamespace, (u64, u64)>,
    /// Per namespace, the counters of the usage elements that have counted anything.
    usage: BTreeMap<RouterNamespace, BTreeMap<MasqueradeKey, Usage>>,
}

impl State {
    /// Drops the counters of usage elements `namespace` no longer holds, as the kernel frees an
    /// element's counter with the element.
    fn forget_removed_counters(&mut self, namespace: &RouterNamespace) {
        let held = self.tables.get(namespace).map(|t| &t.counted);
        if let Some(counters) = self.usage.get_mut(namespace) {
            counters.retain(|key, _| held.is_some_and(|h| h.contains(key)));
        }
    }
}

/// In-memory [`Backend`].
#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<State>,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// What `namespace` holds now.
    pub fn table(&self, namespace: &RouterNamespace) -> Option<RuleSet> {
        self.state.lock().unwrap().tables.get(namespace).cloned()
    }

    /// Makes the next `n` writes fail as a kernel rejection would.
    pub fn fail_next_writes(&self, n: usize) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// Simulates traffic through the mapping whose usage element is `key`: its counter moves
    /// by `packets` and `bytes`. False, counting nothing, when `namespace` holds no such element
    /// (the kernel counts only what it holds).
    pub fn count_traffic(
        &self,
        namespace: &RouterNamespace,
        key: &MasqueradeKey,
        packets: u64,
        bytes: u64,
    ) -> bool {
        let mut state = self.state.lock().unwrap();
        if !state
            .tables
            .get(namespace)
            .is_some_and(|t| t.counted.contains(key))
        {
            return false;
        }
        let counter = state
            .usage
            .entry(namespace.clone())
            .or_default()
            .entry(*key)
            .or_default();
        counter.packets += packets;
        counter.bytes += bytes;
        true
    }

    /// Simulates someone else deleting our table.
    pub fn delete_table_behind_our_back(&self, namespace: &RouterNamespace) {
        let mut state = self.state.lock().unwrap();
        state.tables.remove(namespace);
        state.forget_removed_counters(namespace);
        state.generations.entry(namespace.clone()).or_default().0 += 1;
    }

    /// Simulates someone else committing to another table of the namespace (Neutron).
    pub fn commit_elsewhere(&self, namespace: &RouterNamespace) {
        let mut state = self.state.lock().unwrap();
        state.generations.entry(namespace.clone()).or_default().0 += 1;
    }

    /// Simulates the namespace being deleted and created again: empty, with a new identity.
    pub fn rebuild_namespace(&self, namespace: &RouterNamespace) {
        let mut state = self.state.lock().unwrap();
        state.tables.remove(namespace);
        state.forget_removed_counters(namespace);
        let generation = state.generations.entry(namespace.clone()).or_default();
        *generation = (0, generation.1 + 1);
    }

    fn write(
        &self,
        namespace: &RouterNamespace,
        call: Call,
        f: impl FnOnce(&mut BTreeMap<RouterNamespace, RuleSet>) -> Result<(), String>,
    ) -> Result<(), DataplaneError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(call);
        let rejected = |message: String| DataplaneError::Rejected {
            backend: "fake",
            namespace: namespace.to_string(),
            message,
        };
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(rejected("injected failure".into()));
        }
        f(&mut state.tables).map_err(rejected)?;
        state.forget_removed_counters(namespace);
        state.generations.entry(namespace.clone()).or_default().0 += 1;
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn full_sync(
        &self,
        namespace: &RouterNamespace,
        rules: &RuleSet,
    ) -> Result<(), DataplaneError> {
        let call = Call::FullSync {
            namespace: namespace.to_string(),
            forwards: rules.forwards.len(),
        };
        self.write(namespace, call, |tables| {
            tables.insert(namespace.clone(), rules.clone());
            Ok(())
        })
    }

    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError> {
        let call = Call::Update {
            namespace: namespace.to_string(),
            changes: Box::new(changes.clone()),
        };
        self.write(namespace, call, |tables| match tables.get_mut(namespace) {
            Some(table) => {
                table.apply(changes);
                Ok(())
            }
            None => Err("No such file or directory: table praas".into()),
        })
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(Call::ReadBack {
            namespace: namespace.to_string(),
        });
        Ok(state.tables.get(namespace).cloned())
    }

    /// Every usage element the namespace holds, with what [`FakeBackend::count_traffic`]
    /// counted since it was added (0 if nothing).
    fn usage(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<BTreeMap<MasqueradeKey, Usage>>, DataplaneError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(Call::Usage {
            namespace: namespace.to_string(),
        });
        let counters = state.usage.get(namespace);
        Ok(Some(
            state
                .tables
                .get(namespace)
                .map(|t| {
                    t.counted
                        .iter()
                        .map(|k| {
                            let usage = counters.and_then(|c| c.get(k)).copied();
                            (*k, usage.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ))
    }

    fn fingerprint(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<Fingerprint>, DataplaneError> {
        let state = self.state.lock().unwrap();
        let (generation, builds) = state
            .generations
            .get(namespace)
            .copied()
            .unwrap_or_default();
        Ok(Some(Fingerprint {
            namespace: builds,
            state: generation,
        }))
    }

    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        let call = Call::Remove {
            namespace: namespace.to_string(),
        };
        self.write(namespace, call, |tables| {
            tables.remove(namespace);
            Ok(())
        })
    }
}
