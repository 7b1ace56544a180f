//! PRaaS under the real Neutron on ML2/OVN (the second Neutron of `scripts/dev-cloud`, region
//! RegionOVN, writing to the one-chassis OVN of `scripts/ovn`), with the real Keystone: the API
//! with Neutron checks against that cloud, the OVN worker (`[dataplane] driver = ovn`) and the
//! monitor, on a router, networks and ports each test makes through Neutron's API as the
//! project's member. VMs are namespaces bound to the Neutron ports by `iface-id`; the client
//! is a namespace on br-ex, the external network.
//!
//! ```text
//!  client ns 203.0.113.(60+n) ── br-ex ── Neutron's external network (physnet1)
//!                                              │ gateway 203.0.113.1xx (Neutron's choice)
//!                                         neutron-<router>  + praas-<router>-tcp-<vm>
//!                                              │ 10.130.n.1
//!                        VM ns 10.130.n.x ── neutron-<network>  (a port Neutron bound to the chassis)
//! ```
//!
//! They need root, OVN, and the dev cloud with the OVN Neutron (`scripts/ovn up`, then
//! `PRAAS_CLOUD_OVN=1 scripts/dev-cloud up`); otherwise they print one line and skip, and under
//! CI they fail instead. The OVN worker serves every router of the northbound database, and a
//! full pass removes our load balancers from routers that have no mapping in its store: the tests
//! of this file therefore run one at a time (and no other OVN worker may share the database).

mod common;
#[path = "openstack/support.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::Router;
use ipnet::Ipv4Net;
use praas::dataplane::ovn::ApplyWait;
use praas::dataplane::Driver;
use praas::monitor::{Monitor, PortGone};
use praas::openstack::NeutronDirectory;
use praas::ovsdb::Remote;
use praas::runtime::{self, Role, Running};
use praas::store::{Status, Store};
use praas::testbed::ovn::{self, OvnEnv, OvnNamespace};
use praas::testbed::simnode::{kernel_tests_enabled, SimNode};
use serde_json::{json, Value};

use support::{call, neutron_call, neutron_try, until, Cloud};

/// One test at a time: each runs an OVN worker of its own store (see the module's comment).
static ONE_WORKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Names of what the tests make in the OVN Neutron, for removing an interrupted run's leftovers.
const PREFIX: &str = "praas-ovn-own-";
const MEMBER: &str = "a-member-ovn";
const ADMIN: &str = "admin-ovn";

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

/// A port of a VM, bound to the chassis.
#[derive(Clone, Debug)]
struct Vm {
    port_id: String,
    mac: String,
    ip: Ipv4Addr,
}

/// A tenant network behind the router.
#[derive(Clone, Debug)]
struct Net {
    id: String,
    subnet_id: String,
    /// The subnet, with the router's interface address.
    interface: Ipv4Net,
}

/// A router of the test's own in the OVN Neutron, made by project A's member: a network and
/// subnet behind it, a gateway on the external network, a security group letting TCP in.
struct OvnRouter {
    tag: String,
    id: String,
    nets: Vec<Net>,
    group: String,
}

async fn member(cloud: &Cloud, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    neutron_call(cloud, MEMBER, method, path, body).await
}

