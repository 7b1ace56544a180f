//! REST API v1: `/v1/mappings`.
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
use crate::dataplane::{PortRange, Protocol};
use crate::openstack::{FixedIp, RouterInfo};
use crate::store::{ExternalPorts, ListFilter, Mapping, MappingUpdate, NewMapping, Status};

/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 255;
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
}

impl From<Mapping> for MappingView {
    fn from(m: Mapping) -> Self {
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

fn port(value: u16, what: &str) -> Result<PortRange, ApiError> {
    PortRange::single(value).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
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

fn description(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(ApiError::bad_request(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        ))),
        other => Ok(other),
    }
}

/// Checks that the external and internal ranges fit together (N:N, or N external to 1).
fn check_ranges(external: PortRange, internal: PortRange) -> Result<(), ApiError> {
    if internal.len() != 1 && internal.len() != external.len() {
        return Err(ApiError::bad_request(format!(
            "internal ports {internal} must be one port or as many as the external ports {external}"
        )));
    }
    Ok(())
}

/// Non-admins may only choose external ports inside the configured range.
pub fn check_in_range(
    state: &SharedState,
    caller: &Caller,
    external: PortRange,
) -> Result<(), ApiError> {
    let range = state.policy.range;
    let inside = range.contains(external.first()) && range.contains(external.last());
    if !inside && !caller.is_admin() {
        return Err(ApiError::bad_request(format!(
            "external ports {external} are outside the allowed range {range}"
        )));
    }
    Ok(())
}

/// Where a new mapping may point: an address, the subnet it is on and the port holding it, as
/// far as the directory knows them.
#[derive(Debug)]
struct Internal {
    fixed: FixedIp,
    port_id: Option<String>,
}

/// The router of a new mapping, and the one internal address among `candidates` it reaches.
async fn resolve_router(
    state: &SharedState,
    caller: &Caller,
    id: Option<&str>,
    mut candidates: Vec<Internal>,
) -> Result<(RouterInfo, Internal), ApiError> {
    let ip = candidates[0].fixed.ip;
    let router = match id {
        Some(id) => state
            .directory
            .router(id)
            .await?
            .filter(|r| r.project_id.as_deref().is_none_or(|p| caller.sees(p)))
            .ok_or_else(|| ApiError::not_found(format!("router {id} not found")))?,
        None => {
            let mut found = state
                .directory
                .routers_serving(ip, caller.port_scope())
                .await?;
            found.retain(|r| r.project_id.as_deref().is_none_or(|p| caller.sees(p)));
            match found.len() {
                1 => found.remove(0),
                0 => {
                    return Err(ApiError::bad_request(format!(
                        "no router with a gateway serves {ip}; give router_id"
                    )))
                }
                n => {
                    return Err(ApiError::bad_request(format!(
                        "{n} routers serve {ip}; give router_id"
                    )))
                }
            }
        }
    };
    if router.gateway_ip.is_none() {
        return Err(ApiError::conflict(
            "router_has_no_gateway",
            format!("router {} has no external gateway", router.id),
        ));
    }
    candidates.retain(|c| router.reaches(&c.fixed));
    match candidates.len() {
        1 => Ok((router, candidates.remove(0))),
        0 => Err(ApiError::bad_request(format!(
            "{ip} is not on a subnet attached to router {}",
            router.id
        ))),
        _ => Err(ApiError::bad_request(format!(
            "several of your ports hold {ip} on subnets of router {}; give internal_port_id",
            router.id
        ))),
    }
}

/// The internal addresses a new mapping may point at (the router then picks the one it
/// reaches). Where ports are known (Neutron), the port must exist and be the caller's (another
/// project's is "not found") and an instance's, the address must be one of its fixed IPs, and
/// an address given alone must be a fixed IP of one of the caller's ports: a mapping never
/// reaches an address its project does not own.
async fn internal_candidates(
    state: &SharedState,
    caller: &Caller,
    req: &CreateMapping,
) -> Result<Vec<Internal>, ApiError> {
    let directory = &state.directory;
    let unknown_subnet = |ip| FixedIp {
        ip,
        subnet_id: None,
    };
    match (req.internal_ip_address, &req.internal_port_id) {
        (ip, Some(port_id)) if directory.knows_ports() => {
            let port = directory
                .port(port_id)
                .await?
                .filter(|p| {
                    p.project_id
                        .as_deref()
                        .is_none_or(|owner| caller.sees(owner))
                })
                .ok_or_else(|| ApiError::not_found(format!("port {port_id} not found")))?;
            if let Some(why) = port.not_mappable() {
                return Err(ApiError::bad_request(why));
            }
            let fixed = match (ip, port.fixed_ips.as_slice()) {
                (Some(ip), _) => port.fixed_ip(ip).cloned().ok_or_else(|| {
                    ApiError::bad_request(format!("{ip} is not a fixed address of port {port_id}"))
                })?,
                (None, [one]) => one.clone(),
                (None, []) => {
                    return Err(ApiError::bad_request(format!(
                        "port {port_id} has no IPv4 address"
                    )))
                }
                (None, _) => {
                    return Err(ApiError::bad_request(format!(
                        "port {port_id} has several IPv4 addresses; give internal_ip_address"
                    )))
                }
            };
            Ok(vec![Internal {
                fixed,
                port_id: Some(port.id),
            }])
        }
        (Some(ip), Some(port_id)) => Ok(vec![Internal {
            fixed: unknown_subnet(ip),
            port_id: Some(port_id.clone()),
        }]),
        (None, Some(port_id)) => Err(ApiError::bad_request(format!(
            "port {port_id} is unknown here; give internal_ip_address"
        ))),
        (Some(ip), None) if directory.knows_ports() => {
            let owned: Vec<Internal> = directory
                .ports_with_address(ip, caller.port_scope())
                .await?
                .into_iter()
                .filter(|p| p.not_mappable().is_none())
                .filter_map(|p| {
                    Some(Internal {
                        fixed: p.fixed_ip(ip)?.clone(),
                        port_id: Some(p.id),
                    })
                })
                .collect();
            if owned.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{ip} is not a fixed address of an instance's port of your project"
                )));
            }
            Ok(owned)
        }
        (Some(ip), None) => Ok(vec![Internal {
            fixed: unknown_subnet(ip),
            port_id: None,
        }]),
        (None, None) => Err(ApiError::bad_request(
            "internal_ip_address or internal_port_id is required",
        )),
    }
}

