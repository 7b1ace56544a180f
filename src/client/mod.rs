//! The Proxy CLI: `praas pat list|show|create|modify|remove`, a client of the REST API v1.
//!
//! The original Proxy CLI was an interactive menu that logged in to Keystone and then called the
//! service without a token. This one is made of commands, so that it can be scripted too: it
//! logs in as the user of a `clouds.yaml` cloud (as the `openstack` client does) and sends that
//! token, so PRaaS applies the user's project and roles. The service is found at `--url` /
//! `PRAAS_URL`, else in Keystone's catalog under the service type `port-forwarding`.

pub mod auth;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod interactive;
pub mod output;
pub mod views;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::routers::{RouterList, RouterView};
use crate::api::v1::{MappingList, MappingView};
use crate::openstack::{OpenStackError, Session};

/// The catalog's service type for PRaaS.
pub const SERVICE_TYPE: &str = "port-forwarding";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    OpenStack(#[from] OpenStackError),
    #[error("the credentials given")]
    Credentials {
        #[source]
        source: crate::openstack::clouds::CloudsError,
    },
    #[error("no clouds.yaml found: give --clouds-file or set OS_CLIENT_CONFIG_FILE (looked in {looked})")]
    NoCloudsFile { looked: String },
    /// The command cannot run as given: a missing choice without a terminal, options that do
    /// not go together.
    #[error("{message}")]
    Usage { message: String },
    #[error("PRaaS at {url} cannot be reached")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service refused the request: its error code and message.
    #[error("{message} ({status} {code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("PRaaS answered {what}")]
    Malformed { what: String },
    #[error("no {kind} {name:?}{hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        hint: String,
    },
    #[error("{count} {kind}s are named {name:?}: give the id of one of them ({listed})",
        count = matches.len(), listed = matches.join(", "))]
    Ambiguous {
        kind: &'static str,
        name: String,
        matches: Vec<String>,
    },
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("{failed} of {total} deletions failed")]
    SomeFailed { failed: usize, total: usize },
    #[error("reading the answer")]
    Terminal(#[source] std::io::Error),
}

/// How the process ends on an error (documented in `praas pat --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// The service or the cloud refused: 1.
    Refused,
    /// The command was not given right (also clap's usage errors): 2.
    Usage,
    /// PRaaS, Keystone, Neutron or Nova could not be reached, or are unavailable: 3.
    Unavailable,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Refused => 1,
            ExitKind::Usage => 2,
            ExitKind::Unavailable => 3,
        }
    }
}

impl ClientError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            ClientError::Usage { .. }
            | ClientError::NoCloudsFile { .. }
            | ClientError::Credentials { .. }
            | ClientError::Output(_)
            | ClientError::Ambiguous { .. } => ExitKind::Usage,
            ClientError::Unreachable { .. } | ClientError::Malformed { .. } => {
                ExitKind::Unavailable
            }
            ClientError::Refused { status, .. } if *status >= 500 => ExitKind::Unavailable,
            ClientError::OpenStack(e) => match e {
                OpenStackError::Unreachable { .. }
                | OpenStackError::Timeout { .. }
                | OpenStackError::NoEndpoint { .. } => ExitKind::Unavailable,
                OpenStackError::Status { status, .. } if *status >= 500 => ExitKind::Unavailable,
                OpenStackError::Config { .. } | OpenStackError::CloudsFile { .. } => {
                    ExitKind::Usage
                }
                _ => ExitKind::Refused,
            },
            _ => ExitKind::Refused,
        }
    }
}

