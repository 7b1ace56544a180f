//! Keystone-authenticated requests against the real Keystone and Neutron of
//! `scripts/dev-cloud`: requests without a valid token refused on both protocols, and the
//! authorization matrix of every endpoint (admin, member and reader of the owning project,
//! member and reader of another one), routers and quotas included.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use axum::http::{Method, StatusCode};
use serde_json::json;

use support::{call, Cloud, KEYSTONE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("requests_without_a_valid_token_are_refused") else {
        return;
    };
    let app = cloud.app().await;
    let oversized = format!("gAAAAAB{}", "x".repeat(praas::api::auth::MAX_TOKEN_LEN));
    for token in [
        None,
        Some("gAAAAABnot-a-real-token"),
        Some(""),
        Some(oversized.as_str()),
    ] {
        for (method, uri) in [
            (Method::GET, "/v1/mappings"),
            (Method::POST, "/v1/mappings"),
            (Method::GET, "/router_pat?router_id=x"),
        ] {
            let (status, body) = call(&app, token, method.clone(), uri, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} {token:?}: {body}"
            );
            // Each protocol answers in its own shape.
            if uri.starts_with("/v1") {
                assert_eq!(body["error"]["code"], "unauthorized");
            } else {
                assert_eq!(body["status"], "ERROR", "{body}");
            }
        }
    }
    // Health checks and the API document stay open.
    for uri in ["/healthz", "/readyz", "/v1/openapi.json"] {
        assert_eq!(
            call(&app, None, Method::GET, uri, None).await.0,
            StatusCode::OK,
            "{uri}"
        );
    }
}