pub fn forbidden_unless(allowed: bool, what: &str) -> Result<(), ApiError> {
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role may not {what}"),
        ))
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
        (status = 409, description = "Port in use, socket already mapped, range exhausted, or no gateway", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<MappingEnvelope<CreateMapping>>,
) -> Result<impl IntoResponse, ApiError> {
    let mapping = create_mapping(&state, &caller, body.mapping, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(MappingEnvelope {
            mapping: MappingView::from(mapping),
        }),
    ))
}

/// Checks and stores a new mapping (v1 and the original protocol alike). With
/// `expected_gateway` (the original protocol sends it), a router with another gateway is refused.
pub async fn create_mapping(
    state: &SharedState,
    caller: &Caller,
    req: CreateMapping,
    expected_gateway: Option<Ipv4Addr>,
) -> Result<Mapping, ApiError> {
    forbidden_unless(caller.can_write(), "create mappings")?;
    let internal_ports = ports(
        req.internal_port,
        req.internal_port_range.as_deref(),
        "internal",
    )?
    .ok_or_else(|| ApiError::bad_request("internal_port or internal_port_range is required"))?;
    let external = ports(
        req.external_port,
        req.external_port_range.as_deref(),
        "external",
    )?;
    let protocol = protocol(req.protocol.as_deref())?;
    let allowed_cidrs = cidrs(req.allowed_cidrs.as_deref().unwrap_or_default())?;
    let candidates = internal_candidates(state, caller, &req).await?;
    let description = description(req.description)?.unwrap_or_default();
    let (router, internal) =
        resolve_router(state, caller, req.router_id.as_deref(), candidates).await?;
    if let (Some(expected), Some(gw)) = (expected_gateway, router.gateway_ip) {
        if expected != gw {
            return Err(ApiError::bad_request(format!(
                "gateway {expected} is not the router's gateway ({gw})"
            )));
        }
    }
    let external_ports = match external {
        Some(ext) => {
            check_ranges(ext, internal_ports)?;
            check_in_range(state, caller, ext)?;
            ExternalPorts::Explicit(ext)
        }
        None => ExternalPorts::Allocate {
            len: internal_ports.len(),
        },
    };
    let new = NewMapping {
        project_id: router
            .project_id
            .clone()
            .unwrap_or_else(|| caller.project_id.clone()),
        router_id: router.id.clone(),
        distributed: router.distributed,
        external_ip_address: router.gateway_ip.expect("checked by resolve_router"),
        protocol,
        external_ports,
        internal_ip_address: internal.fixed.ip,
        internal_port_id: internal.port_id,
        internal_ports,
        description,
        allowed_cidrs,
        masquerade: req.masquerade.unwrap_or(false),
    };
    let mapping = state.store.create(new, &state.policy).await?;
    tracing::info!(mapping = %mapping.id, project = %mapping.project_id, router = %mapping.router_id,
        external = %mapping.external_ports, internal = %format!("{}:{}", mapping.internal_ip_address, mapping.internal_ports),
        protocol = %mapping.protocol, "mapping created");
    Ok(mapping)
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
    forbidden_unless(caller.can_read(), "list mappings")?;
    let project_id = match q.project_id {
        Some(p) if caller.is_admin() || p == caller.project_id => Some(p),
        // Another project's mappings are not the caller's to see: an empty listing, as if
        // there were none, rather than a hint that they exist.
        Some(_) => return Ok(Json(MappingList { mappings: vec![] })),
        None if caller.is_admin() => None,
        None => Some(caller.project_id.clone()),
    };
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
        project_id,
        router_id: q.router_id,
        internal_port_id: q.internal_port_id,
        internal_ip_address,
        protocol,
        external_port: q.external_port,
        limit: Some(limit),
        marker: q.marker,
    };
    let mappings = state.store.list(&filter).await?;
    Ok(Json(MappingList {
        mappings: mappings.into_iter().map(MappingView::from).collect(),
    }))
}

