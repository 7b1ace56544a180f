//! What the dataplane programs: port forwards on a router's gateway address, and the
//! normalized element sets they expand to.
//!
//! A [`Forward`] is one PAT mapping as the kernel sees it. A [`RuleSet`] is the whole desired
//! state of one router namespace, already expanded into the keyed elements that the backends
//! program (one map entry per external port), so that diffing two rule sets is a keyed set
//! difference and never a comparison of rule text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::DataplaneError;
pub use crate::model::{Forward, PortRange, Protocol, MAX_RANGE_LEN};

impl Forward {
    /// Checks the invariants that the element expansion relies on.
    pub fn validate(&self) -> Result<(), DataplaneError> {
        let invalid = |reason: String| DataplaneError::InvalidForward {
            id: self.id.clone(),
            reason,
        };
        let (ext, int) = (self.external_ports.len(), self.internal_ports.len());
        if int != 1 && int != ext {
            return Err(invalid(format!(
                "internal port range {} must have one port or as many ports as external range {}",
                self.internal_ports, self.external_ports
            )));
        }
        if ext > MAX_RANGE_LEN {
            return Err(invalid(format!(
                "external port range {} covers {ext} ports, more than the limit of {MAX_RANGE_LEN}",
                self.external_ports
            )));
        }
        for (what, ip) in [
            ("external", self.external_ip),
            ("internal", self.internal_ip),
        ] {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(format!("{what} address {ip} cannot be forwarded")));
            }
        }
        Ok(())
    }

    /// The (external port, internal port) pairs this forward covers.
    pub fn port_pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let single = self.internal_ports.len() == 1;
        self.external_ports.iter().enumerate().map(move |(k, ext)| {
            // k < MAX_RANGE_LEN and the ranges have equal length, so this cannot overflow.
            let int = if single {
                self.internal_ports.first()
            } else {
                self.internal_ports.first() + k as u16
            };
            (ext, int)
        })
    }
}

/// Key of one DNAT element: the packet's destination as it arrives at the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExternalKey {
    pub ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for ExternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)
    }
}

/// Where a DNAT element sends the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Key of a masquerade or usage element: the gateway the flow was sent to and the VM socket it
/// was translated to (what a packet looks like in postrouting, after DNAT). An internal socket
/// belongs to one mapping per router, so within a namespace this key names one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MasqueradeKey {
    pub external_ip: Ipv4Addr,
    pub internal_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub internal_port: u16,
}

impl MasqueradeKey {
    /// The key of the flows that `key` forwards to `target`.
    pub fn of(key: &ExternalKey, target: &Target) -> Self {
        MasqueradeKey {
            external_ip: key.ip,
            internal_ip: target.ip,
            protocol: key.protocol,
            internal_port: target.port,
        }
    }
}

impl fmt::Display for MasqueradeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {}:{}/{}",
            self.external_ip, self.internal_ip, self.internal_port, self.protocol
        )
    }
}

/// The complete desired state of one router namespace, as keyed elements.
///
/// - `forwards`: DNAT map, one element per external port.
/// - `restricted`: external keys that only some sources may use; `allowed` lists those
///   sources. A key in `restricted` with no allowed source forwards nothing.
/// - `masqueraded`: flows whose client address is rewritten to the router's address.
/// - `counted`: the internal sockets whose traffic the kernel counts, one per distinct forward
///   target (a range fanned in to one port counts once); derived from `forwards`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub forwards: BTreeMap<ExternalKey, Target>,
    pub restricted: BTreeSet<ExternalKey>,
    pub allowed: BTreeSet<(ExternalKey, Ipv4Net)>,
    pub masqueraded: BTreeSet<MasqueradeKey>,
    pub counted: BTreeSet<MasqueradeKey>,
}

