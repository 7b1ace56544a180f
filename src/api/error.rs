//! The one error shape of the API: `{"error": {"status": 409, "code": "...", "message": "..."}}`,
//! never HTML, and never a 500 for a client's mistake. A refusal for a quota also says what
//! was counted (`"quota": {"resource": ..., "used": ..., "limit": ..., "requested": ...}`).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::model::Resource;
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
    /// For `quota_exceeded`: what was counted (boxed: every other error goes without).
    pub quota: Option<Box<QuotaExceeded>>,
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
    /// With `quota_exceeded` only: the project's usage and limit of the resource it would pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaExceeded>,
}

/// What a request over quota would have taken, and what the project holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaExceeded {
    /// The project whose quota applies: the router's.
    pub project_id: String,
    pub resource: QuotaResource,
    /// What the project holds now.
    pub used: u64,
    /// Its limit (never -1 here: an unlimited resource is never exceeded).
    pub limit: u64,
    /// How much more the request needed.
    pub requested: u64,
}

/// A resource a quota counts, by its name in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaResource {
    /// Mappings, whatever their size.
    Mappings,
    /// External ports: a mapping of a range of N ports holds N.
    ExternalPorts,
}

impl From<Resource> for QuotaResource {
    fn from(r: Resource) -> Self {
        match r {
            Resource::Mappings => QuotaResource::Mappings,
            Resource::ExternalPorts => QuotaResource::ExternalPorts,
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            www_authenticate: None,
            quota: None,
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
                quota: self.quota.map(|q| *q),
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
            StoreError::QuotaExceeded {
                project_id,
                resource,
                used,
                limit,
                requested,
            } => ApiError {
                quota: Some(Box::new(QuotaExceeded {
                    project_id: project_id.clone(),
                    resource: (*resource).into(),
                    used: *used,
                    limit: *limit,
                    requested: *requested,
                })),
                ..Self::conflict("quota_exceeded", e.to_string())
            },
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
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                "payload_too_large",
                format!("the body is larger than {} bytes", super::MAX_BODY_BYTES),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                "unsupported_media_type",
                "send the body as JSON, with Content-Type: application/json",
            ),
            // A body that does not fit the schema is a bad request, as OpenStack APIs answer
            // it, named in the API's terms rather than the decoder's.
            _ => Self::bad_request(body_problem(&r)),
        }
    }
}

/// What is wrong with a JSON body, by field: `mapping.internal_port must be a port number
/// from 1 to 65535`, `unknown field "colour" in mapping`, `the body is not valid JSON (...)`.
fn body_problem(r: &JsonRejection) -> String {
    let mut source = std::error::Error::source(r);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            return field_problem(&e.path().to_string(), e.inner());
        }
        if let Some(e) = e.downcast_ref::<serde_json::Error>() {
            return field_problem(".", e);
        }
        source = e.source();
    }
    "the body is not a JSON document of the expected shape".into()
}

