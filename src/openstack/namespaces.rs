//! Router facts read from this node's router namespaces: the gateway address is the IPv4
//! address on the `qg-` device, the subnets are those on the `qr-` (and, in DVR `snat-`
//! namespaces, `sg-`) devices. No owner is known this way, so it suits a single node run without
//! OpenStack credentials (and the demo); with OpenStack, Neutron is the source.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::{DirectoryError, PortInfo, RouterDirectory, RouterInfo};
use crate::dataplane::netns;
use crate::process;

/// Reads router facts from `/run/netns/qrouter-*` and `snat-*`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceDirectory;

fn router_ids() -> Result<Vec<String>, DirectoryError> {
    let entries = match std::fs::read_dir(netns::NETNS_RUN_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(DirectoryError(format!(
                "reading {}: {e}",
                netns::NETNS_RUN_DIR
            )))
        }
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_prefix("qrouter-")
                .or_else(|| n.strip_prefix("snat-"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Parses `ip -j addr` output into (gateway address, internal subnets).
pub fn parse_addresses(json: &str) -> Result<(Option<Ipv4Addr>, Vec<Ipv4Net>), String> {
    let links: Vec<Value> = serde_json::from_str(json).map_err(|e| format!("ip -j addr: {e}"))?;
    let (mut gateway, mut subnets) = (None, vec![]);
    for link in &links {
        let name = link
            .get("ifname")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let addrs = link
            .get("addr_info")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in addrs
            .iter()
            .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
        {
            let Some(ip) = a
                .get("local")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let prefix = a.get("prefixlen").and_then(Value::as_u64).unwrap_or(32) as u8;
            if name.starts_with("qg-") && gateway.is_none() {
                gateway = Some(ip);
            } else if name.starts_with("qr-") || name.starts_with("sg-") {
                if let Ok(net) = Ipv4Net::new(ip, prefix) {
                    subnets.push(net.trunc());
                }
            }
        }
    }
    Ok((gateway, subnets))
}

fn read_router(id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
    // A DVR router's gateway is in its snat- namespace when this node hosts it.
    let (ns, distributed) = if netns::exists(&format!("snat-{id}")) {
        (format!("snat-{id}"), true)
    } else if netns::exists(&format!("qrouter-{id}")) {
        (format!("qrouter-{id}"), false)
    } else {
        return Ok(None);
    };
    let json = process::run("ip", &["-j", "-n", &ns, "addr", "show"], None)
        .map_err(|e| DirectoryError(format!("reading addresses of {ns}: {e}")))?;
    let (gateway_ip, subnets) = parse_addresses(&json).map_err(DirectoryError)?;
    Ok(Some(RouterInfo {
        id: id.to_string(),
        project_id: None,
        gateway_ip,
        distributed,
        subnets,
        // Namespaces carry addresses, not Neutron's subnet ids.
        subnet_ids: vec![],
    }))
}

#[async_trait::async_trait]
impl RouterDirectory for NamespaceDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        let id = id.to_string();
        tokio::task::spawn_blocking(move || read_router(&id))
            .await
            .map_err(|e| DirectoryError(e.to_string()))?
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        _project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        tokio::task::spawn_blocking(move || {
            let mut found = vec![];
            for id in router_ids()? {
                if let Some(r) = read_router(&id)? {
                    if r.gateway_ip.is_some() && r.serves(ip) {
                        found.push(r);
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| DirectoryError(e.to_string()))?
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

    #[test]
    fn gateway_and_subnets_come_from_qg_and_qr_devices() {
        let json = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
          {"ifname":"qg-1","addr_info":[{"family":"inet","local":"203.0.113.10","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]},
          {"ifname":"qr-1","addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24}]},
          {"ifname":"qr-2","addr_info":[{"family":"inet","local":"10.1.2.1","prefixlen":26}]}]"#;
        let (gw, subnets) = parse_addresses(json).unwrap();
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
