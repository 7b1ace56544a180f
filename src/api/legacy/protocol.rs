//! The HTTP protocol of the original PRaaS, which its Proxy CLI (`cli-proxy`) speaks: request
//! parsing and answer building, without I/O.
//!
//! The original service was a Flask application on port 3000 with five endpoints. We keep it so
//! that existing Proxy CLI installations and scripts keep working against the new service:
//!
//! | method, path              | query parameters                                                      |
//! |---------------------------|-----------------------------------------------------------------------|
//! | GET `/router_pat`         | `router_id`                                                           |
//! | GET `/router_server_pat`  | `router_id`, `server_ip`                                              |
//! | POST `/pat/create`        | `server_ip`, `router_id`, `create_server_port`, `gateway`             |
//! | POST `/pat/remove`        | `server_ip`, `router_id`, `remove_server_port`, `gateway`             |
//! | POST `/pat/modify`        | `server_ip`, `router_id`, `modify_server_port`, `modify_router_port`, `gateway` |
//!
//! Every parameter is in the query string, POST included; bodies are ignored. `router_id` is
//! the router's namespace name, `qrouter-<uuid>`; `gateway` is the router's external IPv4
//! address. A mapping is one TCP port of a VM (`server_ip:server_port`) reachable on one port of
//! the router's gateway (`router_port`).
//!
//! Answers are JSON objects in exactly the original's shapes, ports included as strings (the
//! Proxy CLI prints them as they come). Outcomes that are not failures of the service ("already
//! mapped", "not mapped", "port in use") are answers with their own `status`, as in the original;
//! failures are `{"status": "ERROR", "message": ...}`.
//!
//! Differences from the original, on purpose, none of which changes a shape:
//! - Input is checked before anything is done: a missing, repeated or malformed parameter is an
//!   error naming the parameter (the original answered with a Python exception, sometimes not
//!   even as JSON). Ports must be 1-65535, addresses IPv4, router ids UUIDs.
//! - `router_id` may also be `snat-<uuid>` (the gateway namespace of a distributed router) or
//!   the bare UUID; the router is identified by its UUID only.
//! - Addresses in answers are written in canonical form (`10.0.0.5`, never `010.0.0.5`), since
//!   they come from the service's records rather than from the caller's text.
//! - Messages are full sentences naming the sockets involved.
//! - Parameters the endpoint does not use are ignored, as Flask did.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Path of the listing of a router's mappings.
pub const ROUTER_PAT: &str = "/router_pat";
/// Path of the listing of one server's mappings on a router.
pub const ROUTER_SERVER_PAT: &str = "/router_server_pat";
/// Path of mapping creation.
pub const PAT_CREATE: &str = "/pat/create";
/// Path of mapping removal.
pub const PAT_REMOVE: &str = "/pat/remove";
/// Path of the change of a mapping's router port.
pub const PAT_MODIFY: &str = "/pat/modify";

/// The paths of the protocol, for routing.
pub const PATHS: [&str; 5] = [
    ROUTER_PAT,
    ROUTER_SERVER_PAT,
    PAT_CREATE,
    PAT_REMOVE,
    PAT_MODIFY,
];

/// Longest piece of a rejected value quoted back in an error, so that an error message stays
/// readable whatever the caller sent.
const QUOTED_VALUE_MAX_CHARS: usize = 64;

/// A request of the Proxy CLI, checked. `router_id` is the router's UUID in canonical form
/// (lowercase, hyphenated), without any namespace prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyRequest {
    /// GET `/router_pat`: every mapping of a router.
    RouterPat { router_id: String },
    /// GET `/router_server_pat`: the mappings of one server on a router.
    RouterServerPat {
        router_id: String,
        server_ip: Ipv4Addr,
    },
    /// POST `/pat/create`: map `server_ip:server_port` to a free port of the router's
    /// gateway, chosen by the service.
    Create {
        router_id: String,
        server_ip: Ipv4Addr,
        server_port: u16,
        gateway: Ipv4Addr,
    },
    /// POST `/pat/remove`: remove the mapping of `server_ip:server_port`.
    Remove {
        router_id: String,
        server_ip: Ipv4Addr,
        server_port: u16,
        gateway: Ipv4Addr,
    },
    /// POST `/pat/modify`: move the mapping of `server_ip:server_port` to `new_router_port`.
    Modify {
        router_id: String,
        server_ip: Ipv4Addr,
        server_port: u16,
        new_router_port: u16,
        gateway: Ipv4Addr,
    },
}

