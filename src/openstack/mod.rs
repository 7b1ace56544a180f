//! OpenStack: the service's own client (credentials from `clouds.yaml`, a Keystone session,
//! Neutron reads) and the facts about routers and ports that mappings are checked against.
//!
//! The API asks a [`RouterDirectory`]: does the router exist, whose is it, what is its gateway
//! address, which subnets does it serve, which routers does a project have, whose is a port and
//! what are its addresses.
//! [`NeutronDirectory`] answers from Neutron; [`NamespaceDirectory`] reads the router facts
//! from the router namespaces on this node, for a node that runs without OpenStack credentials
//! (it knows no ports); tests use `testbed::StaticDirectory`.

pub mod cache;
pub mod clouds;
pub mod metrics;
mod namespaces;
pub mod neutron;
pub mod session;
pub mod tokens;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use cache::CachedDirectory;
pub use metrics::CallMetrics;
pub use namespaces::NamespaceDirectory;
pub use neutron::NeutronDirectory;
pub use session::{Session, TokenInfo};

/// Errors of the OpenStack client, naming the service and what failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenStackError {
    #[error("OpenStack configuration: {what}")]
    Config { what: String },

    #[error("the clouds.yaml {}", path.display())]
    CloudsFile {
        path: std::path::PathBuf,
        #[source]
        source: clouds::CloudsError,
    },

    #[error("{service} at {url} did not answer within the request timeout")]
    Timeout { service: &'static str, url: String },

    #[error("{service} at {url} is unreachable")]
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
        if source.is_timeout() {
            return OpenStackError::Timeout {
                service,
                url: url.to_string(),
            };
        }
        OpenStackError::Unreachable {
            service,
            url: url.to_string(),
            source: source.without_url(),
        }
    }
}

/// A fixed IPv4 address of a port, and the subnet it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIp {
    pub ip: Ipv4Addr,
    /// `None` where the source does not say.
    pub subnet_id: Option<String>,
}

/// What PRaaS needs to know about a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub id: String,
    pub project_id: Option<String>,
    /// The instance (or other device) the port is bound to; empty when unbound.
    pub device_id: String,
    /// What owns it: `compute:<zone>` for an instance, `network:*` for Neutron's own ports.
    pub device_owner: String,
    /// Its fixed IPv4 addresses.
    pub fixed_ips: Vec<FixedIp>,
}

impl PortInfo {
    /// The fixed IP `ip`, if the port holds it.
    pub fn fixed_ip(&self, ip: Ipv4Addr) -> Option<&FixedIp> {
        self.fixed_ips.iter().find(|f| f.ip == ip)
    }

    /// Why a mapping may not point at this port, if it may not: Neutron's own ports (router
    /// interfaces, DHCP, gateways) would expose the network's infrastructure, and an unbound
    /// port has no instance behind it (the monitor removes mappings of unbound ports).
    pub fn not_mappable(&self) -> Option<String> {
        if self.device_owner.starts_with("network:") {
            Some(format!(
                "port {} belongs to Neutron ({}), not to an instance",
                self.id, self.device_owner
            ))
        } else if self.device_id.is_empty() {
            Some(format!("port {} is not bound to an instance", self.id))
        } else {
            None
        }
    }
}

/// What PRaaS needs to know about a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterInfo {
    pub id: String,
    /// Neutron's name of the router; empty where the source does not know it.
    pub name: String,
    /// Owner, when the source knows it.
    pub project_id: Option<String>,
    /// The IPv4 address of the external gateway, if the router has one.
    pub gateway_ip: Option<Ipv4Addr>,
    /// Distributed (DVR): the gateway lives in the `snat-` namespace.
    pub distributed: bool,
    /// Subnets attached to the router's internal interfaces.
    pub subnets: Vec<Ipv4Net>,
    /// Their ids, where the source knows them (Neutron does; namespaces do not).
    pub subnet_ids: Vec<String>,
}

impl RouterInfo {
    /// Whether `ip` lies in one of the router's subnets.
    pub fn serves(&self, ip: Ipv4Addr) -> bool {
        self.subnets.iter().any(|s| s.contains(&ip))
    }

    /// Whether the router reaches a port's fixed IP: its address lies in one of the router's
    /// subnets and, where both sides name subnets, its subnet is one of them. An address alone
    /// is not enough: another network can have the same range, and a port there with the same
    /// address must not make this router forward to whoever holds it on the attached one.
    pub fn reaches(&self, fixed: &FixedIp) -> bool {
        let subnet_attached = match (&fixed.subnet_id, self.subnet_ids.is_empty()) {
            (Some(id), false) => self.subnet_ids.contains(id),
            _ => true,
        };
        subnet_attached && self.serves(fixed.ip)
    }
}

/// A router as a listing shows it: whose it is and its gateway, without its interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSummary {
    pub id: String,
    /// Empty where the source does not know it.
    pub name: String,
    /// Owner, when the source knows it.
    pub project_id: Option<String>,
    /// The IPv4 address of the external gateway; without one the router carries no mappings.
    pub gateway_ip: Option<Ipv4Addr>,
    pub distributed: bool,
}

impl From<RouterInfo> for RouterSummary {
    fn from(r: RouterInfo) -> Self {
        RouterSummary {
            id: r.id,
            name: r.name,
            project_id: r.project_id,
            gateway_ip: r.gateway_ip,
            distributed: r.distributed,
        }
    }
}

/// Why the directory could not answer. Neutron's own failures stay as they were (refused
/// credentials, an error status, a timeout, no answer), so that logs and `/readyz` can tell
/// them apart.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("reading Neutron")]
    Neutron(#[from] OpenStackError),
    #[error("reading the addresses of namespace {namespace}")]
    Namespace {
        namespace: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing this node's router namespaces")]
    Placement(#[from] crate::placement::PlacementError),
    #[error("the lookup task ended abnormally")]
    Task(#[from] tokio::task::JoinError),
}

/// A source of router and port facts.
#[async_trait::async_trait]
pub trait RouterDirectory: Send + Sync {
    /// The router, or `None` if it does not exist.
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError>;

    /// The routers of `project_id`, or of every project with `None`, in id order. A router
    /// whose owner the source does not know (a router namespace) is listed for every project,
    /// as [`RouterDirectory::router`] shows it to anyone.
    async fn routers_of(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterSummary>, DirectoryError>;

    /// Routers with a gateway serving `ip`. With ports known, only the subnets of ports holding
    /// `ip` count, of `project_id`'s ports when given.
    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError>;

    /// The ids of the routers with an interface on one of `subnet_ids`, where this source
    /// knows subnets by id (Neutron); `None` where it does not, and
    /// [`RouterDirectory::routers_serving`] is asked instead.
    async fn routers_on_subnets(
        &self,
        _subnet_ids: &[String],
    ) -> Result<Option<Vec<String>>, DirectoryError> {
        Ok(None)
    }

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
