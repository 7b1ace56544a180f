//! The vocabulary every part of PRaaS shares: protocols, port ranges, a mapping as the
//! dataplane programs it ([`Forward`]), the router namespaces that carry a router's gateway,
//! the monitor's choice for deleted ports, and quota limits. The store, the mapping service, the placement and
//! the dataplane all import these from here, so that none of them imports another for its types.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

/// Largest number of ports one forward may cover. A range expands to one map element per port;
/// the bound keeps a single request from exploding a namespace's rule set.
pub const MAX_RANGE_LEN: u32 = 4096;

/// Values that are not a protocol or a port range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown protocol {0:?} (expected tcp or udp)")]
    UnknownProtocol(String),
    #[error("port 0 is not a valid port")]
    PortZero,
    #[error("port range {first}:{last} ends before it starts")]
    ReversedRange { first: u16, last: u16 },
    #[error("{0:?} is not a port number (1-65535)")]
    NotAPort(String),
    #[error("unknown value {value:?} (expected {expected})")]
    UnknownValue {
        value: String,
        expected: &'static str,
    },
    #[error("{0} is not a quota limit (expected -1 for unlimited, or a whole number from 0 to {MAX_QUOTA_LIMIT})")]
    NotALimit(String),
}

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// IANA protocol number, as conntrack and nftables' `meta l4proto` carry it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ModelError::UnknownProtocol(s.to_string())),
        }
    }
}

/// An inclusive range of ports, `first..=last`, never containing port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, ModelError> {
        if first == 0 {
            return Err(ModelError::PortZero);
        }
        if last < first {
            return Err(ModelError::ReversedRange { first, last });
        }
        Ok(PortRange { first, last })
    }

    pub fn single(port: u16) -> Result<Self, ModelError> {
        Self::new(port, port)
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range holds at least one port. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = ModelError;

    /// Parses `N` or `N:M` (Neutron's notation for port ranges).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| ModelError::NotAPort(p.to_string()))
        };
        match s.split_once(':') {
            Some((a, b)) => PortRange::new(parse(a)?, parse(b)?),
            None => PortRange::single(parse(s)?),
        }
    }
}
/// One port forward: traffic to `external_ip:external_ports/protocol` is sent to
/// `internal_ip:internal_ports`.
///
/// `internal_ports` has the same length as `external_ports` (port `first + k` goes to internal
/// port `first + k`), or is a single port that every external port goes to, as Neutron allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Identifier of the mapping this forward belongs to; used in errors and logs.
    pub id: String,
    pub protocol: Protocol,
    /// The router's external gateway address.
    pub external_ip: Ipv4Addr,
    pub external_ports: PortRange,
    pub internal_ip: Ipv4Addr,
    pub internal_ports: PortRange,
    /// Sources allowed to use the forward; empty means everyone.
    pub allowed_cidrs: Vec<Ipv4Net>,
    /// Rewrite the client's address to the router's internal address, so the VM answers the
    /// router even without a route back (the original PRaaS always did this). Off by default so
    /// that the VM sees the real client.
    pub masquerade: bool,
}

/// Which namespace holds a router's gateway: `qrouter-` for legacy and HA routers, `snat-` for
/// distributed (DVR) routers, whose centralized SNAT part carries the gateway port. On ML2/OVN
/// clouds there is no namespace: the router is the logical router `neutron-<id>` in OVN's
/// northbound database, which the OVN driver programs in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamespaceKind {
    Qrouter,
    Snat,
    OvnRouter,
}

impl NamespaceKind {
    /// The kind that carries the gateway of a router, distributed (DVR) or not.
    pub fn of_router(distributed: bool) -> Self {
        if distributed {
            NamespaceKind::Snat
        } else {
            NamespaceKind::Qrouter
        }
    }

    pub fn prefix(self) -> &'static str {
        match self {
            NamespaceKind::Qrouter => "qrouter-",
            NamespaceKind::Snat => "snat-",
            NamespaceKind::OvnRouter => "neutron-",
        }
    }
}

/// A router namespace on a network node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterNamespace {
    name: String,
}

impl RouterNamespace {
    pub fn for_router(router_id: &str, kind: NamespaceKind) -> Self {
        RouterNamespace {
            name: format!("{}{router_id}", kind.prefix()),
        }
    }

    /// A namespace by its literal name (tests and benchmarks use their own names).
    pub fn named(name: impl Into<String>) -> Self {
        RouterNamespace { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The router and kind of a `qrouter-<id>`, `snat-<id>` or `neutron-<id>` name.
    pub fn router_of(name: &str) -> Option<(&str, NamespaceKind)> {
        [
            NamespaceKind::Qrouter,
            NamespaceKind::Snat,
            NamespaceKind::OvnRouter,
        ]
        .into_iter()
        .find_map(|kind| Some((name.strip_prefix(kind.prefix())?, kind)))
        .filter(|(id, _)| !id.is_empty())
    }
}

impl fmt::Display for RouterNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// What the monitor does with the mappings of a deleted port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortGone {
    /// Delete the mapping, as Neutron deletes the port forwardings of a deleted port.
    #[default]
    Delete,
    /// Keep it, held `DOWN`, for an operator to look at.
    Down,
}

impl PortGone {
    pub fn as_str(self) -> &'static str {
        match self {
            PortGone::Delete => "delete",
            PortGone::Down => "down",
        }
    }
}

