//! What the tests against the real Keystone, Neutron and Nova of `scripts/dev-cloud` share: the
//! cloud and its users, calls to the API in-process, to Neutron and to Nova, a router of a
//! test's own, and the lock that keeps tests that stop Keystone or Neutron apart from the
//! others.
//!
//! Each `tests/openstack_*.rs` includes it (after `mod common;`, which it uses) as
//! `#[path = "openstack/support.rs"] mod support;`; not every one uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use praas::api::health::Readiness;
use praas::config::{Allocation, Config};
use praas::openstack::{clouds, Session};
use praas::runtime;
use praas::store::Store;
use praas::testbed::simnode::{SimLayout, SimNode, SimNodeOptions};
use serde_json::{json, Value};
use tokio::sync::RwLock;
use tower::ServiceExt;

use crate::common;

/// Tests that stop Keystone or Neutron take this for writing; all others for reading.
///
/// It orders the tests of one test binary only. The OpenStack tests are spread over several
/// binaries (`tests/openstack_*.rs`), and those of another binary are kept clear because
/// `cargo test` runs test binaries one after another, never two at once; a runner that ran
/// binaries (or tests in processes of their own) in parallel would have to serialise all
/// OpenStack tests another way.
pub static KEYSTONE: RwLock<()> = RwLock::const_new(());

pub struct Cloud {
    pub dir: PathBuf,
    pub resources: Value,
}

impl Cloud {
    /// The dev cloud, or `None` (with the reason printed) when it is not running.
    pub fn find(test: &str) -> Option<Cloud> {
        let dir = PathBuf::from(
            std::env::var("PRAAS_CLOUD_DIR").unwrap_or_else(|_| "/var/tmp/praas-dev-cloud".into()),
        );
        let resources = std::fs::read_to_string(dir.join("resources.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let up = resources.as_ref().is_some_and(|r| {
            r["keystone"]
                .as_str()
                .is_some_and(|url| std::net::TcpStream::connect(authority(url)).is_ok())
        });
        if !up {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{test}: CI must run the dev cloud (scripts/dev-cloud up) at {}",
                    dir.display()
                );
            }
            praas::testbed::simnode::skipped(
                test,
                &format!("no dev cloud at {} (scripts/dev-cloud up)", dir.display()),
            );
            return None;
        }
        Some(Cloud {
            dir,
            resources: resources.unwrap(),
        })
    }

    pub fn session(&self, cloud: &str) -> Arc<Session> {
        let config = clouds::load(&self.dir.join("clouds.yaml"), cloud).unwrap();
        Arc::new(Session::new(config, Duration::from_secs(10)).unwrap())
    }

    /// A fresh token of the user behind `cloud` of clouds.yaml.
    pub async fn token(&self, cloud: &str) -> String {
        self.session(cloud).auth_token().await.unwrap()
    }

    pub fn project(&self, p: &str) -> &Value {
        &self.resources["projects"][p]
    }

    /// Nova's API (v2.1) as resources.json has it, or `None` (with the reason printed) when
    /// the dev cloud runs without Nova (`PRAAS_CLOUD_NOVA=0`); under CI that fails instead.
    pub fn nova(&self, test: &str) -> Option<String> {
        if let Some(url) = self.resources["nova"].as_str() {
            return Some(url.to_string());
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{test}: CI must run the dev cloud with Nova (PRAAS_CLOUD_NOVA=1 scripts/dev-cloud up) \
                 at {}",
                self.dir.display()
            );
        }
        praas::testbed::simnode::skipped(
            test,
            &format!(
                "the dev cloud at {} runs without Nova (PRAAS_CLOUD_NOVA=1 scripts/dev-cloud up)",
                self.dir.display()
            ),
        );
        None
    }

    /// The Neutron on ML2/OVN (the key `ovn` of resources.json), or `None` (with the reason
    /// printed) when the dev cloud runs without it (`PRAAS_CLOUD_OVN=0`) or it does not
    /// answer; under CI that fails instead.
    pub fn ovn(&self, test: &str) -> Option<&Value> {
        let ovn = &self.resources["ovn"];
        let up = ovn["neutron"]
            .as_str()
            .is_some_and(|url| std::net::TcpStream::connect(authority(url)).is_ok());
        if up {
            return Some(ovn);
        }
        let why = format!(
            "the dev cloud at {} runs no Neutron on ML2/OVN (scripts/ovn up, then \
             PRAAS_CLOUD_OVN=1 scripts/dev-cloud up)",
            self.dir.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: CI must run it: {why}");
        }
        praas::testbed::simnode::skipped(test, &why);
        None
    }

    /// The API with Keystone authentication and Neutron checks, on a fresh SQLite store.
    pub async fn app(&self) -> Router {
        self.app_and_store().await.0
    }

    /// The service's configuration on this cloud: its clouds.yaml, a fresh SQLite store, and
    /// sequential allocation (the lowest free ports, so that tests can pick free ones at the
    /// top).
    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.database.connection = common::sqlite_url();
        cfg.openstack.clouds_file = Some(self.dir.join("clouds.yaml"));
        cfg.praas.port_allocation = Allocation::Sequential;
        cfg.praas.bind_address = std::net::Ipv4Addr::LOCALHOST.into();
        cfg.praas.port_app = 0;
        cfg
    }

    pub async fn app_and_store(&self) -> (Router, Arc<Store>) {
        self.app_and_store_with(&self.config()).await
    }

    /// The API and its store as `cfg` configures them (from [`Cloud::config`]).
    pub async fn app_and_store_with(&self, cfg: &Config) -> (Router, Arc<Store>) {
        let cfg = cfg.clone();
        let session = runtime::session(&cfg).unwrap();
        let store = runtime::open_store(&cfg).await.unwrap();
        let (directory, _) = runtime::directory(&cfg, session.as_ref());
        let app = runtime::api(
            store.clone(),
            directory,
            runtime::authenticator(&cfg, session.as_ref()).unwrap(),
            runtime::policy(&cfg),
            Readiness::store(store.clone()),
        );
        (app, store)
    }

    /// The agent of `praas all-in-one` on `store` (nftables).
    pub fn agent(&self, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(runtime::agent(&self.config(), store).unwrap().0.run())
    }
}