fn field_problem(path: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = e.to_string();
    // serde_json appends " at line L column C"; the field path says more.
    let what = text.split(" at line ").next().unwrap_or(&text);
    match e.classify() {
        Category::Syntax | Category::Eof => format!("the body is not valid JSON ({text})"),
        Category::Io => "the body could not be read".into(),
        Category::Data => {
            let (inside, field) = match path.rsplit_once('.') {
                Some((parent, field)) => (Some(parent), field),
                None if path == "." => (None, ""),
                None => (None, path),
            };
            if let Some(rest) = what.strip_prefix("unknown field ") {
                let (name, known) = rest.split_once(", expected").unwrap_or((rest, ""));
                let known = known
                    .trim_start_matches(" one of")
                    .replace('`', "")
                    .trim()
                    .to_string();
                // The path ends with the unknown field itself.
                let place = match inside {
                    Some(parent) => parent.to_string(),
                    None => "the body".to_string(),
                };
                return format!(
                    "unknown field {} in {place}; the fields are {known}",
                    name.replace('`', "\"")
                );
            }
            if let Some(rest) = what.strip_prefix("missing field ") {
                let name = rest.replace('`', "");
                return match (name.as_str(), inside) {
                    ("mapping", _) => "the body must be {\"mapping\": {...}}".into(),
                    ("quota", _) => "the body must be {\"quota\": {...}}".into(),
                    (name, Some(parent)) => format!("{parent}.{field}.{name} is required"),
                    (name, None) if !field.is_empty() => format!("{field}.{name} is required"),
                    (name, None) => format!("{name} is required"),
                };
            }
            let expected = match what.rsplit_once(", expected ") {
                Some((_, expected)) => expected,
                None if what.starts_with("invalid IPv4 address") => "an IPv4 address",
                None if path == "." || path.is_empty() => return format!("the body: {what}"),
                None => return format!("{path}: {what}"),
            };
            let rule = match expected {
                "u16" => "a port number from 1 to 65535".to_string(),
                "i64" if path.starts_with("quota.") => format!(
                    "-1 (unlimited) or a whole number from 0 to {}",
                    crate::model::MAX_QUOTA_LIMIT
                ),
                "u32" => "a whole number".to_string(),
                "a boolean" => "true or false".to_string(),
                "a sequence" => "a list".to_string(),
                "IPv4 address" | "an IPv4 address" => "an IPv4 address".to_string(),
                // A list where the object was expected reads "struct X with 1 element".
                e if e.starts_with("struct MappingEnvelope") => "{\"mapping\": {...}}".to_string(),
                e if e.starts_with("struct QuotaEnvelope") => "{\"quota\": {...}}".to_string(),
                e if e.starts_with("struct ") => "an object".to_string(),
                e => e.to_string(),
            };
            if path == "." || path.is_empty() {
                format!("the body must be {rule}")
            } else {
                format!("{path} must be {rule}")
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(query_problem(&r.body_text()))
    }
}

/// The query decoder's text (`<parameter>: <problem>`) in the API's terms.
fn query_problem(text: &str) -> String {
    let what = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    let (parameter, problem) = match what.split_once(": ") {
        Some((p, rest)) if !p.contains(' ') => (Some(p), rest),
        _ => (None, what),
    };
    if let Some(rest) = problem.strip_prefix("unknown field ") {
        let (name, known) = rest.split_once(", expected").unwrap_or((rest, ""));
        let known = known.trim_start_matches(" one of").replace('`', "");
        return format!(
            "unknown query parameter {}; the parameters are {}",
            name.replace('`', "\""),
            known.trim()
        );
    }
    if let (Some(p), Some(rest)) = (parameter, problem.strip_prefix("unknown variant ")) {
        let (value, known) = rest.split_once(", expected ").unwrap_or((rest, ""));
        return format!(
            "{p} must be {}, not {}",
            known.trim_start_matches("one of ").replace('`', ""),
            value.replace('`', "\"")
        );
    }
    match parameter {
        Some("external_port") => "external_port must be a port number from 1 to 65535".into(),
        Some("limit") => "limit must be a whole number from 1 to 10000".into(),
        Some(p) => format!("{p}: {}", problem.replace('`', "\"")),
        None => format!(
            "the query string cannot be read: {}",
            problem.replace('`', "\"")
        ),
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

    fn problem<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        let de = &mut serde_json::Deserializer::from_str(json);
        let e = serde_path_to_error::deserialize::<_, T>(de).unwrap_err();
        field_problem(&e.path().to_string(), e.inner())
    }

    #[test]
    fn a_bad_query_names_the_parameter() {
        assert_eq!(
            query_problem("Failed to deserialize query string: colour: unknown field `colour`, expected one of `router_id`, `limit`"),
            "unknown query parameter \"colour\"; the parameters are router_id, limit"
        );
        assert_eq!(
            query_problem(
                "Failed to deserialize query string: limit: invalid digit found in string"
            ),
            "limit must be a whole number from 1 to 10000"
        );
        assert_eq!(
            query_problem(
                "Failed to deserialize query string: protocol: unknown variant `sctp`, expected `tcp` or `udp`"
            ),
            "protocol must be tcp or udp, not \"sctp\""
        );
    }

    #[test]
    fn a_bad_body_is_named_by_field_and_rule_never_by_the_decoder() {
        use crate::api::v1::{CreateMapping, MappingEnvelope};
        type Create = MappingEnvelope<CreateMapping>;
        assert_eq!(
            problem::<Create>(r#"{"mapping": {"internal_port": 70000}}"#),
            "mapping.internal_port must be a port number from 1 to 65535"
        );
        assert_eq!(
            problem::<Create>(r#"{"mapping": {"internal_port": "22"}}"#),
            "mapping.internal_port must be a port number from 1 to 65535"
        );
        assert_eq!(
            problem::<Create>(r#"{"mapping": {"masquerade": "yes"}}"#),
            "mapping.masquerade must be true or false"
        );
        assert_eq!(
            problem::<Create>(r#"{"mapping": {"internal_ip_address": "10.0.0.300"}}"#),
            "mapping.internal_ip_address must be an IPv4 address"
        );
        let unknown = problem::<Create>(r#"{"mapping": {"colour": 1}}"#);
        assert!(
            unknown.starts_with("unknown field \"colour\" in mapping; the fields are router_id, "),
            "{unknown}"
        );
        assert_eq!(
            problem::<Create>(r#"{"internal_port": 22}"#),
            "the body must be {\"mapping\": {...}}"
        );
        assert_eq!(
            problem::<Create>("{}"),
            "the body must be {\"mapping\": {...}}"
        );
        assert!(problem::<Create>("{not json").starts_with("the body is not valid JSON"));
        for message in [
            problem::<Create>(r#"{"mapping": {"internal_port": 70000}}"#),
            problem::<Create>(r#"{"mapping": []}"#),
        ] {
            assert!(
                !message.contains("u16") && !message.contains("deserialize"),
                "{message}"
            );
        }
    }

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
