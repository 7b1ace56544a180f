//! `/v1/routers` against the real Keystone and Neutron of `scripts/dev-cloud`: a project's
//! members see their project's routers as Neutron has them (names, gateway addresses, no
//! gateway, DVR) with the ports their mappings hold, and nothing of another project's.
//!
//! They need the dev cloud (`scripts/dev-cloud up`), found at `PRAAS_CLOUD_DIR` (default
//! `/var/tmp/praas-dev-cloud`). Without it the tests print one line and skip; under CI they
//! fail instead (`scripts/test` brings it up).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use support::{call, neutron_call, Cloud, OwnRouter, KEYSTONE};

/// The routers of a listing, by id.
fn by_id(list: &Value) -> BTreeMap<String, Value> {
    list["routers"]
        .as_array()
        .unwrap_or_else(|| panic!("not a router listing: {list}"))
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_their_projects_routers_with_gateways_and_not_another_projects() {
    let _shared = KEYSTONE.read().await;
    let Some(cloud) =
        Cloud::find("members_see_their_projects_routers_with_gateways_and_not_another_projects")
    else {
        return;
    };
    let own = OwnRouter::create(&cloud, 1).await;
    let own_gateway = own.gateway(&cloud).await.expect("the router has a gateway");
    let app = cloud.app().await;
    let (a, b) = (cloud.project("a"), cloud.project("b"));
    let s = |v: &Value| v.as_str().unwrap().to_string();
    let (a_member, a_reader, b_member) = (
        cloud.token("a-member").await,
        cloud.token("a-reader").await,
        cloud.token("b-member").await,
    );

    // A's routers as Neutron's admin sees them: names and the distributed flag to compare.
    let neutron = neutron_call(
        &cloud,
        "admin",
        reqwest::Method::GET,
        &format!("routers?project_id={}", s(&a["project_id"])),
        None,
    )
    .await;
    let in_neutron = by_id(&neutron);

    let (status, list) = call(&app, Some(&a_member), Method::GET, "/v1/routers", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let listed = by_id(&list);
    for (id, gateway) in [
        (s(&a["router_id"]), json!(a["router_gateway_ip"])),
        (own.id.clone(), json!(own_gateway.to_string())),
        (s(&a["router_without_gateway_id"]), Value::Null),
    ] {
        let r = listed
            .get(&id)
            .unwrap_or_else(|| panic!("router {id} is not listed: {list}"));
        assert_eq!(r["external_gateway_ip"], gateway, "{r}");
        assert_eq!(r["name"], in_neutron[&id]["name"], "{r}");
    }
    // The service's credentials see the admin-only `distributed` flag.
    let dvr = &listed[&s(&a["distributed_router_id"])];
    assert_eq!(
        (
            &dvr["distributed"],
            &in_neutron[&s(&a["distributed_router_id"])]["distributed"]
        ),
        (&json!(true), &json!(true)),
        "{dvr}"
    );
    // Only A's routers (others of A may come and go with other tests), none of B's.
    assert!(
        listed.values().all(|r| r["project_id"] == a["project_id"]),
        "{list}"
    );
    assert!(!listed.contains_key(&s(&b["router_id"])), "{list}");
    assert_eq!(
        listed[&own.id]["tcp"],
        json!({"mappings": 0, "ports_used": 0, "ports_free": 101})
    );

    // A mapping on A's own router is counted, and its port is no longer free.
    let (status, body) = call(
        &app,
        Some(&a_member),
        Method::POST,
        "/v1/mappings",
        Some(
            json!({"mapping": {"router_id": own.id, "internal_port_id": own.vms[0].0,
            "internal_port": 22, "external_port": 4050}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, shown) = call(
        &app,
        Some(&a_reader),
        Method::GET,
        &format!("/v1/routers/{}?protocol=tcp", own.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(
        shown["router"]["tcp"],
        json!({"mappings": 1, "ports_used": 1, "ports_free": 100,
            "free_ports": ["4000:4049", "4051:4100"]})
    );
    assert_eq!(
        shown["router"]["external_gateway_ip"],
        own_gateway.to_string()
    );

    // B sees neither A's routers nor A's router itself.
    let (status, list) = call(&app, Some(&b_member), Method::GET, "/v1/routers", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let b_listed = by_id(&list);
    assert!(b_listed.contains_key(&s(&b["router_id"])), "{list}");
    assert!(
        b_listed
            .values()
            .all(|r| r["project_id"] == b["project_id"]),
        "{list}"
    );
    let (status, body) = call(
        &app,
        Some(&b_member),
        Method::GET,
        &format!("/v1/routers/{}", own.id),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (_, empty) = call(
        &app,
        Some(&b_member),
        Method::GET,
        &format!("/v1/routers?project_id={}", s(&a["project_id"])),
        None,
    )
    .await;
    assert_eq!(empty, json!({"routers": []}));

    // An admin lists A's routers by project.
    let admin = cloud.token("admin").await;
    let (status, list) = call(
        &app,
        Some(&admin),
        Method::GET,
        &format!("/v1/routers?project_id={}", s(&a["project_id"])),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let admin_listed = by_id(&list);
    assert_eq!(admin_listed[&own.id]["tcp"]["mappings"], 1);
    assert!(!admin_listed.contains_key(&s(&b["router_id"])), "{list}");

    own.remove(&cloud).await;
}
