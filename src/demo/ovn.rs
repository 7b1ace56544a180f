//! The OVN demo: PRaaS on the one-chassis OVN of `scripts/ovn` under the dev cloud's OVN
//! Neutron (`PRAAS_CLOUD_OVN=1 scripts/dev-cloud up`).
//!
//! Project A's router there is the logical router `neutron-<id>` that Neutron built. The demo
//! makes two VM ports on project A's network (as its member; bound to the chassis by the admin,
//! as Nova would), attaches a namespace to each by `iface-id`, and puts an external client on
//! br-ex with an address of the external network outside Neutron's allocation pool. It runs
//! the all-in-one with `[dataplane] driver = ovn` on the northbound database, authenticating
//! with Keystone and checking with the OVN Neutron, maps TCP and UDP as project A's member,
//! shows the load balancers OVN holds and connections through the gateway address, then
//! deletes the mappings. It removes what it made (its ports, namespaces and mappings); the
//! shared cloud and OVN stay as they were.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use praas::config::Config;
use praas::dataplane::Driver;
use praas::openstack::Session;
use praas::ovsdb::Remote;
use praas::runtime::{self, Role, Running};
use praas::testbed::ovn::{self, OvnEnv, OvnNamespace};
use praas::testbed::simnode::{Server, SimNode};
use reqwest::Method;
use serde_json::{json, Value};

use super::{Client, Cloud};

/// The explicit external port of the TCP mapping (inside the default range 4000:4100).
const TCP_PORT: u16 = 4022;

/// Project A in the OVN Neutron, as `scripts/dev-cloud` wrote it down (`ovn.projects.a`).
struct ProjectA {
    network_id: String,
    router_id: String,
    gateway: Ipv4Addr,
    interface: Ipv4Addr,
    prefix: u8,
    security_group: String,
    chassis: String,
    external: ipnet::Ipv4Net,
}

impl ProjectA {
    fn load(cloud: &Cloud) -> Result<ProjectA> {
        let ovn = &cloud.resources["ovn"];
        if ovn.is_null() {
            bail!(
                "{}/resources.json has no OVN Neutron: run PRAAS_CLOUD_OVN=1 scripts/dev-cloud up",
                cloud.dir.display()
            );
        }
        let a = &ovn["projects"]["a"];
        let get = |v: &Value, key: &str| -> Result<String> {
            v[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("resources.json has no ovn ... {key}"))
        };
        let cidr: ipnet::Ipv4Net = get(a, "cidr")?.parse()?;
        Ok(ProjectA {
            network_id: get(a, "network_id")?,
            router_id: get(a, "router_id")?,
            gateway: get(a, "router_gateway_ip")?.parse()?,
            interface: get(a, "router_interface_ip")?.parse()?,
            prefix: cidr.prefix_len(),
            security_group: get(a, "security_group_id")?,
            chassis: get(ovn, "chassis")?,
            external: get(&ovn["external_network"], "cidr")?.parse()?,
        })
    }
}

/// Neutron's API as one user of clouds.yaml.
struct Neutron {
    http: reqwest::Client,
    session: Arc<Session>,
    url: String,
}