impl LegacyRequest {
    /// The HTTP method of this request.
    pub fn method(&self) -> &'static str {
        match self {
            LegacyRequest::RouterPat { .. } | LegacyRequest::RouterServerPat { .. } => "GET",
            _ => "POST",
        }
    }

    /// The path of this request.
    pub fn path(&self) -> &'static str {
        match self {
            LegacyRequest::RouterPat { .. } => ROUTER_PAT,
            LegacyRequest::RouterServerPat { .. } => ROUTER_SERVER_PAT,
            LegacyRequest::Create { .. } => PAT_CREATE,
            LegacyRequest::Remove { .. } => PAT_REMOVE,
            LegacyRequest::Modify { .. } => PAT_MODIFY,
        }
    }

    /// The router's UUID.
    pub fn router_id(&self) -> &str {
        match self {
            LegacyRequest::RouterPat { router_id }
            | LegacyRequest::RouterServerPat { router_id, .. }
            | LegacyRequest::Create { router_id, .. }
            | LegacyRequest::Remove { router_id, .. }
            | LegacyRequest::Modify { router_id, .. } => router_id,
        }
    }

    /// The query string the Proxy CLI sends for this request (router as `qrouter-<uuid>`,
    /// parameters in the CLI's order). Used by tests and by clients of the legacy API.
    pub fn to_query(&self) -> String {
        let router = format!("qrouter-{}", self.router_id());
        let pairs: Vec<(&str, String)> = match self {
            LegacyRequest::RouterPat { .. } => vec![("router_id", router)],
            LegacyRequest::RouterServerPat { server_ip, .. } => {
                vec![("router_id", router), ("server_ip", server_ip.to_string())]
            }
            LegacyRequest::Create {
                server_ip,
                server_port,
                gateway,
                ..
            } => vec![
                ("server_ip", server_ip.to_string()),
                ("router_id", router),
                ("create_server_port", server_port.to_string()),
                ("gateway", gateway.to_string()),
            ],
            LegacyRequest::Remove {
                server_ip,
                server_port,
                gateway,
                ..
            } => vec![
                ("server_ip", server_ip.to_string()),
                ("router_id", router),
                ("remove_server_port", server_port.to_string()),
                ("gateway", gateway.to_string()),
            ],
            LegacyRequest::Modify {
                server_ip,
                server_port,
                new_router_port,
                gateway,
                ..
            } => vec![
                ("server_ip", server_ip.to_string()),
                ("router_id", router),
                ("modify_server_port", server_port.to_string()),
                ("modify_router_port", new_router_port.to_string()),
                ("gateway", gateway.to_string()),
            ],
        };
        pairs
            .iter()
            .map(|(name, value)| format!("{}={}", encode_component(name), encode_component(value)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Why a request could not be understood. Each message names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    #[error("no such endpoint {path:?} in the Proxy CLI protocol")]
    NotFound { path: String },

    #[error("method {method} is not allowed on {path} (use {allowed})")]
    MethodNotAllowed {
        method: String,
        path: &'static str,
        allowed: &'static str,
    },

    #[error("malformed query string: {reason}")]
    BadQuery { reason: String },

    #[error("missing query parameter {name}")]
    Missing { name: &'static str },

    #[error("query parameter {name} is given more than once")]
    Duplicate { name: &'static str },

    #[error("query parameter {name} has invalid value {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        /// The value as received, shortened if long.
        value: String,
        reason: &'static str,
    },
}

impl LegacyError {
    /// The HTTP status that fits this error: 404 and 405 for routing errors, 400 for the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            LegacyError::NotFound { .. } => 404,
            LegacyError::MethodNotAllowed { .. } => 405,
            _ => 400,
        }
    }
}

/// Parses one request of the protocol. `query` is the raw query string (without `?`),
/// still percent-encoded.
pub fn parse(method: &str, path: &str, query: &str) -> Result<LegacyRequest, LegacyError> {
    let (allowed, endpoint) = match path {
        ROUTER_PAT => ("GET", ROUTER_PAT),
        ROUTER_SERVER_PAT => ("GET", ROUTER_SERVER_PAT),
        PAT_CREATE => ("POST", PAT_CREATE),
        PAT_REMOVE => ("POST", PAT_REMOVE),
        PAT_MODIFY => ("POST", PAT_MODIFY),
        _ => return Err(LegacyError::NotFound { path: quote(path) }),
    };
    if method != allowed {
        return Err(LegacyError::MethodNotAllowed {
            method: quote(method),
            path: endpoint,
            allowed,
        });
    }
    let params = Params::decode(query)?;
    let request = match endpoint {
        ROUTER_PAT => LegacyRequest::RouterPat {
            router_id: params.router_id()?,
        },
        ROUTER_SERVER_PAT => LegacyRequest::RouterServerPat {
            router_id: params.router_id()?,
            server_ip: params.ipv4("server_ip")?,
        },
        PAT_CREATE => LegacyRequest::Create {
            server_ip: params.ipv4("server_ip")?,
            router_id: params.router_id()?,
            server_port: params.port("create_server_port")?,
            gateway: params.ipv4("gateway")?,
        },
        PAT_REMOVE => LegacyRequest::Remove {
            server_ip: params.ipv4("server_ip")?,
            router_id: params.router_id()?,
            server_port: params.port("remove_server_port")?,
            gateway: params.ipv4("gateway")?,
        },
        _ => LegacyRequest::Modify {
            server_ip: params.ipv4("server_ip")?,
            router_id: params.router_id()?,
            server_port: params.port("modify_server_port")?,
            new_router_port: params.port("modify_router_port")?,
            gateway: params.ipv4("gateway")?,
        },
    };
    Ok(request)
}

/// The decoded parameters of a query string, in order, duplicates kept so that they can be
/// reported.
struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes `application/x-www-form-urlencoded` text: `&`-separated `name=value` pairs,
    /// `+` for a space, `%XX` for a byte, UTF-8 after decoding. Empty pieces (`a=1&&b=2`, a
    /// trailing `&`) are skipped; a piece without `=` is a parameter with an empty value.
    fn decode(query: &str) -> Result<Self, LegacyError> {
        let mut pairs = Vec::new();
        for piece in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            pairs.push((decode_component(name)?, decode_component(value)?));
        }
        Ok(Params(pairs))
    }

    /// The single value of `name`.
    fn get(&self, name: &'static str) -> Result<&str, LegacyError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (None, _) => Err(LegacyError::Missing { name }),
            (Some(value), None) => Ok(value),
            (Some(_), Some(_)) => Err(LegacyError::Duplicate { name }),
        }
    }

    fn ipv4(&self, name: &'static str) -> Result<Ipv4Addr, LegacyError> {
        let value = self.get(name)?;
        value
            .parse()
            .map_err(|_| invalid(name, value, "expected an IPv4 address such as 10.0.0.5"))
    }

    fn port(&self, name: &'static str) -> Result<u16, LegacyError> {
        let value = self.get(name)?;
        // Digits only: `u16::from_str` would also take "+22".
        match value.parse::<u16>() {
            Ok(port) if port != 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(invalid(name, value, "expected a port number (1-65535)")),
        }
    }

    /// `qrouter-<uuid>` (what the Proxy CLI sends), `snat-<uuid>` or `<uuid>`, returned as
    /// the canonical UUID.
    fn router_id(&self) -> Result<String, LegacyError> {
        const NAME: &str = "router_id";
        let value = self.get(NAME)?;
        let bare = value
            .strip_prefix("qrouter-")
            .or_else(|| value.strip_prefix("snat-"))
            .unwrap_or(value);
        // 36 characters: only the hyphenated form, the one namespace names use.
        match Uuid::try_parse(bare) {
            Ok(id) if bare.len() == 36 => Ok(id.hyphenated().to_string()),
            _ => Err(invalid(
                NAME,
                value,
                "expected a router id: qrouter-<uuid>, snat-<uuid> or <uuid>",
            )),
        }
    }
}

