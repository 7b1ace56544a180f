//! The HTTP API (axum): REST API v1 (`/v1/mappings`, `/v1/routers`, `/v1/quotas`, `/v1/agents`,
//! documented by `/v1/openapi.json`), the
//! original Proxy CLI protocol (`/router_pat`, `/pat/...`), and `/healthz` / `/readyz`.

pub mod auth;
pub mod error;
pub mod health;
pub mod legacy;
pub mod openapi;
pub mod quotas;
pub mod routers;
pub mod v1;
pub mod versions;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

pub use auth::{Authenticator, Caller, RoleNames};
pub use error::ApiError;

use crate::service::MappingService;

/// Largest request body accepted (a mapping is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying each request's id, as OpenStack services name it.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-openstack-request-id");

/// What the handlers share: the mapping service they translate to, and how callers are
/// recognised.
pub struct AppState {
    pub service: Arc<MappingService>,
    pub auth: Authenticator,
    pub readiness: Arc<health::Readiness>,
}

pub type SharedState = Arc<AppState>;

/// Request ids of the form OpenStack uses: `req-<uuid>`.
#[derive(Clone, Copy)]
struct OpenStackRequestId;

impl MakeRequestId for OpenStackRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&format!("req-{}", uuid::Uuid::new_v4()))
            .ok()
            .map(RequestId::new)
    }
}

/// The whole HTTP service.
pub fn router(state: SharedState) -> Router {
    let health = health::routes(state.readiness.clone());
    Router::new()
        .merge(v1::routes())
        .merge(quotas::routes())
        .merge(routers::routes())
        .merge(versions::routes())
        .merge(legacy::routes())
        .route("/v1/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(health)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER.clone()))
        .layer(SetRequestIdLayer::new(
            REQUEST_ID_HEADER.clone(),
            OpenStackRequestId,
        ))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this resource",
    )
}
