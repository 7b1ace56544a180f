//! OpenStack: the service's own client (credentials from `clouds.yaml`, a Keystone session,
//! Neutron reads) and the facts about routers and ports that mappings are checked against.
//!
//! The API asks a [`RouterDirectory`]: does the router exist, whose is it, what is its gateway
//! address, which subnets does it serve, whose is a port and what are its addresses.
//! [`NeutronDirectory`] answers from Neutron; [`NamespaceDirectory`] reads the router facts
//! from the router namespaces on this node, for a node that runs without OpenStack credentials
//! (it knows no ports); [`StaticDirectory`] serves tests.

pub mod clouds;
mod namespaces;
pub mod neutron;
pub mod session;
pub mod tokens;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use namespaces::NamespaceDirectory;
pub use neutron::NeutronDirectory;
pub use session::{Session, TokenInfo};

/// Errors of the OpenStack client, naming the service and what failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenStackError {
    #[error("OpenStack configuration: {what}")]
    Config { what: String },

    #[error("{service} at {url} is unreachable: {source}")]
    Unreachable {
        service: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("Keystone at {auth_url} refused the service's credentials (HTTP {status})")]
    LoginRefused { auth_url: String, status: u16 },

    #[error("{service} answered {url} with HTTP {status}: {body}")]
    Status {
        service: &'static str,
        url: String,
        status: u16,
        body: String,
    },

    #[error("{service} sent something unexpected: {what}")]
    Malformed { service: &'static str, what: String },

    #[error("the catalog has no {interface} endpoint of type {service_type}{}", region.as_deref().map(|r| format!(" in region {r}")).unwrap_or_default())]
    NoEndpoint {
        service_type: String,
        interface: &'static str,
        region: Option<String>,
    },
}

impl OpenStackError {
    fn unreachable(service: &'static str, url: &str, source: reqwest::Error) -> Self {
        OpenStackError::Unreachable {
            service,
            url: url.to_string(),
            source: source.without_url(),
        }
    }
}

/// What PRaaS needs to know about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub id: String,
    pub project_id: Option<String>,
    /// Its fixed IPv4 addresses.
    pub addresses: Vec<Ipv4Addr>,
}

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

impl From<OpenStackError> for DirectoryError {
    fn from(e: OpenStackError) -> Self {
        DirectoryError(e.to_string())
    }
}

/// A source of router and port facts.
#[async_trait::async_trait]
pub trait RouterDirectory: Send + Sync {
    /// The router, or `None` if it does not exist.
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError>;

    /// Routers with a gateway serving `ip`. With ports known, only the subnets of ports holding
    /// `ip` count, of `project_id`'s ports when given.
    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError>;

    /// Whether this source knows ports; if not, the port checks are left out.
    fn knows_ports(&self) -> bool;

    /// The port, or `None` if it does not exist.
    async fn port(&self, id: &str) -> Result<Option<PortInfo>, DirectoryError>;

    /// Ports holding `ip` as a fixed address, of `project_id` when given.
    async fn ports_with_address(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError>;
}

/// Fixed facts, for tests and demos.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    pub routers: Vec<RouterInfo>,
    /// `None`: this directory knows no ports (as the namespace directory).
    pub ports: Option<Vec<PortInfo>>,
}

#[async_trait::async_trait]
impl RouterDirectory for StaticDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        Ok(self.routers.iter().find(|r| r.id == id).cloned())
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        _project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        Ok(self
            .routers
            .iter()
            .filter(|r| r.gateway_ip.is_some() && r.serves(ip))
            .cloned()
            .collect())
    }

    fn knows_ports(&self) -> bool {
        self.ports.is_some()
    }

    async fn port(&self, id: &str) -> Result<Option<PortInfo>, DirectoryError> {
        Ok(self.ports.iter().flatten().find(|p| p.id == id).cloned())
    }

    async fn ports_with_address(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        Ok(self
            .ports
            .iter()
            .flatten()
            .filter(|p| p.addresses.contains(&ip))
            .filter(|p| project_id.is_none_or(|want| p.project_id.as_deref() == Some(want)))
            .cloned()
            .collect())
    }
}
