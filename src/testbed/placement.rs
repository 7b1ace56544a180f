//! A network node whose router namespaces a test decides, for agents that program a fake
//! dataplane: several of them can share one store, each serving its own routers.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::model::RouterNamespace;
use crate::placement::{LocalNamespaces, Placement, PlacementError};

/// Serves the namespaces it was given, until told otherwise.
#[derive(Debug, Default)]
pub struct StaticPlacement {
    served: Mutex<BTreeSet<RouterNamespace>>,
}

impl StaticPlacement {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let placement = StaticPlacement::default();
        placement.set(names);
        placement
    }

    /// The node now holds exactly these namespaces.
    pub fn set<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        *self.served.lock().unwrap() = names.into_iter().map(RouterNamespace::named).collect();
    }
}

impl Placement for StaticPlacement {
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        Ok(self.served.lock().unwrap().clone())
    }
}

/// This machine's namespaces, as [`LocalNamespaces`] sees them, but only those named: an agent
/// of a test that serves its own routers beside other tests' namespaces, whose rules it must
/// neither program nor remove.
#[derive(Debug)]
pub struct OwnNamespaces {
    local: LocalNamespaces,
    names: BTreeSet<RouterNamespace>,
}

impl OwnNamespaces {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        OwnNamespaces {
            local: LocalNamespaces::default(),
            names: names.into_iter().map(RouterNamespace::named).collect(),
        }
    }
}

impl Placement for OwnNamespaces {
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        Ok(self
            .local
            .served()?
            .intersection(&self.names)
            .cloned()
            .collect())
    }

    fn watch_dir(&self) -> Option<&std::path::Path> {
        self.local.watch_dir()
    }
}
