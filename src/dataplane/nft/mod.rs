//! nftables backend (the default): our own `ip praas` table in each router namespace.
//!
//! We never touch Neutron's iptables rules or any other table: everything PRaaS programs lives
//! in one table. Its definition (sets, chains, rules) is rendered as nft text ([`render`]) and
//! applied through libnftables ([`libnft`]) when the table is created or repaired; its
//! elements, which are what changes, are written and read back as nfnetlink batches ([`wire`]).
//! Everything runs in-process inside the namespace ([`crate::dataplane::netns`]). Traffic per
//! mapping is counted by the kernel in the table's usage set and read with one dump
//! ([`Backend::usage`]).
//!
//! Why not rewrite the table on every full sync: deleting a table or a rule makes the kernel
//! wait for an RCU grace period (≈ 14 ms here, whatever the table's size), where replacing the
//! elements of intact sets in one batch costs microseconds per element.

pub mod libnft;
pub mod render;
pub mod wire;

use std::collections::BTreeMap;

use tracing::{debug, trace};

use super::netlink::sockets;
use super::{
    netns, Backend, Changes, DataplaneError, MasqueradeKey, RouterNamespace, RuleSet, Usage,
};
use libnft::LibNftables;
use wire::{NftSocket, SetInfo, Structure, NFT_SET_INTERVAL, NFT_SET_MAP};

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
/// Per-mapping traffic counters, keyed like the masquerade set (one element per forward
/// target), each element with a counter.
pub const USAGE_SET: &str = "usage";
/// Conntrack label bit that marks hairpin flows between prerouting and postrouting. Neutron
/// uses packet marks and the connection mark, but not conntrack labels, in router namespaces.
pub const HAIRPIN_LABEL: u8 = 127;

/// Our chains and how many rules each holds (see [`render::definition`]). A table written
/// before a chain was added lacks it, and is rewritten whole as not ours.
const EXPECTED_CHAINS: &[(&str, usize)] = &[("prerouting", 3), ("postrouting", 2), ("forward", 2)];

/// Our sets: name, required flags, key length, data length (bytes, register-aligned), and
/// whether its elements carry a counter.
const EXPECTED_SETS: &[(&str, u32, u32, u32, bool)] = &[
    (FORWARDS_MAP, NFT_SET_MAP, 12, 8, false),
    (RESTRICTED_SET, 0, 12, 0, false),
    (ALLOWED_SET, NFT_SET_INTERVAL, 16, 0, false),
    (MASQUERADE_SET, 0, 16, 0, false),
    (USAGE_SET, 0, 16, 0, true),
];

/// What a namespace holds of ours.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Absent,
    Intact,
    /// Our table exists but is not what we write; the reason says how.
    Broken(String),
}

fn shape(s: &Structure) -> Shape {
    if !s.table {
        return Shape::Absent;
    }
    for (name, flags, key_len, data_len, counter) in EXPECTED_SETS {
        match s.sets.get(*name) {
            None => return Shape::Broken(format!("set {name} is missing")),
            Some(SetInfo {
                flags: f,
                key_len: k,
                data_len: d,
                counter: c,
            }) => {
                if f & flags != *flags || k != key_len || d != data_len || c != counter {
                    return Shape::Broken(format!("set {name} is not declared as ours"));
                }
            }
        }
    }
    for (chain, rules) in &s.rules {
        let expected = EXPECTED_CHAINS
            .iter()
            .find(|(c, _)| c == chain)
            .map(|(_, n)| *n);
        if expected != Some(rules.len()) {
            return Shape::Broken(format!(
                "chain {chain} has {} rules, expected {}",
                rules.len(),
                expected.unwrap_or(0)
            ));
        }
        let prefix = render::RULE_COMMENT_PREFIX.as_bytes();
        if rules
            .iter()
            .any(|userdata| !userdata.windows(prefix.len()).any(|w| w == prefix))
        {
            return Shape::Broken(format!("chain {chain} holds a rule that is not ours"));
        }
    }
    for (chain, _) in EXPECTED_CHAINS {
        if !s.rules.contains_key(*chain) {
            return Shape::Broken(format!("chain {chain} has no rules"));
        }
    }
    Shape::Intact
}

