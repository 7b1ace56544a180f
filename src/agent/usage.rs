//! The kernel's per-mapping counters, read every `[dataplane] usage_interval`: one dump per
//! served namespace (see [`crate::dataplane::Backend::usage`]), turned into what each mapping
//! forwarded since the last reading, added to the store (the API's `packets`, `bytes`,
//! `last_used`) and to the metrics.
//!
//! The kernel counts from the moment an element is added, so the difference since the last
//! reading is what counts:
//! - the process's first reading (made once a full pass has programmed the node) gives only a
//!   baseline: the counters may hold traffic an earlier agent process already wrote (losing at
//!   most one interval of traffic beats counting it twice);
//! - a namespace read for the first time later got its elements since (its first mapping, or
//!   the namespace built again): all they hold is new;
//! - an element that was not there at the last reading was added since, so all it holds is
//!   new;
//! - an element whose count went down was added again (a rewritten table, a re-pointed
//!   mapping): all it holds is new.
//!
//! Differences the store could not take are kept and written with the next reading.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::dataplane::{Forward, MasqueradeKey, RouterNamespace, Usage};
use crate::store::UsageDelta;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MappingLabels {
    mapping_id: String,
    router_id: String,
}

/// The usage metrics of a node.
#[derive(Clone, Debug, Default)]
pub struct UsageMetrics {
    packets: Counter,
    bytes: Counter,
    mapping_packets: Family<MappingLabels, Counter>,
    mapping_bytes: Family<MappingLabels, Counter>,
}

impl UsageMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "forwarded_packets",
            "Packets of forwarded connections (both directions) this node's kernel counted since the agent started",
            self.packets.clone(),
        );
        registry.register(
            "forwarded_bytes",
            "Bytes of forwarded connections (both directions) this node's kernel counted since the agent started",
            self.bytes.clone(),
        );
        registry.register(
            "mapping_packets",
            "Packets of each mapping's forwarded connections counted on this node since the agent started \
             (only while the node programs at most [dataplane] usage_series_limit mappings)",
            self.mapping_packets.clone(),
        );
        registry.register(
            "mapping_bytes",
            "Bytes of each mapping's forwarded connections counted on this node since the agent started \
             (only while the node programs at most [dataplane] usage_series_limit mappings)",
            self.mapping_bytes.clone(),
        );
    }
}

/// What one reading found in one namespace, for [`UsageMeter::account`].
pub struct Reading {
    pub namespace: RouterNamespace,
    pub router_id: String,
    /// `None`: the backend cannot count.
    pub counts: Option<BTreeMap<MasqueradeKey, Usage>>,
    /// Which mapping each counted socket belongs to.
    pub owners: HashMap<MasqueradeKey, String>,
}

/// The usage keys of `forward`: one per internal port it reaches.
pub fn keys(forward: &Forward) -> impl Iterator<Item = MasqueradeKey> + '_ {
    forward.internal_ports.iter().map(|port| MasqueradeKey {
        external_ip: forward.external_ip,
        internal_ip: forward.internal_ip,
        protocol: forward.protocol,
        internal_port: port,
    })
}

/// Reads and accounts the counters (see the module's comment).
pub struct UsageMeter {
    every: Duration,
    series_limit: usize,
    last_read: Option<Instant>,
    /// The kernel's counts at the last reading, per namespace.
    seen: HashMap<RouterNamespace, BTreeMap<MasqueradeKey, Usage>>,
    /// Differences the store has not taken yet, per mapping.
    unwritten: BTreeMap<String, (u64, u64)>,
    metrics: UsageMetrics,
    /// The per-mapping series that exist.
    series: std::collections::HashSet<MappingLabels>,
    /// The first reading, a baseline, was made.
    baselined: bool,
}

impl UsageMeter {
    pub fn new(every: Duration, series_limit: usize) -> Self {
        UsageMeter {
            every,
            series_limit,
            last_read: None,
            seen: HashMap::new(),
            unwritten: BTreeMap::new(),
            metrics: UsageMetrics::default(),
            series: std::collections::HashSet::new(),
            baselined: false,
        }
    }

    pub fn metrics(&self) -> &UsageMetrics {
        &self.metrics
    }

    /// Whether a reading is due; if so, it counts as started.
    pub fn due(&mut self) -> bool {
        if self.last_read.is_some_and(|at| at.elapsed() < self.every) {
            return false;
        }
        self.last_read = Some(Instant::now());
        true
    }

