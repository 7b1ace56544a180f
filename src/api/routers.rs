//! REST API v1: `/v1/routers`, the routers a project can put mappings on, with their gateway
//! address and what their mappings hold of the external port range (`GET /v1/routers`), and
//! one router's free ports as ranges (`GET /v1/routers/{id}`), which a client shows before
//! choosing an external port.

use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::v1::ApiQuery;
use super::{Caller, SharedState};
use crate::model::{PortRange, Protocol};
use crate::service::{ProtocolPorts, RouterPorts};

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/routers", get(list))
        .route("/v1/routers/{id}", get(show))
}

/// `first:last`, as the API writes every port range.
fn text(range: PortRange) -> String {
    format!("{}:{}", range.first(), range.last())
}

/// What a router's mappings of one protocol hold of the configured port range.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ProtocolPortsView {
    /// Mappings of this protocol on the router, wherever their external ports are.
    #[schema(minimum = 0)]
    pub mappings: u64,
    /// Ports of `port_range` claimed by them.
    #[schema(minimum = 0)]
    pub ports_used: u64,
    /// Ports of `port_range` left.
    #[schema(minimum = 0)]
    pub ports_free: u64,
    /// The free ports as `first:last` ranges (`N:N` for a single port), in order; only in
    /// `GET /v1/routers/{id}`, for the protocols asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = json!(["4000:4016", "4018:4100"]))]
    pub free_ports: Option<Vec<String>>,
}

impl From<ProtocolPorts> for ProtocolPortsView {
    fn from(p: ProtocolPorts) -> Self {
        ProtocolPortsView {
            mappings: p.mappings,
            ports_used: p.used,
            ports_free: p.free,
            free_ports: p
                .free_ranges
                .map(|ranges| ranges.into_iter().map(text).collect()),
        }
    }
}

/// A router, as Neutron has it, with what its mappings hold.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RouterView {
    pub id: String,
    /// Neutron's name of the router; empty when unknown (without OpenStack, routers are read
    /// from this node's namespaces).
    pub name: String,
    /// The owner; `null` when unknown (routers read from namespaces).
    #[schema(required = true)]
    pub project_id: Option<String>,
    /// The router's external gateway address, where clients connect; `null` when the router
    /// has no gateway (with an IPv4 address): then no mapping can be created on it.
    #[schema(value_type = Option<String>, format = Ipv4, example = "203.0.113.10", required = true)]
    pub external_gateway_ip: Option<Ipv4Addr>,
    /// Distributed (DVR).
    pub distributed: bool,
    /// `[praas] router_port_range`: where external ports are allocated, and the range the
    /// counts below are of.
    #[schema(example = "4000:4100")]
    pub port_range: String,
    /// Mappings on the router, of both protocols.
    #[schema(minimum = 0)]
    pub mappings: u64,
    pub tcp: ProtocolPortsView,
    pub udp: ProtocolPortsView,
}

impl From<RouterPorts> for RouterView {
    fn from(r: RouterPorts) -> Self {
        RouterView {
            mappings: r.mappings(),
            port_range: text(r.range),
            id: r.id,
            name: r.name,
            project_id: r.project_id,
            external_gateway_ip: r.gateway_ip,
            distributed: r.distributed,
            tcp: r.tcp.into(),
            udp: r.udp.into(),
        }
    }
}

/// `{"routers": [...]}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouterList {
    pub routers: Vec<RouterView>,
}

/// `{"router": {...}}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouterEnvelope {
    pub router: RouterView,
}

/// Filters of the router listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RouterListQuery {
    /// Another project's routers (admin only; for anyone else another project's listing is
    /// empty).
    pub project_id: Option<String>,
}

/// A protocol, as a query names it.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolName {
    Tcp,
    Udp,
}

impl From<ProtocolName> for Protocol {
    fn from(p: ProtocolName) -> Self {
        match p {
            ProtocolName::Tcp => Protocol::Tcp,
            ProtocolName::Udp => Protocol::Udp,
        }
    }
}

/// What to show of one router.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RouterShowQuery {
    /// The free ports of this protocol only (default: both).
    #[param(inline)]
    pub protocol: Option<ProtocolName>,
}

/// The routers of the caller's project (admins: every project's, or `project_id`'s), with
/// their gateway address and what their mappings hold of the port range.
#[utoipa::path(get, path = "/v1/routers", tag = "routers", params(RouterListQuery),
    responses((status = 200, description = "Routers, in id order", body = RouterList),
        (status = 400, description = "An unknown query parameter", body = ErrorBody),
        (status = 403, description = "No role to read", body = ErrorBody),
        (status = 503, description = "Neutron or the database cannot be read", body = ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RouterListQuery>,
) -> Result<Json<RouterList>, ApiError> {
    let routers = state.service.routers(&caller, q.project_id).await?;
    Ok(Json(RouterList {
        routers: routers.into_iter().map(RouterView::from).collect(),
    }))
}

/// One router, with its free ports as ranges for each protocol (or the one asked).
#[utoipa::path(get, path = "/v1/routers/{id}", tag = "routers",
    params(("id" = String, Path), RouterShowQuery),
    responses((status = 200, description = "The router", body = RouterEnvelope),
        (status = 400, description = "A protocol that is not tcp or udp, or an unknown query parameter", body = ErrorBody),
        (status = 403, description = "No role to read", body = ErrorBody),
        (status = 404, description = "No such router, or another project's", body = ErrorBody),
        (status = 503, description = "Neutron or the database cannot be read", body = ErrorBody)))]
pub async fn show(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RouterShowQuery>,
) -> Result<Json<RouterEnvelope>, ApiError> {
    let protocols = match q.protocol {
        None => vec![Protocol::Tcp, Protocol::Udp],
        Some(p) => vec![p.into()],
    };
    let router = state.service.router_ports(&caller, &id, &protocols).await?;
    Ok(Json(RouterEnvelope {
        router: router.into(),
    }))
}