fn invalid(name: &'static str, value: &str, reason: &'static str) -> LegacyError {
    LegacyError::Invalid {
        name,
        value: quote(value),
        reason,
    }
}

/// `text`, cut to a readable length for an error message.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_VALUE_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn decode_component(text: &str) -> Result<String, LegacyError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let escape = bytes.get(i + 1..i + 3);
                let value =
                    escape.and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?));
                let Some(value) = value else {
                    let shown: String = text[i..].chars().take(3).collect();
                    return Err(LegacyError::BadQuery {
                        reason: format!(
                            "{shown:?} is not a percent escape (expected % and two hex digits)"
                        ),
                    });
                };
                out.push(value);
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| LegacyError::BadQuery {
        reason: format!("{:?} does not decode to UTF-8 text", quote(text)),
    })
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One mapping as the answers describe it: `server_ip:server_port` is reachable at
/// `gateway:router_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatEntry {
    pub server_ip: Ipv4Addr,
    pub server_port: u16,
    pub router_port: u16,
    pub gateway: Ipv4Addr,
}

/// The operation that found no mapping to act on, for [`not_created`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Remove,
    Modify,
}

/// `/pat/create`, new mapping: `status` `SUCCESS`.
pub fn created(pat: PatEntry) -> Value {
    json!({
        "status": "SUCCESS",
        "create_router_port": pat.router_port.to_string(),
        "server_ip": pat.server_ip.to_string(),
        "create_server_port": pat.server_port.to_string(),
        "gateway": pat.gateway.to_string(),
        "message": format!(
            "Created PAT: {}:{} now forwards to {}:{}.",
            pat.gateway, pat.router_port, pat.server_ip, pat.server_port
        ),
    })
}

