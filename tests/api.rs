//! API v1 in-process: real router, real SQLite store, router facts from a static directory.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use praas::api::health::Readiness;
use praas::api::{self};
use praas::dataplane::{PortRange, Protocol};
use praas::model::Limit;
use praas::openstack::{DirectoryError, FixedIp, PortInfo, RouterInfo};
use praas::runtime;
use praas::store::{Policy, Quotas, Store, Strategy};
use praas::testbed::StaticDirectory;
use serde_json::{json, Value};
use tower::ServiceExt;

const R1: &str = "11111111-1111-4111-8111-111111111111";
const R2: &str = "22222222-2222-4222-8222-222222222222";
const R_NO_GW: &str = "33333333-3333-4333-8333-333333333333";
/// A gateway but no interface: it serves no subnet.
const R_NO_IF: &str = "55555555-5555-4555-8555-555555555555";

fn directory(ports: bool) -> StaticDirectory {
    // Subnets are named after their range; the twin has the shared subnet's range on another
    // network.
    let router = |id: &str, project: &str, gw: Option<&str>, subnets: &[&str]| RouterInfo {
        id: id.into(),
        name: format!("router-{}", &id[..2]),
        project_id: Some(project.into()),
        gateway_ip: gw.map(|g| g.parse().unwrap()),
        distributed: false,
        subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
        subnet_ids: subnets.iter().map(|s| format!("subnet-{s}")).collect(),
    };
    StaticDirectory {
        routers: vec![
            router(R1, "p1", Some("203.0.113.10"), &["10.0.0.0/24"]),
            // p2's router, also on a network shared with p1.
            router(
                R2,
                "p2",
                Some("203.0.113.20"),
                &["10.2.0.0/24", "10.5.0.0/24"],
            ),
            router(R_NO_GW, "p1", None, &["10.3.0.0/24"]),
            router(R_NO_IF, "p1", Some("203.0.113.30"), &[]),
        ],
        ports: ports.then(|| {
            let port = |id: &str, project: &str, ip: &str, subnet: &str, owner: &str| PortInfo {
                id: id.into(),
                project_id: Some(project.into()),
                device_id: if owner.is_empty() { "" } else { "some-device" }.into(),
                device_owner: owner.into(),
                fixed_ips: vec![FixedIp {
                    ip: ip.parse().unwrap(),
                    subnet_id: Some(format!("subnet-{subnet}")),
                }],
            };
            let vm = "compute:nova";
            vec![
                port("port-a", "p1", "10.0.0.5", "10.0.0.0/24", vm),
                port("port-a2", "p1", "10.0.0.6", "10.0.0.0/24", vm),
                port("port-b", "p2", "10.2.0.5", "10.2.0.0/24", vm),
                // Project p2's port with an address on p1's subnet.
                port("port-b-on-p1", "p2", "10.0.0.77", "10.0.0.0/24", vm),
                // p1's VM on the shared network, and p2's port with the same address on a
                // network of p2's own with the same range.
                port("port-a-shared", "p1", "10.5.0.7", "10.5.0.0/24", vm),
                port("port-b-twin", "p2", "10.5.0.7", "10.5.0.0/24-twin", vm),
                // Neutron's own port, and a port no instance uses.
                port(
                    "port-a-dhcp",
                    "p1",
                    "10.0.0.2",
                    "10.0.0.0/24",
                    "network:dhcp",
                ),
                port("port-a-unbound", "p1", "10.0.0.8", "10.0.0.0/24", ""),
            ]
        }),
    }
}

async fn app_with(range: (u16, u16), ports: bool) -> Router {
    app_with_quotas(range, ports, Quotas::UNLIMITED).await
}

