//! REST API v1: `/v1/quotas`, in the shape of Neutron's quota API (`/v2.0/quotas`): a
//! project's limits (`GET`, `PUT`, `DELETE /v1/quotas/{project_id}`), its usage against them
//! (`/details`), the defaults (`/default`), and the projects with limits of their own (`GET
//! /v1/quotas`, admins). `-1` is unlimited.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::v1::ApiJson;
use super::{Caller, SharedState};
use crate::model::{Limit, MAX_QUOTA_LIMIT};
use crate::service::{QuotaDetail, QuotaDetails};
use crate::store::{QuotaChange, Quotas};

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/quotas", get(list))
        .route(
            "/v1/quotas/{project_id}",
            get(show).put(update).delete(reset),
        )
        .route("/v1/quotas/{project_id}/details", get(details))
        .route("/v1/quotas/{project_id}/default", get(defaults))
}

/// `{"quota": {...}}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuotaEnvelope<T> {
    pub quota: T,
}

/// A project's limits; `-1` is unlimited.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct QuotaView {
    /// How many mappings.
    #[schema(minimum = -1, maximum = 2147483647)]
    pub mappings: i64,
    /// How many external ports (a mapping of a range of N ports holds N).
    #[schema(minimum = -1, maximum = 2147483647)]
    pub external_ports: i64,
}

impl From<Quotas> for QuotaView {
    fn from(q: Quotas) -> Self {
        QuotaView {
            mappings: q.mappings.as_i64(),
            external_ports: q.external_ports.as_i64(),
        }
    }
}

/// A project with limits of its own, and the limits that apply to it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ProjectQuotaView {
    pub project_id: String,
    #[schema(minimum = -1, maximum = 2147483647)]
    pub mappings: i64,
    #[schema(minimum = -1, maximum = 2147483647)]
    pub external_ports: i64,
}

/// `{"quotas": [...]}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QuotaList {
    pub quotas: Vec<ProjectQuotaView>,
}

/// One resource: what the project holds against its limit.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct QuotaDetailView {
    #[schema(minimum = 0)]
    pub used: u64,
    /// `-1`: unlimited.
    #[schema(minimum = -1, maximum = 2147483647)]
    pub limit: i64,
    /// Always 0: usage is counted inside each write, nothing is held for requests in progress.
    #[schema(minimum = 0)]
    pub reserved: u64,
}

impl From<QuotaDetail> for QuotaDetailView {
    fn from(d: QuotaDetail) -> Self {
        QuotaDetailView {
            used: d.used,
            limit: d.limit.as_i64(),
            reserved: d.reserved,
        }
    }
}

/// A project's usage and limits, by resource.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct QuotaDetailsView {
    pub mappings: QuotaDetailView,
    pub external_ports: QuotaDetailView,
}

impl From<QuotaDetails> for QuotaDetailsView {
    fn from(d: QuotaDetails) -> Self {
        QuotaDetailsView {
            mappings: d.mappings.into(),
            external_ports: d.external_ports.into(),
        }
    }
}

/// Limits to give a project; a resource left out keeps its limit. `-1` is unlimited.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateQuota {
    /// How many mappings.
    #[schema(minimum = -1, maximum = 2147483647)]
    pub mappings: Option<i64>,
    /// How many external ports (a mapping of a range of N ports holds N).
    #[schema(minimum = -1, maximum = 2147483647)]
    pub external_ports: Option<i64>,
}

impl UpdateQuota {
    /// The change in the store's terms; a value that is not a limit is refused naming its
    /// field.
    pub fn parse(self) -> Result<QuotaChange, ApiError> {
        let limit = |value: Option<i64>, field: &str| {
            value
                .map(|v| {
                    Limit::from_i64(v).map_err(|_| {
                        ApiError::bad_request(format!(
                            "quota.{field} must be -1 (unlimited) or a whole number from 0 to \
                             {MAX_QUOTA_LIMIT}, not {v}"
                        ))
                    })
                })
                .transpose()
        };
        Ok(QuotaChange {
            mappings: limit(self.mappings, "mappings")?,
            external_ports: limit(self.external_ports, "external_ports")?,
        })
    }
}

