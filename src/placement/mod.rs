//! Placement: which routers this network node serves, and in which namespace.
//!
//! The agent asks this seam, once per pass, which router namespaces the node holds, and for
//! each mapping which namespace would carry its router's gateway. [`LocalNamespaces`] answers
//! from the node itself: the named namespaces in `/run/netns` (what `ip netns` reads), one
//! directory read per pass and no process. Other answers fit behind the same trait: Neutron's
//! L3-agent scheduling (`GET /v2.0/agents/{id}/l3-routers`) for nodes that hold namespaces of
//! routers they do not serve, or the active replica of an HA router (whose `qrouter-`
//! namespace exists on every replica, while only the active one holds the gateway address).

pub mod ovn;

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    #[error("cannot read the routers of OVN's northbound database")]
    Ovn(#[source] Box<crate::dataplane::ovn::NorthboundError>),
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

    /// A directory whose changes mean that [`Placement::served`] may answer differently, for
    /// the agent to watch; `None` when only asking again tells.
    fn watch_dir(&self) -> Option<&Path> {
        None
    }
}

/// Whether `name` is a namespace the L3 agent makes for a router (`qrouter-<id>`, `snat-<id>`).
fn is_router_namespace(name: &str) -> bool {
    matches!(
        RouterNamespace::router_of(name),
        Some((_, NamespaceKind::Qrouter | NamespaceKind::Snat))
    )
}

/// The names among `names` that are router namespaces (`qrouter-<id>`, `snat-<id>`).
fn router_namespaces<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<RouterNamespace> {
    names
        .into_iter()
        .filter(|name| is_router_namespace(name))
        .map(RouterNamespace::named)
        .collect()
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
    /// The router namespaces mounted in the directory. `ip netns add` creates the file first
    /// and mounts the namespace on it after: a file that is not a mount yet (it is on the
    /// directory's own file system) is not a namespace to enter yet.
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        let list_error = |source| PlacementError::List {
            dir: self.dir.clone(),
            source,
        };
        let dir_device = match std::fs::metadata(&self.dir) {
            Ok(meta) => meta.dev(),
            // No namespace was ever made on this node: it serves no router.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(source) => return Err(list_error(source)),
        };
        let mut mounted = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_router_namespace(&name) {
                continue;
            }
            // Follows the mount (unlike the entry's own metadata); a file deleted meanwhile is
            // simply not served.
            match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.dev() != dir_device => mounted.push(name),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(list_error(source)),
            }
        }
        Ok(router_namespaces(mounted.iter().map(String::as_str)))
    }

    fn watch_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_router_namespaces_and_nothing_else() {
        let served: Vec<String> = router_namespaces([
            "qrouter-r1",
            "snat-r2",
            "fip-ext",
            "qdhcp-n1",
            "qrouter-",
            "neutron-r3",
        ])
        .iter()
        .map(|ns| ns.name().to_string())
        .collect();
        assert_eq!(served, ["qrouter-r1", "snat-r2"]);
        let placement = LocalNamespaces::default();
        assert_eq!(placement.namespace("r2", true).name(), "snat-r2");
        assert_eq!(placement.namespace("r1", false).name(), "qrouter-r1");
    }

    #[test]
    fn a_namespace_file_not_mounted_yet_is_not_served() {
        // What `ip netns add` leaves between creating the file and mounting the namespace.
        let dir = std::env::temp_dir().join(format!("praas-placement-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("qrouter-r1"), "").unwrap();
        let placement = LocalNamespaces::in_dir(&dir);
        assert!(placement.served().unwrap().is_empty());
        assert_eq!(placement.watch_dir(), Some(dir.as_path()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(LocalNamespaces::in_dir(&dir).served().unwrap().is_empty());
    }
}
