//! Who is calling, and what they may do.
//!
//! With Keystone (`auth_strategy = keystone`, the default) every request but the health checks
//! and the OpenAPI document carries a token in `X-Auth-Token`, validated against Keystone:
//! missing, invalid or expired → 401; Keystone unreachable → 503. Without Keystone (`noauth`,
//! development only) the caller is taken from the `X-Project-Id` and `X-Roles` headers, the
//! way Neutron's noauth mode does. What a caller may do is the service's policy
//! ([`crate::service::Caller`]).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};

use super::{ApiError, SharedState};
use crate::openstack::tokens::TokenValidator;
pub use crate::service::{Caller, RoleNames};

/// How callers are recognised.
#[derive(Clone)]
pub enum Authenticator {
    /// Trusts the `X-Project-Id` and `X-Roles` headers.
    Noauth { roles: RoleNames },
    /// Validates `X-Auth-Token` with Keystone at `auth_url` (named in 401 answers).
    Keystone {
        tokens: Arc<dyn TokenValidator>,
        auth_url: String,
        roles: RoleNames,
    },
}

impl Authenticator {
    pub fn noauth() -> Self {
        Authenticator::Noauth {
            roles: RoleNames::default(),
        }
    }

    fn roles(&self) -> &RoleNames {
        match self {
            Authenticator::Noauth { roles } | Authenticator::Keystone { roles, .. } => roles,
        }
    }
}

/// Longer tokens are refused without asking Keystone (Fernet tokens are under 255 bytes, JWS
/// ones about 800).
pub const MAX_TOKEN_LEN: usize = 4096;

fn unauthorized(auth_url: &str, message: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    // As keystonemiddleware does: where to get a token.
    e.www_authenticate = HeaderValue::from_str(&format!("Keystone uri=\"{auth_url}\"")).ok();
    e
}

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let names = state.auth.roles();
        match &state.auth {
            Authenticator::Noauth { .. } => {
                let project_id = header("x-project-id").unwrap_or("default").to_string();
                let roles = header("x-roles")
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| format!("{},{}", names.member, names.reader))
                    .split(',')
                    .map(|r| r.trim().to_ascii_lowercase())
                    .filter(|r| !r.is_empty())
                    .collect();
                Ok(Caller::new(project_id, None, roles, names))
            }
            Authenticator::Keystone {
                tokens, auth_url, ..
            } => {
                let Some(token) = header("x-auth-token") else {
                    return Err(unauthorized(
                        auth_url,
                        "authentication required: send a Keystone token in X-Auth-Token",
                    ));
                };
                // Keystone's tokens are a few hundred bytes; validated tokens are cached by
                // value, so a size bound keeps the cache's memory bounded too.
                if token.len() > MAX_TOKEN_LEN {
                    return Err(unauthorized(auth_url, "the token is invalid or expired"));
                }
                match tokens.validate(token).await {
                    Ok(Some(info)) => {
                        let Some(project_id) = info.project_id else {
                            return Err(unauthorized(
                                auth_url,
                                "the token is not scoped to a project",
                            ));
                        };
                        Ok(Caller::new(
                            project_id,
                            Some(info.user_id),
                            info.roles,
                            names,
                        ))
                    }
                    Ok(None) => Err(unauthorized(auth_url, "the token is invalid or expired")),
                    Err(e) => {
                        tracing::error!(error = %crate::util::Chain(&e), "cannot validate a token");
                        Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "identity_unavailable",
                            format!("the identity service cannot validate tokens right now ({auth_url}); retry later"),
                        ))
                    }
                }
            }
        }
    }
}
