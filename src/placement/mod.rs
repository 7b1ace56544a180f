//! Placement: which routers this network node serves, and in which namespace.
//!
//! The agent asks this seam, once per pass, which router namespaces the node holds, and for
//! each mapping which namespace would carry its router's gateway. [`LocalNamespaces`] answers
//! from the node itself: the named namespaces in `/run/netns` (what `ip netns` reads), one
//! directory read per pass and no process. Other answers fit behind the same trait: Neutron's
//! L3-agent scheduling (`GET /v2.0/agents/{id}/l3-routers`) for nodes that hold namespaces of
//! routers they do not serve, or the active replica of an HA router (whose `qrouter-`
//! namespace exists on every replica, while only the active one holds the gateway address).

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use crate::dataplane::netns;
use crate::model::{NamespaceKind, RouterNamespace};

/// Why the placement could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot list the network namespaces in {}", dir.display())]
    List {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The routers a node serves.
pub trait Placement: Send + Sync {
    /// The namespace that carries the gateway of `router_id` on a node that serves it:
    /// `snat-<id>` for a distributed (DVR) router, `qrouter-<id>` otherwise.
    fn namespace(&self, router_id: &str, distributed: bool) -> RouterNamespace {
        RouterNamespace::for_router(router_id, NamespaceKind::of_router(distributed))
    }

    /// The router namespaces this node serves now. Asked once per pass: a mapping whose
    /// namespace is not among them is another node's.
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError>;
}

/// The router namespaces present on this node: `qrouter-*` and `snat-*` in a namespace
/// directory (`/run/netns` unless told otherwise).
#[derive(Debug, Clone)]
pub struct LocalNamespaces {
    dir: PathBuf,
}

impl Default for LocalNamespaces {
    fn default() -> Self {
        LocalNamespaces {
            dir: PathBuf::from(netns::NETNS_RUN_DIR),
        }
    }
}

impl LocalNamespaces {
    /// Namespaces mounted under `dir` instead of `/run/netns`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        LocalNamespaces { dir: dir.into() }
    }
}

impl Placement for LocalNamespaces {
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // No namespace was ever made on this node: it serves no router.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(source) => {
                return Err(PlacementError::List {
                    dir: self.dir.clone(),
                    source,
                })
            }
        };
        let mut served = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| PlacementError::List {
                dir: self.dir.clone(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str() {
                if RouterNamespace::router_of(name).is_some() {
                    served.insert(RouterNamespace::named(name));
                }
            }
        }
        Ok(served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_the_router_namespaces_it_holds_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("praas-placement-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["qrouter-r1", "snat-r2", "fip-ext", "qdhcp-n1", "qrouter-"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let placement = LocalNamespaces::in_dir(&dir);
        let served: Vec<String> = placement
            .served()
            .unwrap()
            .iter()
            .map(|ns| ns.name().to_string())
            .collect();
        assert_eq!(served, ["qrouter-r1", "snat-r2"]);
        assert_eq!(placement.namespace("r2", true).name(), "snat-r2");
        assert_eq!(placement.namespace("r1", false).name(), "qrouter-r1");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(LocalNamespaces::in_dir(&dir).served().unwrap().is_empty());
    }
}
