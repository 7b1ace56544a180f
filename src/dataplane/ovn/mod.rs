//! The OVN driver: port forwards on ML2/OVN clouds, as load balancers in OVN's northbound
//! database instead of netfilter rules in a namespace.
//!
//! On ML2/OVN a Neutron router is the logical router `neutron-<router_id>`; no `qrouter-`
//! namespace exists. The driver implements the same [`Backend`] as the netfilter drivers,
//! with the logical router in the role of the namespace (`RouterNamespace` named
//! `neutron-<router_id>`):
//! - [`northbound`]: the connection, a monitor-fed replica of the rows it reads, and
//!   transactions that wait until OVN reports them applied (`nb_cfg` → `hv_cfg`).
//! - [`plan`]: pure functions from the replica and a rule set to the one transaction that
//!   makes the router's load balancers match it; only rows marked as ours are touched.
//! - [`policy`]: allowed sources, as router policies of ours that drop other sources of a
//!   restricted forward at the gateway port (written in the same transaction).
//!
//! Reading back is reading the replica, which the monitor keeps current. A router's
//! [`Fingerprint`] is a hash of its view (its ports, tenant switches, our load balancers and
//! policies), computed for every router at once when the replica's generation moves: a load
//! balancer of ours deleted, edited or detached by someone else moves its router's fingerprint
//! only, and the agent's one-second check reads back and repairs that router alone.

pub mod northbound;
pub mod plan;
pub mod policy;

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

use super::{Backend, Changes, DataplaneError, Fingerprint, RouterNamespace, RuleSet};
use crate::model::NamespaceKind;
pub use northbound::{ApplyWait, Northbound, NorthboundError};

/// The OVN driver's [`Backend`].
pub struct OvnBackend {
    nb: Arc<Northbound>,
    wait: ApplyWait,
    apply_timeout: Duration,
    fingerprints: Mutex<Fingerprints>,
}

/// Every router's fingerprint at one generation of the replica.
#[derive(Default)]
struct Fingerprints {
    /// The replica's (epoch, generation) they were computed at.
    at: Option<(u64, u64)>,
    by_router: HashMap<String, Fingerprint>,
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl OvnBackend {
    /// A backend writing through `nb`, waiting for each change as `wait` says.
    pub fn new(nb: Arc<Northbound>, wait: ApplyWait, apply_timeout: Duration) -> Self {
        OvnBackend {
            nb,
            wait,
            apply_timeout,
            fingerprints: Mutex::new(Fingerprints::default()),
        }
    }

    pub fn northbound(&self) -> &Arc<Northbound> {
        &self.nb
    }

    fn error(namespace: &RouterNamespace, source: NorthboundError) -> DataplaneError {
        DataplaneError::Ovn {
            router: namespace.to_string(),
            source: Box::new(source),
        }
    }

    fn commit(
        &self,
        namespace: &RouterNamespace,
        ops: Vec<serde_json::Value>,
    ) -> Result<(), DataplaneError> {
        if ops.is_empty() {
            return Ok(());
        }
        debug!(%namespace, operations = ops.len(), "northbound transaction");
        self.nb
            .transact(ops, self.wait, self.apply_timeout)
            .map(|_| ())
            .map_err(|e| Self::error(namespace, e))
    }

    /// Writes `rules` for the router of `namespace` in one transaction.
    fn program(&self, namespace: &RouterNamespace, rules: &RuleSet) -> Result<(), DataplaneError> {
        self.program_with(namespace, |_| Cow::Borrowed(rules))
    }

    /// Writes, in one transaction, the rules `wanted` makes of what the router holds now (one
    /// view of the router, for reading back and for planning alike).
    fn program_with<'r>(
        &self,
        namespace: &RouterNamespace,
        wanted: impl FnOnce(&plan::RouterView) -> Cow<'r, RuleSet>,
    ) -> Result<(), DataplaneError> {
        let router_id = router_id(namespace)?;
        let ops = self
            .nb
            .read(|replica| {
                plan::router_view(replica, router_id).map(|view| {
                    let rules = wanted(&view);
                    unsupported(namespace, &rules, &view)?;
                    Ok(plan::plan(router_id, &view, &rules))
                })
            })
            .map_err(|e| Self::error(namespace, e))?
            .ok_or_else(|| DataplaneError::RouterMissing {
                router: namespace.to_string(),
            })??;
        self.commit(namespace, ops)
    }
}

/// The router id of `neutron-<id>`.
fn router_id(namespace: &RouterNamespace) -> Result<&str, DataplaneError> {
    match RouterNamespace::router_of(namespace.name()) {
        Some((id, NamespaceKind::OvnRouter)) => Ok(id),
        _ => Err(DataplaneError::RouterMissing {
            router: namespace.to_string(),
        }),
    }
}

