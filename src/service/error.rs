//! What the mapping service refuses, and why, in the terms of a mapping's fields.

use std::net::Ipv4Addr;

use crate::openstack::DirectoryError;
use crate::store::StoreError;

/// Why a request to the mapping service was refused. Each protocol translates these into its
/// own answers (REST v1: status and code; the original protocol: its `ERROR` body).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's role does not allow it.
    #[error("your role may not {action}")]
    Forbidden { action: &'static str },

    /// A mapping, router or port that does not exist or is not the caller's to see.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    /// The request breaks a rule; `field` names the request field (REST v1's name).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },

    #[error("router {router_id} has no external gateway")]
    NoGateway { router_id: String },

    #[error("router {router_id} no longer exists")]
    RouterGone { router_id: String },

    /// The mapping's port was deleted, or may no longer be mapped (`reason` says why).
    #[error("{reason}")]
    PortGone { port_id: String, reason: String },

    #[error("port {port_id} no longer holds {ip}; the monitor follows it")]
    AddressChanged { port_id: String, ip: Ipv4Addr },

    #[error("{ip} is no longer on a subnet attached to router {router_id}")]
    AddressUnreachable { ip: Ipv4Addr, router_id: String },

    /// The store refused or failed the change (a port in use, a socket mapped, a range
    /// exhausted, the project's quota exceeded, or the database unavailable).
    #[error("the mapping store refused the change")]
    Store(#[from] StoreError),

    /// Neutron (or the router directory in its place) could not be read.
    #[error("the router directory could not be read")]
    Directory(#[from] DirectoryError),
}

impl ServiceError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: &str) -> Self {
        ServiceError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}
