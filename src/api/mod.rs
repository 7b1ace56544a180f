//! The HTTP API (axum): REST API v1 (`/v1/mappings`, documented by `/v1/openapi.json`), the
//! original Proxy CLI protocol (`/router_pat`, `/pat/...`), and `/healthz` / `/readyz`.

pub mod auth;
pub mod error;
pub mod legacy;
pub mod openapi;
pub mod v1;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

pub use auth::{Authenticator, Caller, RoleNames};
pub use error::ApiError;

use crate::openstack::RouterDirectory;
use crate::store::{Policy, Store};

/// Largest request body accepted (a mapping is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The header carrying each request's id, as OpenStack services name it.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-openstack-request-id");

/// What the handlers share.
pub struct AppState {
    pub store: Arc<Store>,
    pub directory: Arc<dyn RouterDirectory>,
    pub policy: Policy,
    pub auth: Authenticator,
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
    Router::new()
        .merge(v1::routes())
        .merge(legacy::routes())
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER.clone()))
        .layer(SetRequestIdLayer::new(
            REQUEST_ID_HEADER.clone(),
            OpenStackRequestId,
        ))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<SharedState>) -> Result<impl IntoResponse, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = ?e, "not ready: store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the mapping store does not answer",
        )
    })?;
    Ok(Json(serde_json::json!({"status": "ready"})))
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