/// The API over a fresh store whose projects without their own quota have `defaults`.
async fn app_with_quotas(range: (u16, u16), ports: bool, defaults: Quotas) -> Router {
    let dir = std::env::temp_dir().join(format!("praas-api-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let store = Arc::new(store.with_quota_defaults(defaults));
    runtime::api(
        store.clone(),
        Arc::new(directory(ports)),
        api::Authenticator::noauth(),
        Policy {
            range: PortRange::new(range.0, range.1).unwrap(),
            strategy: Strategy::Sequential,
        },
        Readiness::store(store),
    )
}

async fn app() -> Router {
    app_with((4000, 4100), false).await
}

/// Who calls: (project, roles).
const MEMBER_P1: (&str, &str) = ("p1", "member,reader");
const READER_P1: (&str, &str) = ("p1", "reader");
const MEMBER_P2: (&str, &str) = ("p2", "member,reader");
const ADMIN: (&str, &str) = ("admin-project", "admin,member,reader");

async fn call(
    app: &Router,
    who: (&str, &str),
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-project-id", who.0)
        .header("x-roles", who.1);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, value)
}

fn mapping(fields: Value) -> Value {
    json!({ "mapping": fields })
}

/// `POST /v1/mappings` with `{"mapping": fields}`.
async fn post(app: &Router, who: (&str, &str), fields: Value) -> (StatusCode, Value) {
    call(
        app,
        who,
        Method::POST,
        "/v1/mappings",
        Some(mapping(fields)),
    )
    .await
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn create_allocates_a_port_from_the_range_and_shows_the_mapping() {
    let app = app().await;
    let (status, body) = post(&app, MEMBER_P1, json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22, "description": "ssh"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let m = &body["mapping"];
    assert_eq!(m["external_port"], 4000);
    assert_eq!(m["external_ip_address"], "203.0.113.10");
    assert_eq!(m["protocol"], "tcp");
    assert_eq!(m["status"], "PENDING");
    assert_eq!(m["project_id"], "p1");
    let id = m["id"].as_str().unwrap();
    let (status, shown) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!((status, &shown["mapping"]), (StatusCode::OK, m));
}

#[tokio::test]
async fn the_router_is_found_from_the_address_or_the_port() {
    let app = app_with((4000, 4100), true).await;
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"internal_port_id": "port-a", "internal_port": 80, "protocol": "udp"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mapping"]["router_id"], R1);
    assert_eq!(body["mapping"]["internal_ip_address"], "10.0.0.5");
    // An address given alone is recorded with the port that holds it.
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"internal_ip_address": "10.0.0.6", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mapping"]["internal_port_id"], "port-a2");
}

#[tokio::test]
async fn only_the_callers_own_ports_and_addresses_can_be_mapped() {
    let app = app_with((4000, 4100), true).await;
    let cases = [
        // Another project's port does not exist for the caller.
        (
            MEMBER_P1,
            json!({"internal_port_id": "port-b", "internal_port": 22}),
            StatusCode::NOT_FOUND,
            "port port-b not found",
        ),
        // An address that is not the port's.
        (
            MEMBER_P1,
            json!({"internal_port_id": "port-a", "internal_ip_address": "10.0.0.9", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not a fixed address of port port-a",
        ),
        // An address on the caller's subnet held by no port of the caller's project.
        (
            MEMBER_P1,
            json!({"internal_ip_address": "10.0.0.77", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not a fixed address of an instance's port of your project",
        ),
        (
            MEMBER_P1,
            json!({"internal_ip_address": "10.0.0.200", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not a fixed address of an instance's port of your project",
        ),
        // Unknown port.
        (
            MEMBER_P1,
            json!({"internal_port_id": "nope", "internal_port": 22}),
            StatusCode::NOT_FOUND,
            "port nope not found",
        ),
        // p2 holds p1's shared-network address on a twin network: p2's router, attached to
        // the shared network, must not forward to p1's VM (by port or by address).
        (
            MEMBER_P2,
            json!({"router_id": R2, "internal_port_id": "port-b-twin", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not on a subnet attached to router",
        ),
        (
            MEMBER_P2,
            json!({"router_id": R2, "internal_ip_address": "10.5.0.7", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not on a subnet attached to router",
        ),
        // Neutron's own ports and unbound ones are no instances.
        (
            MEMBER_P1,
            json!({"internal_port_id": "port-a-dhcp", "internal_port": 53}),
            StatusCode::BAD_REQUEST,
            "belongs to Neutron (network:dhcp)",
        ),
        (
            MEMBER_P1,
            json!({"internal_ip_address": "10.0.0.2", "internal_port": 53}),
            StatusCode::BAD_REQUEST,
            "not a fixed address of an instance's port",
        ),
        (
            MEMBER_P1,
            json!({"internal_port_id": "port-a-unbound", "internal_port": 22}),
            StatusCode::BAD_REQUEST,
            "not bound to an instance",
        ),
    ];
    for (caller, body, want, message) in cases {
        let (status, answer) = post(&app, caller, body.clone()).await;
        assert_eq!(status, want, "{body} -> {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{body} -> {answer}"
        );
    }
    // The shared network's VM is reached through p2's router when an admin maps its real port.
    let (status, body) = post(
        &app,
        ADMIN,
        json!({"router_id": R2, "internal_port_id": "port-a-shared", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // An admin may map any project's port; the mapping belongs to the router's project.
    let (status, body) = post(
        &app,
        ADMIN,
        json!({"router_id": R1, "internal_port_id": "port-b-on-p1", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mapping"]["project_id"], "p1");
}

#[tokio::test]
async fn conflicts_and_checks_answer_with_the_right_status_and_code() {
    let app = app_with((4000, 4001), false).await;
    let ssh = json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22});
    let (_, first) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        "/v1/mappings",
        Some(mapping(ssh.clone())),
    )
    .await;
    let first_id = first["mapping"]["id"].as_str().unwrap().to_string();

    let (status, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        "/v1/mappings",
        Some(mapping(ssh)),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "internal_socket_mapped")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&first_id),
        "{body}"
    );

    let (status, body) = post(&app, MEMBER_P1, json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 22, "external_port": 4000})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "external_port_in_use")
    );

    post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 22}),
    )
    .await;
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.7", "internal_port": 22}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "port_range_exhausted")
    );

    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R_NO_GW, "internal_ip_address": "10.3.0.5", "internal_port": 22}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "router_has_no_gateway")
    );

    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "192.0.2.9", "internal_port": 22}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{body}"
    );
    // A router with no interface serves no address at all.
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R_NO_IF, "internal_ip_address": "10.0.0.5", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not on a subnet attached"),
        "{body}"
    );
}

#[tokio::test]
async fn explicit_ports_outside_the_range_are_for_admins_only() {
    let app = app().await;
    let req = mapping(
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22, "external_port": 2222}),
    );
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        "/v1/mappings",
        Some(req.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(&app, ADMIN, Method::POST, "/v1/mappings", Some(req)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["mapping"]["project_id"], "p1",
        "the mapping belongs to the router's project"
    );
}

