//! REST API v1: `/v1/mappings`, and `/v1/agents` for operators (`/v1/quotas` is in
//! [`super::quotas`], `/v1/routers` in [`super::routers`]).
//!
//! Field names follow Neutron's port forwarding API where the concepts are the same
//! (`internal_port_id`, `internal_ip_address`, `internal_port`/`internal_port_range`,
//! `external_port`/`external_port_range`, `protocol`, `description`), so that OpenStack users
//! find what they know; the external address is the router's gateway instead of a floating IP.

use std::net::Ipv4Addr;

use axum::extract::{FromRequest, FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::{Caller, SharedState};
use crate::model::{PortRange, Protocol};
use crate::service::agents::AgentStatus;
use crate::service::{CreateRequest, UpdateRequest};
use crate::store::{ListFilter, Mapping, MappingUsage, Status};

/// Largest page of a listing.
pub const MAX_LIMIT: u32 = 10_000;

/// `axum::Json` answering its rejections in our error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` answering its rejections in our error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/mappings", get(list).post(create))
        .route("/v1/mappings/{id}", get(show).put(update).delete(remove))
        .route("/v1/agents", get(agents))
}

/// A mapping as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct MappingView {
    pub id: String,
    pub project_id: String,
    pub router_id: String,
    /// The router's gateway address: where clients connect.
    #[schema(value_type = String, example = "203.0.113.10")]
    pub external_ip_address: Ipv4Addr,
    /// The external port, when the mapping has a single one.
    pub external_port: Option<u16>,
    /// `first:last` of the external ports (`N:N` for a single port).
    pub external_port_range: String,
    #[schema(value_type = String, example = "10.0.0.5")]
    pub internal_ip_address: Ipv4Addr,
    pub internal_port_id: Option<String>,
    pub internal_port: Option<u16>,
    pub internal_port_range: String,
    #[schema(example = "tcp")]
    pub protocol: String,
    pub description: String,
    /// Sources allowed to use the mapping; empty for everyone.
    pub allowed_cidrs: Vec<String>,
    /// Whether the VM sees the router's address instead of the client's.
    pub masquerade: bool,
    pub status: Status,
    pub status_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Packets of the mapping's forwarded connections (both directions), as the kernel
    /// counted them; `null` until traffic is first counted (always with the iptables driver).
    pub packets: Option<u64>,
    /// Bytes of those packets.
    pub bytes: Option<u64>,
    /// When the counters last moved (at the agents' reading interval).
    pub last_used: Option<String>,
}

impl From<Mapping> for MappingView {
    fn from(m: Mapping) -> Self {
        MappingView::with_usage(m, None)
    }
}

impl MappingView {
    /// The mapping with what the kernel counted for it.
    pub fn with_usage(m: Mapping, usage: Option<&MappingUsage>) -> Self {
        let single = |r: PortRange| (r.len() == 1).then_some(r.first());
        let range = |r: PortRange| format!("{}:{}", r.first(), r.last());
        MappingView {
            external_port: single(m.external_ports),
            external_port_range: range(m.external_ports),
            internal_port: single(m.internal_ports),
            internal_port_range: range(m.internal_ports),
            protocol: m.protocol.as_str().into(),
            allowed_cidrs: m.allowed_cidrs.iter().map(|c| c.to_string()).collect(),
            id: m.id,
            project_id: m.project_id,
            router_id: m.router_id,
            external_ip_address: m.external_ip_address,
            internal_ip_address: m.internal_ip_address,
            internal_port_id: m.internal_port_id,
            description: m.description,
            masquerade: m.masquerade,
            status: m.status,
            status_reason: m.status_reason,
            created_at: m.created_at,
            updated_at: m.updated_at,
            packets: usage.map(|u| u.packets),
            bytes: usage.map(|u| u.bytes),
            last_used: usage.and_then(MappingUsage::last_used),
        }
    }
}

/// `{"mapping": {...}}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MappingEnvelope<T> {
    pub mapping: T,
}

/// `{"mappings": [...]}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MappingList {
    pub mappings: Vec<MappingView>,
}

/// A mapping to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMapping {
    /// The router whose gateway is used; may be left out when exactly one router with a
    /// gateway serves the internal address.
    pub router_id: Option<String>,
    /// The VM's port; its fixed address is used when `internal_ip_address` is not given.
    pub internal_port_id: Option<String>,
    #[schema(value_type = Option<String>, format = Ipv4, example = "10.0.0.5")]
    pub internal_ip_address: Option<Ipv4Addr>,
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: Option<u16>,
    /// `N:M`; as many ports as the external range, or one port for all of them.
    pub internal_port_range: Option<String>,
    /// Chosen from the router's port range when left out.
    #[schema(minimum = 1, maximum = 65535)]
    pub external_port: Option<u16>,
    pub external_port_range: Option<String>,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
    pub description: Option<String>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub masquerade: Option<bool>,
}