/// Programs router namespaces through libnftables and nfnetlink.
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

    /// Runs an nft script as one transaction in the calling thread's namespace.
    fn run_script(&self, script: &str) -> Result<(), libnft::ScriptError> {
        trace!(script, "nft transaction");
        self.lib.context().run(script).map(drop)
    }
}

impl NftBackend {
    /// Reads our table back. With `expected`, elements the dumps did not show are looked up one
    /// by one (see [`wire::NftSocket::lookup`]).
    fn read(
        &self,
        namespace: &RouterNamespace,
        expected: Option<&RuleSet>,
    ) -> Result<Option<RuleSet>, DataplaneError> {
        let read = sockets::with(namespace, |s| {
            let mut socket = NftSocket::new(s);
            let structure = socket.structure()?;
            let mut rules = match shape(&structure) {
                Shape::Absent => return Ok(Ok(None)),
                Shape::Broken(detail) => return Ok(Err(detail)),
                Shape::Intact => socket.read_rules()?,
            };
            if let Some(expected) = expected.filter(|e| **e != rules) {
                let seen = wire::elements_of(&rules);
                for ((set, wanted), (_, seen)) in wire::elements_of(expected).into_iter().zip(seen) {
                    let seen: std::collections::HashSet<&[u8]> = seen.iter().map(|e| e.key.as_slice()).collect();
                    let unseen: Vec<_> = wanted.into_iter().filter(|e| !seen.contains(e.key.as_slice())).collect();
                    if !unseen.is_empty() {
                        let found = socket.lookup(set, &unseen)?;
                        debug!(%namespace, set, unseen = unseen.len(), found = found.len(), "looked up elements a dump did not show");
                        wire::decode_all(&mut rules, set, &found)?;
                    }
                }
            }
            Ok(Ok(Some(rules)))
        })?
        .map_err(|e| read_back_error(namespace, e))?;
        read.map_err(|detail| DataplaneError::Drift {
            namespace: namespace.to_string(),
            detail,
        })
    }
}

fn rejected(namespace: &RouterNamespace, message: impl ToString) -> DataplaneError {
    DataplaneError::Rejected {
        backend: "nftables",
        namespace: namespace.to_string(),
        message: message.to_string(),
    }
}