#[tokio::test]
async fn other_projects_see_nothing_and_readers_cannot_write() {
    let app = app().await;
    let (_, created) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22}),
    )
    .await;
    let id = created["mapping"]["id"].as_str().unwrap();
    let uri = format!("/v1/mappings/{id}");
    for method in [Method::GET, Method::DELETE] {
        let (status, _) = call(&app, MEMBER_P2, method, &uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = call(
        &app,
        MEMBER_P2,
        Method::PUT,
        &uri,
        Some(mapping(json!({"description": "x"}))),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, MEMBER_P2, Method::GET, "/v1/mappings", None).await;
    assert_eq!(list["mappings"], json!([]));
    let (_, list) = call(
        &app,
        MEMBER_P2,
        Method::GET,
        "/v1/mappings?project_id=p1",
        None,
    )
    .await;
    assert_eq!(list["mappings"], json!([]));
    // Another project's router is not found either.
    let (status, _) = post(
        &app,
        MEMBER_P2,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Readers read, but do not write.
    let (status, _) = post(
        &app,
        READER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, READER_P1, Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = call(&app, READER_P1, Method::GET, "/v1/mappings", None).await;
    assert_eq!(list["mappings"].as_array().unwrap().len(), 1);
    let (_, list) = call(&app, ADMIN, Method::GET, "/v1/mappings", None).await;
    assert_eq!(list["mappings"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn update_and_delete() {
    let app = app().await;
    let (_, created) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22}),
    )
    .await;
    let uri = format!(
        "/v1/mappings/{}",
        created["mapping"]["id"].as_str().unwrap()
    );
    let (status, body) = call(&app, MEMBER_P1, Method::PUT, &uri,
        Some(mapping(json!({"external_port": 4050, "allowed_cidrs": ["198.51.100.0/24"], "masquerade": true})))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["mapping"]["external_port"], 4050);
    assert_eq!(body["mapping"]["allowed_cidrs"], json!(["198.51.100.0/24"]));
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::PUT,
        &uri,
        Some(mapping(json!({"internal_port_range": "22:23"}))),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "1 external port cannot map to 2 internal ones"
    );
    let (status, body) = call(&app, MEMBER_P1, Method::DELETE, &uri, None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, _) = call(&app, MEMBER_P1, Method::GET, &uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let app = app().await;
    for i in 0..5 {
        post(&app, MEMBER_P1, json!({"router_id": R1, "internal_ip_address": format!("10.0.0.{}", 10 + i), "internal_port": 22,
                "protocol": if i % 2 == 0 { "tcp" } else { "udp" }})).await;
    }
    let (_, udp) = call(
        &app,
        MEMBER_P1,
        Method::GET,
        "/v1/mappings?protocol=udp",
        None,
    )
    .await;
    assert_eq!(udp["mappings"].as_array().unwrap().len(), 2);
    let (_, one) = call(
        &app,
        MEMBER_P1,
        Method::GET,
        "/v1/mappings?internal_ip_address=10.0.0.12",
        None,
    )
    .await;
    assert_eq!(one["mappings"].as_array().unwrap().len(), 1);
    let (_, page) = call(&app, MEMBER_P1, Method::GET, "/v1/mappings?limit=3", None).await;
    let page = page["mappings"].as_array().unwrap();
    assert_eq!(page.len(), 3);
    let marker = page[2]["id"].as_str().unwrap();
    let (_, rest) = call(
        &app,
        MEMBER_P1,
        Method::GET,
        &format!("/v1/mappings?limit=3&marker={marker}"),
        None,
    )
    .await;
    assert_eq!(rest["mappings"].as_array().unwrap().len(), 2);
    let (status, body) = call(&app, MEMBER_P1, Method::GET, "/v1/mappings?limit=0", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::GET,
        "/v1/mappings?colour=blue",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn client_mistakes_get_json_errors_never_500() {
    let app = app().await;
    let send = |body: Body, content_type: &str| {
        let app = app.clone();
        let req = Request::post("/v1/mappings")
            .header("content-type", content_type)
            .body(body)
            .unwrap();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).expect("a JSON error body"),
            )
        }
    };
    let (status, body) = send(Body::from("{not json"), "application/json").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, body) = send(
        Body::from(r#"{"mapping": {"internal_port": 22, "colour": 1}}"#),
        "application/json",
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, body) = send(Body::from("{}"), "text/plain").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let big = format!(
        r#"{{"mapping": {{"description": "{}"}}}}"#,
        "x".repeat(api::MAX_BODY_BYTES)
    );
    let (status, body) = send(Body::from(big), "application/json").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 0}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, body) = call(&app, MEMBER_P1, Method::GET, "/nowhere", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = call(&app, MEMBER_P1, Method::PATCH, "/v1/mappings", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_health_endpoints_answer() {
    let app = app().await;
    for uri in ["/healthz", "/readyz", "/nowhere"] {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let id = resp
            .headers()
            .get("x-openstack-request-id")
            .expect("request id")
            .to_str()
            .unwrap()
            .to_string();
        assert!(id.starts_with("req-"), "{id}");
        if uri != "/nowhere" {
            assert_eq!(resp.status(), StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let app = app().await;
    let (status, doc) = call(&app, READER_P1, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut documented = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /v1/mappings/{id}",
            "DELETE /v1/quotas/{project_id}",
            "GET /",
            "GET /v1",
            "GET /v1/agents",
            "GET /v1/mappings",
            "GET /v1/mappings/{id}",
            "GET /v1/quotas",
            "GET /v1/quotas/{project_id}",
            "GET /v1/quotas/{project_id}/default",
            "GET /v1/quotas/{project_id}/details",
            "GET /v1/routers",
            "GET /v1/routers/{id}",
            "POST /v1/mappings",
            "PUT /v1/mappings/{id}",
            "PUT /v1/quotas/{project_id}"
        ]
    );
    // Every documented operation is routed: nothing answers with the router's own 404/405.
    for op in &documented {
        let (method, path) = op.split_once(' ').unwrap();
        let uri = path
            .replace("{id}", "00000000-0000-4000-8000-000000000000")
            .replace("{project_id}", "p1");
        let (status, body) = call(
            &app,
            MEMBER_P1,
            method.parse().unwrap(),
            &uri,
            Some(json!({"mapping": {}})),
        )
        .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{op}");
        if status == StatusCode::NOT_FOUND {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("mapping 00000000") || message.contains("router 00000000"),
                "{op} is not routed: {body}"
            );
        }
    }
}

/// Version discovery as OpenStack clients do it: no token, links from the request's host.
#[tokio::test]
async fn the_version_documents_need_no_token_and_link_to_v1() {
    let app = app().await;
    let get = |uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder().method(Method::GET).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    let (status, root) = get("/", &[("host", "praas.example:3000")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        root,
        json!({"versions": [{"id": "v1", "status": "CURRENT", "links": [
            {"href": "http://praas.example:3000/v1", "rel": "self"},
            {"href": "http://praas.example:3000/v1/openapi.json", "rel": "describedby"}]}]})
    );
    let (status, v1) = get(
        "/v1",
        &[("host", "praas.example"), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v1["version"]["id"], "v1");
    assert_eq!(
        v1["version"]["links"][0]["href"],
        "https://praas.example/v1"
    );
    // The self link answers.
    let (status, _) = call(&app, READER_P1, Method::GET, "/v1", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The original Proxy CLI protocol, on the same store as v1.
#[tokio::test]
async fn the_original_proxy_cli_protocol_round_trip() {
    let app = app().await;
    let q = |path: &str, params: &str| {
        format!("{path}?{params}&router_id=qrouter-{R1}&gateway=203.0.113.10")
    };
    let (status, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q("/pat/create", "server_ip=10.0.0.5&create_server_port=22"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(
        body["create_router_port"], "4000",
        "ports are strings, as the original sent them"
    );
    assert_eq!(body["create_server_port"], "22");

    let (_, again) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q("/pat/create", "server_ip=10.0.0.5&create_server_port=22"),
        None,
    )
    .await;
    assert_eq!(
        (
            again["status"].as_str(),
            again["created_router_port"].as_str()
        ),
        (Some("CREATED"), Some("4000"))
    );

    let (_, listing) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/router_pat?router_id=qrouter-{R1}"),
        None,
    )
    .await;
    assert_eq!(listing, json!({"10.0.0.5:22": "4000"}));
    let (_, listing) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/router_server_pat?router_id=qrouter-{R1}&server_ip=10.0.0.5"),
        None,
    )
    .await;
    assert_eq!(listing, json!({"22": "4000"}));
    // The same mapping through v1, and one made through v1 in the old listing.
    let (_, v1) = call(&app, READER_P1, Method::GET, "/v1/mappings", None).await;
    assert_eq!(v1["mappings"][0]["external_port"], 4000);
    post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 80}),
    )
    .await;
    let (_, listing) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/router_pat?router_id=qrouter-{R1}"),
        None,
    )
    .await;
    assert_eq!(
        listing,
        json!({"10.0.0.5:22": "4000", "10.0.0.6:80": "4001"})
    );

    let (_, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q(
            "/pat/modify",
            "server_ip=10.0.0.5&modify_server_port=22&modify_router_port=4001",
        ),
        None,
    )
    .await;
    assert_eq!(body["status"], "USED", "{body}");
    let (_, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q(
            "/pat/modify",
            "server_ip=10.0.0.5&modify_server_port=22&modify_router_port=4050",
        ),
        None,
    )
    .await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(
        (
            body["modified_router_port"].as_str(),
            body["modify_router_port"].as_str()
        ),
        (Some("4000"), Some("4050"))
    );

    let (_, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q("/pat/remove", "server_ip=10.0.0.5&remove_server_port=22"),
        None,
    )
    .await;
    assert_eq!(
        (body["status"].as_str(), body["remove_router_port"].as_str()),
        (Some("REMOVED"), Some("4050"))
    );
    let (_, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q("/pat/remove", "server_ip=10.0.0.5&remove_server_port=22"),
        None,
    )
    .await;
    assert_eq!(body["status"], "NO CREATED");
    let (_, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &q(
            "/pat/modify",
            "server_ip=10.0.0.5&modify_server_port=22&modify_router_port=4060",
        ),
        None,
    )
    .await;
    assert_eq!(body["status"], "NO CREATED");
}

#[tokio::test]
async fn the_original_protocol_refuses_what_v1_refuses() {
    let app = app().await;
    let create = format!("/pat/create?server_ip=10.0.0.5&create_server_port=22&router_id=qrouter-{R1}&gateway=203.0.113.10");
    let (status, body) = call(&app, READER_P1, Method::POST, &create, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::FORBIDDEN, Some("ERROR"))
    );
    // Another project cannot use the router.
    let (status, body) = call(&app, MEMBER_P2, Method::POST, &create, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ERROR")),
        "{body}"
    );
    // A wrong gateway, an address off the router's subnets, a bad port, a missing parameter.
    let wrong_gw = format!("/pat/create?server_ip=10.0.0.5&create_server_port=22&router_id=qrouter-{R1}&gateway=203.0.113.99");
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &wrong_gw, None).await;
    assert_eq!(body["status"], "ERROR");
    let off_subnet = format!("/pat/create?server_ip=192.0.2.5&create_server_port=22&router_id=qrouter-{R1}&gateway=203.0.113.10");
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &off_subnet, None).await;
    assert_eq!(body["status"], "ERROR");
    let (status, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        &create.replace("create_server_port=22", "create_server_port=70000"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ERROR"))
    );
    let (status, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        "/pat/create?server_ip=10.0.0.5",
        None,
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ERROR"))
    );
    let (status, _) = call(&app, MEMBER_P1, Method::GET, &create, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (_, v1) = call(&app, ADMIN, Method::GET, "/v1/mappings", None).await;
    assert_eq!(
        v1["mappings"],
        json!([]),
        "nothing was stored by refused requests"
    );
}

/// Bad input is named by its field and the rule it breaks, in the API's terms; an admin may
/// go outside the configured range but not past the cap on one mapping's ports.
#[tokio::test]
async fn errors_name_the_field_and_the_rule() {
    let app = app().await;
    let message = |body: &Value| body["error"]["message"].as_str().unwrap().to_string();
    for (fields, want) in [
        (
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 70000}),
            "mapping.internal_port must be a port number from 1 to 65535",
        ),
        (
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22, "masquerade": "yes"}),
            "mapping.masquerade must be true or false",
        ),
        (
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22, "colour": "red"}),
            "unknown field \"colour\" in mapping; the fields are router_id,",
        ),
        (
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port_range": "1:5000",
                "external_port_range": "1:5000"}),
            "external_port_range 1:5000 covers 5000 ports, more than the limit of 4096",
        ),
    ] {
        let (status, body) = post(&app, ADMIN, fields).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&body).starts_with(want), "{body}");
    }
    let (status, body) = call(
        &app,
        READER_P1,
        Method::GET,
        "/v1/mappings?colour=red",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        message(&body)
            .starts_with("unknown query parameter \"colour\"; the parameters are router_id"),
        "{body}"
    );
    // Within the cap, outside the range: the admin's to choose.
    let (status, body) = post(
        &app,
        ADMIN,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port_range": "1:4096",
            "external_port_range": "10001:14096"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Every change through either protocol is one audit event saying who, which mapping of which
/// project, and old → new; refused requests and reads are none.
#[tokio::test]
async fn every_change_through_either_protocol_is_audited_once() {
    let app = app().await;
    let log = praas::testbed::audit::recorder();
    let create = format!("/pat/create?server_ip=10.0.0.5&create_server_port=22&router_id=qrouter-{R1}&gateway=203.0.113.10");
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &create, None).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    let (_, listed) = call(&app, READER_P1, Method::GET, "/v1/mappings", None).await;
    let legacy_id = listed["mappings"][0]["id"].as_str().unwrap().to_string();
    let (_, body) = call(
        &app,
        READER_P1,
        Method::POST,
        &create.replace("22", "23"),
        None,
    )
    .await;
    assert_eq!(body["status"], "ERROR", "{body}");
    let modify = format!("/pat/modify?server_ip=10.0.0.5&modify_server_port=22&modify_router_port=4060&router_id=qrouter-{R1}&gateway=203.0.113.10");
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &modify, None).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    let remove = format!("/pat/remove?server_ip=10.0.0.5&remove_server_port=22&router_id=qrouter-{R1}&gateway=203.0.113.10");
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &remove, None).await;
    assert_eq!(body["status"], "REMOVED", "{body}");
    let (status, body) = call(
        &app,
        MEMBER_P1,
        Method::POST,
        "/v1/mappings",
        Some(mapping(
            json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 80}),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["mapping"]["id"].as_str().unwrap().to_string();
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::PUT,
        &format!("/v1/mappings/{id}"),
        Some(mapping(
            json!({"description": "web", "allowed_cidrs": ["198.51.100.0/24"]}),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    call(&app, MEMBER_P1, Method::GET, "/v1/mappings", None).await;
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::DELETE,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let lines = log.lines_about(&[&legacy_id, &id]);
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.split("action=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "\"create\"",
            "\"update\"",
            "\"delete\"",
            "\"create\"",
            "\"update\"",
            "\"delete\""
        ],
        "{lines:#?}"
    );
    for line in &lines {
        assert!(line.contains("actor=a caller of project p1"), "{line}");
        assert!(line.contains("project=p1"), "{line}");
    }
    assert!(
        lines[1].contains("external_port_range: 4000 → 4060"),
        "{}",
        lines[1]
    );
    assert!(
        lines[4].contains("description:  → web; allowed_cidrs: everyone → 198.51.100.0/24"),
        "{}",
        lines[4]
    );
    assert!(lines[5].contains(&format!("mapping={id}")), "{}", lines[5]);
}

/// Request decoding under arbitrary input: structured JSON over the real field names with
/// values of every type, and raw bytes. Never a 5xx, always a JSON answer.
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::Strategy;
    use std::sync::OnceLock;

    const FIELDS: &[&str] = &[
        "router_id",
        "internal_port_id",
        "internal_ip_address",
        "internal_port",
        "internal_port_range",
        "external_port",
        "external_port_range",
        "protocol",
        "description",
        "allowed_cidrs",
        "masquerade",
        "other",
    ];

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u32..70_000).prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            "[0-9a-z.:/ -]{0,24}".prop_map(Value::from),
            Just(Value::from(R1)),
            Just(Value::from("10.0.0.5")),
            Just(Value::from("4000:4010")),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(proptest::sample::select(FIELDS), inner, 0..8)
                    .prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )),
            ]
        })
    }

    fn runtime_and_app() -> &'static (tokio::runtime::Runtime, Router) {
        static CELL: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
        CELL.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let app = rt.block_on(app());
            (rt, app)
        })
    }

    fn send(method: Method, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let (rt, app) = runtime_and_app();
        rt.block_on(async {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .header("x-project-id", "p1")
                .header("x-roles", "member,reader")
                .body(Body::from(body))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            (
                status,
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
        })
    }

    fn check(status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
        prop_assert!(
            !status.is_server_error(),
            "{status}: {}",
            String::from_utf8_lossy(body)
        );
        if !body.is_empty() {
            prop_assert!(
                serde_json::from_slice::<Value>(body).is_ok(),
                "not JSON: {}",
                String::from_utf8_lossy(body)
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn arbitrary_json_never_causes_a_server_error(mapping in value(), wrap in any::<bool>()) {
            let body = if wrap { json!({ "mapping": mapping }) } else { mapping };
            let bytes = body.to_string().into_bytes();
            let (status, answer) = send(Method::POST, "/v1/mappings", bytes.clone());
            check(status, &answer)?;
            let (status, answer) = send(Method::PUT, "/v1/mappings/00000000-0000-4000-8000-000000000000", bytes);
            check(status, &answer)?;
        }

        #[test]
        fn arbitrary_bytes_and_queries_never_cause_a_server_error(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            query in "[ -~]{0,40}",
        ) {
            let (status, answer) = send(Method::POST, "/v1/mappings", bytes);
            check(status, &answer)?;
            // As a client would send it: characters not allowed in a URI are percent-encoded.
            let query: String = query
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "=&%._~:-/+".contains(c) { c.to_string() } else { format!("%{:02X}", c as u32) })
                .collect();
            let (status, answer) = send(Method::GET, &format!("/v1/mappings?{query}"), vec![]);
            check(status, &answer)?;
            let (status, answer) = send(Method::POST, &format!("/pat/create?{query}"), vec![]);
            check(status, &answer)?;
        }
    }
}

#[tokio::test]
async fn a_mapping_whose_router_or_port_went_away_cannot_be_changed() {
    // Mappings stored while their router had a gateway and their port existed; the directory
    // now says otherwise (as Neutron would after a gateway removal, a port deletion, a changed
    // fixed IP or a removed router interface).
    let store = Arc::new(common::sqlite_store().await);
    let policy = Policy::default();
    let stored = |router: &str, ip: &str, port_id: &str| praas::store::NewMapping {
        project_id: "p1".into(),
        router_id: router.into(),
        distributed: false,
        external_ip_address: "203.0.113.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        external_ports: praas::store::ExternalPorts::Allocate { len: 1 },
        internal_ip_address: ip.parse().unwrap(),
        internal_port_id: Some(port_id.into()),
        internal_ports: PortRange::single(22).unwrap(),
        description: String::new(),
        allowed_cidrs: vec![],
        masquerade: false,
    };
    let no_gateway = store
        .create(stored(R_NO_GW, "10.3.0.5", "port-a"), &policy)
        .await
        .unwrap();
    let gone = store
        .create(
            stored("44444444-4444-4444-8444-444444444444", "10.4.0.5", "port-a"),
            &policy,
        )
        .await
        .unwrap();
    let port_gone = store
        .create(stored(R1, "10.0.0.9", "deleted-port"), &policy)
        .await
        .unwrap();
    // port-a holds 10.0.0.5 now, not 10.0.0.50.
    let moved = store
        .create(stored(R1, "10.0.0.50", "port-a"), &policy)
        .await
        .unwrap();
    let unbound = store
        .create(stored(R1, "10.0.0.8", "port-a-unbound"), &policy)
        .await
        .unwrap();
    // The router's interface on the port's subnet was removed.
    let detached = store
        .create(stored(R_NO_IF, "10.0.0.5", "port-a"), &policy)
        .await
        .unwrap();
    let app = runtime::api(
        store.clone(),
        Arc::new(directory(true)),
        api::Authenticator::noauth(),
        policy,
        Readiness::store(store),
    );
    for (m, code) in [
        (&no_gateway, "router_has_no_gateway"),
        (&gone, "router_gone"),
        (&port_gone, "port_gone"),
        (&moved, "address_changed"),
        (&unbound, "port_gone"),
        (&detached, "address_unreachable"),
    ] {
        let (status, body) = call(
            &app,
            MEMBER_P1,
            Method::PUT,
            &format!("/v1/mappings/{}", m.id),
            Some(json!({"mapping": {"description": "x"}})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], code);
        // Deleting stays possible.
        let (status, _) = call(
            &app,
            MEMBER_P1,
            Method::DELETE,
            &format!("/v1/mappings/{}", m.id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn agents_are_shown_to_admins_and_a_router_no_live_agent_serves_is_named() {
    use praas::service::MappingService;
    use praas::store::{AgentReport, ServedRouters};
    let dir = std::env::temp_dir().join(format!("praas-api-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(
        Store::open(&format!("sqlite:///{}/praas.db", dir.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let policy = Policy {
        range: PortRange::new(4000, 4100).unwrap(),
        strategy: Strategy::Sequential,
    };
    let service = MappingService::new(store.clone(), Arc::new(directory(false)), policy)
        .with_agent_down_time(std::time::Duration::from_secs(1));
    let app = runtime::serve_service(
        service,
        api::Authenticator::noauth(),
        Readiness::store(store.clone()),
    );
    let report = |routers: &[&str]| {
        let store = store.clone();
        let routers = routers.iter().map(|r| r.to_string()).collect();
        async move {
            let report = AgentReport {
                host: "network-node-1".into(),
                started_at: chrono::Utc::now(),
                last_sync_at: None,
                last_error: None,
            };
            store
                .report_agent(&report, &ServedRouters::All(routers))
                .await
                .unwrap();
        }
    };

    let (status, body) = call(&app, MEMBER_P1, Method::GET, "/v1/agents", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, body) = call(&app, ADMIN, Method::GET, "/v1/agents", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"agents": []})));

    let (status, created) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let uri = format!(
        "/v1/mappings/{}",
        created["mapping"]["id"].as_str().unwrap()
    );
    // Fresh: pending without a word, whoever serves what.
    let (_, shown) = call(&app, MEMBER_P1, Method::GET, &uri, None).await;
    assert_eq!(shown["mapping"]["status"], "PENDING");
    assert_eq!(shown["mapping"]["status_reason"], Value::Null);

    // Past the down time, with a live agent that serves another router only.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    report(&[R2]).await;
    let (_, shown) = call(&app, MEMBER_P1, Method::GET, &uri, None).await;
    let reason = shown["mapping"]["status_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("no live agent serves router") && reason.contains(R1),
        "{shown}"
    );
    let (_, listed) = call(&app, MEMBER_P1, Method::GET, "/v1/mappings", None).await;
    assert_eq!(
        listed["mappings"][0]["status_reason"],
        shown["mapping"]["status_reason"]
    );

    // The agent now holds the router's namespace: the mapping just waits for it.
    report(&[R1, R2]).await;
    let (_, shown) = call(&app, MEMBER_P1, Method::GET, &uri, None).await;
    assert_eq!(shown["mapping"]["status_reason"], Value::Null, "{shown}");

    let (status, body) = call(&app, ADMIN, Method::GET, "/v1/agents", None).await;
    assert_eq!(status, StatusCode::OK);
    let agent = &body["agents"][0];
    assert_eq!(agent["host"], "network-node-1");
    assert_eq!(agent["alive"], true);
    assert_eq!(agent["routers"], json!([R1, R2]));
    let filtered = |router: &str| format!("/v1/agents?router_id={router}");
    let (_, body) = call(&app, ADMIN, Method::GET, &filtered(R2), None).await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 1);
    let (_, body) = call(&app, ADMIN, Method::GET, &filtered(R_NO_GW), None).await;
    assert_eq!(body, json!({"agents": []}));
    let (status, body) = call(&app, ADMIN, Method::GET, "/v1/agents?host=x", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{body}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, body) = call(&app, ADMIN, Method::GET, "/v1/agents", None).await;
    assert_eq!(
        body["agents"][0]["alive"], false,
        "silent for longer than the down time"
    );
}

/// Quotas as Neutron's quota API has them: admins set and reset any project's, a project's
/// members and readers see their own limits and usage, another project's are refused; a
/// mapping counts against its router's project whoever creates it, and a refusal is 409
/// `quota_exceeded` with what was counted.
#[tokio::test]
async fn quotas_are_set_by_admins_seen_by_their_project_and_enforced_on_creates_and_updates() {
    let defaults = Quotas {
        mappings: Limit::AtMost(3),
        external_ports: Limit::AtMost(1010),
    };
    let app = app_with_quotas((4000, 4100), false, defaults).await;
    let get = async |who: (&str, &str), uri: &str| call(&app, who, Method::GET, uri, None).await;
    let limits = |m: i64, p: i64| json!({"quota": {"mappings": m, "external_ports": p}});
    for who in [MEMBER_P1, READER_P1, ADMIN] {
        assert_eq!(
            get(who, "/v1/quotas/p1").await,
            (StatusCode::OK, limits(3, 1010))
        );
        assert_eq!(
            get(who, "/v1/quotas/p1/default").await,
            (StatusCode::OK, limits(3, 1010))
        );
    }
    // Another project's quota, the listing and every change are not a member's to see or make.
    for uri in [
        "/v1/quotas/p2",
        "/v1/quotas/p2/details",
        "/v1/quotas/p2/default",
        "/v1/quotas",
    ] {
        let (status, body) = get(MEMBER_P1, uri).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{uri}"
        );
    }
    for who in [MEMBER_P1, READER_P1] {
        let (status, _) = call(
            &app,
            who,
            Method::PUT,
            "/v1/quotas/p1",
            Some(limits(50, 50)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(&app, who, Method::DELETE, "/v1/quotas/p1", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = get(("p1", "observer"), "/v1/quotas/p1/details").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a role the policy does not know"
    );
    assert_eq!(get(ADMIN, "/v1/quotas").await.1, json!({"quotas": []}));

    // An admin lowers p1's mappings to 2; its ports keep the default.
    let only = json!({"quota": {"mappings": 2}});
    assert_eq!(
        call(&app, ADMIN, Method::PUT, "/v1/quotas/p1", Some(only)).await,
        (StatusCode::OK, limits(2, 1010))
    );
    assert_eq!(
        get(ADMIN, "/v1/quotas").await.1,
        json!({"quotas": [{"project_id": "p1", "mappings": 2, "external_ports": 1010}]})
    );
    for ip in ["10.0.0.5", "10.0.0.6"] {
        let (status, body) = post(
            &app,
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": ip, "internal_port": 22}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // The third is refused, for the member as for an admin of another project: the mapping
    // would be the router's project's.
    for who in [MEMBER_P1, ADMIN] {
        let (status, body) = post(
            &app,
            who,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.7", "internal_port": 22}),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(
            body,
            json!({"error": {"status": 409, "code": "quota_exceeded",
                "message": "quota exceeded for mappings of project p1: 2 of 2 in use, 1 more requested",
                "quota": {"project_id": "p1", "resource": "mappings", "used": 2, "limit": 2, "requested": 1}}})
        );
    }
    let details = |m: (u64, i64), p: (u64, i64)| {
        json!({"quota": {"mappings": {"used": m.0, "limit": m.1, "reserved": 0},
            "external_ports": {"used": p.0, "limit": p.1, "reserved": 0}}})
    };
    assert_eq!(
        get(READER_P1, "/v1/quotas/p1/details").await,
        (StatusCode::OK, details((2, 2), (2, 1010)))
    );
    assert_eq!(
        get(ADMIN, "/v1/quotas/p2/details").await,
        (StatusCode::OK, details((0, 3), (0, 1010)))
    );
    // p2 has its own quota: p1's being full changes nothing for it.
    let (status, body) = post(
        &app,
        MEMBER_P2,
        json!({"router_id": R2, "internal_ip_address": "10.2.0.5", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Reset: the defaults apply again, and the third fits.
    let (status, _) = call(&app, ADMIN, Method::DELETE, "/v1/quotas/p1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(get(ADMIN, "/v1/quotas").await.1, json!({"quotas": []}));
    assert_eq!(get(MEMBER_P1, "/v1/quotas/p1").await.1, limits(3, 1010));
    let (status, third) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.7", "internal_port": 22}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{third}");

    // External ports: a range holds as many as it covers, on create and when it grows.
    let unlimited_mappings = json!({"quota": {"mappings": -1, "external_ports": 5}});
    let (status, _) = call(
        &app,
        ADMIN,
        Method::PUT,
        "/v1/quotas/p1",
        Some(unlimited_mappings),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(&app, MEMBER_P1, json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 80, "external_port_range": "4050:4059"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["quota"],
        json!({"project_id": "p1", "resource": "external_ports", "used": 3, "limit": 5, "requested": 10})
    );
    let id = third["mapping"]["id"].as_str().unwrap();
    let first = third["mapping"]["external_port"].as_u64().unwrap();
    let grow = |last: u64| mapping(json!({"external_port_range": format!("{first}:{last}")}));
    let uri = format!("/v1/mappings/{id}");
    let (status, body) = call(&app, MEMBER_P1, Method::PUT, &uri, Some(grow(first + 2))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, MEMBER_P1, Method::PUT, &uri, Some(grow(first + 3))).await;
    assert_eq!(
        (status, &body["error"]["quota"]),
        (
            StatusCode::CONFLICT,
            &json!({"project_id": "p1", "resource": "external_ports", "used": 5, "limit": 5, "requested": 1})
        )
    );
    assert_eq!(
        get(MEMBER_P1, "/v1/quotas/p1/details").await.1,
        details((3, -1), (5, 5))
    );
    // Deleting a mapping frees its ports.
    let (status, _) = call(&app, MEMBER_P1, Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get(MEMBER_P1, "/v1/quotas/p1/details").await.1,
        details((2, -1), (2, 5))
    );
}

/// A PUT of a quota names what is wrong with it: a value that is not -1 or a whole number in
/// bounds, an unknown resource, a wrong type, nothing to set, a body of another shape.
#[tokio::test]
async fn bad_quota_bodies_are_refused_naming_the_field_and_the_rule() {
    let app = app().await;
    let rule = "-1 (unlimited) or a whole number from 0 to 2147483647";
    let long = "p".repeat(65);
    for (body, message, uri) in [
        (
            json!({"quota": {"mappings": -2}}),
            format!("quota.mappings must be {rule}, not -2"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"external_ports": 2147483648_i64}}),
            format!("quota.external_ports must be {rule}, not 2147483648"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": "10"}}),
            format!("quota.mappings must be {rule}"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": 1.5}}),
            format!("quota.mappings must be {rule}"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": true}}),
            format!("quota.mappings must be {rule}"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": 1e30}}),
            format!("quota.mappings must be {rule}"),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"floatingip": 5}}),
            "unknown field \"floatingip\" in quota; the fields are mappings or external_ports"
                .into(),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {}}),
            "the quota to set names no resource; give mappings, external_ports or both".into(),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": null}}),
            "the quota to set names no resource; give mappings, external_ports or both".into(),
            "/v1/quotas/p1",
        ),
        (
            json!({"mappings": 5}),
            "the body must be {\"quota\": {...}}".into(),
            "/v1/quotas/p1",
        ),
        (
            json!([]),
            "the body must be {\"quota\": {...}}".into(),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": 5}),
            "quota must be an object".into(),
            "/v1/quotas/p1",
        ),
        (
            json!({"quota": {"mappings": 5}}),
            "project_id must be 1 to 64 characters long".into(),
            &format!("/v1/quotas/{long}"),
        ),
    ] {
        let (status, answer) = call(&app, ADMIN, Method::PUT, uri, Some(body.clone())).await;
        assert_eq!(
            (
                status,
                error_code(&answer),
                answer["error"]["message"].as_str().unwrap()
            ),
            (StatusCode::BAD_REQUEST, "invalid_request", message.as_str()),
            "{body}"
        );
    }
    // A member learns nothing from its values: the role is refused first.
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::PUT,
        "/v1/quotas/p1",
        Some(json!({"quota": {"mappings": -2}})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, listed) = call(&app, ADMIN, Method::GET, "/v1/quotas", None).await;
    assert_eq!(
        listed,
        json!({"quotas": []}),
        "nothing was set by refused requests"
    );
}

#[tokio::test]
async fn the_original_protocol_says_when_a_quota_is_exceeded() {
    let app = app().await;
    let (status, _) = call(
        &app,
        ADMIN,
        Method::PUT,
        "/v1/quotas/p1",
        Some(json!({"quota": {"mappings": 1}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let create = |port: u16| {
        format!("/pat/create?server_ip=10.0.0.5&create_server_port={port}&router_id=qrouter-{R1}&gateway=203.0.113.10")
    };
    let (_, body) = call(&app, MEMBER_P1, Method::POST, &create(22), None).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    let (status, body) = call(&app, MEMBER_P1, Method::POST, &create(80), None).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"status": "ERROR", "message": "quota exceeded for mappings of project p1: 1 of 1 in use, 1 more requested"})
        )
    );
}

/// The router views of a listing, by id.
fn routers_by_id(list: &Value) -> std::collections::BTreeMap<String, Value> {
    list["routers"]
        .as_array()
        .unwrap_or_else(|| panic!("not a router listing: {list}"))
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

/// What a router's mappings of one protocol hold, as the API shows it.
fn held(mappings: u64, used: u64, free: u64) -> Value {
    json!({"mappings": mappings, "ports_used": used, "ports_free": free})
}

#[tokio::test]
async fn routers_are_the_projects_own_with_their_gateways_and_the_ports_their_mappings_hold() {
    let app = app_with((4000, 4010), false).await;
    let get = async |who: (&str, &str), uri: &str| call(&app, who, Method::GET, uri, None).await;

    // p1's routers, in id order, none of p2's; nothing used yet.
    let (status, list) = get(MEMBER_P1, "/v1/routers").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["routers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [R1, R_NO_GW, R_NO_IF]);
    assert_eq!(
        list["routers"][0],
        json!({"id": R1, "name": "router-11", "project_id": "p1",
            "external_gateway_ip": "203.0.113.10", "distributed": false,
            "port_range": "4000:4010", "mappings": 0,
            "tcp": held(0, 0, 11), "udp": held(0, 0, 11)})
    );
    assert_eq!(list["routers"][1]["external_gateway_ip"], Value::Null);
    for who in [READER_P1, ("p1", "member")] {
        assert_eq!(
            get(who, "/v1/routers").await,
            (StatusCode::OK, list.clone())
        );
    }
    assert_eq!(get(MEMBER_P1, "/v1/routers?project_id=p1").await.1, list);

    // TCP on both ends of the range and a range inside it, UDP on its last port; an admin's
    // mapping outside the range counts as a mapping, not as a port of the range; p2's
    // mapping is on p2's router.
    for (who, fields) in [
        (
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 22, "external_port": 4000}),
        ),
        (
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 80, "external_port_range": "4003:4004"}),
        ),
        (
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.6", "internal_port": 22, "external_port": 4010}),
        ),
        (
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.5", "internal_port": 53, "external_port": 4010, "protocol": "udp"}),
        ),
        (
            ADMIN,
            json!({"router_id": R1, "internal_ip_address": "10.0.0.7", "internal_port": 22, "external_port": 5000}),
        ),
        (
            MEMBER_P2,
            json!({"router_id": R2, "internal_ip_address": "10.2.0.5", "internal_port": 22}),
        ),
    ] {
        let (status, body) = post(&app, who, fields).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let routers = routers_by_id(&get(READER_P1, "/v1/routers").await.1);
    let r1 = &routers[R1];
    assert_eq!(
        (&r1["mappings"], &r1["tcp"], &r1["udp"]),
        (&json!(5), &held(4, 4, 7), &held(1, 1, 10))
    );
    assert_eq!(routers[R_NO_IF]["mappings"], 0);
    assert!(!routers.contains_key(R2));

    // One router: its free ports as ranges, to the edges of the range.
    let (status, shown) = get(READER_P1, &format!("/v1/routers/{R1}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let mut expected = r1.clone();
    expected["tcp"]["free_ports"] = json!(["4001:4002", "4005:4009"]);
    expected["udp"]["free_ports"] = json!(["4000:4009"]);
    assert_eq!(shown, json!({ "router": expected }));
    // Only the protocol asked for.
    let (status, udp) = get(MEMBER_P1, &format!("/v1/routers/{R1}?protocol=udp")).await;
    assert_eq!(status, StatusCode::OK, "{udp}");
    assert_eq!(udp["router"]["udp"]["free_ports"], json!(["4000:4009"]));
    assert!(udp["router"]["tcp"].get("free_ports").is_none(), "{udp}");
    assert_eq!(udp["router"]["tcp"], held(4, 4, 7));

    // A deleted mapping's ports are free again.
    let (_, mappings) = get(MEMBER_P1, "/v1/mappings?external_port=4003").await;
    let id = mappings["mappings"][0]["id"].as_str().unwrap();
    let (status, _) = call(
        &app,
        MEMBER_P1,
        Method::DELETE,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, shown) = get(MEMBER_P1, &format!("/v1/routers/{R1}?protocol=tcp")).await;
    assert_eq!(shown["router"]["tcp"]["free_ports"], json!(["4001:4009"]));
    assert_eq!(shown["router"]["tcp"]["ports_free"], 9);

    // Another project's router is not found, as an unknown one; an admin sees it.
    for uri in [
        format!("/v1/routers/{R2}"),
        "/v1/routers/00000000-0000-4000-8000-000000000000".to_string(),
    ] {
        let (status, body) = get(MEMBER_P1, &uri).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{uri}"
        );
    }
    let (status, r2) = get(ADMIN, &format!("/v1/routers/{R2}?protocol=tcp")).await;
    assert_eq!(status, StatusCode::OK, "{r2}");
    assert_eq!(r2["router"]["project_id"], "p2");
    assert_eq!(r2["router"]["tcp"]["free_ports"], json!(["4001:4010"]));
    // Another project's listing is empty for its non-members; admins list any project's, or
    // every project's.
    assert_eq!(
        get(MEMBER_P1, "/v1/routers?project_id=p2").await,
        (StatusCode::OK, json!({"routers": []}))
    );
    let p2 = get(ADMIN, "/v1/routers?project_id=p2").await.1;
    assert_eq!(routers_by_id(&p2).keys().collect::<Vec<_>>(), [R2]);
    assert_eq!(p2["routers"][0]["tcp"], held(1, 1, 10));
    let all = routers_by_id(&get(ADMIN, "/v1/routers").await.1);
    assert_eq!(all.keys().collect::<Vec<_>>(), [R1, R2, R_NO_GW, R_NO_IF]);

    // A role the policy does not know reads nothing; bad queries are named.
    for uri in ["/v1/routers".to_string(), format!("/v1/routers/{R1}")] {
        let (status, _) = get(("p1", "observer"), &uri).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
    }
    let (status, body) = get(MEMBER_P1, &format!("/v1/routers/{R1}?protocol=sctp")).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("protocol must be tcp or udp, not \"sctp\"")
        )
    );
    let (status, body) = get(MEMBER_P1, "/v1/routers?colour=blue").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_full_range_has_no_free_ports_and_a_router_without_gateway_still_counts() {
    let app = app_with((4000, 4002), false).await;
    for ip in ["10.0.0.5", "10.0.0.6", "10.0.0.7"] {
        let (status, body) = post(
            &app,
            MEMBER_P1,
            json!({"router_id": R1, "internal_ip_address": ip, "internal_port": 22}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = post(
        &app,
        MEMBER_P1,
        json!({"router_id": R1, "internal_ip_address": "10.0.0.8", "internal_port": 22}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "port_range_exhausted")
    );
    let (_, shown) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/v1/routers/{R1}"),
        None,
    )
    .await;
    let mut tcp = held(3, 3, 0);
    tcp["free_ports"] = json!([]);
    assert_eq!(shown["router"]["tcp"], tcp);
    assert_eq!(shown["router"]["udp"]["free_ports"], json!(["4000:4002"]));
    let (status, no_gw) = call(
        &app,
        READER_P1,
        Method::GET,
        &format!("/v1/routers/{R_NO_GW}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{no_gw}");
    assert_eq!(no_gw["router"]["external_gateway_ip"], Value::Null);
    assert_eq!(no_gw["router"]["tcp"]["free_ports"], json!(["4000:4002"]));
}

/// A Neutron that does not answer.
struct Unreachable;

#[async_trait::async_trait]
impl praas::openstack::RouterDirectory for Unreachable {
    async fn router(&self, _: &str) -> Result<Option<RouterInfo>, DirectoryError> {
        Err(timeout())
    }
    async fn routers_of(
        &self,
        _: Option<&str>,
    ) -> Result<Vec<praas::openstack::RouterSummary>, DirectoryError> {
        Err(timeout())
    }
    async fn routers_serving(
        &self,
        _: std::net::Ipv4Addr,
        _: Option<&str>,
    ) -> Result<Vec<RouterInfo>, DirectoryError> {
        Err(timeout())
    }
    fn knows_ports(&self) -> bool {
        true
    }
    async fn port(&self, _: &str) -> Result<Option<PortInfo>, DirectoryError> {
        Err(timeout())
    }
    async fn ports_with_address(
        &self,
        _: std::net::Ipv4Addr,
        _: Option<&str>,
    ) -> Result<Vec<PortInfo>, DirectoryError> {
        Err(timeout())
    }
}

fn timeout() -> DirectoryError {
    DirectoryError::Neutron(praas::openstack::OpenStackError::Timeout {
        service: "Neutron",
        url: "http://192.0.2.1:9696/v2.0/routers".into(),
    })
}

#[tokio::test]
async fn routers_are_503_when_neutron_does_not_answer() {
    let store = Arc::new(common::sqlite_store().await);
    let app = runtime::api(
        store.clone(),
        Arc::new(Unreachable),
        api::Authenticator::noauth(),
        Policy::default(),
        Readiness::store(store),
    );
    for uri in ["/v1/routers".to_string(), format!("/v1/routers/{R1}")] {
        let (status, body) = call(&app, MEMBER_P1, Method::GET, &uri, None).await;
        assert_eq!(
            (status, error_code(&body)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "router_directory_unavailable"
            ),
            "{uri}"
        );
    }
}