/// `/pat/create`, the server port was already mapped: `status` `CREATED`, with the existing
/// router port. Nothing was changed.
pub fn already_created(pat: PatEntry) -> Value {
    json!({
        "status": "CREATED",
        "created_server_port": pat.server_port.to_string(),
        "created_router_port": pat.router_port.to_string(),
        "server_ip": pat.server_ip.to_string(),
        "gateway": pat.gateway.to_string(),
        "message": format!(
            "Port {} of server {} is already forwarded from {}:{}.",
            pat.server_port, pat.server_ip, pat.gateway, pat.router_port
        ),
    })
}

/// `/pat/remove`, mapping removed: `status` `REMOVED`, with the router port it had.
pub fn removed(pat: PatEntry) -> Value {
    json!({
        "status": "REMOVED",
        "remove_router_port": pat.router_port.to_string(),
        "server_ip": pat.server_ip.to_string(),
        "remove_server_port": pat.server_port.to_string(),
        "gateway": pat.gateway.to_string(),
        "message": format!(
            "Removed PAT: {}:{} no longer forwards to {}:{}.",
            pat.gateway, pat.router_port, pat.server_ip, pat.server_port
        ),
    })
}

/// `/pat/remove` or `/pat/modify` on a server port that has no mapping: `status`
/// `NO CREATED`. The port field is named after the operation, as in the original.
pub fn not_created(
    operation: Operation,
    server_ip: Ipv4Addr,
    server_port: u16,
    gateway: Ipv4Addr,
) -> Value {
    let (port_field, verb) = match operation {
        Operation::Remove => ("remove_server_port", "remove"),
        Operation::Modify => ("modify_server_port", "modify"),
    };
    let mut answer = Map::new();
    answer.insert("status".into(), "NO CREATED".into());
    answer.insert("server_ip".into(), server_ip.to_string().into());
    answer.insert(port_field.into(), server_port.to_string().into());
    answer.insert("gateway".into(), gateway.to_string().into());
    answer.insert(
        "message".into(),
        format!(
            "Port {server_port} of server {server_ip} is not forwarded from gateway {gateway}; \
             nothing to {verb}."
        )
        .into(),
    );
    Value::Object(answer)
}

/// `/pat/modify` done: `status` `SUCCESS`. `old` is the mapping as it was;
/// `modified_router_port` is its old router port, `modify_router_port` the new one.
pub fn modified(old: PatEntry, new_router_port: u16) -> Value {
    json!({
        "status": "SUCCESS",
        "modified_router_port": old.router_port.to_string(),
        "modify_router_port": new_router_port.to_string(),
        "server_ip": old.server_ip.to_string(),
        "modify_server_port": old.server_port.to_string(),
        "gateway": old.gateway.to_string(),
        "message": format!(
            "Modified PAT: {}:{} moved from router port {} to {}.",
            old.server_ip, old.server_port, old.router_port, new_router_port
        ),
    })
}

/// `/pat/modify` to a router port that is taken: `status` `USED`. `current` is the mapping,
/// unchanged; `requested_router_port` the port that was asked for.
pub fn used(current: PatEntry, requested_router_port: u16) -> Value {
    json!({
        "status": "USED",
        "modified_router_port": current.router_port.to_string(),
        "modify_router_port": requested_router_port.to_string(),
        "server_ip": current.server_ip.to_string(),
        "modify_server_port": current.server_port.to_string(),
        "gateway": current.gateway.to_string(),
        "message": format!(
            "Router port {} of gateway {} is already in use; {}:{} stays on router port {}.",
            requested_router_port,
            current.gateway,
            current.server_ip,
            current.server_port,
            current.router_port
        ),
    })
}