impl RuleSet {
    /// Expands forwards into elements. Two forwards that claim the same external
    /// (address, protocol, port) are a conflict: the kernel could only honour one of them.
    pub fn from_forwards<'a>(
        forwards: impl IntoIterator<Item = &'a Forward>,
    ) -> Result<Self, DataplaneError> {
        let mut set = RuleSet::default();
        let mut owner: BTreeMap<ExternalKey, &str> = BTreeMap::new();
        for fwd in forwards {
            fwd.validate()?;
            // Overlapping CIDRs would be rejected by an interval set; merge them first.
            let cidrs = Ipv4Net::aggregate(&fwd.allowed_cidrs);
            for (ext, int) in fwd.port_pairs() {
                let key = ExternalKey {
                    ip: fwd.external_ip,
                    protocol: fwd.protocol,
                    port: ext,
                };
                if let Some(previous) = owner.insert(key, &fwd.id) {
                    return Err(DataplaneError::Conflict {
                        key,
                        first: previous.to_string(),
                        second: fwd.id.clone(),
                    });
                }
                let target = Target {
                    ip: fwd.internal_ip,
                    port: int,
                };
                set.forwards.insert(key, target);
                set.counted.insert(MasqueradeKey::of(&key, &target));
                if !cidrs.is_empty() {
                    set.restricted.insert(key);
                    set.allowed.extend(cidrs.iter().map(|c| (key, *c)));
                }
                if fwd.masquerade {
                    set.masqueraded.insert(MasqueradeKey {
                        external_ip: fwd.external_ip,
                        internal_ip: fwd.internal_ip,
                        protocol: fwd.protocol,
                        internal_port: int,
                    });
                }
            }
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    /// Adds one forward's elements. Refused, leaving the set as it was, when the forward is
    /// invalid or one of its external ports is already forwarded.
    pub fn insert_forward(&mut self, fwd: &Forward) -> Result<(), DataplaneError> {
        fwd.validate()?;
        let single = RuleSet::from_forwards([fwd])?;
        if let Some(key) = single
            .forwards
            .keys()
            .find(|k| self.forwards.contains_key(k))
        {
            return Err(DataplaneError::Conflict {
                key: *key,
                first: "another mapping".into(),
                second: fwd.id.clone(),
            });
        }
        self.forwards.extend(single.forwards);
        self.restricted.extend(single.restricted);
        self.allowed.extend(single.allowed);
        self.masqueraded.extend(single.masqueraded);
        self.counted.extend(single.counted);
        Ok(())
    }

    /// Removes the elements `fwd` added with [`RuleSet::insert_forward`]. Elements are owned by
    /// one forward each: external ports and internal sockets are unique per router.
    pub fn remove_forward(&mut self, fwd: &Forward) {
        let Ok(single) = RuleSet::from_forwards([fwd]) else {
            return;
        };
        for key in single.forwards.keys() {
            self.forwards.remove(key);
            self.restricted.remove(key);
        }
        for item in &single.allowed {
            self.allowed.remove(item);
        }
        for key in &single.masqueraded {
            self.masqueraded.remove(key);
        }
        for key in &single.counted {
            self.counted.remove(key);
        }
    }

    /// The usage elements `forwards` need: one per distinct target.
    pub fn counted_of(forwards: &BTreeMap<ExternalKey, Target>) -> BTreeSet<MasqueradeKey> {
        forwards
            .iter()
            .map(|(k, t)| MasqueradeKey::of(k, t))
            .collect()
    }

    /// What turns `self` (the state the kernel holds) into `desired`.
    pub fn diff(&self, desired: &RuleSet) -> Changes {
        let mut changes = Changes::default();
        // One merge of the two sorted maps: linear, no lookup per element.
        let (mut old, mut new) = (
            self.forwards.iter().peekable(),
            desired.forwards.iter().peekable(),
        );
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(&(k, t)), None) => {
                    changes.remove_forwards.push((*k, *t));
                    old.next();
                }
                (None, Some(&(k, t))) => {
                    changes.add_forwards.push((*k, *t));
                    new.next();
                }
                (Some(&(ko, to)), Some(&(kn, tn))) => match ko.cmp(kn) {
                    std::cmp::Ordering::Less => {
                        changes.remove_forwards.push((*ko, *to));
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.add_forwards.push((*kn, *tn));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if to != tn {
                            changes.remove_forwards.push((*ko, *to));
                            changes.add_forwards.push((*kn, *tn));
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
        changes.remove_restricted = self
            .restricted
            .difference(&desired.restricted)
            .copied()
            .collect();
        changes.add_restricted = desired
            .restricted
            .difference(&self.restricted)
            .copied()
            .collect();
        changes.remove_allowed = self.allowed.difference(&desired.allowed).copied().collect();
        changes.add_allowed = desired.allowed.difference(&self.allowed).copied().collect();
        changes.remove_masqueraded = self
            .masqueraded
            .difference(&desired.masqueraded)
            .copied()
            .collect();
        changes.add_masqueraded = desired
            .masqueraded
            .difference(&self.masqueraded)
            .copied()
            .collect();
        // A set difference: a re-pointed forward moves its usage element only when no other
        // forward of `desired` still sends traffic to the old socket.
        changes.remove_counted = self.counted.difference(&desired.counted).copied().collect();
        changes.add_counted = desired.counted.difference(&self.counted).copied().collect();
        changes
    }

    /// Applies `changes` to this state, as the kernel does when a transaction commits.
    pub fn apply(&mut self, changes: &Changes) {
        for (key, _) in &changes.remove_forwards {
            self.forwards.remove(key);
        }
        self.forwards.extend(changes.add_forwards.iter().copied());
        for key in &changes.remove_restricted {
            self.restricted.remove(key);
        }
        self.restricted
            .extend(changes.add_restricted.iter().copied());
        for item in &changes.remove_allowed {
            self.allowed.remove(item);
        }
        self.allowed.extend(changes.add_allowed.iter().copied());
        for key in &changes.remove_masqueraded {
            self.masqueraded.remove(key);
        }
        self.masqueraded
            .extend(changes.add_masqueraded.iter().copied());
        for key in &changes.remove_counted {
            self.counted.remove(key);
        }
        self.counted.extend(changes.add_counted.iter().copied());
    }
}

/// Element-level changes between two rule sets. Removals are applied before additions, so a
/// changed target is a removal of the old element and an addition of the new one in the same
/// transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub remove_forwards: Vec<(ExternalKey, Target)>,
    pub add_forwards: Vec<(ExternalKey, Target)>,
    pub remove_restricted: Vec<ExternalKey>,
    pub add_restricted: Vec<ExternalKey>,
    pub remove_allowed: Vec<(ExternalKey, Ipv4Net)>,
    pub add_allowed: Vec<(ExternalKey, Ipv4Net)>,
    pub remove_masqueraded: Vec<MasqueradeKey>,
    pub add_masqueraded: Vec<MasqueradeKey>,
    /// Usage elements (counters) removed and added: a re-added element counts from 0 again.
    pub remove_counted: Vec<MasqueradeKey>,
    pub add_counted: Vec<MasqueradeKey>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.remove_forwards.is_empty()
            && self.add_forwards.is_empty()
            && self.remove_restricted.is_empty()
            && self.add_restricted.is_empty()
            && self.remove_allowed.is_empty()
            && self.add_allowed.is_empty()
            && self.remove_masqueraded.is_empty()
            && self.add_masqueraded.is_empty()
            && self.remove_counted.is_empty()
            && self.add_counted.is_empty()
    }

    /// Flows that must not outlive this change: every forward removed or re-pointed, with the
    /// target it used to have (the conntrack entries to delete).
    pub fn stale_flows(&self) -> impl Iterator<Item = &(ExternalKey, Target)> {
        self.remove_forwards.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(id: &str, ext: &str, int: &str) -> Forward {
        Forward {
            id: id.into(),
            protocol: Protocol::Tcp,
            external_ip: "203.0.113.10".parse().unwrap(),
            external_ports: ext.parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            internal_ports: int.parse().unwrap(),
            allowed_cidrs: vec![],
            masquerade: false,
        }
    }

    #[test]
    fn equal_ranges_map_port_by_port() {
        let f = fwd("a", "5000:5002", "6000:6002");
        assert_eq!(
            f.port_pairs().collect::<Vec<_>>(),
            vec![(5000, 6000), (5001, 6001), (5002, 6002)]
        );
    }

    #[test]
    fn a_range_may_fan_in_to_one_internal_port() {
        let f = fwd("a", "5000:5002", "22");
        assert_eq!(
            f.port_pairs().collect::<Vec<_>>(),
            vec![(5000, 22), (5001, 22), (5002, 22)]
        );
        let set = RuleSet::from_forwards([&f]).unwrap();
        assert_eq!(set.forwards.len(), 3);
    }

    #[test]
    fn unequal_ranges_are_rejected_with_the_mapping_named() {
        let err = fwd("m1", "5000:5002", "6000:6001").validate().unwrap_err();
        assert!(err.to_string().contains("m1"), "{err}");
    }

    #[test]
    fn oversized_ranges_are_rejected() {
        assert!(fwd("big", "1:65535", "1:65535").validate().is_err());
    }

    #[test]
    fn two_forwards_on_one_external_port_conflict() {
        let a = fwd("a", "4000:4010", "22");
        let b = fwd("b", "4010", "80");
        match RuleSet::from_forwards([&a, &b]) {
            Err(DataplaneError::Conflict { first, second, key }) => {
                assert_eq!(
                    (first.as_str(), second.as_str(), key.port),
                    ("a", "b", 4010)
                );
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn overlapping_allowed_cidrs_are_merged() {
        let mut f = fwd("a", "4000", "22");
        f.allowed_cidrs = vec![
            "198.51.100.0/24".parse().unwrap(),
            "198.51.100.128/25".parse().unwrap(),
        ];
        let set = RuleSet::from_forwards([&f]).unwrap();
        assert_eq!(set.allowed.len(), 1);
        assert_eq!(set.restricted.len(), 1);
    }

    #[test]
    fn inserting_and_removing_forwards_one_by_one_matches_building_them_together() {
        let mut a = fwd("a", "4000:4002", "22");
        a.allowed_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
        a.masquerade = true;
        let b = fwd("b", "5000", "80");
        let mut set = RuleSet::default();
        set.insert_forward(&a).unwrap();
        set.insert_forward(&b).unwrap();
        assert_eq!(set, RuleSet::from_forwards([&a, &b]).unwrap());
        // A clash is refused and changes nothing.
        let before = set.clone();
        assert!(set.insert_forward(&fwd("c", "4002", "443")).is_err());
        assert_eq!(set, before);
        set.remove_forward(&a);
        assert_eq!(set, RuleSet::from_forwards([&b]).unwrap());
    }

    #[test]
    fn every_forward_target_is_counted_once() {
        // A range mapped port by port counts per internal port; a range fanned in counts once.
        let set = RuleSet::from_forwards([
            &fwd("shift", "5000:5002", "6000:6002"),
            &fwd("fan-in", "5100:5101", "22"),
        ])
        .unwrap();
        let ports: Vec<u16> = set.counted.iter().map(|k| k.internal_port).collect();
        assert_eq!(ports, [22, 6000, 6001, 6002]);
        let gateway: Ipv4Addr = "203.0.113.10".parse().unwrap();
        assert!(set
            .counted
            .iter()
            .all(|k| k.external_ip == gateway && k.protocol == Protocol::Tcp));
        assert_eq!(set.counted, RuleSet::counted_of(&set.forwards));
    }

    #[test]
    fn a_repointed_forward_moves_its_usage_element_only_when_no_other_forward_uses_it() {
        let socket = |port: u16| MasqueradeKey {
            external_ip: "203.0.113.10".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            protocol: Protocol::Tcp,
            internal_port: port,
        };
        let old = RuleSet::from_forwards([&fwd("a", "5000:5001", "22")]).unwrap();
        // 5001 now goes to 2222; 5000 still sends traffic to port 22.
        let half =
            RuleSet::from_forwards([&fwd("a", "5000", "22"), &fwd("b", "5001", "2222")]).unwrap();
        let changes = old.diff(&half);
        assert_eq!(
            (changes.remove_counted, changes.add_counted),
            (vec![], vec![socket(2222)])
        );
        let moved = RuleSet::from_forwards([&fwd("a", "5000:5001", "2222")]).unwrap();
        let changes = half.diff(&moved);
        assert_eq!(
            (changes.remove_counted.clone(), changes.add_counted.clone()),
            (vec![socket(22)], vec![])
        );
        let mut state = half.clone();
        state.apply(&changes);
        assert_eq!(state, moved);
    }

    #[test]
    fn diff_then_apply_reaches_the_desired_state() {
        let old =
            RuleSet::from_forwards([&fwd("a", "4000", "22"), &fwd("b", "4001", "80")]).unwrap();
        let mut moved = fwd("a", "4000", "2222");
        moved.masquerade = true;
        moved.allowed_cidrs = vec!["192.0.2.0/24".parse().unwrap()];
        let new = RuleSet::from_forwards([&moved, &fwd("c", "4002", "443")]).unwrap();
        let changes = old.diff(&new);
        // 4000 re-pointed (remove + add), 4001 removed, 4002 added.
        assert_eq!(changes.remove_forwards.len(), 2);
        assert_eq!(changes.add_forwards.len(), 2);
        assert_eq!(changes.stale_flows().count(), 2);
        let mut state = old.clone();
        state.apply(&changes);
        assert_eq!(state, new);
        assert!(new.diff(&new).is_empty());
    }
}