impl Neutron {
    async fn new(cloud: &Cloud, user: &str) -> Result<Neutron> {
        let session = cloud.session(user)?;
        let url = format!("{}/v2.0", session.endpoint("network").await?);
        Ok(Neutron {
            http: reqwest::Client::new(),
            session,
            url,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/{path}", self.url))
            .header("X-Auth-Token", self.session.auth_token().await?);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("Neutron: {method} {path}: HTTP {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A VM: its Neutron port and the namespace bound to it.
struct Vm {
    port_id: String,
    ip: Ipv4Addr,
    ns: OvnNamespace,
}

/// What the demo made, removed at the end whatever happened.
#[derive(Default)]
struct Made {
    /// Neutron ports (ids), deleted as the admin.
    ports: Vec<String>,
    vms: Vec<Vm>,
    client: Option<OvnNamespace>,
    servers: Vec<Server>,
    running: Option<Running>,
    /// Mappings not deleted yet: their load balancers are deleted by hand after the service
    /// stops.
    mappings: Vec<String>,
}

pub(super) async fn demo(cloud: Cloud) -> Result<()> {
    if let Some(reason) = ovn::unavailable() {
        bail!("the OVN demo cannot run here: {reason}");
    }
    let a = ProjectA::load(&cloud)?;
    let env = tokio::task::spawn_blocking(OvnEnv::start)
        .await?
        .context("OVN (scripts/ovn up)")?;
    let admin = Neutron::new(&cloud, "admin-ovn").await?;
    let mut made = Made::default();
    let dir = std::env::temp_dir().join(format!("praas-demo-{}", std::process::id()));
    let result = steps(&cloud, &a, &env, &admin, &dir, &mut made).await;
    let cleaned = clean_up(&a, &env, &admin, made).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    cleaned?;
    println!("\nDone; the namespaces, the demo's Neutron ports and its mappings are removed.");
    Ok(())
}

async fn steps(
    cloud: &Cloud,
    a: &ProjectA,
    env: &Arc<OvnEnv>,
    admin: &Neutron,
    dir: &std::path::Path,
    made: &mut Made,
) -> Result<()> {
    let member = Neutron::new(cloud, "a-member-ovn").await?;
    let router = format!("neutron-{}", a.router_id);
    let switch = format!("neutron-{}", a.network_id);
    println!(
        "OVN: one chassis ({}), northbound database {}; the OVN Neutron at {} (region {}).",
        env.chassis,
        env.nb,
        member.url.trim_end_matches("/v2.0"),
        cloud.resources["ovn"]["region"].as_str().unwrap_or("?")
    );
    println!(
        "Project A's router {} is OVN's logical router {router}: gateway {} on the external \
         network {}, interface {} on the tenant switch {switch}.",
        a.router_id, a.gateway, a.external, a.interface
    );

    println!(
        "\nTwo VM ports on project A's network, made as its member and bound to the chassis by \
         the admin (as Nova would); a namespace is attached to each by iface-id:"
    );
    for n in 0..2 {
        let name = format!("praas-demo-vm{n}-{}", std::process::id());
        let port = member
            .call(
                Method::POST,
                "ports",
                Some(json!({"port": {"name": name, "network_id": a.network_id,
                    "device_id": name, "device_owner": "compute:nova",
                    "security_groups": [a.security_group]}})),
            )
            .await
            .context("creating a VM port as project A's member")?;
        let port_id = port["port"]["id"]
            .as_str()
            .context("no port id")?
            .to_string();
        made.ports.push(port_id.clone());
        let bound = admin
            .call(
                Method::PUT,
                &format!("ports/{port_id}"),
                Some(json!({"port": {"binding:host_id": a.chassis}})),
            )
            .await?;
        if bound["port"]["binding:vif_type"] != "ovs" {
            bail!(
                "port {port_id} is not bound to {}: {}",
                a.chassis,
                bound["port"]["binding:vif_type"]
            );
        }
        let ip: Ipv4Addr = port["port"]["fixed_ips"][0]["ip_address"]
            .as_str()
            .context("no fixed IP")?
            .parse()?;
        let mac = port["port"]["mac_address"]
            .as_str()
            .context("no MAC")?
            .to_string();
        let (env2, id2, gw, prefix) = (env.clone(), port_id.clone(), a.interface, a.prefix);
        let ns = tokio::task::spawn_blocking(move || -> Result<OvnNamespace> {
            let ns = OvnNamespace::vm(&env2, &id2, &mac, ipnet::Ipv4Net::new(ip, prefix)?, gw)?;
            env2.wait_port_up(&id2)?;
            Ok(ns)
        })
        .await??;
        println!(
            "  vm{n}: port {port_id}, {ip}, in namespace {} (up in OVN)",
            ns.namespace
        );
        made.vms.push(Vm { port_id, ip, ns });
    }
    made.servers.push(made.vms[0].ns.serve_tcp(22)?);
    made.servers.push(made.vms[1].ns.serve_udp(53)?);
    println!(
        "  echo servers: TCP {}:22 and UDP {}:53 (they answer with the client address they see)",
        made.vms[0].ip, made.vms[1].ip
    );

    // Outside Neutron's allocation pool (.100-.199), one address per process.
    let client_ip = Ipv4Addr::from(u32::from(a.external.network()) + 200 + std::process::id() % 50);
    let net = ipnet::Ipv4Net::new(client_ip, a.external.prefix_len())?;
    let env2 = env.clone();
    let client =
        tokio::task::spawn_blocking(move || OvnNamespace::external(&env2, net, None)).await??;
    println!(
        "  client {client_ip} in namespace {}, on br-ex (physnet1, the external network)",
        client.namespace
    );
    let client_ns = client.namespace.clone();
    made.client = Some(client);

    // The all-in-one as `praas all-in-one` runs it, with the OVN driver.
    std::fs::create_dir_all(dir)?;
    let mut cfg = Config::default();
    cfg.database.connection = format!("sqlite:///{}/praas.db", dir.display());
    cfg.praas.bind_address = Ipv4Addr::LOCALHOST.into();
    cfg.praas.port_app = 0;
    cfg.dataplane.driver = Driver::Ovn;
    cfg.ovn.ovn_nb_connection = Remote::parse_list(&env.nb)?;
    cfg.openstack.clouds_file = Some(cloud.dir.join("clouds.yaml"));
    cfg.openstack.cloud = "openstack-ovn".into();
    let running = runtime::start(&cfg, Role::AllInOne)
        .await
        .context("starting praas all-in-one")?;
    let addr: SocketAddr = running.api_addr().context("the API listens")?;
    made.running = Some(running);
    let api = Client {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
        token: Some(
            cloud
                .session("a-member-ovn")?
                .auth_token()
                .await
                .context("logging in as a-member-ovn")?,
        ),
    };
    println!(
        "\nPRaaS all-in-one listening on http://{addr}:\n\
         \x20 [dataplane] driver = ovn, [ovn] ovn_nb_connection = {}, wait_for = hv\n\
         \x20 [openstack] cloud = openstack-ovn: Keystone authentication, checks with the OVN Neutron\n\
         TOKEN is project A's member's Keystone token (cloud a-member-ovn of {}/clouds.yaml)",
        env.nb,
        cloud.dir.display()
    );

    // Two mappings as project A's member: TCP on a port of its choice, UDP on one from the
    // router's range.
    let tcp = create(
        &api,
        made,
        json!({"mapping": {"internal_port_id": made.vms[0].port_id, "internal_port": 22,
            "external_port": TCP_PORT, "protocol": "tcp", "description": "ssh to vm0"}}),
    )
    .await?;
    let udp = create(
        &api,
        made,
        json!({"mapping": {"internal_port_id": made.vms[1].port_id, "internal_port": 53,
            "protocol": "udp", "description": "dns to vm1 (port from the range)"}}),
    )
    .await?;
    let t = Instant::now();
    api.wait_active(&tcp.id).await?;
    api.wait_active(&udp.id).await?;
    println!(
        "\n$ curl http://{addr}/v1/mappings{}   (ACTIVE {} ms after the POSTs: OVN's chassis \
         reported the change applied, hv_cfg)",
        api.curl_auth(),
        t.elapsed().as_millis()
    );
    let (_, list) = api.call(Method::GET, "/v1/mappings", None).await?;
    for m in list["mappings"].as_array().into_iter().flatten() {
        println!(
            "  {}  {}  {}:{} -> {}:{}  {}  \"{}\"",
            m["id"].as_str().unwrap_or_default(),
            m["protocol"].as_str().unwrap_or_default(),
            m["external_ip_address"].as_str().unwrap_or_default(),
            m["external_port"],
            m["internal_ip_address"].as_str().unwrap_or_default(),
            m["internal_port"],
            m["status"].as_str().unwrap_or_default(),
            m["description"].as_str().unwrap_or_default(),
        );
    }

    println!("\nWhat OVN's northbound database holds:");
    show_load_balancers(env, a, &router, &switch).await?;

    // Real connections from the external client through the gateway address.
    let tcp_gw = SocketAddrV4::new(a.gateway, tcp.port);
    let udp_gw = SocketAddrV4::new(a.gateway, udp.port);
    let ns = client_ns.clone();
    let (tcp_answer, udp_answer) = tokio::task::spawn_blocking(move || -> Result<_> {
        let tcp = eventually(|| SimNode::tcp_exchange(&ns, None, tcp_gw, "hello"))?;
        let udp = eventually(|| SimNode::udp_exchange(&ns, None, udp_gw, "hello over udp"))?;
        Ok((tcp, udp))
    })
    .await??;
    println!("\nFrom the client namespace ({client_ip}):");
    println!("  TCP to {tcp_gw}: vm0 answered \"{tcp_answer}\"");
    println!("  UDP to {udp_gw}: vm1 answered \"{udp_answer}\"");
    let seen = format!("from={client_ip} ");
    if !tcp_answer.starts_with(&seen) || !udp_answer.starts_with(&seen) {
        bail!("the VMs did not see the client's address {client_ip}");
    }
    println!("  the VMs saw the client's own address {client_ip} (no masquerade)");

    // Deleting the TCP mapping: its load balancer goes, new and established connections fail.
    let ns = client_ns.clone();
    let mut open = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut c = SimNode::connect(&ns, None, tcp_gw)?;
        c.exchange("keep me open")?;
        Ok(c)
    })
    .await??;
    println!(
        "\nA TCP connection to {tcp_gw} stays open.\n$ curl -X DELETE{} http://{addr}/v1/mappings/{}",
        api.curl_auth(),
        tcp.id
    );
    delete(&api, made, &tcp.id).await?;
    wait_gone(env, &a.router_id, "tcp").await?;
    println!("  OVN: PRaaS's TCP load balancer of the router is gone (no TCP mapping left)");
    let ns = client_ns.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let refused = until_fails(|| SimNode::tcp_exchange(&ns, None, tcp_gw, "again"))?;
        println!(
            "  a new connection to {tcp_gw} fails ({})",
            describe(&refused)
        );
        match open.exchange("still there?") {
            Err(e) => println!(
                "  the established connection is cut ({}): ovn-controller flushed its \
                 conntrack entry (options:ct_flush)",
                describe(&e)
            ),
            Ok(answer) => bail!("an established connection outlived its mapping: {answer}"),
        }
        Ok(())
    })
    .await??;

    println!(
        "\n$ curl -X DELETE{} http://{addr}/v1/mappings/{}",
        api.curl_auth(),
        udp.id
    );
    delete(&api, made, &udp.id).await?;
    wait_gone(env, &a.router_id, "udp").await?;
    println!("  OVN: its UDP load balancer is gone too");
    let ns = client_ns.clone();
    let silent = tokio::task::spawn_blocking(move || {
        until_fails(|| SimNode::udp_exchange(&ns, None, udp_gw, "anyone?"))
    })
    .await??;
    println!("  UDP to {udp_gw}: no answer ({})", describe(&silent));
    println!("\nWhat OVN's northbound database holds now:");
    show_load_balancers(env, a, &router, &switch).await?;
    Ok(())
}

/// A created mapping: its id and external port.
struct Created {
    id: String,
    port: u16,
}

async fn create(api: &Client, made: &mut Made, body: Value) -> Result<Created> {
    println!(
        "\n$ curl -X POST {}/v1/mappings -H 'Content-Type: application/json'{} -d '{body}'",
        api.base,
        api.curl_auth()
    );
    let (status, created) = api.call(Method::POST, "/v1/mappings", Some(body)).await?;
    println!("HTTP {status} {created}");
    if status != 201 {
        bail!("the mapping was not created");
    }
    let id = created["mapping"]["id"]
        .as_str()
        .context("no mapping id")?
        .to_string();
    made.mappings.push(id.clone());
    let port = created["mapping"]["external_port"]
        .as_u64()
        .context("no external port")? as u16;
    Ok(Created { id, port })
}

async fn delete(api: &Client, made: &mut Made, id: &str) -> Result<()> {
    let (status, _) = api
        .call(Method::DELETE, &format!("/v1/mappings/{id}"), None)
        .await?;
    println!("HTTP {status}");
    if !(200..300).contains(&status) {
        bail!("the mapping was not deleted");
    }
    made.mappings.retain(|m| m != id);
    Ok(())
}

/// Prints PRaaS's load balancers of the router and where they are attached, with the
/// `ovn-nbctl` commands that show them.
async fn show_load_balancers(
    env: &Arc<OvnEnv>,
    a: &ProjectA,
    router: &str,
    switch: &str,
) -> Result<()> {
    let env = env.clone();
    let filter = format!("external_ids:\"praas:router_id\"=\"{}\"", a.router_id);
    let (router, switch) = (router.to_string(), switch.to_string());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let columns = "--columns=name,protocol,vips,options,external_ids";
        let rows = env.nbctl(&[columns, "find", "Load_Balancer", &filter])?;
        println!("$ ovn-nbctl {columns} find Load_Balancer '{filter}'");
        print_indented(if rows.trim().is_empty() {
            "(none)"
        } else {
            &rows
        });
        println!("$ ovn-nbctl lr-lb-list {router}");
        print_indented(&env.nbctl(&["lr-lb-list", &router])?);
        println!("$ ovn-nbctl ls-lb-list {switch}");
        print_indented(&env.nbctl(&["ls-lb-list", &switch])?);
        Ok(())
    })
    .await?
}

