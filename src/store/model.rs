//! What the store keeps: PAT mappings and their life-cycle status.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Forward, PortRange, Protocol};

/// Where a mapping stands between the API and the kernel.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Stored; not yet confirmed in the router namespace.
    Pending,
    /// Programmed and verified in the router namespace.
    Active,
    /// Could not be programmed; `status_reason` says why.
    Error,
    /// Kept but not forwarding (e.g. the router lost its gateway).
    Down,
}

impl Status {
    /// Every status, in the order they are shown.
    pub const ALL: [Status; 4] = [Status::Pending, Status::Active, Status::Error, Status::Down];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Active => "ACTIVE",
            Status::Error => "ERROR",
            Status::Down => "DOWN",
        }
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(Status::Pending),
            "ACTIVE" => Ok(Status::Active),
            "ERROR" => Ok(Status::Error),
            "DOWN" => Ok(Status::Down),
            other => Err(format!("unknown status {other:?}")),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One PAT mapping: `external_ip_address:external_ports/protocol` on a router's gateway is
/// forwarded to `internal_ip_address:internal_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub id: String,
    pub project_id: String,
    pub router_id: String,
    /// A distributed (DVR) router: its gateway lives in the `snat-` namespace.
    pub distributed: bool,
    pub external_ip_address: Ipv4Addr,
    pub protocol: Protocol,
    pub external_ports: PortRange,
    pub internal_ip_address: Ipv4Addr,
    pub internal_port_id: Option<String>,
    pub internal_ports: PortRange,
    pub description: String,
    pub allowed_cidrs: Vec<Ipv4Net>,
    pub masquerade: bool,
    pub status: Status,
    pub status_reason: Option<String>,
    /// Held out of the dataplane by the monitor (see [`Hold`]).
    pub held: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl Mapping {
    /// The mapping as the dataplane programs it.
    pub fn forward(&self) -> Forward {
        Forward {
            id: self.id.clone(),
            protocol: self.protocol,
            external_ip: self.external_ip_address,
            external_ports: self.external_ports,
            internal_ip: self.internal_ip_address,
            internal_ports: self.internal_ports,
            allowed_cidrs: self.allowed_cidrs.clone(),
            masquerade: self.masquerade,
        }
    }
}

/// How the external port of a new mapping is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalPorts {
    /// The caller asked for these ports.
    Explicit(PortRange),
    /// Allocate `len` consecutive ports from the router's range.
    Allocate { len: u32 },
}

/// A mapping to create. The caller (the API) has already checked who may create it.
#[derive(Debug, Clone)]
pub struct NewMapping {
    pub project_id: String,
    pub router_id: String,
    pub distributed: bool,
    pub external_ip_address: Ipv4Addr,
    pub protocol: Protocol,
    pub external_ports: ExternalPorts,
    pub internal_ip_address: Ipv4Addr,
    pub internal_port_id: Option<String>,
    pub internal_ports: PortRange,
    pub description: String,
    pub allowed_cidrs: Vec<Ipv4Net>,
    pub masquerade: bool,
}

/// Changes to an existing mapping; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct MappingUpdate {
    pub external_ports: Option<PortRange>,
    pub internal_ports: Option<PortRange>,
    pub description: Option<String>,
    pub allowed_cidrs: Option<Vec<Ipv4Net>>,
    pub masquerade: Option<bool>,
    /// The VM's new address (the monitor re-points mappings of ports whose IP changed).
    pub internal_ip_address: Option<Ipv4Addr>,
    /// The router's new gateway address.
    pub external_ip_address: Option<Ipv4Addr>,
    /// The router was converted to or from DVR.
    pub distributed: Option<bool>,
    pub hold: Option<Hold>,
}

/// The monitor's hold on a mapping: while held, it is not programmed, and its status and
/// reason say why (`DOWN` while its router has no gateway or its port is gone, `ERROR` when
/// no address of its port is on the router's subnets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    Keep { status: Status, reason: String },
    Release,
}

/// Selects mappings; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub project_id: Option<String>,
    pub router_id: Option<String>,
    pub internal_port_id: Option<String>,
    pub internal_ip_address: Option<Ipv4Addr>,
    pub protocol: Option<Protocol>,
    /// Mappings whose external range contains this port.
    pub external_port: Option<u16>,
    /// At most this many, after `marker` (an id) in id order.
    pub limit: Option<u32>,
    pub marker: Option<String>,
}
