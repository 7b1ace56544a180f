//! The OpenAPI 3.1 document of API v1, generated from the handlers' annotations and served at
//! `/v1/openapi.json`; a test checks it against the real routes.

use axum::Json;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail, QuotaExceeded, QuotaResource};
use super::{quotas, routers, v1, versions};

#[derive(OpenApi)]
#[openapi(
    info(title = "PRaaS", description = "Port forwarding through OpenStack routers' gateway addresses"),
    paths(versions::versions, versions::version, v1::create, v1::list, v1::show, v1::update, v1::remove, v1::agents,
        routers::list, routers::show,
        quotas::list, quotas::show, quotas::update, quotas::reset, quotas::details, quotas::defaults),
    components(schemas(ErrorBody, ErrorDetail, QuotaExceeded, QuotaResource, v1::MappingView, v1::CreateMapping, v1::UpdateMapping, v1::MappingList,
        v1::AgentView, v1::AgentList, versions::VersionList, versions::VersionEnvelope, versions::Version,
        versions::Link, quotas::QuotaView, quotas::ProjectQuotaView, quotas::QuotaList, quotas::QuotaDetailView,
        quotas::QuotaDetailsView, quotas::UpdateQuota, routers::RouterView, routers::ProtocolPortsView,
        routers::RouterList, routers::RouterEnvelope)),
    tags((name = "versions", description = "API version discovery, without a token"),
        (name = "mappings", description = "PAT mappings on routers' gateways"),
        (name = "routers", description = "The project's routers: gateway addresses, and the external ports used and free"),
        (name = "agents", description = "The agents of the network nodes (admin only)"),
        (name = "quotas", description = "How many mappings and external ports each project may hold; -1 is unlimited"))
)]
pub struct ApiDoc;

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