    /// Turns `readings` (of every namespace the node serves) into what each mapping forwarded
    /// since the last reading, adds it to the metrics, and returns what the store must take
    /// (with whatever it did not take last time). `programmed` is how many mappings the node
    /// programs, for the per-mapping series' limit.
    pub fn account(&mut self, readings: Vec<Reading>, programmed: usize) -> Vec<UsageDelta> {
        let per_mapping = programmed <= self.series_limit;
        let baseline = !std::mem::replace(&mut self.baselined, true);
        let nothing = BTreeMap::new();
        let mut live: HashMap<String, String> = HashMap::new();
        for reading in readings {
            let Some(counts) = reading.counts else {
                continue;
            };
            if per_mapping {
                for owner in reading.owners.values() {
                    live.insert(owner.clone(), reading.router_id.clone());
                }
            }
            match self.seen.get(&reading.namespace) {
                _ if baseline => {}
                before => {
                    let before = before.unwrap_or(&nothing);
                    for (key, now) in &counts {
                        let Some(owner) = reading.owners.get(key) else {
                            continue;
                        };
                        let (packets, bytes) = match before.get(key) {
                            Some(b) if now.packets >= b.packets && now.bytes >= b.bytes => {
                                (now.packets - b.packets, now.bytes - b.bytes)
                            }
                            // Added since, or added again: all of it is new.
                            _ => (now.packets, now.bytes),
                        };
                        if packets == 0 && bytes == 0 {
                            continue;
                        }
                        self.metrics.packets.inc_by(packets);
                        self.metrics.bytes.inc_by(bytes);
                        if per_mapping {
                            let labels = MappingLabels {
                                mapping_id: owner.clone(),
                                router_id: reading.router_id.clone(),
                            };
                            self.metrics
                                .mapping_packets
                                .get_or_create(&labels)
                                .inc_by(packets);
                            self.metrics
                                .mapping_bytes
                                .get_or_create(&labels)
                                .inc_by(bytes);
                            self.series.insert(labels);
                        }
                        let entry = self.unwritten.entry(owner.clone()).or_default();
                        entry.0 += packets;
                        entry.1 += bytes;
                    }
                }
            }
            self.seen.insert(reading.namespace, counts);
        }
        self.forget_series(per_mapping.then_some(&live));
        self.unwritten
            .iter()
            .map(|(id, (packets, bytes))| UsageDelta {
                mapping_id: id.clone(),
                packets: *packets,
                bytes: *bytes,
            })
            .collect()
    }

    /// Forgets the counts of namespaces the node no longer serves (one that comes back is read
    /// as new). A namespace that could not be read this time keeps its last counts.
    pub fn keep_only(&mut self, served: &std::collections::BTreeSet<RouterNamespace>) {
        self.seen.retain(|ns, _| served.contains(ns));
    }

    /// The store took the differences [`UsageMeter::account`] returned.
    pub fn written(&mut self) {
        self.unwritten.clear();
    }

