//! The dataplane: programs port forwards into Neutron router namespaces.
//!
//! Layers, from the kernel up:
//! - [`netns`]: run a closure inside a named network namespace without spawning `ip netns exec`.
//! - Backends implementing [`Backend`]: [`nft`] (default, our own `ip praas` table with a DNAT
//!   map), [`iptables`] (the original PRaaS chain layout, for sites without nftables) and
//!   [`fake`] (records what it was asked, for unit tests).
//! - [`conntrack`]: deletes the flows of removed or re-pointed forwards (OSSN-0020).
//! - [`sync::RouterSync`]: keeps what each namespace was last programmed with, sends element
//!   diffs for single changes, rewrites the whole table on a resync or after any failure, and
//!   verifies what the kernel holds.
//!
//! See `docs/design.md` for the rule layout and why it is built this way.

pub mod conntrack;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod ovn;
pub mod rules;
pub mod sync;

use std::collections::BTreeMap;

pub use crate::model::{Forward, NamespaceKind, PortRange, Protocol, RouterNamespace};
pub use rules::{Changes, ExternalKey, MasqueradeKey, RuleSet, Target};

/// Errors of the dataplane. Each says which namespace or mapping failed; the source error is
/// attached, not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("invalid forward {id:?}: {reason}")]
    InvalidForward { id: String, reason: String },

    #[error("mappings {first:?} and {second:?} both claim {key}")]
    Conflict {
        key: ExternalKey,
        first: String,
        second: String,
    },

    #[error("network namespace {namespace} is not available")]
    Namespace {
        namespace: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{backend} rejected the transaction for namespace {namespace}: {message}")]
    Rejected {
        backend: &'static str,
        namespace: String,
        message: String,
    },

    #[error("{backend} is not usable on this node")]
    Unavailable {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("could not read back the rules of namespace {namespace}: {message}")]
    ReadBack { namespace: String, message: String },

    #[error("could not read back the rules of namespace {namespace}")]
    ReadBackParse {
        namespace: String,
        #[source]
        source: iptables::ParseError,
    },

    #[error("namespace {namespace} does not hold what was programmed: {detail}")]
    Drift { namespace: String, detail: String },

    #[error("namespace {namespace} does not hold what was programmed")]
    DriftRemoval {
        namespace: String,
        #[source]
        source: iptables::NotThere,
    },

    #[error("could not read the usage counters of namespace {namespace}")]
    Usage {
        namespace: String,
        #[source]
        source: nft::wire::UsageError,
    },

    #[error("OVN could not program router {router}")]
    Ovn {
        router: String,
        #[source]
        source: Box<ovn::NorthboundError>,
    },

    #[error("logical router {router} is not in OVN's northbound database")]
    RouterMissing { router: String },

    #[error("the {backend} driver cannot program {what} (router {namespace})")]
    Unsupported {
        backend: &'static str,
        namespace: String,
        what: &'static str,
    },

    #[error("conntrack cleanup in namespace {namespace} failed")]
    Conntrack {
        namespace: String,
        #[source]
        source: std::io::Error,
    },
}

/// A cheap summary of a namespace's netfilter state: it changes whenever anything there may
/// have changed, ours or not. Equal fingerprints mean nothing was committed in between, so the
/// agent can check every served namespace each second and read back only those that moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// The inode of the namespace: a namespace deleted and created again under the same name
    /// has another one.
    pub namespace: u64,
    /// What the backend counts (nf_tables' generation, or the legacy nat table's size).
    pub state: u64,
}

/// Traffic the kernel counted for one mapping since its usage element was last added: both
/// directions of every forwarded connection, each packet whole (IP header included).
///
/// Counts start at 0 whenever the element is added again (the mapping removed and created
/// again, re-pointed to another VM socket, or our table rewritten after a repair), so a reader
/// that sees a smaller value than before must take it for a restart, not for a decrease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub packets: u64,
    pub bytes: u64,
}

