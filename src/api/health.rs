//! `/healthz` and `/readyz`, served by every role: on the API's listener by `server` and
//! `all-in-one`, on a status listener of their own by `agent` and `monitor`.
//!
//! `/healthz` answers while the process runs. `/readyz` asks what the role depends on and
//! fails with 503 naming the first dependency that does not answer: the database, Keystone
//! refusing the service's own credentials (or unreachable), or an agent whose first pass over
//! the mappings has not succeeded yet.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::ApiError;
use crate::agent;
use crate::openstack::Session;
use crate::store::Store;
use crate::util::Chain;

/// What a role's readiness depends on.
pub struct Readiness {
    pub store: Arc<Store>,
    /// The service's Keystone session, when the role uses OpenStack.
    pub session: Option<Arc<Session>>,
    /// The agent's counters, when the role programs namespaces.
    pub agent: Option<Arc<agent::Counters>>,
}

impl Readiness {
    /// Only the database.
    pub fn store(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Readiness {
            store,
            session: None,
            agent: None,
        })
    }

    /// Why the role is not ready, if it is not: (code, message naming the dependency).
    pub async fn check(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = self.store.ping().await {
            tracing::warn!(error = %Chain(&e), "not ready: the database");
            return Err((
                "store_unavailable",
                "the mapping store (database) does not answer".into(),
            ));
        }
        if let Some(session) = &self.session {
            if let Err(e) = session.auth_token().await {
                tracing::warn!(error = %Chain(&e), "not ready: Keystone");
                return Err(("identity_unavailable", e.to_string()));
            }
        }
        if let Some(counters) = &self.agent {
            if counters.full_passes.get() == 0 {
                return Err((
                    "agent_starting",
                    "the agent has not yet programmed this node's routers".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The health routes alone, for a role without the API.
pub fn routes(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> Result<impl IntoResponse, ApiError> {
    readiness
        .check()
        .await
        .map_err(|(code, message)| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message))?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}