/// The `clouds.yaml` a user's client reads: the given file, else `OS_CLIENT_CONFIG_FILE`, else
/// the first of `./clouds.yaml`, `~/.config/openstack/clouds.yaml`,
/// `/etc/openstack/clouds.yaml` (as the `openstack` client looks, unlike the daemons, which
/// read only their configured file).
pub fn clouds_file(given: Option<&Path>) -> Result<PathBuf, ClientError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("clouds.yaml")];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    candidates.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ClientError::NoCloudsFile {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A logged-in client of one PRaaS.
pub struct Client {
    /// The user's Keystone session; `None` with a bare token.
    session: Option<Session>,
    bare_token: Option<String>,
    http: reqwest::Client,
    base: String,
}

/// What `create` sends (the API's fields; `None` leaves a field to the service).
#[derive(Debug, Default, Clone)]
pub struct Create {
    pub router_id: Option<String>,
    pub internal_port_id: Option<String>,
    pub internal_ip_address: Option<String>,
    pub internal_port: Option<u16>,
    pub internal_port_range: Option<String>,
    pub external_port: Option<u16>,
    pub external_port_range: Option<String>,
    pub protocol: Option<String>,
    pub description: Option<String>,
    pub allowed_cidrs: Vec<String>,
    pub masquerade: bool,
}

/// What `set` changes.
#[derive(Debug, Default, Clone)]
pub struct Modify {
    pub internal_port: Option<u16>,
    pub internal_port_range: Option<String>,
    pub external_port: Option<u16>,
    pub external_port_range: Option<String>,
    pub description: Option<String>,
    /// `Some(vec![])` lets everyone in again.
    pub allowed_cidrs: Option<Vec<String>>,
    pub masquerade: Option<bool>,
}

/// Filters of `list`.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub router_id: Option<String>,
    pub internal_ip_address: Option<String>,
    pub internal_port_id: Option<String>,
    /// Admins: another project's, or (`None` with `all_projects`) every project's.
    pub project_id: Option<String>,
}

impl Client {
    /// Logs in as `login` says; the service is at `url`, or found in the catalog.
    pub async fn connect(
        login: auth::Login,
        url: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let (session, bare_token) = match login {
            auth::Login::Keystone(cloud) => (Some(Session::new(cloud, timeout)?), None),
            auth::Login::BareToken(token) => (None, Some(token)),
        };
        let base = match (url, &session) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(s)) => s.endpoint(SERVICE_TYPE).await?,
            (None, None) => {
                return Err(ClientError::Usage {
                    message: "give PRaaS's URL (--os-url or PRAAS_URL)".into(),
                })
            }
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("praas-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                source: e,
            })?;
        Ok(Client {
            session,
            bare_token,
            http,
            base,
        })
    }

    /// The user's view of Neutron and Nova, when logged in through Keystone.
    pub fn cloud(&self) -> Option<cloud::Cloud<'_>> {
        self.session.as_ref().map(cloud::Cloud::new)
    }

    /// Where PRaaS is.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let token = match (&self.session, &self.bare_token) {
            (Some(s), _) => s.auth_token().await?,
            (None, Some(t)) => t.clone(),
            (None, None) => String::new(),
        };
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-Auth-Token", token)
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            source: e.without_url(),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            source: e.without_url(),
        })?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| ClientError::Malformed {
                what: format!("{status} with a body that is not JSON"),
            })?
        };
        if !status.is_success() {
            return Err(ClientError::Refused {
                status: status.as_u16(),
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or("error")
                    .to_string(),
                message: in_cli_terms(
                    value["error"]["message"]
                        .as_str()
                        .unwrap_or(status.canonical_reason().unwrap_or("refused")),
                ),
            });
        }
        Ok(value)
    }

    /// Every mapping matching `filters`, following the pages.
    pub async fn list(&self, filters: &Filters) -> Result<Vec<MappingView>, ClientError> {
        let mut all = vec![];
        let mut marker: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", "1000".into())];
            for (key, value) in [
                ("router_id", &filters.router_id),
                ("internal_ip_address", &filters.internal_ip_address),
                ("internal_port_id", &filters.internal_port_id),
                ("project_id", &filters.project_id),
            ] {
                if let Some(v) = value {
                    query.push((key, v.clone()));
                }
            }
            if let Some(m) = &marker {
                query.push(("marker", m.clone()));
            }
            let page: MappingList = decode(
                self.call(reqwest::Method::GET, "/v1/mappings", &query, None)
                    .await?,
            )?;
            let full = page.mappings.len() == 1000;
            marker = page.mappings.last().map(|m| m.id.clone());
            all.extend(page.mappings);
            if !full {
                return Ok(all);
            }
        }
    }

    /// The routers the user's project owns (admins: `project`'s, or every project's).
    pub async fn routers(&self, project: Option<&str>) -> Result<Vec<RouterView>, ClientError> {
        let query: Vec<(&str, String)> = project
            .map(|p| vec![("project_id", p.to_string())])
            .unwrap_or_default();
        let list: RouterList = decode(
            self.call(reqwest::Method::GET, "/v1/routers", &query, None)
                .await?,
        )?;
        Ok(list.routers)
    }

    /// One router, with its free ports.
    pub async fn router(&self, id: &str) -> Result<RouterView, ClientError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/routers/{id}"),
                &[],
                None,
            )
            .await?;
        decode(v["router"].clone())
    }

    /// The router `name_or_id` among the user's project's.
    pub async fn router_named(&self, name_or_id: &str) -> Result<RouterView, ClientError> {
        let routers = self.routers(None).await?;
        cloud::pick("router", name_or_id, routers, |r| (&r.id, &r.name))
    }

    pub async fn show(&self, id: &str) -> Result<MappingView, ClientError> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/mappings/{id}"),
                &[],
                None,
            )
            .await?;
        decode(v["mapping"].clone())
    }

    pub async fn create(&self, c: &Create) -> Result<MappingView, ClientError> {
        let mut m = serde_json::Map::new();
        let mut put = |key: &str, value: Value| {
            if !value.is_null() {
                m.insert(key.to_string(), value);
            }
        };
        put("router_id", json!(c.router_id));
        put("internal_port_id", json!(c.internal_port_id));
        put("internal_ip_address", json!(c.internal_ip_address));
        put("internal_port", json!(c.internal_port));
        put("internal_port_range", json!(c.internal_port_range));
        put("external_port", json!(c.external_port));
        put("external_port_range", json!(c.external_port_range));
        put("protocol", json!(c.protocol));
        put("description", json!(c.description));
        if !c.allowed_cidrs.is_empty() {
            put("allowed_cidrs", json!(c.allowed_cidrs));
        }
        if c.masquerade {
            put("masquerade", json!(true));
        }
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/mappings",
                &[],
                Some(json!({ "mapping": m })),
            )
            .await?;
        decode(v["mapping"].clone())
    }

    pub async fn modify(&self, id: &str, c: &Modify) -> Result<MappingView, ClientError> {
        let mut m = serde_json::Map::new();
        if let Some(p) = c.internal_port {
            m.insert("internal_port".into(), json!(p));
        }
        if let Some(r) = &c.internal_port_range {
            m.insert("internal_port_range".into(), json!(r));
        }
        if let Some(p) = c.external_port {
            m.insert("external_port".into(), json!(p));
        }
        if let Some(r) = &c.external_port_range {
            m.insert("external_port_range".into(), json!(r));
        }
        if let Some(d) = &c.description {
            m.insert("description".into(), json!(d));
        }
        if let Some(a) = &c.allowed_cidrs {
            m.insert("allowed_cidrs".into(), json!(a));
        }
        if let Some(b) = c.masquerade {
            m.insert("masquerade".into(), json!(b));
        }
        let v = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/mappings/{id}"),
                &[],
                Some(json!({ "mapping": m })),
            )
            .await?;
        decode(v["mapping"].clone())
    }

    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/mappings/{id}"),
            &[],
            None,
        )
        .await
        .map(drop)
    }
}