/// A way of programming rule sets into router namespaces.
///
/// Every call is one atomic transaction in one namespace: either all of it is in the kernel
/// afterwards, or none of it is.
pub trait Backend: Send + Sync {
    /// Short name for logs and errors (`nftables`, `iptables`, `fake`).
    fn name(&self) -> &'static str;

    /// Replaces everything we own in `namespace` with `rules`.
    fn full_sync(&self, namespace: &RouterNamespace, rules: &RuleSet)
        -> Result<(), DataplaneError>;

    /// Applies element changes on top of what a previous call programmed.
    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError>;

    /// Reads back what the kernel holds: `None` when our rules are absent from the namespace.
    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError>;

    /// Reads back like [`Backend::read_back`], knowing what should be there. A backend whose
    /// listing can miss elements (nftables: a dump racing a hash resize) checks the elements it
    /// did not see one by one, so that what is returned is what the kernel holds.
    fn read_back_expecting(
        &self,
        namespace: &RouterNamespace,
        expected: &RuleSet,
    ) -> Result<Option<RuleSet>, DataplaneError> {
        let _ = expected;
        self.read_back(namespace)
    }

    /// Removes everything we own from `namespace`. Absent rules are not an error.
    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError>;

    /// What the kernel counted per mapping in `namespace`, keyed by gateway and internal socket
    /// (see [`RuleSet::counted`] and [`Usage`]); `None` when this backend cannot count. A
    /// mapping missing from the map has no counter in the kernel: not programmed (yet), or our
    /// table is missing. Cheap enough to call for every namespace each scrape: one dump.
    fn usage(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<BTreeMap<MasqueradeKey, Usage>>, DataplaneError> {
        let _ = namespace;
        Ok(None)
    }

    /// The namespace's [`Fingerprint`], or `None` when this backend cannot tell cheaply (then
    /// only the periodic resync finds changes made behind our back).
    fn fingerprint(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<Fingerprint>, DataplaneError> {
        let _ = namespace;
        Ok(None)
    }
}

/// The nf_tables generation of `namespace`, with its inode: what changes when any nf_tables
/// table there (ours, or iptables-nft's) is changed, or the namespace is built again.
pub fn nft_fingerprint(namespace: &RouterNamespace) -> Result<Fingerprint, DataplaneError> {
    let inode = netns::inode(namespace)?;
    let generation =
        netlink::sockets::with(namespace, |s| nft::wire::NftSocket::new(s).generation())?.map_err(
            |e| DataplaneError::ReadBack {
                namespace: namespace.to_string(),
                message: e.to_string(),
            },
        )?;
    Ok(Fingerprint {
        namespace: inode,
        state: generation.into(),
    })
}

/// Which backend to use, as `[dataplane] driver` in the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    #[default]
    Nftables,
    Iptables,
    /// OVN load balancers in the northbound database (ML2/OVN clouds); built by the runtime
    /// from the `[ovn]` settings.
    Ovn,
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "nftables" | "nft" => Ok(Driver::Nftables),
            "iptables" => Ok(Driver::Iptables),
            "ovn" => Ok(Driver::Ovn),
            other => Err(format!(
                "unknown dataplane driver {other:?} (expected nftables, iptables or ovn)"
            )),
        }
    }
}

impl Driver {
    /// Builds the backend of a netfilter driver. [`Driver::Ovn`] needs its northbound
    /// connection: the runtime builds it from the `[ovn]` settings instead.
    pub fn backend(self) -> Result<Box<dyn Backend>, DataplaneError> {
        Ok(match self {
            Driver::Nftables => Box::new(nft::NftBackend::new()?),
            Driver::Iptables => Box::new(iptables::IptablesBackend::new()),
            Driver::Ovn => {
                return Err(DataplaneError::Unavailable {
                    backend: "ovn",
                    source: "the OVN driver is built from the [ovn] settings".into(),
                })
            }
        })
    }
}
