//! Facts about routers and ports that mappings are checked against.
//!
//! The API asks a [`RouterDirectory`]: does the router exist, whose is it, what is its gateway
//! address, which subnets does it serve. The Neutron client (coming with Keystone
//! authentication) answers from OpenStack; until then, and for a node that runs without
//! OpenStack credentials, [`NamespaceDirectory`] reads the facts from the router namespaces on
//! this node, and [`StaticDirectory`] serves tests.

mod namespaces;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use namespaces::NamespaceDirectory;

/// What PRaaS needs to know about a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterInfo {
    pub id: String,
    /// Owner, when the source knows it.
    pub project_id: Option<String>,
    /// The IPv4 address of the external gateway, if the router has one.
    pub gateway_ip: Option<Ipv4Addr>,
    /// Distributed (DVR): the gateway lives in the `snat-` namespace.
    pub distributed: bool,
    /// Subnets attached to the router's internal interfaces.
    pub subnets: Vec<Ipv4Net>,
}

impl RouterInfo {
    pub fn serves(&self, ip: Ipv4Addr) -> bool {
        self.subnets.iter().any(|s| s.contains(&ip))
    }
}

/// Why the directory could not answer.
#[derive(Debug, thiserror::Error)]
#[error("router directory unavailable: {0}")]
pub struct DirectoryError(pub String);

/// A source of router facts.
#[async_trait::async_trait]
pub trait RouterDirectory: Send + Sync {
    /// The router, or `None` if it does not exist.
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError>;

    /// Routers with a gateway whose subnets contain `ip`.
    async fn routers_serving(&self, ip: Ipv4Addr) -> Result<Vec<RouterInfo>, DirectoryError>;

    /// The fixed IPv4 addresses of a port, when the source knows ports.
    async fn port_addresses(&self, port_id: &str) -> Result<Option<Vec<Ipv4Addr>>, DirectoryError>;
}

/// Fixed facts, for tests and demos.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    pub routers: Vec<RouterInfo>,
    /// (port id, addresses)
    pub ports: Vec<(String, Vec<Ipv4Addr>)>,
}

#[async_trait::async_trait]
impl RouterDirectory for StaticDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        Ok(self.routers.iter().find(|r| r.id == id).cloned())
    }

    async fn routers_serving(&self, ip: Ipv4Addr) -> Result<Vec<RouterInfo>, DirectoryError> {
        Ok(self
            .routers
            .iter()
            .filter(|r| r.gateway_ip.is_some() && r.serves(ip))
            .cloned()
            .collect())
    }

    async fn port_addresses(&self, port_id: &str) -> Result<Option<Vec<Ipv4Addr>>, DirectoryError> {
        Ok(self
            .ports
            .iter()
            .find(|(id, _)| id == port_id)
            .map(|(_, a)| a.clone()))
    }
}
