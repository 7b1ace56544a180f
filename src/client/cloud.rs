//! What the CLI reads of the cloud with the user's own token, as the `openstack` client would:
//! servers from Nova (when the catalog has `compute`), their ports, networks and routers from
//! Neutron; and names turned into ids, an ambiguous name failing with its matches.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::Value;

use super::ClientError;
use crate::openstack::{OpenStackError, Session};

/// A server, as the menus and tables show it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub status: String,
    /// Network name → addresses, as Nova lists them.
    #[serde(default)]
    pub addresses: serde_json::Map<String, Value>,
}

impl Server {
    /// `net=10.0.0.5, 10.1.0.7; other=…`, as `openstack server list` shows them.
    pub fn addresses_text(&self) -> String {
        self.addresses
            .iter()
            .map(|(net, addrs)| {
                let ips: Vec<&str> = addrs
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["addr"].as_str())
                    .collect();
                format!("{net}={}", ips.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A Neutron port with what the CLI needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

impl Port {
    /// Its IPv4 addresses.
    pub fn ipv4(&self) -> Vec<Ipv4Addr> {
        self.fixed_ips
            .iter()
            .filter_map(|f| f.ip_address.parse().ok())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Named {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// The user's view of the cloud.
pub struct Cloud<'a> {
    session: &'a Session,
}

fn looks_like_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

impl<'a> Cloud<'a> {
    pub fn new(session: &'a Session) -> Self {
        Cloud { session }
    }

    async fn neutron(&self, path: &str) -> Result<Option<Value>, ClientError> {
        self.neutron_query(path, &[]).await
    }

    /// `GET` Neutron's `path` with the query `pairs`.
    async fn neutron_query(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Option<Value>, ClientError> {
        let base = self.session.endpoint("network").await?;
        let root = if base.ends_with("/v2.0") {
            base
        } else {
            format!("{base}/v2.0")
        };
        let mut url = reqwest::Url::parse(&format!("{root}/{path}")).map_err(|e| {
            OpenStackError::Malformed {
                service: "Neutron",
                what: format!("endpoint {root}: {e}"),
            }
        })?;
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(self.session.get_json("Neutron", url.as_str()).await?)
    }

    /// Whether the catalog has Nova (else servers are not known, and ports stand for them).
    pub async fn has_compute(&self) -> bool {
        self.session.endpoint("compute").await.is_ok()
    }

    async fn nova(&self, path: &str) -> Result<Option<Value>, ClientError> {
        let base = self.session.endpoint("compute").await?;
        Ok(self
            .session
            .get_json("Nova", &format!("{}/{path}", base.trim_end_matches('/')))
            .await?)
    }

    fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, ClientError> {
        serde_json::from_value(v).map_err(|e| {
            ClientError::OpenStack(OpenStackError::Malformed {
                service: "Neutron",
                what: format!("{what}: {e}"),
            })
        })
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        collection: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ClientError> {
        let body = self
            .neutron_query(collection, query)
            .await?
            .unwrap_or_default();
        Self::decode(body[collection].clone(), collection)
    }

    /// The project's servers (all of them for an admin asking with `all_projects`).
    pub async fn servers(&self) -> Result<Vec<Server>, ClientError> {
        let body = self.nova("servers/detail").await?.unwrap_or_default();
        let servers: Vec<Server> =
            serde_json::from_value(body["servers"].clone()).map_err(|e| {
                ClientError::OpenStack(OpenStackError::Malformed {
                    service: "Nova",
                    what: format!("servers: {e}"),
                })
            })?;
        Ok(servers)
    }

    /// The server `name_or_id`.
    pub async fn server(&self, name_or_id: &str) -> Result<Server, ClientError> {
        let servers = self.servers().await?;
        pick("server", name_or_id, servers, |s| (&s.id, &s.name))
    }

    /// The ports of a server (`device_id`).
    pub async fn ports_of(&self, server_id: &str) -> Result<Vec<Port>, ClientError> {
        self.list("ports", &[("device_id", server_id)]).await
    }

    /// The port `name_or_id`.
    pub async fn port(&self, name_or_id: &str) -> Result<Port, ClientError> {
        if looks_like_uuid(name_or_id) {
            if let Some(mut v) = self.neutron(&format!("ports/{name_or_id}")).await? {
                return Self::decode(v["port"].take(), "port");
            }
        }
        let ports: Vec<Port> = self.list("ports", &[("name", name_or_id)]).await?;
        pick("port", name_or_id, ports, |p| (&p.id, &p.name))
    }

    /// The network `name_or_id`.
    pub async fn network(&self, name_or_id: &str) -> Result<Named, ClientError> {
        self.named("network", "networks", name_or_id).await
    }

    /// The router `name_or_id`.
    pub async fn router(&self, name_or_id: &str) -> Result<Named, ClientError> {
        self.named("router", "routers", name_or_id).await
    }

    async fn named(
        &self,
        kind: &'static str,
        collection: &str,
        name_or_id: &str,
    ) -> Result<Named, ClientError> {
        if looks_like_uuid(name_or_id) {
            let one = kind;
            if let Some(mut v) = self.neutron(&format!("{collection}/{name_or_id}")).await? {
                return Self::decode(v[one].take(), one);
            }
        }
        let found: Vec<Named> = self.list(collection, &[("name", name_or_id)]).await?;
        pick(kind, name_or_id, found, |n| (&n.id, &n.name))
    }

    /// The subnets a router has an interface on (its interface ports' addresses).
    pub async fn router_subnets(&self, router_id: &str) -> Result<Vec<String>, ClientError> {
        let ports: Vec<Port> = self.list("ports", &[("device_id", router_id)]).await?;
        Ok(ports
            .into_iter()
            .flat_map(|p| p.fixed_ips.into_iter().map(|f| f.subnet_id))
            .collect())
    }

    /// Network id → name, of the networks the user sees.
    pub async fn network_names(&self) -> Result<HashMap<String, String>, ClientError> {
        let networks: Vec<Named> = self
            .list("networks", &[("fields", "id"), ("fields", "name")])
            .await?;
        Ok(networks.into_iter().map(|n| (n.id, n.name)).collect())
    }

    /// The server name behind each of the project's ports that a server holds, for tables:
    /// port id → server name. Empty when the catalog has no Nova.
    pub async fn server_names_by_port(&self) -> Result<HashMap<String, String>, ClientError> {
        if !self.has_compute().await {
            return Ok(HashMap::new());
        }
        let servers: HashMap<String, String> = self
            .servers()
            .await?
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
        let ports: Vec<Port> = self
            .list("ports", &[("fields", "id"), ("fields", "device_id")])
            .await?;
        Ok(ports
            .into_iter()
            .filter_map(|p| Some((p.id, servers.get(&p.device_id)?.clone())))
            .collect())
    }
}

/// The one of `candidates` whose id or name is `wanted` (an id wins over a name).
pub fn pick<T>(
    kind: &'static str,
    wanted: &str,
    candidates: Vec<T>,
    id_name: impl Fn(&T) -> (&String, &String),
) -> Result<T, ClientError> {
    let mut by_name = vec![];
    for c in candidates {
        let (id, name) = id_name(&c);
        if id == wanted {
            return Ok(c);
        }
        if name == wanted {
            by_name.push(c);
        }
    }
    match by_name.len() {
        1 => Ok(by_name.remove(0)),
        0 => Err(ClientError::NotFound {
            kind,
            name: wanted.to_string(),
            hint: String::new(),
        }),
        _ => Err(ClientError::Ambiguous {
            kind,
            name: wanted.to_string(),
            matches: by_name.iter().map(|c| id_name(c).0.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_once_an_id_wins_and_two_of_a_name_fail_with_both() {
        let servers = || {
            vec![
                ("1".to_string(), "web".to_string()),
                ("2".to_string(), "db".to_string()),
                ("3".to_string(), "db".to_string()),
                ("db".to_string(), "odd".to_string()),
            ]
        };
        fn f(s: &(String, String)) -> (&String, &String) {
            (&s.0, &s.1)
        }
        assert_eq!(pick("server", "web", servers(), f).unwrap().0, "1");
        // An id that is also a name: the id.
        assert_eq!(pick("server", "db", servers(), f).unwrap().1, "odd");
        let none = pick("server", "mail", servers(), f).unwrap_err();
        assert_eq!(none.to_string(), "no server \"mail\"");
        let two = vec![
            ("2".to_string(), "db".to_string()),
            ("3".to_string(), "db".to_string()),
        ];
        let err = pick("server", "db", two, f).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 servers are named \"db\": give the id of one of them (2, 3)"
        );
    }
}