/// The caller's mapping `id`; another project's is "not found", not "forbidden", so that its
/// existence is not revealed.
pub async fn visible(state: &SharedState, caller: &Caller, id: &str) -> Result<Mapping, ApiError> {
    state
        .store
        .get(id)
        .await?
        .filter(|m| caller.sees(&m.project_id))
        .ok_or_else(|| ApiError::not_found(format!("mapping {id} not found")))
}

/// Before a change: Neutron must still agree to what the mapping points at (its router, with a
/// gateway; its port, an instance's, still holding the address on a subnet of the router),
/// else the change is refused with 409 and the mapping left as it is (the monitor brings it up
/// to date).
pub async fn still_mappable(state: &SharedState, m: &Mapping) -> Result<(), ApiError> {
    let router = match state.directory.router(&m.router_id).await? {
        None => {
            return Err(ApiError::conflict(
                "router_gone",
                format!("router {} no longer exists", m.router_id),
            ))
        }
        Some(r) if r.gateway_ip.is_none() => {
            return Err(ApiError::conflict(
                "router_has_no_gateway",
                format!("router {} has no external gateway", m.router_id),
            ))
        }
        Some(r) => r,
    };
    let mut fixed = FixedIp {
        ip: m.internal_ip_address,
        subnet_id: None,
    };
    if let (Some(port_id), true) = (&m.internal_port_id, state.directory.knows_ports()) {
        let Some(port) = state.directory.port(port_id).await? else {
            return Err(ApiError::conflict(
                "port_gone",
                format!("port {port_id} no longer exists"),
            ));
        };
        let held = port.fixed_ip(m.internal_ip_address).cloned();
        match (port.not_mappable(), held) {
            (Some(why), _) => return Err(ApiError::conflict("port_gone", why)),
            (None, None) => {
                return Err(ApiError::conflict(
                    "address_changed",
                    format!(
                        "port {port_id} no longer holds {}; the monitor follows it",
                        m.internal_ip_address
                    ),
                ))
            }
            (None, Some(f)) => fixed = f,
        }
    }
    if !router.reaches(&fixed) {
        return Err(ApiError::conflict(
            "address_unreachable",
            format!(
                "{} is no longer on a subnet attached to router {}",
                m.internal_ip_address, m.router_id
            ),
        ));
    }
    Ok(())
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
    forbidden_unless(caller.can_read(), "show mappings")?;
    let m = visible(&state, &caller, &id).await?;
    Ok(Json(MappingEnvelope {
        mapping: MappingView::from(m),
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
    let current = visible(&state, &caller, &id).await?;
    forbidden_unless(caller.can_write(), "change mappings")?;
    still_mappable(&state, &current).await?;
    let req = body.mapping;
    let external = ports(
        req.external_port,
        req.external_port_range.as_deref(),
        "external",
    )?;
    let internal = ports(
        req.internal_port,
        req.internal_port_range.as_deref(),
        "internal",
    )?;
    let (ext, int) = (
        external.unwrap_or(current.external_ports),
        internal.unwrap_or(current.internal_ports),
    );
    check_ranges(ext, int)?;
    if let Some(ext) = external {
        check_in_range(&state, &caller, ext)?;
    }
    let update = MappingUpdate {
        external_ports: external,
        internal_ports: internal,
        description: description(req.description)?,
        allowed_cidrs: req.allowed_cidrs.as_deref().map(cidrs).transpose()?,
        masquerade: req.masquerade,
        ..Default::default()
    };
    let mapping = state.store.update(&id, &update).await?;
    tracing::info!(mapping = %mapping.id, project = %mapping.project_id, "mapping updated");
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
    visible(&state, &caller, &id).await?;
    forbidden_unless(caller.can_write(), "delete mappings")?;
    if state.store.delete(&id).await?.is_some() {
        tracing::info!(mapping = %id, project = %caller.project_id, "mapping deleted");
    }
    Ok(StatusCode::NO_CONTENT)
}
