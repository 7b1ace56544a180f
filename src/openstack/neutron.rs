//! Router and port facts from Neutron, read with the service's session.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::Ipv4Net;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::session::Session;
use super::{
    DirectoryError, FixedIp as PortFixedIp, OpenStackError, PortInfo, RouterDirectory, RouterInfo,
    RouterSummary,
};

/// Router interface kinds whose subnets a router serves (legacy, DVR, HA).
const INTERFACE_OWNERS: [&str; 3] = [
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
];

/// Entries per page asked for when listing (Neutron may give fewer).
const PAGE: usize = 500;

/// Ids per filtered request: 50 UUIDs keep the query near 2 KB, under the request-line limits
/// of common WSGI servers (gunicorn's is 4 KB).
pub const CHUNK: usize = 50;

/// [`RouterDirectory`] backed by the Neutron API.
pub struct NeutronDirectory {
    session: Arc<Session>,
    requests: AtomicU64,
}

#[derive(Deserialize)]
struct Router {
    id: String,
    #[serde(default)]
    name: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    distributed: Option<bool>,
    external_gateway_info: Option<GatewayInfo>,
}

impl Router {
    /// The first IPv4 address of its external gateway.
    fn gateway_ip(&self) -> Option<Ipv4Addr> {
        self.external_gateway_info
            .iter()
            .flat_map(|g| &g.external_fixed_ips)
            .find_map(|f| f.ip_address.parse::<Ipv4Addr>().ok())
    }

    fn summary(self) -> RouterSummary {
        RouterSummary {
            gateway_ip: self.gateway_ip(),
            name: self.name.unwrap_or_default(),
            project_id: self.project_id.or(self.tenant_id),
            distributed: self.distributed.unwrap_or(false),
            id: self.id,
        }
    }
}

#[derive(Deserialize)]
struct GatewayInfo {
    #[serde(default)]
    external_fixed_ips: Vec<FixedIp>,
}

#[derive(Deserialize, Clone)]
struct FixedIp {
    subnet_id: Option<String>,
    ip_address: String,
}

#[derive(Deserialize)]
struct Port {
    id: String,
    project_id: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    device_owner: String,
    #[serde(default)]
    fixed_ips: Vec<FixedIp>,
}

#[derive(Deserialize)]
struct Subnet {
    id: String,
    cidr: String,
}

impl NeutronDirectory {
    pub fn new(session: Arc<Session>) -> Self {
        NeutronDirectory {
            session,
            requests: AtomicU64::new(0),
        }
    }