/// Changes to a mapping; what is left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMapping {
    #[schema(minimum = 1, maximum = 65535)]
    pub external_port: Option<u16>,
    pub external_port_range: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub internal_port: Option<u16>,
    pub internal_port_range: Option<String>,
    pub description: Option<String>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub masquerade: Option<bool>,
}

/// Filters of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub router_id: Option<String>,
    pub internal_port_id: Option<String>,
    pub internal_ip_address: Option<String>,
    pub protocol: Option<String>,
    #[param(minimum = 1, maximum = 65535)]
    pub external_port: Option<u16>,
    /// Another project's mappings (admin only).
    pub project_id: Option<String>,
    /// At most this many (default and maximum 10,000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// The id of the last mapping of the previous page.
    pub marker: Option<String>,
}

fn port(value: u16, field: &str) -> Result<PortRange, ApiError> {
    PortRange::single(value).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}

/// One of `single` / `range` (not both), parsed.
fn ports(
    single: Option<u16>,
    range: Option<&str>,
    what: &str,
) -> Result<Option<PortRange>, ApiError> {
    match (single, range) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give {what}_port or {what}_port_range, not both"
        ))),
        (Some(p), None) => port(p, &format!("{what}_port")).map(Some),
        (None, Some(r)) => r
            .parse::<PortRange>()
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{what}_port_range {r:?}: {e}"))),
        (None, None) => Ok(None),
    }
}

fn protocol(value: Option<&str>) -> Result<Protocol, ApiError> {
    match value {
        None => Ok(Protocol::Tcp),
        Some(p) => p
            .parse()
            .map_err(|_| ApiError::bad_request(format!("protocol {p:?} is not tcp or udp"))),
    }
}

fn cidrs(values: &[String]) -> Result<Vec<Ipv4Net>, ApiError> {
    values
        .iter()
        .map(|c| {
            c.parse::<Ipv4Net>()
                .or_else(|_| c.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    ApiError::bad_request(format!("allowed_cidrs: {c:?} is not an IPv4 network"))
                })
        })
        .collect()
}

impl CreateMapping {
    /// The request in the service's terms; text that does not parse is refused naming its field.
    pub fn parse(self) -> Result<CreateRequest, ApiError> {
        let internal_ports = ports(
            self.internal_port,
            self.internal_port_range.as_deref(),
            "internal",
        )?
        .ok_or_else(|| ApiError::bad_request("internal_port or internal_port_range is required"))?;
        Ok(CreateRequest {
            external_ports: ports(
                self.external_port,
                self.external_port_range.as_deref(),
                "external",
            )?,
            protocol: protocol(self.protocol.as_deref())?,
            allowed_cidrs: cidrs(self.allowed_cidrs.as_deref().unwrap_or_default())?,
            router_id: self.router_id,
            internal_port_id: self.internal_port_id,
            internal_ip_address: self.internal_ip_address,
            internal_ports,
            description: self.description.unwrap_or_default(),
            masquerade: self.masquerade.unwrap_or(false),
            expected_gateway: None,
        })
    }
}

impl UpdateMapping {
    /// The change in the service's terms.
    pub fn parse(self) -> Result<UpdateRequest, ApiError> {
        Ok(UpdateRequest {
            external_ports: ports(
                self.external_port,
                self.external_port_range.as_deref(),
                "external",
            )?,
            internal_ports: ports(
                self.internal_port,
                self.internal_port_range.as_deref(),
                "internal",
            )?,
            description: self.description,
            allowed_cidrs: self.allowed_cidrs.as_deref().map(cidrs).transpose()?,
            masquerade: self.masquerade,
        })
    }
}

