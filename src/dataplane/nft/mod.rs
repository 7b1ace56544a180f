//! nftables backend (the default): our own `ip praas` table in each router namespace.
//!
//! We never touch Neutron's iptables rules or any other table: everything PRaaS programs lives
//! in one table that a full sync replaces atomically and a removal deletes whole.
//! Rules are rendered as nft text ([`render`]) and applied in-process through libnftables
//! ([`libnft`]) inside the namespace ([`crate::dataplane::netns`]): no process is spawned.

pub mod libnft;
mod readback;
pub mod render;

use tracing::{debug, trace};

use super::{netns, Backend, Changes, DataplaneError, RouterNamespace, RuleSet};
use libnft::LibNftables;

/// Our table, in family `ip`.
pub const TABLE: &str = "praas";
/// DNAT targets keyed by gateway . protocol . external port.
pub const FORWARDS_MAP: &str = "forwards";
/// External keys that only listed sources may use.
pub const RESTRICTED_SET: &str = "restricted";
/// Allowed sources of restricted keys (interval set over the source address).
pub const ALLOWED_SET: &str = "allowed_sources";
/// Flows whose client address is rewritten to the router's.
pub const MASQUERADE_SET: &str = "masqueraded";
/// Conntrack label bit that marks hairpin flows between prerouting and postrouting. Neutron
/// uses packet marks and the connection mark, but not conntrack labels, in router namespaces.
pub const HAIRPIN_LABEL: u8 = 127;

/// Our chains and how many rules each holds (see [`render::full`]).
const EXPECTED_CHAINS: &[(&str, usize)] = &[("prerouting", 3), ("postrouting", 2)];

/// Programs router namespaces through libnftables.
pub struct NftBackend {
    lib: &'static LibNftables,
}

impl NftBackend {
    pub fn new() -> Result<Self, DataplaneError> {
        let lib = LibNftables::get().map_err(|e| DataplaneError::Unavailable {
            backend: "nftables",
            source: e.to_string().into(),
        })?;
        Ok(NftBackend { lib })
    }

    /// Runs one nft script as one transaction inside `namespace`.
    fn run(
        &self,
        namespace: &RouterNamespace,
        script: &str,
        json: bool,
    ) -> Result<String, DataplaneError> {
        trace!(%namespace, script, "nft transaction");
        let lib = self.lib;
        netns::run_in(namespace, || lib.context(json).run(script))?.map_err(|message| {
            DataplaneError::Rejected {
                backend: "nftables",
                namespace: namespace.to_string(),
                message: message.trim().to_string(),
            }
        })
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn full_sync(
        &self,
        namespace: &RouterNamespace,
        rules: &RuleSet,
    ) -> Result<(), DataplaneError> {
        debug!(%namespace, forwards = rules.forwards.len(), "nftables full sync");
        self.run(namespace, &render::full(rules), false).map(drop)
    }

    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError> {
        let script = render::update(changes);
        if script.is_empty() {
            return Ok(());
        }
        self.run(namespace, &script, false).map(drop)
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        let lib = self.lib;
        // Both listings in one visit to the namespace; asking for the table list first tells a
        // missing table apart from a failure without reading nft's error text.
        let table = netns::run_in(namespace, || {
            let mut ctx = lib.context(true);
            if !readback::has_table(&ctx.run("list tables ip")?)? {
                return Ok(None);
            }
            ctx.run(&format!("list table ip {TABLE}")).map(Some)
        })?
        .map_err(|message: String| DataplaneError::ReadBack {
            namespace: namespace.to_string(),
            message,
        })?;
        let Some(table) = table else { return Ok(None) };
        let listing = readback::parse(&table).map_err(|message| DataplaneError::ReadBack {
            namespace: namespace.to_string(),
            message,
        })?;
        for (chain, expected) in EXPECTED_CHAINS {
            let found = listing.chain_rules.get(*chain).copied();
            if found != Some(*expected) {
                return Err(DataplaneError::Drift {
                    namespace: namespace.to_string(),
                    detail: match found {
                        None => format!("chain {chain} is missing"),
                        Some(n) => format!("chain {chain} has {n} rules, expected {expected}"),
                    },
                });
            }
        }
        Ok(Some(listing.rules))
    }

    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        if !netns::exists(namespace.name()) {
            // The router is gone and its namespace with it: nothing of ours remains.
            return Ok(());
        }
        self.run(namespace, &render::remove(), false).map(drop)
    }
}