fn print_indented(text: &str) {
    let text = text.trim_end();
    if text.is_empty() {
        println!("  (none)");
    }
    for line in text.lines() {
        println!("  {line}");
    }
}

/// Waits until PRaaS has no load balancer of `protocol` left for the router.
async fn wait_gone(env: &Arc<OvnEnv>, router_id: &str, protocol: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let env = env.clone();
        let ours = format!("external_ids:\"praas:router_id\"=\"{router_id}\"");
        let protocol_filter = format!("protocol={protocol}");
        let rows = tokio::task::spawn_blocking(move || {
            env.nbctl(&[
                "--bare",
                "--columns=_uuid",
                "find",
                "Load_Balancer",
                &ours,
                &protocol_filter,
            ])
        })
        .await??;
        if rows.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("a {protocol} load balancer of ours is still there 10 s after its last mapping went");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first packets after a change may race the chassis' flows: three tries.
fn eventually(mut f: impl FnMut() -> std::io::Result<String>) -> Result<String> {
    let mut last = None;
    for _ in 0..3 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried").into())
}

/// Tries `f` until it fails (the chassis has applied a removal), for at most 10 s.
fn until_fails(mut f: impl FnMut() -> std::io::Result<String>) -> Result<std::io::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(e) => return Ok(e),
            Ok(answer) if Instant::now() > deadline => {
                bail!("a deleted mapping still forwards 10 s later: {answer}")
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// How a connection failed, in words.
fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        WouldBlock | TimedOut => "timed out".into(),
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

/// Removes what the demo made, in order: the service (so that it writes nothing more), the
/// load balancers of mappings it did not get to delete, the namespaces, the Neutron ports.
async fn clean_up(a: &ProjectA, env: &Arc<OvnEnv>, admin: &Neutron, made: Made) -> Result<()> {
    let Made {
        ports,
        vms,
        client,
        servers,
        running,
        mappings,
    } = made;
    if let Some(running) = running {
        running.stop().await;
    }
    let mut errors = Vec::new();
    if !mappings.is_empty() {
        let env = env.clone();
        let router_id = a.router_id.clone();
        let deleted = tokio::task::spawn_blocking(move || -> Result<()> {
            let ours = env.nbctl(&[
                "--bare",
                "--columns=_uuid",
                "find",
                "Load_Balancer",
                &format!("external_ids:\"praas:router_id\"=\"{router_id}\""),
            ])?;
            for lb in ours.split_whitespace() {
                env.nbctl(&["--if-exists", "lb-del", lb])?;
            }
            Ok(())
        })
        .await?;
        if let Err(e) = deleted {
            errors.push(format!("deleting the demo's load balancers: {e:#}"));
        }
    }
    tokio::task::spawn_blocking(move || {
        drop(servers);
        drop(vms);
        drop(client);
    })
    .await?;
    for port in ports {
        if let Err(e) = admin
            .call(Method::DELETE, &format!("ports/{port}"), None)
            .await
        {
            errors.push(format!("deleting port {port}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("cleaning up: {}", errors.join("; "));
    }
    Ok(())
}