impl OvnRouter {
    async fn create(cloud: &Cloud, slot: u8) -> OvnRouter {
        remove_leftovers(cloud).await;
        let tag = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
        let public = s(&cloud.resources["ovn"]["external_network"]["id"]);
        let router = member(
            cloud,
            reqwest::Method::POST,
            "routers",
            Some(json!({"router": {"name": tag, "external_gateway_info": {"network_id": public}}})),
        )
        .await;
        let group = member(
            cloud,
            reqwest::Method::POST,
            "security-groups",
            Some(json!({"security_group": {"name": tag}})),
        )
        .await;
        let group = s(&group["security_group"]["id"]);
        member(
            cloud,
            reqwest::Method::POST,
            "security-group-rules",
            Some(json!({"security_group_rule": {"security_group_id": group,
                "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                "remote_ip_prefix": "0.0.0.0/0"}})),
        )
        .await;
        let mut r = OvnRouter {
            tag,
            id: s(&router["router"]["id"]),
            nets: vec![],
            group,
        };
        r.add_network(cloud, format!("10.130.{slot}.1/24").parse().unwrap())
            .await;
        r
    }

    /// A new network with subnet `interface`, attached to the router by Neutron.
    async fn add_network(&mut self, cloud: &Cloud, interface: Ipv4Net) -> Net {
        let name = format!("{}-{}", self.tag, self.nets.len());
        let network = member(
            cloud,
            reqwest::Method::POST,
            "networks",
            Some(json!({"network": {"name": name}})),
        )
        .await;
        let id = s(&network["network"]["id"]);
        let subnet = member(
            cloud,
            reqwest::Method::POST,
            "subnets",
            Some(
                json!({"subnet": {"name": name, "network_id": id, "ip_version": 4,
                "cidr": interface.trunc().to_string(), "gateway_ip": interface.addr().to_string(),
                "enable_dhcp": false}}),
            ),
        )
        .await;
        let subnet_id = s(&subnet["subnet"]["id"]);
        member(
            cloud,
            reqwest::Method::PUT,
            &format!("routers/{}/add_router_interface", self.id),
            Some(json!({"subnet_id": subnet_id})),
        )
        .await;
        let net = Net {
            id,
            subnet_id,
            interface,
        };
        self.nets.push(net.clone());
        net
    }

    /// A VM port on `net`, made by the member, bound to the chassis by the admin (only an
    /// admin may set `binding:host_id`).
    async fn vm(&self, cloud: &Cloud, net: &Net) -> Vm {
        let name = format!("{}-vm", self.tag);
        let port = member(
            cloud,
            reqwest::Method::POST,
            "ports",
            Some(
                json!({"port": {"network_id": net.id, "name": name, "device_id": name,
                "device_owner": "compute:nova", "security_groups": [self.group]}}),
            ),
        )
        .await;
        let id = s(&port["port"]["id"]);
        let chassis = s(&cloud.resources["ovn"]["chassis"]);
        let port = neutron_call(
            cloud,
            ADMIN,
            reqwest::Method::PUT,
            &format!("ports/{id}"),
            Some(json!({"port": {"binding:host_id": chassis}})),
        )
        .await;
        assert_eq!(port["port"]["binding:vif_type"], "ovs", "bound: {port}");
        Vm {
            port_id: id,
            mac: s(&port["port"]["mac_address"]),
            ip: s(&port["port"]["fixed_ips"][0]["ip_address"])
                .parse()
                .unwrap(),
        }
    }

    /// The router's gateway address, as Neutron has it now.
    async fn gateway(&self, cloud: &Cloud) -> Option<Ipv4Addr> {
        let r = neutron_call(
            cloud,
            ADMIN,
            reqwest::Method::GET,
            &format!("routers/{}", self.id),
            None,
        )
        .await;
        r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
            .as_str()
            .map(|ip| ip.parse().unwrap())
    }

    async fn remove(self, cloud: &Cloud) {
        let nets: Vec<(String, String)> = self
            .nets
            .iter()
            .map(|n| (n.id.clone(), n.subnet_id.clone()))
            .collect();
        remove_router(cloud, &self.id, &nets, Some(&self.group)).await;
    }
}

/// Removes a router of ours, its networks (with their ports), its security group, and the
/// load balancers we left in OVN for it (a root table: deleting the router leaves them).
async fn remove_router(cloud: &Cloud, id: &str, nets: &[(String, String)], group: Option<&str>) {
    use reqwest::Method as M;
    // Each step may already have been done by the test or by an interrupted run.
    for (_, subnet) in nets {
        neutron_try(
            cloud,
            ADMIN,
            M::PUT,
            &format!("routers/{id}/remove_router_interface"),
            Some(json!({"subnet_id": subnet})),
        )
        .await;
    }
    neutron_try(cloud, ADMIN, M::DELETE, &format!("routers/{id}"), None).await;
    for (network, _) in nets {
        let ports = neutron_call(
            cloud,
            ADMIN,
            M::GET,
            &format!("ports?network_id={network}"),
            None,
        )
        .await;
        for p in ports["ports"].as_array().unwrap() {
            let port = s(&p["id"]);
            neutron_try(cloud, ADMIN, M::DELETE, &format!("ports/{port}"), None).await;
        }
        neutron_try(
            cloud,
            ADMIN,
            M::DELETE,
            &format!("networks/{network}"),
            None,
        )
        .await;
    }
    if let Some(group) = group {
        neutron_try(
            cloud,
            ADMIN,
            M::DELETE,
            &format!("security-groups/{group}"),
            None,
        )
        .await;
    }
    if let Ok(env) = OvnEnv::start() {
        let ours = env
            .nbctl(&[
                "--bare",
                "--columns=_uuid",
                "find",
                "Load_Balancer",
                &format!("external_ids:\"praas:router_id\"={id}"),
            ])
            .unwrap_or_default();
        for lb in ours.split_whitespace() {
            let _ = env.nbctl(&["--if-exists", "lb-del", lb]);
        }
    }
}

/// Floating IPs (with their port forwardings), routers, networks and security groups named by
/// an earlier, interrupted run.
async fn remove_leftovers(cloud: &Cloud) {
    use reqwest::Method as M;
    let named = |v: &Value| v["name"].as_str().is_some_and(|n| n.starts_with(PREFIX));
    let fips = neutron_call(cloud, ADMIN, M::GET, "floatingips", None).await;
    for f in fips["floatingips"].as_array().unwrap().iter().filter(|f| {
        f["description"]
            .as_str()
            .is_some_and(|d| d.starts_with(PREFIX))
    }) {
        let path = format!("floatingips/{}", s(&f["id"]));
        neutron_try(cloud, ADMIN, M::DELETE, &path, None).await;
    }
    let routers = neutron_call(cloud, ADMIN, M::GET, "routers", None).await;
    let networks = neutron_call(cloud, ADMIN, M::GET, "networks", None).await;
    let groups = neutron_call(cloud, ADMIN, M::GET, "security-groups", None).await;
    for r in routers["routers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| named(r))
    {
        let name = s(&r["name"]);
        let nets: Vec<(String, String)> = networks["networks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["name"].as_str().is_some_and(|n| n.starts_with(&name)))
            .map(|n| {
                (
                    s(&n["id"]),
                    n["subnets"][0].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        remove_router(cloud, &s(&r["id"]), &nets, None).await;
    }
    // Networks whose router went first.
    for n in networks["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| named(n))
    {
        remove_router(cloud, "none", &[(s(&n["id"]), String::new())], None).await;
    }
    for g in groups["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| named(g))
    {
        neutron_try(
            cloud,
            ADMIN,
            M::DELETE,
            &format!("security-groups/{}", s(&g["id"])),
            None,
        )
        .await;
    }
}

/// One test's cloud, OVN, router, PRaaS (API, store, OVN worker) and external client.
/// Fields drop in order: the namespaces before the environment.
struct Site {
    test: &'static str,
    client: OvnNamespace,
    vms: Vec<OvnNamespace>,
    router: Option<OvnRouter>,
    app: Router,
    store: Arc<Store>,
    worker: Option<Running>,
    token: String,
    cloud: Cloud,
    env: Arc<OvnEnv>,
}

impl Site {
    /// Slot `slot` (its own addresses), or `None` when the test is skipped.
    async fn new(test: &'static str, slot: u8) -> Option<Site> {
        let cloud = Cloud::find(test)?;
        cloud.ovn(test)?;
        if !kernel_tests_enabled(test) || !ovn::tests_enabled(test) {
            return None;
        }
        let env = tokio::task::spawn_blocking(OvnEnv::start)
            .await
            .unwrap()
            .expect("scripts/ovn up");
        let router = OvnRouter::create(&cloud, slot).await;
        let mut cfg = cloud.config();
        cfg.openstack.cloud = "openstack-ovn".into();
        cfg.dataplane.driver = Driver::Ovn;
        cfg.dataplane.usage_interval = 0;
        cfg.ovn.ovn_nb_connection = vec![Remote::parse(&env.nb).unwrap()];
        cfg.ovn.wait_for = ApplyWait::Chassis;
        cfg.praas.host = Some(format!("ovn-worker-{slot}"));
        cfg.praas.agent_status_port = 0;
        cfg.praas.report_interval = 1;
        let (app, store) = cloud.app_and_store_with(&cfg).await;
        let worker = runtime::start(&cfg, Role::Agent).await.unwrap();
        let client = OvnNamespace::external(
            &env,
            Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 60 + slot), 24).unwrap(),
            None,
        )
        .unwrap();
        let token = cloud.token(MEMBER).await;
        Some(Site {
            test,
            client,
            vms: vec![],
            router: Some(router),
            app,
            store,
            worker: Some(worker),
            token,
            cloud,
            env,
        })
    }

    fn router(&self) -> &OvnRouter {
        self.router.as_ref().unwrap()
    }

    /// A VM on `net`: its Neutron port, bound to the chassis, and a namespace with the port's
    /// MAC and address bound to it by `iface-id`, serving TCP on `port`.
    async fn vm(&mut self, net: &Net, port: u16) -> (Vm, SimServer) {
        let vm = self.router().vm(&self.cloud, net).await;
        let ns = OvnNamespace::vm(
            &self.env,
            &vm.port_id,
            &vm.mac,
            Ipv4Net::new(vm.ip, net.interface.prefix_len()).unwrap(),
            net.interface.addr(),
        )
        .unwrap();
        let env = self.env.clone();
        let id = vm.port_id.clone();
        tokio::task::spawn_blocking(move || env.wait_port_up(&id))
            .await
            .unwrap()
            .unwrap();
        let server = ns.serve_tcp(port).unwrap();
        self.vms.push(ns);
        (vm, server)
    }

    /// Creates a mapping to `port` of `vm` through the API as the member; its body.
    async fn map(&self, vm: &Vm, port: u16) -> Value {
        let (status, body) = call(
            &self.app,
            Some(&self.token),
            Method::POST,
            "/v1/mappings",
            Some(json!({"mapping": {"internal_port_id": vm.port_id, "internal_port": port}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["mapping"].clone()
    }

    /// Waits until mapping `id` is `status`; how long it took.
    async fn until_status(&self, id: &str, status: Status) -> Duration {
        let start = Instant::now();
        loop {
            let m = self.store.get(id).await.unwrap();
            if m.as_ref().map(|m| &m.status) == Some(&status) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: mapping {id} not {status:?} but {m:?}",
                self.test
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `find` condition for our TCP load balancers of the router (one per VM).
    fn ours_condition(&self) -> [String; 2] {
        [
            format!("external_ids:\"praas:router_id\"={}", self.router().id),
            "protocol=tcp".into(),
        ]
    }

    /// The `vips` of our TCP load balancers of the router, in one line ("" if there is none).
    fn vips(&self) -> String {
        let [router, protocol] = self.ours_condition();
        let out = self
            .env
            .nbctl(&[
                "--data=bare",
                "--no-headings",
                "--columns=vips",
                "find",
                "Load_Balancer",
                &router,
                &protocol,
            ])
            .unwrap();
        let mut vips: Vec<&str> = out.split_whitespace().collect();
        vips.sort();
        vips.join(" ")
    }

    /// The uuids of our TCP load balancers of the router.
    fn our_uuids(&self) -> Vec<String> {
        let [router, protocol] = self.ours_condition();
        self.env
            .nbctl(&[
                "--bare",
                "--columns=_uuid",
                "find",
                "Load_Balancer",
                &router,
                &protocol,
            ])
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Our load balancers' rows and where they are attached, as ovn-nbctl shows them.
    fn ours(&self) -> String {
        let [router, protocol] = self.ours_condition();
        let mut text = self
            .env
            .nbctl(&[
                "--columns=_uuid,name,protocol,vips,external_ids,options",
                "find",
                "Load_Balancer",
                &router,
                &protocol,
            ])
            .unwrap();
        // Where it is attached, by uuid (the `*-lb-list` commands shorten names).
        text += &self
            .env
            .nbctl(&[
                "--columns=name,load_balancer",
                "list",
                "Logical_Router",
                &format!("neutron-{}", self.router().id),
            ])
            .unwrap();
        for net in &self.router().nets {
            text += &self.switch_lbs(net);
        }
        text
    }

    /// The `load_balancer` column of the switch of `net`.
    fn switch_lbs(&self, net: &Net) -> String {
        self.env
            .nbctl(&[
                "--columns=name,load_balancer",
                "list",
                "Logical_Switch",
                &format!("neutron-{}", net.id),
            ])
            .unwrap()
    }

    /// Whether our load balancers (there is at least one) are attached to the switch of `net`.
    fn attached_to(&self, net: &Net) -> bool {
        let uuids = self.our_uuids();
        let lbs = self.switch_lbs(net);
        !uuids.is_empty() && uuids.iter().all(|uuid| lbs.contains(uuid))
    }

    /// A probe: one TCP exchange from the client to `gateway:port` answers, from the client's
    /// own address.
    fn answers(&self, gateway: Ipv4Addr, port: u16) -> impl FnMut() -> bool {
        let (ns, from) = (
            self.client.namespace.clone(),
            format!("from={}", self.client.ip),
        );
        move || {
            SimNode::tcp_exchange(&ns, None, SocketAddrV4::new(gateway, port), "hi")
                .is_ok_and(|a| a.contains(&from))
        }
    }

    /// A probe: a connection from the client to `gateway:port` is not answered.
    fn refused(&self, gateway: Ipv4Addr, port: u16) -> impl FnMut() -> bool {
        let ns = self.client.namespace.clone();
        move || SimNode::tcp_exchange(&ns, None, SocketAddrV4::new(gateway, port), "hi").is_err()
    }

    fn monitor(&self) -> Monitor {
        Monitor::new(
            self.store.clone(),
            Arc::new(NeutronDirectory::new(self.cloud.session("openstack-ovn"))),
            PortGone::Delete,
        )
    }

    /// Stops the worker, removes the namespaces and what was made in Neutron and OVN.
    async fn finish(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
        self.vms.clear();
        let router = self.router.take().unwrap();
        router.remove(&self.cloud).await;
    }
}

type SimServer = praas::testbed::simnode::Server;

/// End to end on ML2/OVN: a member's mapping, checked against the OVN Neutron, becomes ACTIVE
/// once the chassis applied it; real TCP from the external network to the gateway address
/// reaches the VM with the client's address; deleting the mapping stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_on_a_router_neutron_built_in_ovn_forwards_until_deleted() {
    let test = "openstack_ovn::a_mapping_on_a_router_neutron_built_in_ovn_forwards_until_deleted";
    let _one = ONE_WORKER.lock().await;
    let Some(mut site) = Site::new(test, 1).await else {
        return;
    };
    let net = site.router().nets[0].clone();
    let (vm, _server) = site.vm(&net, 8080).await;
    let gateway = site.router().gateway(&site.cloud).await.unwrap();
    let start = Instant::now();
    let mapping = site.map(&vm, 8080).await;
    let id = s(&mapping["id"]);
    assert_eq!(mapping["router_id"], site.router().id.as_str());
    assert_eq!(mapping["external_ip_address"], gateway.to_string());
    site.until_status(&id, Status::Active).await;
    let active = start.elapsed();
    let port = mapping["external_port"].as_u64().unwrap() as u16;
    assert_eq!(site.vips(), format!("{gateway}:{port}={}:8080", vm.ip));
    let took = until(
        Duration::from_secs(10),
        "TCP through the router Neutron built",
        site.answers(gateway, port),
    )
    .await;
    eprintln!("{test}: ACTIVE {active:?} after the POST; first answer {took:?} after that");

    let (status, _) = call(
        &site.app,
        Some(&site.token),
        Method::DELETE,
        &format!("/v1/mappings/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until(Duration::from_secs(10), "the VIP removed", || {
        site.vips().is_empty()
    })
    .await;
    until(
        Duration::from_secs(10),
        "no forwarding after the delete",
        site.refused(gateway, port),
    )
    .await;
    site.finish().await;
}

/// The monitor on ML2/OVN, as on the L3 agent's cloud: a changed fixed IP is followed and the
/// packets reach the new address; a changed gateway address is followed; a cleared gateway
/// holds the mapping DOWN out of OVN until it returns; a deleted port takes its mapping and the
/// VIP with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_the_ovn_neutron_into_the_northbound_database() {
    let test = "openstack_ovn::the_monitor_follows_the_ovn_neutron_into_the_northbound_database";
    let _one = ONE_WORKER.lock().await;
    let Some(mut site) = Site::new(test, 2).await else {
        return;
    };
    let net = site.router().nets[0].clone();
    let (vm, _server) = site.vm(&net, 22).await;
    let gateway = site.router().gateway(&site.cloud).await.unwrap();
    let mapping = site.map(&vm, 22).await;
    let id = s(&mapping["id"]);
    let port = mapping["external_port"].as_u64().unwrap() as u16;
    site.until_status(&id, Status::Active).await;
    until(
        Duration::from_secs(10),
        "forwarding",
        site.answers(gateway, port),
    )
    .await;
    let monitor = site.monitor();
    let lease = Duration::from_secs(30);
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!((report.deleted, report.updated), (0, 0), "{report:?}");

    // The fixed IP changes in Neutron (and OVN's port security with it); the VM moves.
    let new_ip = Ipv4Addr::new(10, 130, 2, if vm.ip.octets()[3] == 200 { 201 } else { 200 });
    member(
        &site.cloud,
        reqwest::Method::PUT,
        &format!("ports/{}", vm.port_id),
        Some(json!({"port": {"fixed_ips": [{"subnet_id": net.subnet_id, "ip_address": new_ip.to_string()}]}})),
    )
    .await;
    let ns = site.vms[0].namespace.clone();
    let batch = format!(
        "addr flush dev eth0\naddr add {new_ip}/24 dev eth0\nroute add default via {}\n",
        net.interface.addr()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '{}' | ip -n {ns} -batch -",
            batch.replace('\n', "\\n")
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!(report.updated, 1, "{report:?}");
    let m = site.store.get(&id).await.unwrap().unwrap();
    assert_eq!(m.internal_ip_address, new_ip);
    assert_eq!(m.external_ports.first(), port, "the user keeps the port");
    let took = until(
        Duration::from_secs(10),
        "packets to the new fixed IP",
        site.answers(gateway, port),
    )
    .await;
    assert_eq!(site.vips(), format!("{gateway}:{port}={new_ip}:22"));
    eprintln!(
        "{test}: fixed IP {} -> {new_ip} followed, answering {took:?} after the monitor's cycle",
        vm.ip
    );

    // The gateway address changes (the admin picks one), and is followed.
    let public = s(&site.cloud.resources["ovn"]["external_network"]["id"]);
    let subnet = s(&site.cloud.resources["ovn"]["external_network"]["subnet_id"]);
    let path = format!("routers/{}", site.router().id);
    let mut new_gateway = None;
    for last in (150..=199u8).rev() {
        let ip = Ipv4Addr::new(203, 0, 113, last);
        if ip == gateway {
            continue;
        }
        let (status, answer) = neutron_try(
            &site.cloud,
            ADMIN,
            reqwest::Method::PUT,
            &path,
            Some(
                json!({"router": {"external_gateway_info": {"network_id": public,
                "external_fixed_ips": [{"subnet_id": subnet, "ip_address": ip.to_string()}]}}}),
            ),
        )
        .await;
        if status.is_success() {
            new_gateway = Some(ip);
            break;
        }
        assert_eq!(status, reqwest::StatusCode::CONFLICT, "{answer}");
    }
    let new_gateway = new_gateway.expect("a free gateway address");
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!(report.updated, 1, "{report:?}");
    let took = until(
        Duration::from_secs(10),
        "the new gateway address",
        site.answers(new_gateway, port),
    )
    .await;
    eprintln!("{test}: gateway {gateway} -> {new_gateway} followed in {took:?}");
    assert!(
        !site.vips().contains(&gateway.to_string()),
        "{}",
        site.vips()
    );

    // The gateway is cleared: the mapping is held DOWN and leaves OVN; it comes back with it.
    member(
        &site.cloud,
        reqwest::Method::PUT,
        &path,
        Some(json!({"router": {"external_gateway_info": {}}})),
    )
    .await;
    monitor.cycle(lease).await.unwrap();
    let held = site.store.get(&id).await.unwrap().unwrap();
    assert!(held.held && held.status == Status::Down, "{held:?}");
    until(Duration::from_secs(10), "the VIP out while held", || {
        site.vips().is_empty()
    })
    .await;
    let (status, answer) = neutron_try(
        &site.cloud,
        ADMIN,
        reqwest::Method::PUT,
        &path,
        Some(json!({"router": {"external_gateway_info": {"network_id": public,
            "external_fixed_ips": [{"subnet_id": subnet, "ip_address": new_gateway.to_string()}]}}})),
    )
    .await;
    assert!(status.is_success(), "{answer}");
    monitor.cycle(lease).await.unwrap();
    site.until_status(&id, Status::Active).await;
    until(
        Duration::from_secs(10),
        "the gateway back",
        site.answers(new_gateway, port),
    )
    .await;

    // The port is deleted: the mapping goes, and its VIP with it.
    neutron_call(
        &site.cloud,
        ADMIN,
        reqwest::Method::DELETE,
        &format!("ports/{}", vm.port_id),
        None,
    )
    .await;
    let report = monitor.cycle(lease).await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    assert!(site.store.get(&id).await.unwrap().is_none());
    until(
        Duration::from_secs(10),
        "the VIP gone with the port",
        || site.vips().is_empty(),
    )
    .await;
    site.finish().await;
}

/// Neutron's own OVN DB sync in repair mode (`neutron-ovn-db-sync-util`, what an operator runs
/// after an upgrade or an outage) leaves our load balancer, its attachments and the packets
/// alone; a router interface Neutron adds later (a new tenant subnet) gets our load balancer
/// attached at the worker's next look, so that a VM there reaches the forward (hairpin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutron_sync_leaves_our_rows_and_a_new_router_interface_gets_them() {
    let test = "openstack_ovn::neutron_sync_leaves_our_rows_and_a_new_router_interface_gets_them";
    let _one = ONE_WORKER.lock().await;
    let Some(mut site) = Site::new(test, 3).await else {
        return;
    };
    let net = site.router().nets[0].clone();
    let (vm, _server) = site.vm(&net, 80).await;
    let gateway = site.router().gateway(&site.cloud).await.unwrap();
    let mapping = site.map(&vm, 80).await;
    let id = s(&mapping["id"]);
    let port = mapping["external_port"].as_u64().unwrap() as u16;
    site.until_status(&id, Status::Active).await;
    until(
        Duration::from_secs(10),
        "forwarding",
        site.answers(gateway, port),
    )
    .await;
    let before = site.ours();
    let lb = format!("praas-{}-tcp-{}", site.router().id, vm.ip);
    assert!(before.contains(&lb), "{before}");

    // The sync, with the OVN Neutron's own configuration.
    let venv = std::env::var("PRAAS_CLOUD_VENV").unwrap_or_else(|_| {
        std::fs::read_to_string(site.cloud.dir.join("settings"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRAAS_CLOUD_VENV=").map(str::to_string))
            .unwrap_or_else(|| "/var/tmp/praas-cloud-venv".into())
    });
    let conf = site.cloud.dir.join("neutron-ovn/neutron.conf");
    let log = site.cloud.dir.join("neutron-ovn-db-sync.log");
    let start = Instant::now();
    let out = tokio::process::Command::new(format!("{venv}/bin/neutron-ovn-db-sync-util"))
        .arg("--config-file")
        .arg(&conf)
        .arg("--ovn-neutron_sync_mode")
        .arg("repair")
        .arg("--log-file")
        .arg(&log)
        .output()
        .await
        .unwrap();
    let sync_took = start.elapsed();
    assert!(
        out.status.success(),
        "neutron-ovn-db-sync-util: {}{} (log: {})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log.display()
    );
    eprintln!("{test}: neutron-ovn-db-sync-util --ovn-neutron_sync_mode repair took {sync_took:?}");
    assert_eq!(site.ours(), before, "our rows and attachments, unchanged");
    assert!(tokio::task::block_in_place(site.answers(gateway, port)));

    // Neutron adds a router interface on a new subnet: our load balancer follows.
    let second = site
        .router
        .as_mut()
        .unwrap()
        .add_network(&site.cloud, "10.131.3.1/24".parse().unwrap())
        .await;
    let took = until(
        Duration::from_secs(10),
        "our load balancer on the new switch",
        || site.attached_to(&second),
    )
    .await;
    eprintln!("{test}: attached to the new tenant switch {took:?} after add_router_interface");
    // Hairpin: a VM on the new subnet reaches the forward of its router.
    let (_neighbour, _its_server) = site.vm(&second, 81).await;
    let ns = site.vms[1].namespace.clone();
    let from = format!("from={}", site.vms[1].ip);
    until(
        Duration::from_secs(10),
        "hairpin from the new subnet",
        || {
            SimNode::tcp_exchange(&ns, None, SocketAddrV4::new(gateway, port), "hi")
                .is_ok_and(|a| a.contains(&from))
        },
    )
    .await;
    site.finish().await;
}

/// The `_uuid` and `vips` of the load balancer `name`, and whether the router holds it.
fn lb_row(site: &Site, name: &str) -> Option<(String, String, bool)> {
    let out = site
        .env
        .nbctl(&[
            "--format=csv",
            "--data=bare",
            "--no-headings",
            "--columns=_uuid,vips",
            "find",
            "Load_Balancer",
            &format!("name={name}"),
        ])
        .unwrap();
    let (uuid, vips) = out.trim().split_once(',')?;
    let router = site
        .env
        .nbctl(&[
            "get",
            "Logical_Router",
            &format!("neutron-{}", site.router().id),
            "load_balancer",
        ])
        .unwrap();
    Some((
        uuid.into(),
        vips.trim_matches('"').into(),
        router.contains(uuid),
    ))
}

/// Neutron's own port forwarding (on a floating IP, as its OVN driver writes it) and ours on
/// one router: both forward, our passes leave Neutron's load balancer as it is, and Neutron's
/// changes leave ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutrons_own_port_forwarding_and_ours_share_a_router_and_leave_each_other_alone() {
    use reqwest::Method as M;
    let test = "openstack_ovn::neutrons_own_port_forwarding_and_ours_share_a_router";
    let _one = ONE_WORKER.lock().await;
    let Some(mut site) = Site::new(test, 4).await else {
        return;
    };
    let net = site.router().nets[0].clone();
    let (vm, _ours_server) = site.vm(&net, 8080).await;
    let _neutrons_server = site.vms[0].serve_tcp(2222).unwrap();
    let gateway = site.router().gateway(&site.cloud).await.unwrap();
    let mapping = site.map(&vm, 8080).await;
    let port = mapping["external_port"].as_u64().unwrap() as u16;
    site.until_status(&s(&mapping["id"]), Status::Active).await;

    // Neutron's port forwarding: a floating IP of the member's, 2222 on it to the same VM.
    let external = s(&site.cloud.resources["ovn"]["external_network"]["id"]);
    let fip = member(
        &site.cloud,
        M::POST,
        "floatingips",
        Some(json!({"floatingip": {"floating_network_id": external,
            "description": format!("{PREFIX}{test}")}})),
    )
    .await;
    let fip_id = s(&fip["floatingip"]["id"]);
    let fip_ip: Ipv4Addr = s(&fip["floatingip"]["floating_ip_address"])
        .parse()
        .unwrap();
    let pf = member(
        &site.cloud,
        M::POST,
        &format!("floatingips/{fip_id}/port_forwardings"),
        Some(json!({"port_forwarding": {"protocol": "tcp",
            "internal_port_id": vm.port_id, "internal_ip_address": vm.ip.to_string(),
            "internal_port": 2222, "external_port": 2222}})),
    )
    .await;
    let pf_id = s(&pf["port_forwarding"]["id"]);
    let theirs = format!("pf-floatingip-{fip_id}-tcp");
    until(Duration::from_secs(10), "Neutron's load balancer", || {
        lb_row(&site, &theirs).is_some_and(|(_, _, attached)| attached)
    })
    .await;
    until(
        Duration::from_secs(10),
        "Neutron's forward on its floating IP",
        site.answers(fip_ip, 2222),
    )
    .await;
    until(
        Duration::from_secs(10),
        "our forward on the gateway",
        site.answers(gateway, port),
    )
    .await;
    let theirs_before = lb_row(&site, &theirs).unwrap();
    assert_eq!(
        theirs_before.1,
        format!("{fip_ip}:2222={}:2222", vm.ip),
        "{theirs_before:?}"
    );
    let (ours_before, our_vips) = (site.our_uuids(), site.vips());
    eprintln!("{test}: Neutron's {theirs} {theirs_before:?} beside ours {ours_before:?}");

    // Two changes of ours (a mapping to the same VM added, then deleted) and a full pass.
    let second = site.map(&vm, 22).await;
    let second_id = s(&second["id"]);
    site.until_status(&second_id, Status::Active).await;
    let (status, _) = call(
        &site.app,
        Some(&site.token),
        Method::DELETE,
        &format!("/v1/mappings/{second_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    until(Duration::from_secs(10), "our second VIP gone", || {
        site.vips() == our_vips
    })
    .await;
    assert_eq!(
        lb_row(&site, &theirs).as_ref(),
        Some(&theirs_before),
        "Neutron's load balancer, as it was"
    );

    // Neutron takes its port forwarding away: its load balancer goes, ours stays and forwards.
    member(
        &site.cloud,
        M::DELETE,
        &format!("floatingips/{fip_id}/port_forwardings/{pf_id}"),
        None,
    )
    .await;
    until(
        Duration::from_secs(10),
        "Neutron's load balancer gone",
        || lb_row(&site, &theirs).is_none(),
    )
    .await;
    assert_eq!(site.our_uuids(), ours_before);
    assert_eq!(site.vips(), our_vips);
    assert!(site.attached_to(&net));
    until(
        Duration::from_secs(10),
        "our forward after Neutron's went",
        site.answers(gateway, port),
    )
    .await;
    member(
        &site.cloud,
        M::DELETE,
        &format!("floatingips/{fip_id}"),
        None,
    )
    .await;
    site.finish().await;
}