/// What this driver cannot program is refused, never programmed in part.
///
/// Masquerade: OVN 23.03 has no way to source-NAT the connections of one load balancer on a
/// router with a distributed gateway port (Neutron's routers): `lb_force_snat_ip` works only
/// on gateway routers and would apply to every load balancer of the router, Neutron's and
/// Octavia's too. Allowed sources need a gateway port to be enforced at.
fn unsupported(
    namespace: &RouterNamespace,
    rules: &RuleSet,
    view: &plan::RouterView,
) -> Result<(), DataplaneError> {
    let what = if !rules.masqueraded.is_empty() {
        MASQUERADE_REFUSED
    } else if !rules.restricted.is_empty() && view.gateway_ports.is_empty() {
        "allowed sources on a router without an external gateway"
    } else {
        return Ok(());
    };
    Err(DataplaneError::Unsupported {
        backend: "ovn",
        namespace: namespace.to_string(),
        what,
    })
}

/// Why masquerade is refused, in the words an operator reads in the mapping's error.
pub const MASQUERADE_REFUSED: &str = "masquerade (the VM seeing the router as the source): \
    OVN 23.03 cannot source-NAT one forward on a Neutron router without changing every load \
    balancer of the router";

impl OvnBackend {
    /// Deletes the load balancers of ours whose logical router is gone (Neutron deleted the
    /// router: OVN keeps load balancers, a root table, when nothing references them). Returns
    /// how many routers were cleaned.
    pub fn remove_orphans(&self) -> Result<usize, DataplaneError> {
        let orphans = self
            .nb
            .read(|replica| {
                let routers = plan::neutron_routers(replica);
                plan::routers_with_ours(replica)
                    .into_iter()
                    .filter(|id| !routers.contains(id))
                    .map(|id| {
                        let ops = plan::removal(replica, &id);
                        (id, ops)
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| Self::error(&RouterNamespace::named("northbound"), e))?;
        let count = orphans.len();
        for (id, ops) in orphans {
            let namespace = RouterNamespace::for_router(&id, NamespaceKind::OvnRouter);
            tracing::info!(router = %namespace, "router gone from OVN: removing its load balancers");
            // Nothing to wait for: no chassis serves a router that is gone.
            self.nb
                .transact(ops, ApplyWait::None, self.apply_timeout)
                .map_err(|e| Self::error(&namespace, e))?;
        }
        Ok(count)
    }
}

impl Backend for OvnBackend {
    fn name(&self) -> &'static str {
        "ovn"
    }

    fn full_sync(
        &self,
        namespace: &RouterNamespace,
        rules: &RuleSet,
    ) -> Result<(), DataplaneError> {
        self.program(namespace, rules)
    }

    /// The changes applied to what the replica shows; the transaction also repairs whatever
    /// else differs.
    fn update(&self, namespace: &RouterNamespace, changes: &Changes) -> Result<(), DataplaneError> {
        self.program_with(namespace, |view| {
            let mut rules = plan::rules_of(view);
            rules.apply(changes);
            Cow::Owned(rules)
        })
    }

    fn read_back(&self, namespace: &RouterNamespace) -> Result<Option<RuleSet>, DataplaneError> {
        let router_id = router_id(namespace)?;
        self.nb
            .read(|replica| plan::router_view(replica, router_id).map(|view| plan::rules_of(&view)))
            .map_err(|e| Self::error(namespace, e))
    }

    fn remove(&self, namespace: &RouterNamespace) -> Result<(), DataplaneError> {
        let router_id = router_id(namespace)?;
        let ops = self
            .nb
            .read(|replica| plan::removal(replica, router_id))
            .map_err(|e| Self::error(namespace, e))?;
        self.commit(namespace, ops)
    }

    /// The logical router's uuid (a router deleted and created again has another) and a hash
    /// of its view. Computed for every router in one pass when the replica's generation has
    /// moved since the last call, so that a change elsewhere in the database leaves the
    /// fingerprints of the routers it does not touch as they were.
    fn fingerprint(
        &self,
        namespace: &RouterNamespace,
    ) -> Result<Option<Fingerprint>, DataplaneError> {
        let router_id = router_id(namespace)?;
        let mut cache = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        let at = self
            .nb
            .generation()
            .map_err(|e| Self::error(namespace, e))?;
        if cache.at != Some(at) {
            *cache = self
                .nb
                .read(|replica| Fingerprints {
                    at: Some((replica.epoch, replica.generation)),
                    by_router: plan::router_views(replica)
                        .into_iter()
                        .map(|(id, view)| {
                            let fingerprint = Fingerprint {
                                namespace: hash_of(&view.uuid),
                                state: hash_of(&view),
                            };
                            (id, fingerprint)
                        })
                        .collect(),
                })
                .map_err(|e| Self::error(namespace, e))?;
        }
        Ok(cache.by_router.get(router_id).copied())
    }
}