/// A failure: `{"status": "ERROR", "message": ...}`.
pub fn error(message: impl fmt::Display) -> Value {
    json!({
        "status": "ERROR",
        "message": message.to_string(),
    })
}

/// `/router_pat`: `{"<server_ip>:<server_port>": "<router_port>"}` for the given
/// `(server_ip, server_port, router_port)` triples. The format has room for one router port
/// per server socket; if several router ports lead to the same one, the lowest is shown.
pub fn listing(entries: impl IntoIterator<Item = (Ipv4Addr, u16, u16)>) -> Value {
    let mut lowest: BTreeMap<String, u16> = BTreeMap::new();
    for (server_ip, server_port, router_port) in entries {
        keep_lowest(
            &mut lowest,
            format!("{server_ip}:{server_port}"),
            router_port,
        );
    }
    into_object(lowest)
}

/// `/router_server_pat`: `{"<server_port>": "<router_port>"}` for the given
/// `(server_port, router_port)` pairs of one server; the lowest router port if several.
pub fn server_listing(entries: impl IntoIterator<Item = (u16, u16)>) -> Value {
    let mut lowest: BTreeMap<String, u16> = BTreeMap::new();
    for (server_port, router_port) in entries {
        keep_lowest(&mut lowest, server_port.to_string(), router_port);
    }
    into_object(lowest)
}

fn keep_lowest(map: &mut BTreeMap<String, u16>, key: String, router_port: u16) {
    map.entry(key)
        .and_modify(|port| *port = (*port).min(router_port))
        .or_insert(router_port);
}

