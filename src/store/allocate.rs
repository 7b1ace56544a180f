//! Choosing external ports for new mappings.
//!
//! The database, not this module, guarantees that two mappings never share a port (one row per
//! claimed port under a primary key). This module only proposes candidates: a candidate that
//! loses a race is refused by the database and the next one is tried, and an exhausted range is
//! an answer, never a loop (the original retried random ports forever when the range was full).

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::model::PortRange;

/// How a free port is picked in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Anywhere in the range, as the original PRaaS did: ports are not predictable.
    #[default]
    Random,
    /// The lowest free port.
    Sequential,
}

/// The range and the strategy of one deployment (`router_port_range`, `port_allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub range: PortRange,
    pub strategy: Strategy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            range: PortRange::new(4000, 4100).expect("valid default range"),
            strategy: Strategy::Random,
        }
    }
}

/// Every block of `len` consecutive free ports inside `range`, in the order to try them.
pub fn candidates(
    policy: &Policy,
    used: &BTreeSet<u16>,
    len: u32,
    rng: &mut impl Rng,
) -> Vec<PortRange> {
    let (first, last) = (
        u32::from(policy.range.first()),
        u32::from(policy.range.last()),
    );
    if len == 0 || len > last - first + 1 {
        return vec![];
    }
    let mut blocks: Vec<PortRange> = (first..=last + 1 - len)
        .filter(|start| (*start..start + len).all(|p| !used.contains(&(p as u16))))
        .map(|start| {
            PortRange::new(start as u16, (start + len - 1) as u16).expect("inside a valid range")
        })
        .collect();
    if policy.strategy == Strategy::Random {
        blocks.shuffle(rng);
    }
    blocks
}

/// A random block of `len` ports inside the range, free or not.
pub fn random_block(policy: &Policy, len: u32, rng: &mut impl Rng) -> Option<PortRange> {
    let (first, last) = (
        u32::from(policy.range.first()),
        u32::from(policy.range.last()),
    );
    if len == 0 || len > last - first + 1 {
        return None;
    }
    let start = rng.gen_range(first..=last + 1 - len);
    PortRange::new(start as u16, (start + len - 1) as u16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strategy: Strategy) -> Policy {
        Policy {
            range: PortRange::new(4000, 4009).unwrap(),
            strategy,
        }
    }

    #[test]
    fn sequential_takes_the_lowest_free_block() {
        let used: BTreeSet<u16> = [4000, 4001, 4003].into();
        let c = candidates(
            &policy(Strategy::Sequential),
            &used,
            1,
            &mut rand::thread_rng(),
        );
        assert_eq!(c.first().map(|r| r.first()), Some(4002));
        let c = candidates(
            &policy(Strategy::Sequential),
            &used,
            2,
            &mut rand::thread_rng(),
        );
        assert_eq!(c.first().map(|r| (r.first(), r.last())), Some((4004, 4005)));
    }

    #[test]
    fn random_only_proposes_free_ports_and_covers_the_range() {
        let used: BTreeSet<u16> = [4000, 4005].into();
        let c = candidates(&policy(Strategy::Random), &used, 1, &mut rand::thread_rng());
        assert_eq!(c.len(), 8);
        assert!(c.iter().all(|r| !used.contains(&r.first())));
    }

    #[test]
    fn a_random_block_fits_the_range() {
        let p = policy(Strategy::Random);
        for _ in 0..1000 {
            let b = random_block(&p, 3, &mut rand::thread_rng()).unwrap();
            assert!(p.range.contains(b.first()) && p.range.contains(b.last()) && b.len() == 3);
        }
        assert!(random_block(&p, 11, &mut rand::thread_rng()).is_none());
    }

    #[test]
    fn a_full_range_has_no_candidates() {
        let used: BTreeSet<u16> = (4000..=4009).collect();
        assert!(
            candidates(&policy(Strategy::Random), &used, 1, &mut rand::thread_rng()).is_empty()
        );
        assert!(candidates(
            &policy(Strategy::Random),
            &BTreeSet::new(),
            11,
            &mut rand::thread_rng()
        )
        .is_empty());
    }
}