/// Creates a mapping.
#[utoipa::path(post, path = "/v1/mappings", tag = "mappings",
    request_body = MappingEnvelope<CreateMapping>,
    responses(
        (status = 201, description = "Created", body = MappingEnvelope<MappingView>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "Router not found", body = ErrorBody),
        (status = 403, description = "The caller's role may not create", body = ErrorBody),
        (status = 409, description = "Port in use, socket already mapped, range exhausted, no gateway, or the project's quota exceeded (`quota_exceeded`, with `quota`: used, limit, requested)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<MappingEnvelope<CreateMapping>>,
) -> Result<impl IntoResponse, ApiError> {
    // The role is checked before the request's values, so a reader learns nothing from them.
    state.service.may_create(&caller)?;
    let mapping = state.service.create(&caller, body.mapping.parse()?).await?;
    Ok((
        StatusCode::CREATED,
        Json(MappingEnvelope {
            mapping: MappingView::from(mapping),
        }),
    ))
}

/// Lists mappings (the caller's project's; admins may ask for any project).
#[utoipa::path(get, path = "/v1/mappings", tag = "mappings", params(ListQuery),
    responses((status = 200, description = "Mappings", body = MappingList), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<MappingList>, ApiError> {
    let internal_ip_address = q
        .internal_ip_address
        .as_deref()
        .map(|ip| {
            ip.parse().map_err(|_| {
                ApiError::bad_request(format!("internal_ip_address {ip:?} is not IPv4"))
            })
        })
        .transpose()?;
    let protocol = q
        .protocol
        .as_deref()
        .map(|p| protocol(Some(p)))
        .transpose()?;
    if q.external_port == Some(0) {
        return Err(ApiError::bad_request(
            "external_port must be between 1 and 65535",
        ));
    }
    let limit = q.limit.unwrap_or(MAX_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let filter = ListFilter {
        project_id: q.project_id,
        router_id: q.router_id,
        internal_port_id: q.internal_port_id,
        internal_ip_address,
        protocol,
        external_port: q.external_port,
        limit: Some(limit),
        marker: q.marker,
    };
    let mappings = state.service.list(&caller, filter).await?;
    let usage = state.service.usage(&mappings).await?;
    Ok(Json(MappingList {
        mappings: mappings
            .into_iter()
            .map(|m| {
                let u = usage.get(&m.id);
                MappingView::with_usage(m, u)
            })
            .collect(),
    }))
}

/// Shows one mapping.
#[utoipa::path(get, path = "/v1/mappings/{id}", tag = "mappings", params(("id" = String, Path)),
    responses((status = 200, body = MappingEnvelope<MappingView>), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MappingEnvelope<MappingView>>, ApiError> {
    let m = state.service.get(&caller, &id).await?;
    let usage = state.service.usage(std::slice::from_ref(&m)).await?;
    let u = usage.get(&m.id);
    Ok(Json(MappingEnvelope {
        mapping: MappingView::with_usage(m, u),
    }))
}

/// Changes a mapping's ports, description, allowed sources or masquerading.
#[utoipa::path(put, path = "/v1/mappings/{id}", tag = "mappings", params(("id" = String, Path)),
    request_body = MappingEnvelope<UpdateMapping>,
    responses((status = 200, body = MappingEnvelope<MappingView>), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MappingEnvelope<UpdateMapping>>,
) -> Result<Json<MappingEnvelope<MappingView>>, ApiError> {
    let change = body.mapping.parse()?;
    let mapping = state.service.update(&caller, &id, change).await?;
    Ok(Json(MappingEnvelope {
        mapping: MappingView::from(mapping),
    }))
}

/// Deletes a mapping; its rules and connections go with it.
#[utoipa::path(delete, path = "/v1/mappings/{id}", tag = "mappings", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent, as it last reported.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AgentView {
    /// The network node it runs on (`[praas] host`).
    pub host: String,
    /// It reported within `[praas] agent_down_time`.
    pub alive: bool,
    pub started_at: String,
    pub heartbeat_at: String,
    /// The end of its last pass that programmed every namespace it serves.
    pub last_sync_at: Option<String>,
    /// Its last failure, until a pass succeeds again.
    pub last_error: Option<String>,
    /// The routers whose namespaces it serves.
    pub routers: Vec<String>,
}

impl From<AgentStatus> for AgentView {
    fn from(a: AgentStatus) -> Self {
        let r = a.record;
        AgentView {
            host: r.host,
            alive: a.alive,
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
            last_sync_at: r.last_sync_at,
            last_error: r.last_error,
            routers: r.routers,
        }
    }
}

/// `{"agents": [...]}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// Filters of the agent listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    /// Only the agents serving this router.
    pub router_id: Option<String>,
}

/// The agents of the network nodes (admin only).
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, description = "Agents, by host", body = AgentList), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn agents(
    State(state): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> Result<Json<AgentList>, ApiError> {
    let agents = state
        .service
        .agents(&caller, q.router_id.as_deref())
        .await?;
    Ok(Json(AgentList {
        agents: agents.into_iter().map(AgentView::from).collect(),
    }))
}