    /// Drops the series of mappings this node no longer programs (all of them past the limit).
    fn forget_series(&mut self, live: Option<&HashMap<String, String>>) {
        let gone: Vec<MappingLabels> = match live {
            None => self.series.drain().collect(),
            Some(live) => {
                let gone: Vec<MappingLabels> = self
                    .series
                    .iter()
                    .filter(|l| live.get(&l.mapping_id) != Some(&l.router_id))
                    .cloned()
                    .collect();
                for labels in &gone {
                    self.series.remove(labels);
                }
                gone
            }
        };
        for labels in gone {
            self.metrics.mapping_packets.remove(&labels);
            self.metrics.mapping_bytes.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> MasqueradeKey {
        MasqueradeKey {
            external_ip: "203.0.113.10".parse().unwrap(),
            internal_ip: "10.0.0.5".parse().unwrap(),
            protocol: crate::dataplane::Protocol::Tcp,
            internal_port: port,
        }
    }

    fn reading(counts: &[(u16, u64, u64)]) -> Reading {
        Reading {
            namespace: RouterNamespace::named("qrouter-r1"),
            router_id: "r1".into(),
            counts: Some(
                counts
                    .iter()
                    .map(|(p, packets, bytes)| {
                        (
                            key(*p),
                            Usage {
                                packets: *packets,
                                bytes: *bytes,
                            },
                        )
                    })
                    .collect(),
            ),
            owners: [(key(22), "m22".to_string()), (key(80), "m80".to_string())].into(),
        }
    }

    fn totals(deltas: &[UsageDelta]) -> Vec<(&str, u64, u64)> {
        deltas
            .iter()
            .map(|d| (d.mapping_id.as_str(), d.packets, d.bytes))
            .collect()
    }

    #[test]
    fn the_first_reading_of_a_namespace_is_a_baseline_then_differences_count() {
        let mut meter = UsageMeter::new(Duration::from_secs(30), 10);
        assert!(meter
            .account(vec![reading(&[(22, 10, 1000)])], 2)
            .is_empty());
        let deltas = meter.account(vec![reading(&[(22, 14, 1400), (80, 0, 0)])], 2);
        assert_eq!(totals(&deltas), [("m22", 4, 400)]);
        meter.written();
        assert!(meter
            .account(vec![reading(&[(22, 14, 1400), (80, 0, 0)])], 2)
            .is_empty());
        assert_eq!(meter.metrics.packets.get(), 4);
        assert_eq!(meter.metrics.bytes.get(), 400);
    }

    #[test]
    fn an_element_added_since_or_added_again_counts_whole() {
        let mut meter = UsageMeter::new(Duration::from_secs(30), 10);
        meter.account(vec![reading(&[(22, 10, 1000)])], 2);
        // Port 80's element appeared; port 22's was added again (its count went down).
        let deltas = meter.account(vec![reading(&[(22, 3, 300), (80, 2, 120)])], 2);
        assert_eq!(totals(&deltas), [("m22", 3, 300), ("m80", 2, 120)]);
    }

    #[test]
    fn a_namespace_first_read_after_the_baseline_counts_whole() {
        let mut meter = UsageMeter::new(Duration::from_secs(30), 10);
        assert!(meter.account(vec![], 0).is_empty());
        let deltas = meter.account(vec![reading(&[(22, 4, 400)])], 2);
        assert_eq!(totals(&deltas), [("m22", 4, 400)]);
    }

    #[test]
    fn what_the_store_did_not_take_is_written_with_the_next_reading() {
        let mut meter = UsageMeter::new(Duration::from_secs(30), 10);
        meter.account(vec![reading(&[(22, 0, 0)])], 2);
        assert_eq!(
            totals(&meter.account(vec![reading(&[(22, 1, 100)])], 2)),
            [("m22", 1, 100)]
        );
        // Not written: the next reading adds to it.
        let deltas = meter.account(vec![reading(&[(22, 3, 300)])], 2);
        assert_eq!(totals(&deltas), [("m22", 3, 300)]);
        meter.written();
        assert!(meter.account(vec![reading(&[(22, 3, 300)])], 2).is_empty());
    }

    #[test]
    fn per_mapping_series_exist_only_under_the_limit_and_only_for_programmed_mappings() {
        let labels = |id: &str| MappingLabels {
            mapping_id: id.into(),
            router_id: "r1".into(),
        };
        let mut meter = UsageMeter::new(Duration::from_secs(30), 2);
        meter.account(vec![reading(&[(22, 0, 0), (80, 0, 0)])], 2);
        meter.account(vec![reading(&[(22, 5, 500), (80, 1, 60)])], 2);
        assert_eq!(
            meter
                .metrics
                .mapping_packets
                .get(&labels("m22"))
                .unwrap()
                .get(),
            5
        );
        assert_eq!(
            meter
                .metrics
                .mapping_bytes
                .get(&labels("m80"))
                .unwrap()
                .get(),
            60
        );
        // m80 is no longer programmed: its series goes, m22's keeps its count.
        let mut only_22 = reading(&[(22, 6, 600)]);
        only_22.owners.remove(&key(80));
        meter.account(vec![only_22], 1);
        assert!(meter.metrics.mapping_packets.get(&labels("m80")).is_none());
        assert_eq!(
            meter
                .metrics
                .mapping_packets
                .get(&labels("m22"))
                .unwrap()
                .get(),
            6
        );
        // Past the limit: no per-mapping series, the node's totals go on (port 80's element
        // is new since the last reading: its packet counts).
        meter.account(vec![reading(&[(22, 7, 700), (80, 1, 60)])], 3);
        assert!(meter.series.is_empty());
        assert!(meter.metrics.mapping_packets.get(&labels("m22")).is_none());
        assert_eq!(meter.metrics.packets.get(), 9);
    }

    #[test]
    fn a_backend_that_cannot_count_gives_nothing() {
        let mut meter = UsageMeter::new(Duration::from_secs(30), 10);
        let mut r = reading(&[]);
        r.counts = None;
        assert!(meter.account(vec![r], 2).is_empty());
        let mut r = reading(&[]);
        r.counts = None;
        assert!(meter.account(vec![r], 2).is_empty());
    }
}