pub fn authority(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string()
}

pub async fn call(
    app: &Router,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("x-auth-token", t);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Body::from(b.to_string())).unwrap_or_default();
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, value)
}

/// A new VM port of project A's member on A's network, named `prefix-<unique>` (bound to an
/// instance of the same name); Neutron's answer.
pub async fn vm_port(cloud: &Cloud, prefix: &str) -> Value {
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let network = cloud.project("a")["network_id"].clone();
    neutron_call(
        cloud,
        "a-member",
        reqwest::Method::POST,
        "ports",
        Some(json!({"port": {"network_id": network, "device_id": name,
            "device_owner": "compute:nova", "name": name}})),
    )
    .await
}

/// Neutron as `user` (a cloud of clouds.yaml), for changes the tests make; must succeed.
pub async fn neutron_call(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, value) = neutron_try(cloud, user, method.clone(), path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {value}");
    value
}

/// Neutron as `user`: the status and the body (`Null` when it is not JSON).
pub async fn neutron_try(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let token = cloud.token(user).await;
    // The clouds `<user>-ovn` of clouds.yaml are the same users in the region of the Neutron
    // on ML2/OVN.
    let neutron = if user.ends_with("-ovn") {
        &cloud.resources["ovn"]["neutron"]
    } else {
        &cloud.resources["neutron"]
    };
    let url = format!("{}/v2.0/{path}", neutron.as_str().unwrap());
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Nova's API as `user` (a cloud of clouds.yaml), at `path` under the catalog's `compute`
/// endpoint; must succeed.
pub async fn nova_call(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, value) = nova_try(cloud, user, method.clone(), path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {value}");
    value
}

/// Nova's API as `user`: the status and the body (`Null` when it is not JSON).
pub async fn nova_try(
    cloud: &Cloud,
    user: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let session = cloud.session(user);
    let url = format!("{}/{path}", session.endpoint("compute").await.unwrap());
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .header("X-Auth-Token", session.auth_token().await.unwrap())
        // Networks are required when booting from 2.37 on.
        .header("OpenStack-API-Version", "compute 2.79");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A router of the test's own in project A: a network and subnet of its own behind it (so
/// that no other test sees a second router on its network), a gateway on the external network,
/// and VM ports. Leftovers of an interrupted run are removed first.
pub struct OwnRouter {
    pub id: String,
    pub network_id: String,
    pub subnet_id: String,
    /// The subnet, with the router's interface address.
    pub interface: ipnet::Ipv4Net,
    /// (port id, fixed IP) of each VM port.
    pub vms: Vec<(String, std::net::Ipv4Addr)>,
}

const OWN_PREFIX: &str = "praas-own-";

impl OwnRouter {
    pub async fn create(cloud: &Cloud, vms: usize) -> OwnRouter {
        Self::remove_leftovers(cloud).await;
        let tag = format!("{OWN_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let s = |v: &Value| v.as_str().unwrap().to_string();
        let member = |method, path: &str, body| {
            let (cloud, path) = (cloud, path.to_string());
            async move { neutron_call(cloud, "a-member", method, &path, body).await }
        };
        use reqwest::Method as M;
        let network = member(M::POST, "networks", Some(json!({"network": {"name": tag}}))).await;
        let network_id = s(&network["network"]["id"]);
        let subnet = member(
            M::POST,
            "subnets",
            Some(
                json!({"subnet": {"name": tag, "network_id": network_id, "ip_version": 4,
                "cidr": "10.30.0.0/24", "gateway_ip": "10.30.0.1", "enable_dhcp": false}}),
            ),
        )
        .await;
        let subnet_id = s(&subnet["subnet"]["id"]);
        let public = s(&cloud.resources["external_network"]["id"]);
        let router = member(
            M::POST,
            "routers",
            Some(json!({"router": {"name": tag, "external_gateway_info": {"network_id": public}}})),
        )
        .await;
        let id = s(&router["router"]["id"]);
        member(
            M::PUT,
            &format!("routers/{id}/add_router_interface"),
            Some(json!({"subnet_id": subnet_id})),
        )
        .await;
        let mut ports = vec![];
        for i in 0..vms {
            let port = member(
                M::POST,
                "ports",
                Some(
                    json!({"port": {"network_id": network_id, "name": format!("{tag}-vm{i}"),
                    "device_id": format!("{tag}-vm{i}"), "device_owner": "compute:nova"}}),
                ),
            )
            .await;
            ports.push((
                s(&port["port"]["id"]),
                s(&port["port"]["fixed_ips"][0]["ip_address"])
                    .parse()
                    .unwrap(),
            ));
        }
        OwnRouter {
            id,
            network_id,
            subnet_id,
            interface: "10.30.0.1/24".parse().unwrap(),
            vms: ports,
        }
    }

    /// The router's gateway address, as Neutron has it now.
    pub async fn gateway(&self, cloud: &Cloud) -> Option<std::net::Ipv4Addr> {
        let r = neutron_call(
            cloud,
            "admin",
            reqwest::Method::GET,
            &format!("routers/{}", self.id),
            None,
        )
        .await;
        r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
            .as_str()
            .map(|ip| ip.parse().unwrap())
    }

    /// The simulated node an L3 agent would build for this router and its VMs.
    pub async fn node(&self, cloud: &Cloud) -> SimNode {
        let layout = SimLayout {
            router_id: self.id.clone(),
            gateway: ipnet::Ipv4Net::new(
                self.gateway(cloud).await.unwrap(),
                external_prefix(cloud),
            )
            .unwrap(),
            upstream: upstream(cloud),
            internal: self.interface,
            vm_ips: self.vms.iter().map(|(_, ip)| *ip).collect(),
        };
        tokio::task::spawn_blocking(move || {
            SimNode::new(SimNodeOptions {
                layout: Some(layout),
                ..Default::default()
            })
        })
        .await
        .unwrap()
        .unwrap()
    }

    pub async fn remove(self, cloud: &Cloud) {
        remove_router(cloud, &self.id, &self.network_id, &self.subnet_id).await;
    }

    /// Routers, ports and networks named by an earlier, interrupted run.
    async fn remove_leftovers(cloud: &Cloud) {
        let routers = neutron_call(cloud, "admin", reqwest::Method::GET, "routers", None).await;
        let networks = neutron_call(cloud, "admin", reqwest::Method::GET, "networks", None).await;
        let named = |v: &Value| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(OWN_PREFIX))
        };
        for r in routers["routers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| named(r))
        {
            let name = r["name"].as_str().unwrap();
            if let Some(n) = networks["networks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == name)
            {
                let (id, network) = (r["id"].as_str().unwrap(), n["id"].as_str().unwrap());
                let subnet = n["subnets"][0].as_str().unwrap_or_default();
                remove_router(cloud, id, network, subnet).await;
            }
        }
    }
}

async fn remove_router(cloud: &Cloud, id: &str, network: &str, subnet: &str) {
    use reqwest::Method as M;
    // Each step may already have been done by the test or by an interrupted run.
    neutron_try(
        cloud,
        "admin",
        M::PUT,
        &format!("routers/{id}/remove_router_interface"),
        Some(json!({"subnet_id": subnet})),
    )
    .await;
    neutron_try(cloud, "admin", M::DELETE, &format!("routers/{id}"), None).await;
    let ports = neutron_call(
        cloud,
        "admin",
        M::GET,
        &format!("ports?network_id={network}"),
        None,
    )
    .await;
    for p in ports["ports"].as_array().unwrap() {
        let port = p["id"].as_str().unwrap();
        neutron_try(cloud, "admin", M::DELETE, &format!("ports/{port}"), None).await;
    }
    neutron_try(
        cloud,
        "admin",
        M::DELETE,
        &format!("networks/{network}"),
        None,
    )
    .await;
}

pub fn upstream(cloud: &Cloud) -> std::net::Ipv4Addr {
    cloud.resources["external_network"]["gateway_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn external_prefix(cloud: &Cloud) -> u8 {
    cloud.resources["external_network"]["cidr"]
        .as_str()
        .unwrap()
        .parse::<ipnet::Ipv4Net>()
        .unwrap()
        .prefix_len()
}

/// Sets `resource` (a Neutron path) to the first of `candidates` that Neutron accepts (some
/// addresses may be taken), and returns it.
pub async fn first_free(
    cloud: &Cloud,
    path: &str,
    candidates: impl IntoIterator<Item = std::net::Ipv4Addr>,
    body: impl Fn(std::net::Ipv4Addr) -> Value,
) -> std::net::Ipv4Addr {
    for ip in candidates {
        let (status, answer) =
            neutron_try(cloud, "admin", reqwest::Method::PUT, path, Some(body(ip))).await;
        if status.is_success() {
            return ip;
        }
        assert_eq!(status, reqwest::StatusCode::CONFLICT, "{path}: {answer}");
    }
    panic!("{path}: no free address among the candidates");
}

/// Waits until `probe` says yes, up to `limit`; returns how long it took.
pub async fn until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let yes = tokio::task::block_in_place(&mut probe);
        if yes {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
