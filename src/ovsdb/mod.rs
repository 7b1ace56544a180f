//! A small OVSDB client (RFC 7047): what the OVN driver needs of OVN's northbound database and
//! nothing more: `transact`, `monitor` with its notifications, `echo` both ways, over `tcp:`,
//! `ssl:` and `unix:` remotes. See `docs/design.md` ("OVSDB client") for why it is our own.
//!
//! - [`Remote`]: the remote syntax of OVS and Neutron (`tcp:IP:PORT`, lists with commas).
//! - [`Connection`]: one JSON-RPC connection with its reader thread.
//! - [`value`]: OVSDB's JSON forms of uuids, sets and maps, both ways.

mod client;
mod remote;
mod transport;
pub mod value;

use std::time::Duration;

pub use client::{Connection, UpdateHandler};
pub use remote::Remote;
pub use transport::{TlsError, TlsFiles};

/// Errors of the OVSDB client. Each names the server; the source is attached, not repeated.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("invalid OVSDB remote {remote:?}: {reason}")]
    Remote { remote: String, reason: String },

    #[error("cannot connect to OVSDB server {remote}")]
    Connect {
        remote: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot set up TLS to OVSDB server {remote}")]
    Tls {
        remote: String,
        #[source]
        source: TlsError,
    },

    #[error("cannot send to OVSDB server {remote}")]
    Send {
        remote: String,
        #[source]
        source: std::io::Error,
    },

    #[error("lost the connection to OVSDB server {remote}: {reason}")]
    Disconnected { remote: String, reason: String },

    #[error("OVSDB server {remote} did not answer {method} within {timeout:?}")]
    Timeout {
        remote: String,
        method: &'static str,
        timeout: Duration,
    },

    #[error("OVSDB server {remote} refused {method}: {error} {details}")]
    Rpc {
        remote: String,
        method: &'static str,
        error: String,
        details: String,
    },

    #[error("OVSDB server {remote} refused the transaction at {operation}: {error} {details}")]
    Transaction {
        remote: String,
        operation: String,
        error: String,
        details: String,
    },

    #[error("OVSDB server {remote} sent something unexpected: {detail}")]
    Protocol { remote: String, detail: String },
}

impl OvsdbError {
    /// Whether the connection is gone (or never came): connecting again may help.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            OvsdbError::Connect { .. }
                | OvsdbError::Send { .. }
                | OvsdbError::Disconnected { .. }
                | OvsdbError::Timeout { .. }
        )
    }
}
