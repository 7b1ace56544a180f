//! Conntrack cleanup (placeholder until the implementation lands).
use super::{DataplaneError, ExternalKey, RouterNamespace, Target};

/// Deletes the conntrack entries of forwards that were removed or re-pointed.
pub fn delete_flows(
    _namespace: &RouterNamespace,
    _stale: &[(ExternalKey, Target)],
) -> Result<usize, DataplaneError> {
    unimplemented!("conntrack cleanup")
}