fn into_object(map: BTreeMap<String, u16>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(key, port)| (key, Value::String(port.to_string())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ROUTER: &str = "3f1c2a9e-5b7d-4c8e-9a0b-1d2e3f4a5b6c";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pat() -> PatEntry {
        PatEntry {
            server_ip: ip("10.0.0.5"),
            server_port: 22,
            router_port: 4001,
            gateway: ip("203.0.113.10"),
        }
    }

    #[test]
    fn router_pat_is_parsed_from_the_namespace_name() {
        let q = format!("router_id=qrouter-{ROUTER}");
        assert_eq!(
            parse("GET", "/router_pat", &q).unwrap(),
            LegacyRequest::RouterPat {
                router_id: ROUTER.into()
            }
        );
    }

    #[test]
    fn router_ids_may_be_snat_namespaces_or_bare_and_are_normalized() {
        for given in [
            format!("snat-{ROUTER}"),
            ROUTER.to_string(),
            format!("qrouter-{}", ROUTER.to_uppercase()),
        ] {
            let req = parse("GET", "/router_pat", &format!("router_id={given}")).unwrap();
            assert_eq!(req.router_id(), ROUTER, "{given}");
        }
        for bad in [
            "qrouter-".to_string(),
            "router1".to_string(),
            ROUTER.replace('-', ""),
            format!("{{{ROUTER}}}"),
            format!("qrouter-snat-{ROUTER}"),
            format!("fip-{ROUTER}"),
        ] {
            let err = parse("GET", "/router_pat", &format!("router_id={bad}")).unwrap_err();
            assert!(
                matches!(
                    err,
                    LegacyError::Invalid {
                        name: "router_id",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn router_server_pat_is_parsed() {
        let q = format!("router_id=qrouter-{ROUTER}&server_ip=192.168.10.14");
        assert_eq!(
            parse("GET", "/router_server_pat", &q).unwrap(),
            LegacyRequest::RouterServerPat {
                router_id: ROUTER.into(),
                server_ip: ip("192.168.10.14"),
            }
        );
    }

    #[test]
    fn create_is_parsed_from_the_query_even_on_post() {
        let q = format!(
            "server_ip=192.168.10.14&router_id=qrouter-{ROUTER}&create_server_port=22\
             &gateway=172.16.1.150"
        );
        assert_eq!(
            parse("POST", "/pat/create", &q).unwrap(),
            LegacyRequest::Create {
                router_id: ROUTER.into(),
                server_ip: ip("192.168.10.14"),
                server_port: 22,
                gateway: ip("172.16.1.150"),
            }
        );
    }

    #[test]
    fn remove_is_parsed() {
        let q = format!(
            "server_ip=192.168.10.14&router_id=qrouter-{ROUTER}&remove_server_port=80\
             &gateway=172.16.1.150"
        );
        assert_eq!(
            parse("POST", "/pat/remove", &q).unwrap(),
            LegacyRequest::Remove {
                router_id: ROUTER.into(),
                server_ip: ip("192.168.10.14"),
                server_port: 80,
                gateway: ip("172.16.1.150"),
            }
        );
    }

    #[test]
    fn modify_is_parsed() {
        let q = format!(
            "server_ip=192.168.10.14&router_id=qrouter-{ROUTER}&modify_server_port=22\
             &modify_router_port=4050&gateway=172.16.1.150"
        );
        assert_eq!(
            parse("POST", "/pat/modify", &q).unwrap(),
            LegacyRequest::Modify {
                router_id: ROUTER.into(),
                server_ip: ip("192.168.10.14"),
                server_port: 22,
                new_router_port: 4050,
                gateway: ip("172.16.1.150"),
            }
        );
    }

    #[test]
    fn parameters_may_be_percent_encoded_in_any_order_with_extras() {
        let q = format!(
            "gateway=172%2E16%2e1%2E150&extra=x+y&create_server_port=%32%32\
             &router_id=qrouter%2D{ROUTER}&&server_ip=192.168.10.14&"
        );
        let req = parse("POST", "/pat/create", &q).unwrap();
        assert_eq!(
            req,
            LegacyRequest::Create {
                router_id: ROUTER.into(),
                server_ip: ip("192.168.10.14"),
                server_port: 22,
                gateway: ip("172.16.1.150"),
            }
        );
    }

    #[test]
    fn missing_parameters_are_named() {
        let full = format!(
            "server_ip=10.0.0.5&router_id={ROUTER}&modify_server_port=22\
             &modify_router_port=4050&gateway=203.0.113.10"
        );
        for name in [
            "server_ip",
            "router_id",
            "modify_server_port",
            "modify_router_port",
            "gateway",
        ] {
            let q: Vec<&str> = full
                .split('&')
                .filter(|p| !p.starts_with(&format!("{name}=")))
                .collect();
            let err = parse("POST", "/pat/modify", &q.join("&")).unwrap_err();
            assert_eq!(err, LegacyError::Missing { name });
            assert_eq!(err.to_string(), format!("missing query parameter {name}"));
            assert_eq!(err.http_status(), 400);
        }
    }

    #[test]
    fn duplicate_parameters_are_rejected_by_name() {
        let q = format!("router_id={ROUTER}&router_id={ROUTER}");
        let err = parse("GET", "/router_pat", &q).unwrap_err();
        assert_eq!(err, LegacyError::Duplicate { name: "router_id" });
        assert!(err.to_string().contains("router_id"), "{err}");
        // Even when the spellings differ only by encoding.
        let q = format!("router_id={ROUTER}&router%5Fid={ROUTER}");
        assert!(matches!(
            parse("GET", "/router_pat", &q),
            Err(LegacyError::Duplicate { .. })
        ));
    }

    #[test]
    fn invalid_values_are_named_with_the_reason() {
        let base = |port: &str, server: &str, gateway: &str| {
            format!(
                "server_ip={server}&router_id={ROUTER}&create_server_port={port}&gateway={gateway}"
            )
        };
        for (q, name) in [
            (base("0", "10.0.0.5", "203.0.113.10"), "create_server_port"),
            (
                base("65536", "10.0.0.5", "203.0.113.10"),
                "create_server_port",
            ),
            (
                base("+22", "10.0.0.5", "203.0.113.10"),
                "create_server_port",
            ),
            (base("", "10.0.0.5", "203.0.113.10"), "create_server_port"),
            (
                base("ssh", "10.0.0.5", "203.0.113.10"),
                "create_server_port",
            ),
            (base("22", "10.0.0", "203.0.113.10"), "server_ip"),
            (base("22", "fe80::1", "203.0.113.10"), "server_ip"),
            (base("22", "10.0.0.5", ""), "gateway"),
            (base("22", "10.0.0.5", "203.0.113.10%20"), "gateway"),
        ] {
            let err = parse("POST", "/pat/create", &q).unwrap_err();
            match &err {
                LegacyError::Invalid { name: n, .. } => assert_eq!(*n, name, "{q}"),
                other => panic!("expected an invalid {name} for {q}, got {other:?}"),
            }
            assert!(err.to_string().contains(name), "{err}");
        }
        let err = parse(
            "POST",
            "/pat/create",
            &base("99999", "10.0.0.5", "203.0.113.10"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "query parameter create_server_port has invalid value \"99999\": \
             expected a port number (1-65535)"
        );
    }

    #[test]
    fn long_rejected_values_are_shortened_in_errors() {
        let long = "x".repeat(10_000);
        let err = parse("GET", "/router_pat", &format!("router_id={long}")).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn malformed_queries_are_rejected() {
        for q in [
            "router_id=%",
            "router_id=%4",
            "router_id=%zz",
            "router_id=%FF",
            "%C3%28=1",
        ] {
            let err = parse("GET", "/router_pat", q).unwrap_err();
            assert!(matches!(err, LegacyError::BadQuery { .. }), "{q}: {err}");
        }
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_routing_errors() {
        let err = parse("GET", "/pat/list", "").unwrap_err();
        assert_eq!(
            err,
            LegacyError::NotFound {
                path: "/pat/list".into()
            }
        );
        assert_eq!(err.http_status(), 404);
        assert!(matches!(
            parse("GET", "/router_pat/", ""),
            Err(LegacyError::NotFound { .. })
        ));
        let err = parse("GET", "/pat/create", "").unwrap_err();
        assert_eq!(err.http_status(), 405);
        assert_eq!(
            err.to_string(),
            "method GET is not allowed on /pat/create (use POST)"
        );
        assert!(matches!(
            parse("POST", "/router_pat", ""),
            Err(LegacyError::MethodNotAllowed { allowed: "GET", .. })
        ));
    }

    #[test]
    fn requests_know_their_method_and_path() {
        for path in PATHS {
            let method = if path.starts_with("/pat/") {
                "POST"
            } else {
                "GET"
            };
            let q = format!(
                "router_id={ROUTER}&server_ip=10.0.0.5&gateway=203.0.113.10\
                 &create_server_port=1&remove_server_port=2&modify_server_port=3\
                 &modify_router_port=4"
            );
            let req = parse(method, path, &q).unwrap();
            assert_eq!((req.method(), req.path()), (method, path));
            assert_eq!(
                parse(req.method(), req.path(), &req.to_query()).unwrap(),
                req
            );
        }
    }

    #[test]
    fn created_answer() {
        assert_eq!(
            created(pat()),
            json!({
                "status": "SUCCESS",
                "create_router_port": "4001",
                "server_ip": "10.0.0.5",
                "create_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Created PAT: 203.0.113.10:4001 now forwards to 10.0.0.5:22."
            })
        );
    }

    #[test]
    fn already_created_answer() {
        assert_eq!(
            already_created(pat()),
            json!({
                "status": "CREATED",
                "created_server_port": "22",
                "created_router_port": "4001",
                "server_ip": "10.0.0.5",
                "gateway": "203.0.113.10",
                "message": "Port 22 of server 10.0.0.5 is already forwarded from 203.0.113.10:4001."
            })
        );
    }

    #[test]
    fn removed_answer() {
        assert_eq!(
            removed(pat()),
            json!({
                "status": "REMOVED",
                "remove_router_port": "4001",
                "server_ip": "10.0.0.5",
                "remove_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Removed PAT: 203.0.113.10:4001 no longer forwards to 10.0.0.5:22."
            })
        );
    }

    #[test]
    fn not_created_answers_name_the_port_after_the_operation() {
        assert_eq!(
            not_created(Operation::Remove, ip("10.0.0.5"), 22, ip("203.0.113.10")),
            json!({
                "status": "NO CREATED",
                "server_ip": "10.0.0.5",
                "remove_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Port 22 of server 10.0.0.5 is not forwarded from gateway \
                            203.0.113.10; nothing to remove."
            })
        );
        assert_eq!(
            not_created(Operation::Modify, ip("10.0.0.5"), 22, ip("203.0.113.10")),
            json!({
                "status": "NO CREATED",
                "server_ip": "10.0.0.5",
                "modify_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Port 22 of server 10.0.0.5 is not forwarded from gateway \
                            203.0.113.10; nothing to modify."
            })
        );
    }

    #[test]
    fn modified_answer() {
        assert_eq!(
            modified(pat(), 4050),
            json!({
                "status": "SUCCESS",
                "modified_router_port": "4001",
                "modify_router_port": "4050",
                "server_ip": "10.0.0.5",
                "modify_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Modified PAT: 10.0.0.5:22 moved from router port 4001 to 4050."
            })
        );
    }

    #[test]
    fn used_answer() {
        assert_eq!(
            used(pat(), 4050),
            json!({
                "status": "USED",
                "modified_router_port": "4001",
                "modify_router_port": "4050",
                "server_ip": "10.0.0.5",
                "modify_server_port": "22",
                "gateway": "203.0.113.10",
                "message": "Router port 4050 of gateway 203.0.113.10 is already in use; \
                            10.0.0.5:22 stays on router port 4001."
            })
        );
    }

    #[test]
    fn error_answer() {
        let err = LegacyError::Missing { name: "gateway" };
        assert_eq!(
            error(&err),
            json!({"status": "ERROR", "message": "missing query parameter gateway"})
        );
    }

    #[test]
    fn listings_have_string_ports_and_the_lowest_router_port() {
        assert_eq!(
            listing([
                (ip("10.0.0.5"), 22, 4001),
                (ip("10.0.0.5"), 80, 4002),
                (ip("10.0.0.6"), 22, 4003),
                (ip("10.0.0.5"), 22, 4000),
            ]),
            json!({"10.0.0.5:22": "4000", "10.0.0.5:80": "4002", "10.0.0.6:22": "4003"})
        );
        assert_eq!(
            server_listing([(22, 4001), (80, 4002), (22, 4009)]),
            json!({"22": "4001", "80": "4002"})
        );
        assert_eq!(listing([]), json!({}));
        assert_eq!(server_listing([]), json!({}));
    }

    #[test]
    fn serialized_answers_are_json_text_with_string_ports() {
        let text = serde_json::to_string(&server_listing([(22, 4001)])).unwrap();
        assert_eq!(text, r#"{"22":"4001"}"#);
    }

    /// Encodes every byte, as a client that escapes everything would.
    fn encode_all(text: &str) -> String {
        text.bytes().map(|b| format!("%{b:02x}")).collect()
    }

    fn any_query() -> impl Strategy<Value = String> {
        let names = prop_oneof![
            Just("router_id".to_string()),
            Just("server_ip".to_string()),
            Just("gateway".to_string()),
            Just("create_server_port".to_string()),
            Just("remove_server_port".to_string()),
            Just("modify_server_port".to_string()),
            Just("modify_router_port".to_string()),
            "[a-z_%+]{0,12}",
        ];
        let values = prop_oneof![
            "[0-9.]{0,16}",
            "(qrouter-|snat-)?[0-9a-fA-F-]{30,40}",
            "[%0-9a-fA-F+&=]{0,12}",
            "\\PC{0,20}",
        ];
        prop_oneof![
            proptest::collection::vec((names, values), 0..8).prop_map(|pairs| pairs
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&")),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            method in prop_oneof![Just("GET".to_string()), Just("POST".to_string()), any::<String>()],
            path in prop_oneof![
                proptest::sample::select(PATHS.to_vec()).prop_map(str::to_string),
                any::<String>(),
            ],
            query in any_query(),
        ) {
            let _ = parse(&method, &path, &query);
        }

        #[test]
        fn a_create_request_survives_rendering_and_parsing(
            router in any::<u128>(),
            server_ip in any::<u32>(),
            server_port in 1u16..,
            gateway in any::<u32>(),
            prefix in proptest::sample::select(vec!["qrouter-", "snat-", ""]),
            escape_all in any::<bool>(),
            order in Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let request = LegacyRequest::Create {
                router_id: Uuid::from_u128(router).to_string(),
                server_ip: Ipv4Addr::from(server_ip),
                server_port,
                gateway: Ipv4Addr::from(gateway),
            };
            prop_assert_eq!(
                &parse(request.method(), request.path(), &request.to_query()).unwrap(),
                &request
            );
            // The same request as another client could write it: other order, other router
            // prefix, everything escaped.
            let router_value = format!("{prefix}{}", request.router_id());
            let pairs = [
                ("server_ip", Ipv4Addr::from(server_ip).to_string()),
                ("router_id", router_value),
                ("create_server_port", server_port.to_string()),
                ("gateway", Ipv4Addr::from(gateway).to_string()),
            ];
            let query = order
                .iter()
                .map(|&i| {
                    let (name, value) = &pairs[i];
                    if escape_all {
                        format!("{}={}", encode_all(name), encode_all(value))
                    } else {
                        format!("{name}={value}")
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            prop_assert_eq!(parse("POST", "/pat/create", &query).unwrap(), request);
        }
    }
}
