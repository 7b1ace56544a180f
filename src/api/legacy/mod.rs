//! The original Proxy CLI protocol (`/router_pat`, `/router_server_pat`, `/pat/create`,
//! `/pat/remove`, `/pat/modify`), served from the same store, allocator and checks as API v1.
//!
//! As the original, outcomes (`SUCCESS`, `CREATED`, `REMOVED`, `NO CREATED`, `USED`, and
//! `ERROR` for a refused request) are answered with HTTP 200 and the status word in the body;
//! a request that cannot be parsed gets its HTTP status (400, 404, 405) with an `ERROR` body,
//! a caller whose role may not write gets 403, and one without a valid token 401 (503 when
//! Keystone cannot be asked), each with an `ERROR` body.

pub mod protocol;

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::Value;

use self::protocol::{LegacyRequest, Operation, PatEntry};
use super::{ApiError, Caller, SharedState};
use crate::model::{PortRange, Protocol};
use crate::service::{CreateRequest, ServiceError, UpdateRequest};
use crate::store::{ListFilter, Mapping, StoreError};

pub fn routes() -> Router<SharedState> {
    protocol::PATHS
        .iter()
        .fold(Router::new(), |r, path| r.route(path, any(handle)))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn handle(
    State(state): State<SharedState>,
    caller: Result<Caller, ApiError>,
    method: Method,
    uri: Uri,
) -> Response {
    // Refused authentication keeps its status (401, 503) and header, in this protocol's shape.
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            let mut response = answer(e.status, protocol::error(&e.message));
            if let Some(value) = e.www_authenticate {
                response
                    .headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, value);
            }
            return response;
        }
    };
    let request =
        match protocol::parse(method.as_str(), uri.path(), uri.query().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                let status =
                    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
                return answer(status, protocol::error(&e));
            }
        };
    match serve(&state, &caller, request).await {
        Ok(body) => answer(StatusCode::OK, body),
        Err(e) if e.status == StatusCode::FORBIDDEN => {
            answer(e.status, protocol::error(&e.message))
        }
        Err(e) => answer(StatusCode::OK, protocol::error(&e.message)),
    }
}

/// The caller's TCP mappings on `router_id` (the original only knew TCP).
async fn mappings_of(
    state: &SharedState,
    caller: &Caller,
    router_id: &str,
    ip: Option<Ipv4Addr>,
) -> Result<Vec<Mapping>, ApiError> {
    let filter = ListFilter {
        router_id: Some(router_id.to_string()),
        internal_ip_address: ip,
        protocol: Some(Protocol::Tcp),
        ..Default::default()
    };
    Ok(state.service.list(caller, filter).await?)
}

/// The mapping of `ip:port` on the router, if the caller has one.
async fn mapping_of(
    state: &SharedState,
    caller: &Caller,
    router_id: &str,
    ip: Ipv4Addr,
    port: u16,
) -> Result<Option<Mapping>, ApiError> {
    Ok(mappings_of(state, caller, router_id, Some(ip))
        .await?
        .into_iter()
        .find(|m| m.internal_ports.contains(port)))
}

fn port(value: u16) -> Result<PortRange, ApiError> {
    PortRange::single(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The router port a mapping gives `server_port` (ranges map port by port, or all to one).
fn router_port(m: &Mapping, server_port: u16) -> u16 {
    if m.internal_ports.len() == 1 {
        m.external_ports.first()
    } else {
        m.external_ports.first() + (server_port - m.internal_ports.first())
    }
}

fn entry(m: &Mapping, server_port: u16) -> PatEntry {
    PatEntry {
        server_ip: m.internal_ip_address,
        server_port,
        router_port: router_port(m, server_port),
        gateway: m.external_ip_address,
    }
}

/// The original sent the gateway along; a different one means the caller has stale facts.
fn check_gateway(m: &Mapping, gateway: Ipv4Addr) -> Result<(), ApiError> {
    if m.external_ip_address != gateway {
        return Err(ApiError::bad_request(format!(
            "gateway {gateway} is not the gateway of router {} ({})",
            m.router_id, m.external_ip_address
        )));
    }
    Ok(())
}

async fn serve(
    state: &SharedState,
    caller: &Caller,
    request: LegacyRequest,
) -> Result<Value, ApiError> {
    match request {
        LegacyRequest::RouterPat { router_id } => {
            let mappings = mappings_of(state, caller, &router_id, None).await?;
            Ok(protocol::listing(mappings.iter().flat_map(|m| {
                m.internal_ports
                    .iter()
                    .map(move |p| (m.internal_ip_address, p, router_port(m, p)))
            })))
        }
        LegacyRequest::RouterServerPat {
            router_id,
            server_ip,
        } => {
            let mappings = mappings_of(state, caller, &router_id, Some(server_ip)).await?;
            Ok(protocol::server_listing(mappings.iter().flat_map(|m| {
                m.internal_ports.iter().map(move |p| (p, router_port(m, p)))
            })))
        }
        LegacyRequest::Create {
            router_id,
            server_ip,
            server_port,
            gateway,
        } => {
            if let Some(m) = mapping_of(state, caller, &router_id, server_ip, server_port).await? {
                check_gateway(&m, gateway)?;
                return Ok(protocol::already_created(entry(&m, server_port)));
            }
            let req = CreateRequest {
                router_id: Some(router_id),
                internal_port_id: None,
                internal_ip_address: Some(server_ip),
                internal_ports: port(server_port)?,
                external_ports: None,
                protocol: Protocol::Tcp,
                description: "created through the Proxy CLI protocol".into(),
                allowed_cidrs: vec![],
                // The original rewrote the client address toward the VM.
                masquerade: true,
                // The gateway is checked against the router before anything is stored.
                expected_gateway: Some(gateway),
            };
            let m = state.service.create(caller, req).await?;
            Ok(protocol::created(entry(&m, server_port)))
        }
        LegacyRequest::Remove {
            router_id,
            server_ip,
            server_port,
            gateway,
        } => {
            let Some(m) = mapping_of(state, caller, &router_id, server_ip, server_port).await?
            else {
                return Ok(protocol::not_created(
                    Operation::Remove,
                    server_ip,
                    server_port,
                    gateway,
                ));
            };
            check_gateway(&m, gateway)?;
            state.service.delete(caller, &m.id).await?;
            Ok(protocol::removed(entry(&m, server_port)))
        }
        LegacyRequest::Modify {
            router_id,
            server_ip,
            server_port,
            new_router_port,
            gateway,
        } => {
            let Some(m) = mapping_of(state, caller, &router_id, server_ip, server_port).await?
            else {
                return Ok(protocol::not_created(
                    Operation::Modify,
                    server_ip,
                    server_port,
                    gateway,
                ));
            };
            check_gateway(&m, gateway)?;
            // This protocol names one router port: a range cannot be expressed.
            if m.external_ports.len() != 1 {
                return Err(ApiError::bad_request(
                    "a mapping of a port range cannot be moved with /pat/modify",
                ));
            }
            let old = entry(&m, server_port);
            let update = UpdateRequest {
                external_ports: Some(port(new_router_port)?),
                ..Default::default()
            };
            match state.service.update(caller, &m.id, update).await {
                Ok(_) => Ok(protocol::modified(old, new_router_port)),
                Err(ServiceError::Store(StoreError::ExternalPortInUse { .. })) => {
                    Ok(protocol::used(old, new_router_port))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