impl FromStr for PortGone {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delete" => Ok(PortGone::Delete),
            "down" => Ok(PortGone::Down),
            other => Err(ModelError::UnknownValue {
                value: other.to_string(),
                expected: "delete or down",
            }),
        }
    }
}

/// Largest finite quota limit: more than any cloud's mappings or ports, small enough for every
/// database column and JSON reader.
pub const MAX_QUOTA_LIMIT: u32 = i32::MAX as u32;

/// How much of a resource a project may hold. The file and the API write it as Neutron's
/// quotas do: a whole number, `-1` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Unlimited,
    AtMost(u32),
}

impl Limit {
    /// `-1`: unlimited; 0 up to [`MAX_QUOTA_LIMIT`]: at most that many.
    pub fn from_i64(value: i64) -> Result<Limit, ModelError> {
        match value {
            -1 => Ok(Limit::Unlimited),
            n if (0..=i64::from(MAX_QUOTA_LIMIT)).contains(&n) => Ok(Limit::AtMost(n as u32)),
            n => Err(ModelError::NotALimit(n.to_string())),
        }
    }

    /// `-1` for unlimited, as the file and the API write it.
    pub fn as_i64(self) -> i64 {
        match self {
            Limit::Unlimited => -1,
            Limit::AtMost(n) => i64::from(n),
        }
    }

    /// Whether `total` of the resource stays within the limit.
    pub fn allows(self, total: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::AtMost(n) => total <= u64::from(n),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_i64())
    }
}

impl FromStr for Limit {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ModelError::NotALimit(format!("{s:?}")));
        }
        s.parse::<i64>()
            .map_err(|_| ModelError::NotALimit(format!("{s:?}")))
            .and_then(Limit::from_i64)
            .map_err(|_| ModelError::NotALimit(format!("{s:?}")))
    }
}

/// What a project's quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// Mappings, whatever their size.
    Mappings,
    /// External ports: a mapping of a range of N ports holds N.
    ExternalPorts,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Mappings, Resource::ExternalPorts];

    /// The name in the API and the database (`mappings`, `external_ports`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Mappings => "mappings",
            Resource::ExternalPorts => "external_ports",
        }
    }
}

impl fmt::Display for Resource {
    /// In words, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Mappings => "mappings",
            Resource::ExternalPorts => "external ports",
        })
    }
}

impl FromStr for Resource {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ModelError::UnknownValue {
                value: s.to_string(),
                expected: "mappings or external_ports",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_in_neutrons_notation() {
        assert_eq!("80".parse::<PortRange>().unwrap().len(), 1);
        assert_eq!("80:90".parse::<PortRange>().unwrap().len(), 11);
        assert_eq!("0".parse::<PortRange>(), Err(ModelError::PortZero));
        assert_eq!(
            "90:80".parse::<PortRange>(),
            Err(ModelError::ReversedRange {
                first: 90,
                last: 80
            })
        );
        assert!("70000".parse::<PortRange>().is_err());
        assert!("a:b".parse::<PortRange>().is_err());
    }

    #[test]
    fn namespace_names_tell_their_router_and_kind() {
        let ns = RouterNamespace::for_router("r1", NamespaceKind::of_router(true));
        assert_eq!(ns.name(), "snat-r1");
        assert_eq!(
            RouterNamespace::router_of("qrouter-r2"),
            Some(("r2", NamespaceKind::Qrouter))
        );
        assert_eq!(RouterNamespace::router_of("snat-"), None);
        assert_eq!(RouterNamespace::router_of("fip-x"), None);
    }

    #[test]
    fn quota_limits_are_minus_one_or_a_bounded_whole_number() {
        assert_eq!("-1".parse::<Limit>(), Ok(Limit::Unlimited));
        assert_eq!("0".parse::<Limit>(), Ok(Limit::AtMost(0)));
        assert_eq!(
            "2147483647".parse::<Limit>(),
            Ok(Limit::AtMost(MAX_QUOTA_LIMIT))
        );
        for bad in ["-2", "2147483648", "", "-", "1.5", "ten", "+3", " 3"] {
            let e = bad.parse::<Limit>().unwrap_err().to_string();
            assert!(e.contains("expected -1 for unlimited"), "{bad}: {e}");
        }
        assert_eq!(Limit::from_i64(-5), Err(ModelError::NotALimit("-5".into())));
        assert!(Limit::AtMost(10).allows(10) && !Limit::AtMost(10).allows(11));
        assert!(Limit::Unlimited.allows(u64::MAX));
        assert_eq!(Limit::Unlimited.to_string(), "-1");
        assert_eq!(
            "external_ports".parse::<Resource>(),
            Ok(Resource::ExternalPorts)
        );
    }
}