fn read_back_error(namespace: &RouterNamespace, e: impl ToString) -> DataplaneError {
    DataplaneError::ReadBack {
        namespace: namespace.to_string(),
        message: e.to_string(),
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
        let structure = sockets::with(namespace, |s| NftSocket::new(s).structure())?
            .map_err(|e| read_back_error(namespace, e))?;
        let shape = shape(&structure);
        debug!(%namespace, forwards = rules.forwards.len(), ?shape, "nftables full sync");
        let script = match shape {
            // The common case: replace every element in one transaction.
            Shape::Intact => None,
            // Nothing of ours yet: create the definition, then the elements. Two transactions,
            // but nothing was forwarded before the first one either.
            Shape::Absent => Some(render::definition(&RuleSet::default())),
            // Someone changed our table: replace it whole, atomically (the slow path).
            Shape::Broken(_) => Some(render::full(rules)),
        };
        if let Some(script) = &script {
            netns::run_in(namespace, || self.run_script(script))?
                .map_err(|m| rejected(namespace, m))?;
        }
        if matches!(shape, Shape::Broken(_)) {
            return Ok(());
        }
        sockets::with(namespace, |s| {
            let mut socket = NftSocket::new(s);
            // The usage set is not flushed, so that a resync keeps the counters of the
            // elements that stay: what it holds is listed first (nothing after a creation).
            let counted_now = match shape {
                Shape::Intact => socket.elements(USAGE_SET)?,
                _ => Vec::new(),
            };
            socket.apply(&wire::replace_ops(rules, &counted_now))
        })?
        .map_err(|e| rejected(namespace, e))
    }

    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError> {
        let ops = wire::change_ops(changes);
        if ops.is_empty() {
            return Ok(());
        }
        sockets::with(namespace, |s| NftSocket::new(s).apply(&ops))?
            .map_err(|e| rejected(namespace, e))
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        self.read(namespace, None)
    }

    fn read_back_expecting(
        &self,
        namespace: &RouterNamespace,
        expected: &RuleSet,
    ) -> Result<Option<RuleSet>, DataplaneError> {
        self.read(namespace, Some(expected))
    }

    fn fingerprint(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<super::Fingerprint>, DataplaneError> {
        super::nft_fingerprint(namespace).map(Some)
    }

    /// One netlink dump of the usage set, counters included.
    fn usage(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<BTreeMap<MasqueradeKey, Usage>>, DataplaneError> {
        let error = |source| DataplaneError::Usage {
            namespace: namespace.to_string(),
            source,
        };
        let counted = sockets::with(namespace, |s| NftSocket::new(s).counters())?
            .map_err(|e| error(wire::UsageError::Netlink(e)))?;
        wire::decode_usage(&counted).map(Some).map_err(error)
    }

    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        if !netns::exists(namespace.name()) {
            // The router is gone and its namespace with it: nothing of ours remains.
            return Ok(());
        }
        netns::run_in(namespace, || self.run_script(&render::remove()))?
            .map_err(|m| rejected(namespace, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structure of a table as [`render::definition`] writes it today.
    fn current() -> Structure {
        let mut s = Structure {
            table: true,
            ..Default::default()
        };
        for (name, flags, key_len, data_len, counter) in EXPECTED_SETS {
            s.sets.insert(
                name.to_string(),
                SetInfo {
                    flags: *flags,
                    key_len: *key_len,
                    data_len: *data_len,
                    counter: *counter,
                },
            );
        }
        for (chain, rules) in EXPECTED_CHAINS {
            let comment = format!("{} x", render::RULE_COMMENT_PREFIX).into_bytes();
            s.rules.insert(chain.to_string(), vec![comment; *rules]);
        }
        s
    }

    #[test]
    fn the_table_we_write_is_intact_and_none_is_absent() {
        assert_eq!(shape(&current()), Shape::Intact);
        assert_eq!(shape(&Structure::default()), Shape::Absent);
    }

    #[test]
    fn a_table_written_before_the_usage_counters_is_not_ours_and_gets_rewritten() {
        let mut old = current();
        old.sets.remove(USAGE_SET);
        old.rules.remove("forward");
        assert_eq!(shape(&old), Shape::Broken("set usage is missing".into()));
        let mut old = current();
        old.rules.remove("forward");
        assert_eq!(
            shape(&old),
            Shape::Broken("chain forward has no rules".into())
        );
    }

    #[test]
    fn a_usage_set_without_counters_or_a_counter_elsewhere_is_not_ours() {
        let mut s = current();
        s.sets.get_mut(USAGE_SET).unwrap().counter = false;
        assert_eq!(
            shape(&s),
            Shape::Broken("set usage is not declared as ours".into())
        );
        let mut s = current();
        s.sets.get_mut(MASQUERADE_SET).unwrap().counter = true;
        assert!(matches!(shape(&s), Shape::Broken(_)));
    }

    #[test]
    fn a_foreign_rule_in_the_forward_chain_is_not_ours() {
        let mut s = current();
        s.rules
            .get_mut("forward")
            .unwrap()
            .push(b"somebody else".to_vec());
        assert_eq!(
            shape(&s),
            Shape::Broken("chain forward has 3 rules, expected 2".into())
        );
        let mut s = current();
        s.rules.get_mut("forward").unwrap()[1] = b"drop".to_vec();
        assert_eq!(
            shape(&s),
            Shape::Broken("chain forward holds a rule that is not ours".into())
        );
    }
}
