//! A backend that keeps rule sets in memory and records every call, for tests of the layers
//! above the kernel (sync, agent, API). It behaves like the kernel where that matters: an
//! update to a namespace without our table fails, and failures can be injected.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::dataplane::sync::FlowCleaner;
use crate::dataplane::{
    Backend, Changes, DataplaneError, ExternalKey, Fingerprint, RouterNamespace, RuleSet, Target,
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
    FullSync { namespace: String, forwards: usize },
    Update { namespace: String, changes: Changes },
    ReadBack { namespace: String },
    Remove { namespace: String },
}

#[derive(Default)]
struct State {
    tables: BTreeMap<RouterNamespace, RuleSet>,
    calls: Vec<Call>,
    fail_next: usize,
    /// Per namespace, a counter of everything committed there (the fake's generation), and
    /// how often the namespace was built again.
    generations: BTreeMap<RouterNamespace, (u64, u64)>,
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

    /// Simulates someone else deleting our table.
    pub fn delete_table_behind_our_back(&self, namespace: &RouterNamespace) {
        let mut state = self.state.lock().unwrap();
        state.tables.remove(namespace);
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
            changes: changes.clone(),
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
