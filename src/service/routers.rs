//! Routers as their projects see them: Neutron's facts (name, owner, gateway) and what the
//! router's mappings hold of the configured external port range, so that a tenant knows which
//! routers can carry mappings and which ports are still free.
//!
//! The policy is that of listing mappings: a reader or member sees its project's routers, an
//! admin any project's; another project's router is "not found". Neutron is read with the
//! service's credentials; the counts come from the store's port claims, in one grouped query
//! for all the routers listed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{forbidden_unless, Caller, MappingService, ServiceError};
use crate::model::{PortRange, Protocol};
use crate::openstack::RouterSummary;
use crate::store::{PortCount, StoreError};

/// What a router's mappings of one protocol hold of the configured range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolPorts {
    /// Mappings of this protocol on the router (wherever their ports are).
    pub mappings: u64,
    /// Ports of the range claimed by them.
    pub used: u64,
    /// Ports of the range left.
    pub free: u64,
    /// The free ports as ranges, in order, when asked for.
    pub free_ranges: Option<Vec<PortRange>>,
}

/// A router, with what its mappings hold of the configured external port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPorts {
    pub id: String,
    /// Neutron's name; empty where the directory does not know it.
    pub name: String,
    /// `None` where the directory does not know the owner (router namespaces).
    pub project_id: Option<String>,
    /// `None`: no external gateway (with an IPv4 address), so no mapping can be created on it.
    pub gateway_ip: Option<Ipv4Addr>,
    pub distributed: bool,
    /// `[praas] router_port_range`.
    pub range: PortRange,
    pub tcp: ProtocolPorts,
    pub udp: ProtocolPorts,
}

impl RouterPorts {
    /// Every mapping on the router.
    pub fn mappings(&self) -> u64 {
        self.tcp.mappings + self.udp.mappings
    }

    fn new(router: RouterSummary, range: PortRange, count: impl Fn(Protocol) -> PortCount) -> Self {
        let ports = |protocol| {
            let c = count(protocol);
            ProtocolPorts {
                mappings: c.mappings,
                used: c.ports_in_range,
                free: u64::from(range.len()).saturating_sub(c.ports_in_range),
                free_ranges: None,
            }
        };
        RouterPorts {
            tcp: ports(Protocol::Tcp),
            udp: ports(Protocol::Udp),
            id: router.id,
            name: router.name,
            project_id: router.project_id,
            gateway_ip: router.gateway_ip,
            distributed: router.distributed,
            range,
        }
    }
}

/// The ports of `range` not in `used`, as the fewest ranges, in order.
pub fn free_ranges(range: PortRange, used: &BTreeSet<u16>) -> Vec<PortRange> {
    let mut free = vec![];
    // The first port of the free run being walked, if any.
    let mut start: Option<u16> = None;
    for port in range.iter() {
        match (used.contains(&port), start) {
            (false, None) => start = Some(port),
            (true, Some(first)) => {
                free.push(PortRange::new(first, port - 1).expect("first <= port - 1"));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        free.push(PortRange::new(first, range.last()).expect("first <= last"));
    }
    free
}

impl MappingService {
    /// The routers the caller may see, with what their mappings hold: `project_id` asks for
    /// one project's (another's, unless admin, is an empty listing, as for mappings); without
    /// it an admin sees every project's and anyone else their own.
    pub async fn routers(
        &self,
        caller: &Caller,
        project_id: Option<String>,
    ) -> Result<Vec<RouterPorts>, ServiceError> {
        forbidden_unless(caller.can_read(), "list routers")?;
        let project = match project_id {
            Some(p) if caller.sees(&p) => Some(p),
            Some(_) => return Ok(vec![]),
            None if caller.is_admin() => None,
            None => Some(caller.project_id.clone()),
        };
        let mut routers = self.directory.routers_of(project.as_deref()).await?;
        // The directory was asked for the project's; what it answers is checked all the same.
        routers.retain(|r| {
            r.project_id
                .as_deref()
                .is_none_or(|owner| project.as_deref().is_none_or(|p| p == owner))
        });
        let range = self.policy.range;
        let ids: Vec<String> = routers.iter().map(|r| r.id.clone()).collect();
        let counts = self.store.port_counts(&ids, range).await?;
        Ok(routers
            .into_iter()
            .map(|r| {
                let id = r.id.clone();
                RouterPorts::new(r, range, |protocol| {
                    counts
                        .get(&(id.clone(), protocol))
                        .copied()
                        .unwrap_or_default()
                })
            })
            .collect())
    }

    /// One router the caller may see (another project's is "not found"), with its free ports
    /// as ranges for each of `protocols`.
    pub async fn router_ports(
        &self,
        caller: &Caller,
        id: &str,
        protocols: &[Protocol],
    ) -> Result<RouterPorts, ServiceError> {
        forbidden_unless(caller.can_read(), "show routers")?;
        let router = self.router(caller, id).await?;
        let range = self.policy.range;
        let ids = [router.id.clone()];
        let (counts, tcp, udp) = tokio::try_join!(
            self.store.port_counts(&ids, range),
            self.used_if(protocols, &router.id, Protocol::Tcp, range),
            self.used_if(protocols, &router.id, Protocol::Udp, range),
        )?;
        let mut shown = RouterPorts::new(router.into(), range, |protocol| {
            counts
                .get(&(id.to_string(), protocol))
                .copied()
                .unwrap_or_default()
        });
        shown.tcp.free_ranges = tcp.map(|used| free_ranges(range, &used));
        shown.udp.free_ranges = udp.map(|used| free_ranges(range, &used));
        Ok(shown)
    }

    /// The ports of `range` claimed on `router_id` by mappings of `protocol`, when `protocol`
    /// is among those asked for.
    async fn used_if(
        &self,
        protocols: &[Protocol],
        router_id: &str,
        protocol: Protocol,
        range: PortRange,
    ) -> Result<Option<BTreeSet<u16>>, StoreError> {
        if !protocols.contains(&protocol) {
            return Ok(None);
        }
        Ok(Some(
            self.store.used_ports(router_id, protocol, range).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> PortRange {
        text.parse().unwrap()
    }

    #[test]
    fn free_ranges_are_the_gaps_between_used_ports_to_the_range_edges() {
        let r = range("4000:4010");
        let show = |used: &[u16]| {
            free_ranges(r, &used.iter().copied().collect())
                .iter()
                .map(|p| format!("{}:{}", p.first(), p.last()))
                .collect::<Vec<_>>()
        };
        assert_eq!(show(&[]), ["4000:4010"]);
        assert_eq!(show(&[4005]), ["4000:4004", "4006:4010"]);
        // Used ports at both edges, a single free port, and ports outside the range.
        assert_eq!(
            show(&[3999, 4000, 4002, 4003, 4010, 4011]),
            ["4001:4001", "4004:4009"]
        );
        assert_eq!(show(&(4000..=4010).collect::<Vec<_>>()), [] as [&str; 0]);
        let one = range("65535:65535");
        assert_eq!(
            free_ranges(one, &BTreeSet::new()),
            vec![range("65535:65535")]
        );
        assert!(free_ranges(one, &[65535].into()).is_empty());
    }
}