    /// The requests this directory has sent to Neutron (a page of a listing is one).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn get(&self, url: &str) -> Result<Option<Value>, OpenStackError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.session.get_json("Neutron", url).await
    }

    /// `path` (e.g. `routers/ID`) under Neutron's v2.0 root, with query pairs.
    async fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, OpenStackError> {
        let base = self.session.endpoint("network").await?;
        let root = if base.ends_with("/v2.0") {
            base
        } else {
            format!("{base}/v2.0")
        };
        let mut url =
            Url::parse(&format!("{root}/{path}")).map_err(|e| OpenStackError::Malformed {
                service: "Neutron",
                what: format!("endpoint {root}: {e}"),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn show<T: DeserializeOwned>(
        &self,
        collection: &str,
        key: &str,
        id: &str,
    ) -> Result<Option<T>, OpenStackError> {
        let url = self.url(&format!("{collection}/{id}"), &[]).await?;
        let Some(mut body) = self.get(url.as_str()).await? else {
            return Ok(None);
        };
        decode(body.get_mut(key).map(Value::take))
    }

    /// Every entry of a collection matching `query`, following Neutron's pagination.
    async fn list<T: DeserializeOwned>(
        &self,
        collection: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, OpenStackError> {
        let limit = PAGE.to_string();
        let mut pairs: Vec<(&str, &str)> = query.to_vec();
        pairs.push(("limit", &limit));
        let mut next = Some(self.url(collection, &pairs).await?.to_string());
        let mut all = vec![];
        while let Some(url) = next.take() {
            let mut body = self
                .get(&url)
                .await?
                .ok_or_else(|| OpenStackError::Malformed {
                    service: "Neutron",
                    what: format!("{url}: the collection was not found"),
                })?;
            // A page without the collection is an error, never an empty page.
            let page: Vec<T> =
                decode(body.get_mut(collection).map(Value::take))?.ok_or_else(|| {
                    OpenStackError::Malformed {
                        service: "Neutron",
                        what: format!("{url}: no {collection:?} in the answer"),
                    }
                })?;
            // Neutron may cap pages below our limit (`pagination_max_limit`): follow `next`
            // whenever it is given, and only when the page was not empty (Neutron gives a
            // `next` link on a full last page too).
            let empty = page.is_empty();
            all.extend(page);
            if !empty {
                next = body
                    .get(format!("{collection}_links"))
                    .and_then(Value::as_array)
                    .and_then(|links| {
                        links
                            .iter()
                            .find(|l| l["rel"] == "next")
                            .and_then(|l| l["href"].as_str())
                            .map(str::to_string)
                    });
                if next.as_deref() == Some(url.as_str()) {
                    return Err(OpenStackError::Malformed {
                        service: "Neutron",
                        what: format!("{url}: the next page is this page"),
                    });
                }
            }
        }
        Ok(all)
    }

    async fn router_info(&self, r: Router) -> Result<RouterInfo, OpenStackError> {
        let gateway_ip = r.gateway_ip();
        let mut query = vec![("device_id", r.id.as_str())];
        query.extend(INTERFACE_OWNERS.iter().map(|o| ("device_owner", *o)));
        let interfaces: Vec<Port> = self.list("ports", &query).await?;
        let subnet_ids: BTreeSet<String> = interfaces
            .iter()
            .flat_map(|p| &p.fixed_ips)
            .filter_map(|f| f.subnet_id.clone())
            .collect();
        let (mut subnets, mut ids) = (vec![], vec![]);
        if !subnet_ids.is_empty() {
            let query: Vec<(&str, &str)> = subnet_ids
                .iter()
                .map(|id| ("id", id.as_str()))
                .chain([("ip_version", "4")])
                .collect();
            for s in self.list::<Subnet>("subnets", &query).await? {
                if let Ok(net) = s.cidr.parse::<Ipv4Net>() {
                    subnets.push(net);
                    ids.push(s.id);
                }
            }
        }
        Ok(RouterInfo {
            name: r.name.unwrap_or_default(),
            project_id: r.project_id.or(r.tenant_id),
            gateway_ip,
            distributed: r.distributed.unwrap_or(false),
            subnets,
            subnet_ids: ids,
            id: r.id,
        })
    }
}

fn decode<T: DeserializeOwned>(value: Option<Value>) -> Result<Option<T>, OpenStackError> {
    value
        .map(|v| {
            serde_json::from_value(v).map_err(|e| OpenStackError::Malformed {
                service: "Neutron",
                what: e.to_string(),
            })
        })
        .transpose()
}

fn port_info(p: Port) -> PortInfo {
    PortInfo {
        project_id: p.project_id.or(p.tenant_id),
        fixed_ips: p
            .fixed_ips
            .into_iter()
            .filter_map(|f| {
                Some(PortFixedIp {
                    ip: f.ip_address.parse().ok()?,
                    subnet_id: f.subnet_id,
                })
            })
            .collect(),
        device_id: p.device_id,
        device_owner: p.device_owner,
        id: p.id,
    }
}

impl NeutronDirectory {
    /// The ports among `ids` that exist, `CHUNK` ids per request. A port the listing leaves
    /// out is asked for on its own, and only a 404 counts as gone: a short page must never
    /// read as deleted ports.
    pub async fn ports_by_id(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, PortInfo>, OpenStackError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let query: Vec<(&str, &str)> = chunk.iter().map(|id| ("id", id.as_str())).collect();
            for p in self.list::<Port>("ports", &query).await? {
                found.insert(p.id.clone(), port_info(p));
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|id| !found.contains_key(*id)).collect();
        for id in missing {
            if let Some(p) = self.show::<Port>("ports", "port", id).await? {
                tracing::warn!(port = %id, "a port missing from a listing exists");
                found.insert(id.clone(), port_info(p));
            }
        }
        Ok(found)
    }

    /// The routers among `ids` that exist, with their gateways and interface subnets, in
    /// requests per `CHUNK` routers (routers, their interface ports, their subnets). Missing
    /// routers are confirmed one by one, as for ports.
    pub async fn routers_by_id(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, RouterInfo>, OpenStackError> {
        let mut routers: Vec<Router> = vec![];
        for chunk in ids.chunks(CHUNK) {
            let query: Vec<(&str, &str)> = chunk.iter().map(|id| ("id", id.as_str())).collect();
            routers.extend(self.list::<Router>("routers", &query).await?);
        }
        let listed: BTreeSet<String> = routers.iter().map(|r| r.id.clone()).collect();
        for id in ids.iter().filter(|id| !listed.contains(*id)) {
            if let Some(r) = self.show::<Router>("routers", "router", id).await? {
                tracing::warn!(router = %id, "a router missing from a listing exists");
                routers.push(r);
            }
        }
        // Interfaces of all of them, then the subnets behind those.
        let mut interfaces: HashMap<String, Vec<String>> = HashMap::new();
        let ids: Vec<String> = routers.iter().map(|r| r.id.clone()).collect();
        for chunk in ids.chunks(CHUNK) {
            let mut query: Vec<(&str, &str)> =
                chunk.iter().map(|id| ("device_id", id.as_str())).collect();
            query.extend(INTERFACE_OWNERS.iter().map(|o| ("device_owner", *o)));
            for p in self.list::<Port>("ports", &query).await? {
                interfaces
                    .entry(p.device_id.clone())
                    .or_default()
                    .extend(p.fixed_ips.iter().filter_map(|f| f.subnet_id.clone()));
            }
        }
        let subnet_ids: Vec<String> = interfaces
            .values()
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut cidrs: HashMap<String, Ipv4Net> = HashMap::new();
        for chunk in subnet_ids.chunks(CHUNK) {
            let query: Vec<(&str, &str)> = chunk.iter().map(|id| ("id", id.as_str())).collect();
            for s in self.list::<Subnet>("subnets", &query).await? {
                if let Ok(net) = s.cidr.parse() {
                    cidrs.insert(s.id, net);
                }
            }
        }
        Ok(routers
            .into_iter()
            .map(|r| {
                let (subnet_ids, subnets) = interfaces
                    .get(&r.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| Some((id.clone(), *cidrs.get(id)?)))
                    .unzip();
                let info = RouterInfo {
                    gateway_ip: r.gateway_ip(),
                    name: r.name.unwrap_or_default(),
                    project_id: r.project_id.or(r.tenant_id),
                    distributed: r.distributed.unwrap_or(false),
                    subnets,
                    subnet_ids,
                    id: r.id,
                };
                (info.id.clone(), info)
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl RouterDirectory for NeutronDirectory {
    async fn router(&self, id: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        let Some(router) = self.show::<Router>("routers", "router", id).await? else {
            return Ok(None);
        };
        Ok(Some(self.router_info(router).await?))
    }

    /// `GET /v2.0/routers?project_id=…` (every page); the routers' interfaces are not read.
    async fn routers_of(
        &self,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterSummary>, DirectoryError> {
        let query: Vec<(&str, &str)> = project_id.map(|p| ("project_id", p)).into_iter().collect();
        let mut routers: Vec<RouterSummary> = self
            .list::<Router>("routers", &query)
            .await?
            .into_iter()
            .map(Router::summary)
            .collect();
        routers.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(routers)
    }

    async fn routers_on_subnets(
        &self,
        subnet_ids: &[String],
    ) -> Result<Option<Vec<String>>, DirectoryError> {
        Ok(Some(
            self.interface_routers(subnet_ids)
                .await?
                .into_iter()
                .collect(),
        ))
    }

    async fn routers_serving(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        // The subnets of the caller's ports holding the address, then the routers with an
        // interface on one of them.
        let ports = self.ports(ip, project_id).await?;
        let subnets: Vec<String> = ports
            .iter()
            .flat_map(|p| &p.fixed_ips)
            .filter(|f| f.ip_address.parse() == Ok(ip))
            .filter_map(|f| f.subnet_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let router_ids = self.interface_routers(&subnets).await?;
        let mut routers = vec![];
        for id in router_ids {
            if let Some(r) = self.router(&id).await? {
                if r.gateway_ip.is_some() {
                    routers.push(r);
                }
            }
        }
        Ok(routers)
    }

    fn knows_ports(&self) -> bool {
        true
    }

    async fn port(&self, id: &str) -> Result<Option<PortInfo>, DirectoryError> {
        Ok(self.show::<Port>("ports", "port", id).await?.map(port_info))
    }

    async fn ports_with_address(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        Ok(self
            .ports(ip, project_id)
            .await?
            .into_iter()
            .map(port_info)
            .collect())
    }
}

impl NeutronDirectory {
    /// The routers with an interface on one of `subnet_ids`, one listing per subnet, all at
    /// once.
    async fn interface_routers(
        &self,
        subnet_ids: &[String],
    ) -> Result<BTreeSet<String>, OpenStackError> {
        let listings = subnet_ids.iter().map(|subnet| async move {
            let filter = format!("subnet_id={subnet}");
            let mut query = vec![("fixed_ips", filter.as_str())];
            query.extend(INTERFACE_OWNERS.iter().map(|o| ("device_owner", *o)));
            self.list::<Port>("ports", &query).await
        });
        Ok(futures_util::future::try_join_all(listings)
            .await?
            .into_iter()
            .flatten()
            .map(|p| p.device_id)
            .collect())
    }

    async fn ports(
        &self,
        ip: Ipv4Addr,
        project_id: Option<&str>,
    ) -> Result<Vec<Port>, OpenStackError> {
        let filter = format!("ip_address={ip}");
        let mut query = vec![("fixed_ips", filter.as_str())];
        if let Some(p) = project_id {
            query.push(("project_id", p));
        }
        self.list("ports", &query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openstack::session::tests::{fake_cloud_with, session};

    #[tokio::test]
    async fn short_pages_are_followed_and_an_answer_without_its_collection_is_an_error() {
        let (base, _) = fake_cloud_with(chrono::Duration::hours(1)).await;
        let neutron = NeutronDirectory::new(Arc::new(session(&base)));
        let ids: Vec<String> = (0..5).map(|n| format!("p{n}")).collect();
        let ports = neutron.ports_by_id(&ids).await.unwrap();
        assert_eq!(ports.len(), 5, "{ports:?}");
        assert_eq!(ports["p3"].fixed_ips[0].subnet_id.as_deref(), Some("s"));
        let routers = neutron.routers_by_id(&["r1".into()]).await;
        assert!(
            matches!(routers, Err(OpenStackError::Malformed { .. })),
            "{:?}",
            routers.map(|r| r.len())
        );
        let listed = neutron.routers_of(Some("p1")).await;
        assert!(
            matches!(
                listed,
                Err(DirectoryError::Neutron(OpenStackError::Malformed { .. }))
            ),
            "{listed:?}"
        );
    }
}
