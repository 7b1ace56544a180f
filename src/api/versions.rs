//! Version discovery, as OpenStack APIs offer it: `GET /` lists the API versions and `GET /v1`
//! describes version 1, without a token, so that a client given the endpoint from the
//! catalog (service type `port-forwarding`) finds the version it speaks. Links are built from
//! the request's `Host` header (and `X-Forwarded-Proto` behind a TLS proxy).

use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;

/// The API version this server speaks.
pub const CURRENT: &str = "v1";

/// A link of a version, as OpenStack writes them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    pub href: String,
    pub rel: String,
}

/// One API version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// `v1`.
    pub id: String,
    /// `CURRENT` for the version new clients should use.
    pub status: String,
    pub links: Vec<Link>,
}

/// `GET /`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
}

/// `GET /v1`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionEnvelope {
    pub version: Version,
}

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(versions))
        .route("/v1", get(version))
}

/// `scheme://host` of the request, for links; relative links without a `Host`.
fn base(headers: &HeaderMap) -> String {
    let Some(host) = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return String::new();
    };
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

fn v1(headers: &HeaderMap) -> Version {
    let base = base(headers);
    Version {
        id: CURRENT.into(),
        status: "CURRENT".into(),
        links: vec![
            Link {
                href: format!("{base}/v1"),
                rel: "self".into(),
            },
            Link {
                href: format!("{base}/v1/openapi.json"),
                rel: "describedby".into(),
            },
        ],
    }
}

#[utoipa::path(get, path = "/", tag = "versions",
    responses((status = 200, description = "The API versions", body = VersionList)))]
pub async fn versions(headers: HeaderMap) -> Json<VersionList> {
    Json(VersionList {
        versions: vec![v1(&headers)],
    })
}

#[utoipa::path(get, path = "/v1", tag = "versions",
    responses((status = 200, description = "API version 1", body = VersionEnvelope)))]
pub async fn version(headers: HeaderMap) -> Json<VersionEnvelope> {
    Json(VersionEnvelope {
        version: v1(&headers),
    })
}
