//! Placement on ML2/OVN clouds: no router lives on a node. One agent anywhere (the OVN worker)
//! programs every router of the northbound database, while it holds the OVN worker lease in
//! the database; the others stand by and serve nothing. A router is served as the logical
//! router `neutron-<id>` (see [`crate::dataplane::ovn`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{Placement, PlacementError};
use crate::dataplane::ovn::{plan, Northbound};
use crate::model::{NamespaceKind, RouterNamespace};

/// The routers of the northbound database, while `active`.
pub struct OvnRouters {
    nb: Arc<Northbound>,
    active: Arc<AtomicBool>,
}

impl OvnRouters {
    /// Serves the routers `nb` holds while `active` is set (by the lease keeper).
    pub fn new(nb: Arc<Northbound>, active: Arc<AtomicBool>) -> Self {
        OvnRouters { nb, active }
    }
}

impl Placement for OvnRouters {
    fn namespace(&self, router_id: &str, _distributed: bool) -> RouterNamespace {
        RouterNamespace::for_router(router_id, NamespaceKind::OvnRouter)
    }

    /// Every `neutron-<id>` logical router, as the replica shows them; nothing on standby.
    fn served(&self) -> Result<BTreeSet<RouterNamespace>, PlacementError> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(BTreeSet::new());
        }
        let routers = self
            .nb
            .read(plan::neutron_routers)
            .map_err(|e| PlacementError::Ovn(Box::new(e)))?;
        Ok(routers.iter().map(|id| self.namespace(id, false)).collect())
    }
}