/// The API's field names in a message of the service, as this CLI's options: `give
/// router_id` reads `give --router`.
pub fn in_cli_terms(message: &str) -> String {
    const FIELDS: [(&str, &str); 9] = [
        ("internal_ip_address", "--internal-ip-address"),
        ("internal_port_range", "--internal-protocol-port"),
        ("internal_port_id", "--port"),
        ("internal_port", "--internal-protocol-port"),
        ("external_port_range", "--external-protocol-port"),
        ("external_port", "--external-protocol-port"),
        ("router_id", "--router"),
        ("allowed_cidrs", "--allow"),
        ("masquerade", "--masquerade"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    'scan: while !rest.is_empty() {
        for (field, option) in FIELDS {
            let at_word_start = out
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-'));
            if at_word_start && rest.starts_with(field) {
                let after = rest[field.len()..].chars().next();
                if after.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                    out.push_str(option);
                    rest = &rest[field.len()..];
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Malformed {
        what: format!("an unexpected document: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_s_field_names_read_as_the_cli_s_options() {
        assert_eq!(
            in_cli_terms("2 routers serve 10.0.0.5; give router_id"),
            "2 routers serve 10.0.0.5; give --router"
        );
        assert_eq!(
            in_cli_terms("internal_ip_address or internal_port_id is required"),
            "--internal-ip-address or --port is required"
        );
        assert_eq!(
            in_cli_terms("external_port_range 4000:3000: the first port is after the last"),
            "--external-protocol-port 4000:3000: the first port is after the last"
        );
        // Not inside other words.
        assert_eq!(in_cli_terms("my_router_id2 stays"), "my_router_id2 stays");
    }
}
