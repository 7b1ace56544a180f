//! The one error shape of the API: `{"error": {"status": 409, "code": "...", "message": "..."}}`,
//! never HTML, and never a 500 for a client's mistake.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::openstack::DirectoryError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For a 401: where to authenticate.
    pub www_authenticate: Option<HeaderValue>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status, repeated.
    pub status: u16,
    /// A stable, machine-readable name of the error.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            www_authenticate: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self.www_authenticate {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::ExternalPortInUse { .. } => {
                Self::conflict("external_port_in_use", e.to_string())
            }
            StoreError::InternalSocketMapped { .. } => {
                Self::conflict("internal_socket_mapped", e.to_string())
            }
            StoreError::RangeExhausted { .. } => {
                Self::conflict("port_range_exhausted", e.to_string())
            }
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            _ => {
                tracing::error!(error = ?e, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the mapping store is unavailable",
                )
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Forbidden { .. } => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            ServiceError::NotFound { .. } => Self::not_found(message),
            ServiceError::Invalid { .. } => Self::bad_request(message),
            ServiceError::NoGateway { .. } => Self::conflict("router_has_no_gateway", message),
            ServiceError::RouterGone { .. } => Self::conflict("router_gone", message),
            ServiceError::PortGone { .. } => Self::conflict("port_gone", message),
            ServiceError::AddressChanged { .. } => Self::conflict("address_changed", message),
            ServiceError::AddressUnreachable { .. } => {
                Self::conflict("address_unreachable", message)
            }
            ServiceError::Store(e) => e.into(),
            ServiceError::Directory(e) => e.into(),
        }
    }
}

impl From<DirectoryError> for ApiError {
    /// The details (Neutron's URLs, its answer) go to the log, not to the caller.
    fn from(e: DirectoryError) -> Self {
        tracing::error!(error = %crate::util::Chain(&e), "router directory failure");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "router_directory_unavailable",
            "the network service cannot be read right now, so nothing was changed; retry later",
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_request",
        };
        // A body that does not fit the schema is a bad request, as OpenStack APIs answer it;
        // other rejections keep their (client error) status, in our shape.
        let status = match status {
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_failure_does_not_show_its_details_to_the_caller() {
        let e = ApiError::from(DirectoryError::Neutron(
            crate::openstack::OpenStackError::Status {
                service: "Neutron",
                url: "http://10.0.0.1:9696/v2.0/ports".into(),
                status: 500,
                body: "Traceback ...".into(),
            },
        ));
        assert_eq!(
            (e.status, e.code),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "router_directory_unavailable"
            )
        );
        assert!(
            !e.message.contains("9696") && !e.message.contains("Traceback"),
            "{}",
            e.message
        );
    }
}
