//! Router facts read from this node's router namespaces: the gateway address is the IPv4
//! address on the `qg-` device, the subnets are those on the `qr-` (and, in DVR `snat-`
//! namespaces, `sg-`) devices. No owner is known this way, so it suits a single node run without
//! OpenStack credentials (and the demo); with OpenStack, Neutron is the source.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{DirectoryError, PortInfo, RouterDirectory, RouterInfo, RouterSummary};
use crate::dataplane::netlink::{self, InterfaceAddress};
use crate::dataplane::netns;
use crate::model::{NamespaceKind, RouterNamespace};
use crate::placement::{LocalNamespaces, Placement};

/// Reads router facts from `/run/netns/qrouter-*` and `snat-*`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceDirectory;

/// (gateway address, internal subnets) of a router namespace's addresses: the first IPv4
/// address on a `qg-` device, and the subnets of those on `qr-` and `sg-` devices.
pub fn router_facts(addresses: &[InterfaceAddress]) -> (Option<Ipv4Addr>, Vec<Ipv4Net>) {
    let gateway = addresses
        .iter()
        .find(|a| a.label.starts_with("qg-"))
        .map(|a| a.ip);
    let subnets = addresses
        .iter()
        .filter(|a| a.label.starts_with("qr-") || a.label.starts_with("sg-"))
        .filter_map(|a| Ipv4Net::new(a.ip, a.prefix_len).ok())
        .map(|n| n.trunc())
        .collect();
    (gateway, subnets)
}

/// The IPv4 addresses in `namespace`, read over netlink from inside it (no process).
fn addresses_in(namespace: &RouterNamespace) -> Result<Vec<InterfaceAddress>, DirectoryError> {
    let failed = |source| DirectoryError::Namespace {
        namespace: namespace.name().to_string(),
        source,
    };
    netns::run_in_path(&netns::path_of(namespace.name()), || {
        let mut socket = netlink::Socket::open_route()?;
        netlink::ipv4_addresses(&mut socket)
    })
    .map_err(failed)?
    .map_err(failed)
}

fn read_router(id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
    let served = LocalNamespaces::default().served()?;
    read_served(id, &served)
}

/// The router `id` among the `served` namespaces. A DVR router's gateway is in its snat-
/// namespace when this node hosts it.
fn read_served(
    id: &str,
    served: &BTreeSet<RouterNamespace>,
) -> Result<Option<RouterInfo>, DirectoryError> {
    let Some((namespace, distributed)) =
        [(NamespaceKind::Snat, true), (NamespaceKind::Qrouter, false)]
            .into_iter()
            .map(|(kind, distributed)| (RouterNamespace::for_router(id, kind), distributed))
            .find(|(ns, _)| served.contains(ns))
    else {
        return Ok(None);
    };
    let (gateway_ip, subnets) = router_facts(&addresses_in(&namespace)?);
    Ok(Some(RouterInfo {
        id: id.to_string(),
        // Namespaces carry neither Neutron's names nor its owners.
        name: String::new(),
        project_id: None,
        gateway_ip,
        distributed,
        subnets,
        // Namespaces carry addresses, not Neutron's subnet ids.
        subnet_ids: vec![],
    }))
}

/// Every router with a namespace on this node, in id order. A namespace deleted between the
/// listing and the reading of its addresses is left out: it is gone, not unreadable.
fn read_all() -> Result<Vec<RouterInfo>, DirectoryError> {
    let served = LocalNamespaces::default().served()?;
    let ids: BTreeSet<&str> = served
        .iter()
        .filter_map(|ns| RouterNamespace::router_of(ns.name()).map(|(id, _)| id))
        .collect();
    let mut routers = vec![];
    for id in ids {
        match read_served(id, &served) {
            Ok(router) => routers.extend(router),
            Err(DirectoryError::Namespace { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(routers)
}

#[async_trait::async_trait]
impl RouterDirectory for NamespaceDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        let id = id.to_string();
        tokio::task::spawn_blocking(move || read_router(&id)).await?
    }

    /// Every router whose namespace this node holds: their owners are not known here.
    async fn routers_of(
        &self,
        _project_id: Option<&str>,
    ) -> Result<Vec<RouterSummary>, DirectoryError> {
        let routers = tokio::task::spawn_blocking(read_all).await??;
        Ok(routers.into_iter().map(RouterSummary::from).collect())
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        _project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        tokio::task::spawn_blocking(move || {
            Ok(read_all()?
                .into_iter()
                .filter(|r| r.gateway_ip.is_some() && r.serves(ip))
                .collect())
        })
        .await?
    }

    // Ports are Neutron's to know.
    fn knows_ports(&self) -> bool {
        false
    }

    async fn port(&self, _id: &str) -> Result<Option<PortInfo>, DirectoryError> {
        Ok(None)
    }

    async fn ports_with_address(
        &self,
        _ip: Ipv4Addr,
        _project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        Ok(vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(label: &str, ip: &str, prefix_len: u8) -> InterfaceAddress {
        InterfaceAddress {
            label: label.into(),
            ip: ip.parse().unwrap(),
            prefix_len,
        }
    }

    #[test]
    fn gateway_and_subnets_come_from_qg_and_qr_devices() {
        let (gw, subnets) = router_facts(&[
            address("lo", "127.0.0.1", 8),
            address("qg-1", "203.0.113.10", 24),
            address("qr-1", "10.0.0.1", 24),
            address("qr-2", "10.1.2.1", 26),
        ]);
        assert_eq!(gw, Some("203.0.113.10".parse().unwrap()));
        assert_eq!(
            subnets,
            vec![
                "10.0.0.0/24".parse::<Ipv4Net>().unwrap(),
                "10.1.2.0/26".parse().unwrap()
            ]
        );
    }
}