/// The projects that have limits of their own (admin only).
#[utoipa::path(get, path = "/v1/quotas", tag = "quotas",
    responses((status = 200, description = "Projects with limits of their own", body = QuotaList),
        (status = 403, description = "Not an admin", body = ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<QuotaList>, ApiError> {
    let quotas = state.service.quotas(&caller).await?;
    Ok(Json(QuotaList {
        quotas: quotas
            .into_iter()
            .map(|(project_id, q)| ProjectQuotaView {
                project_id,
                mappings: q.mappings.as_i64(),
                external_ports: q.external_ports.as_i64(),
            })
            .collect(),
    }))
}

/// The limits that apply to a project (admins: any; members and readers: their own).
#[utoipa::path(get, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The project's limits", body = QuotaEnvelope<QuotaView>),
        (status = 403, description = "Another project's, or no role to read", body = ErrorBody)))]
pub async fn show(
    State(state): State<SharedState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<QuotaEnvelope<QuotaView>>, ApiError> {
    let quotas = state.service.quota(&caller, &project_id).await?;
    Ok(Json(QuotaEnvelope {
        quota: quotas.into(),
    }))
}

/// Gives a project limits of its own (admin only); answers the limits that now apply. A limit
/// below what the project holds removes nothing: it refuses what would add to it.
#[utoipa::path(put, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path)),
    request_body = QuotaEnvelope<UpdateQuota>,
    responses((status = 200, description = "The limits that now apply", body = QuotaEnvelope<QuotaView>),
        (status = 400, description = "Not a limit, an unknown resource, or nothing to set", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<QuotaEnvelope<UpdateQuota>>,
) -> Result<Json<QuotaEnvelope<QuotaView>>, ApiError> {
    // The role first: a non-admin learns nothing from how its values would be read.
    state.service.may_set_quota(&caller)?;
    let change = body.quota.parse()?;
    let quotas = state
        .service
        .set_quota(&caller, &project_id, change)
        .await?;
    Ok(Json(QuotaEnvelope {
        quota: quotas.into(),
    }))
}

/// Forgets a project's own limits: the defaults apply again (admin only).
#[utoipa::path(delete, path = "/v1/quotas/{project_id}", tag = "quotas",
    params(("project_id" = String, Path)),
    responses((status = 204, description = "The defaults apply"),
        (status = 403, description = "Not an admin", body = ErrorBody)))]
pub async fn reset(
    State(state): State<SharedState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.reset_quota(&caller, &project_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a project holds against each limit (admins: any; members and readers: their own).
#[utoipa::path(get, path = "/v1/quotas/{project_id}/details", tag = "quotas",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "Usage and limits", body = QuotaEnvelope<QuotaDetailsView>),
        (status = 403, description = "Another project's, or no role to read", body = ErrorBody)))]
pub async fn details(
    State(state): State<SharedState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<QuotaEnvelope<QuotaDetailsView>>, ApiError> {
    let details = state.service.quota_details(&caller, &project_id).await?;
    Ok(Json(QuotaEnvelope {
        quota: details.into(),
    }))
}

/// The limits of projects without their own (`[quota]` of the configuration).
#[utoipa::path(get, path = "/v1/quotas/{project_id}/default", tag = "quotas",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The default limits", body = QuotaEnvelope<QuotaView>),
        (status = 403, description = "Another project's, or no role to read", body = ErrorBody)))]
pub async fn defaults(
    State(state): State<SharedState>,
    caller: Caller,
    Path(project_id): Path<String>,
) -> Result<Json<QuotaEnvelope<QuotaView>>, ApiError> {
    let quotas = state.service.default_quota(&caller, &project_id)?;
    Ok(Json(QuotaEnvelope {
        quota: quotas.into(),
    }))
}