/// Every endpoint × admin, member and reader of the owning project, member and reader of
/// another project, on project A's router and VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_matrix_holds_for_every_endpoint() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("the_authorization_matrix_holds_for_every_endpoint") else {
        return;
    };
    let app = cloud.app().await;
    let a = cloud.project("a");
    let router = a["router_id"].as_str().unwrap();
    let gateway = a["router_gateway_ip"].as_str().unwrap();
    let (vm1_port, vm2_ip) = (
        a["vms"][0]["port_id"].as_str().unwrap(),
        a["vms"][1]["ip"].as_str().unwrap(),
    );
    let users = ["admin", "a-member", "a-reader", "b-member", "b-reader"];
    let mut tokens = std::collections::BTreeMap::new();
    for u in users {
        tokens.insert(u, cloud.token(u).await);
    }
    let writes = |user: &str| matches!(user, "admin" | "a-member");
    let sees = |user: &str| matches!(user, "admin" | "a-member" | "a-reader");

    for (n, user) in users.iter().enumerate() {
        let token = Some(tokens[user].as_str());
        let internal_port = 2000 + n as u64;
        // v1 create.
        let (status, created) = call(
            &app,
            token,
            Method::POST,
            "/v1/mappings",
            Some(
                json!({"mapping": {"router_id": router, "internal_port_id": vm1_port,
                "internal_port": internal_port}}),
            ),
        )
        .await;
        let want = match *user {
            "admin" | "a-member" => StatusCode::CREATED,
            "b-member" => StatusCode::NOT_FOUND,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, want, "{user} creates: {created}");
        // The mapping the rest of the checks use: made by A's member.
        let (_, made) = call(
            &app,
            Some(&tokens["a-member"]),
            Method::POST,
            "/v1/mappings",
            Some(
                json!({"mapping": {"router_id": router, "internal_port_id": vm1_port,
                "internal_port": 3000 + n as u64}}),
            ),
        )
        .await;
        let id = made["mapping"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{made}"))
            .to_string();
        assert_eq!(made["mapping"]["project_id"], a["project_id"]);

        // v1 list and show.
        let (status, list) = call(&app, token, Method::GET, "/v1/mappings", None).await;
        assert_eq!(status, StatusCode::OK, "{user} lists: {list}");
        let listed = list["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str());
        assert_eq!(listed, sees(user), "{user} lists: {list}");
        let (status, shown) = call(
            &app,
            token,
            Method::GET,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = if sees(user) {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, want, "{user} shows: {shown}");

        // Routers: A's router is listed and shown to A's users and admins, to no one else.
        let (status, routers) = call(&app, token, Method::GET, "/v1/routers", None).await;
        assert_eq!(status, StatusCode::OK, "{user} lists routers: {routers}");
        let listed = routers["routers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == router);
        assert_eq!(listed, sees(user), "{user} lists routers: {routers}");
        let (status, shown) = call(
            &app,
            token,
            Method::GET,
            &format!("/v1/routers/{router}"),
            None,
        )
        .await;
        assert_eq!(status, want, "{user} shows router {router}: {shown}");

        // Original protocol: list and create.
        let (status, pat) = call(
            &app,
            token,
            Method::GET,
            &format!("/router_pat?router_id=qrouter-{router}"),
            None,
        )
        .await;
        if user.ends_with("reader") || writes(user) || *user == "b-member" {
            assert_eq!(status, StatusCode::OK, "{user} router_pat: {pat}");
        }
        let pat_text = pat.to_string();
        assert_eq!(
            pat_text.contains(&format!("{}", 3000 + n)),
            sees(user),
            "{user} router_pat: {pat}"
        );
        let (status, pat_created) = call(
            &app,
            token,
            Method::POST,
            &format!(
                "/pat/create?router_id=qrouter-{router}&server_ip={vm2_ip}&create_server_port={}&gateway={gateway}",
                4000 + n
            ),
            None,
        )
        .await;
        match *user {
            "admin" | "a-member" => {
                assert_eq!(status, StatusCode::OK, "{user} pat/create: {pat_created}");
                assert!(
                    pat_created["create_router_port"].is_string(),
                    "{user}: {pat_created}"
                );
            }
            "b-member" => {
                // The original protocol answers 200 with an error body; nothing is created.
                assert_eq!(status, StatusCode::OK, "{user} pat/create: {pat_created}");
                assert!(
                    pat_created["create_router_port"].is_null(),
                    "{user}: {pat_created}"
                );
            }
            _ => assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{user} pat/create: {pat_created}"
            ),
        }

        // v1 update and delete.
        let (status, updated) = call(
            &app,
            token,
            Method::PUT,
            &format!("/v1/mappings/{id}"),
            Some(json!({"mapping": {"description": format!("changed by {user}")}})),
        )
        .await;
        // Another project's mapping does not exist for the caller, whatever its role.
        let want = match *user {
            "admin" | "a-member" => StatusCode::OK,
            "a-reader" => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(status, want, "{user} updates: {updated}");
        let (status, deleted) = call(
            &app,
            token,
            Method::DELETE,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = match *user {
            "admin" | "a-member" => StatusCode::NO_CONTENT,
            "a-reader" => StatusCode::FORBIDDEN,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(status, want, "{user} deletes: {deleted}");
        let (status, _) = call(
            &app,
            Some(&tokens["admin"]),
            Method::GET,
            &format!("/v1/mappings/{id}"),
            None,
        )
        .await;
        let want = if writes(user) {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, want, "after {user}'s delete");

        // Original protocol: one server's listing, modify and remove of a mapping that A's
        // member made through it.
        let server_port = 5000 + n;
        let create = format!(
            "/pat/create?router_id=qrouter-{router}&server_ip={vm2_ip}&create_server_port={server_port}&gateway={gateway}"
        );
        let (_, made) = call(&app, Some(&tokens["a-member"]), Method::POST, &create, None).await;
        assert_eq!(made["status"], "SUCCESS", "{made}");
        let (status, listing) = call(
            &app,
            token,
            Method::GET,
            &format!("/router_server_pat?router_id=qrouter-{router}&server_ip={vm2_ip}"),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{user} router_server_pat: {listing}"
        );
        assert_eq!(
            listing.to_string().contains(&server_port.to_string()),
            sees(user),
            "{user} router_server_pat: {listing}"
        );
        let target = |op: &str, extra: String| {
            format!(
                "/pat/{op}?router_id=qrouter-{router}&server_ip={vm2_ip}&{op}_server_port={server_port}{extra}&gateway={gateway}"
            )
        };
        let (status, modified) = call(
            &app,
            token,
            Method::POST,
            &target("modify", format!("&modify_router_port={}", 4100 - n)),
            None,
        )
        .await;
        let (status2, removed) = call(
            &app,
            token,
            Method::POST,
            &target("remove", String::new()),
            None,
        )
        .await;
        match *user {
            "admin" | "a-member" => {
                assert_eq!(
                    (status, &modified["status"]),
                    (StatusCode::OK, &json!("SUCCESS")),
                    "{user} modify: {modified}"
                );
                assert_eq!(
                    (status2, &removed["status"]),
                    (StatusCode::OK, &json!("REMOVED")),
                    "{user} remove: {removed}"
                );
            }
            "a-reader" => {
                assert_eq!(status, StatusCode::FORBIDDEN, "{user} modify: {modified}");
                assert_eq!(status2, StatusCode::FORBIDDEN, "{user} remove: {removed}");
            }
            // Another project's mapping is not there for them.
            _ => {
                assert_eq!(
                    (status, &modified["status"]),
                    (StatusCode::OK, &json!("NO CREATED")),
                    "{user} modify: {modified}"
                );
                assert_eq!(
                    (status2, &removed["status"]),
                    (StatusCode::OK, &json!("NO CREATED")),
                    "{user} remove: {removed}"
                );
            }
        }
    }
}

/// Quotas with real tokens: an admin sets project A's; A's member and reader see A's limits and
/// usage, B's are refused; a mapping an admin creates on A's router counts against A's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_follow_neutrons_policy_with_real_tokens() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) = Cloud::find("quotas_follow_neutrons_policy_with_real_tokens") else {
        return;
    };
    let app = cloud.app().await;
    let a = cloud.project("a");
    let project = a["project_id"].as_str().unwrap();
    let router = a["router_id"].as_str().unwrap();
    let vm_port = a["vms"][0]["port_id"].as_str().unwrap();
    let users = ["admin", "a-member", "a-reader", "b-member", "b-reader"];
    let mut tokens = std::collections::BTreeMap::new();
    for u in users {
        tokens.insert(u, cloud.token(u).await);
    }
    let quota = format!("/v1/quotas/{project}");
    let limit_one = json!({"quota": {"mappings": 1}});
    for user in users {
        let token = Some(tokens[user].as_str());
        let (status, body) = call(&app, token, Method::PUT, &quota, Some(limit_one.clone())).await;
        let want = if user == "admin" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, want, "{user} sets A's quota: {body}");
        let (status, body) =
            call(&app, token, Method::GET, &format!("{quota}/details"), None).await;
        let want = match user {
            "admin" | "a-member" | "a-reader" => StatusCode::OK,
            _ => StatusCode::FORBIDDEN,
        };
        assert_eq!(status, want, "{user} reads A's usage: {body}");
        let (status, _) = call(&app, token, Method::GET, "/v1/quotas", None).await;
        let want = if user == "admin" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(status, want, "{user} lists quotas");
    }
    // The admin's mapping on A's router is A's, and takes A's only place.
    let create = |port: u16| json!({"mapping": {"router_id": router, "internal_port_id": vm_port, "internal_port": port}});
    let admin = Some(tokens["admin"].as_str());
    let (status, body) = call(
        &app,
        admin,
        Method::POST,
        "/v1/mappings",
        Some(create(2200)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let member = Some(tokens["a-member"].as_str());
    let (status, body) = call(
        &app,
        member,
        Method::POST,
        "/v1/mappings",
        Some(create(2201)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["quota"],
        json!({"project_id": project, "resource": "mappings", "used": 1, "limit": 1, "requested": 1})
    );
    let reader = Some(tokens["a-reader"].as_str());
    let (_, details) = call(&app, reader, Method::GET, &format!("{quota}/details"), None).await;
    assert_eq!(
        details["quota"]["mappings"],
        json!({"used": 1, "limit": 1, "reserved": 0})
    );
}
