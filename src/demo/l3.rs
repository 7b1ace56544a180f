//! The L3-agent demo: the all-in-one on a simulated network node, with real connections.
//!
//! With `--cloud-dir` (what `scripts/demo` passes after `scripts/dev-cloud up`) it runs on real
//! parts: the node is the one an L3 agent would build for project A's router as Neutron
//! allocated it, callers are authenticated by the real Keystone, and mappings are checked
//! against the real Neutron. Without it, router facts come from the namespace itself and the
//! API runs without authentication.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use praas::config::{AuthStrategy, Config};
use praas::dataplane::Driver;
use praas::runtime::{self, Role};
use praas::testbed::simnode::{SimLayout, SimNode, SimNodeOptions, UPSTREAM_IP};
use serde_json::json;

use super::{Client, Cloud};

/// The node an L3 agent would build for project A's router, as Neutron allocated it.
fn layout(cloud: &Cloud) -> Result<SimLayout> {
    let res = &cloud.resources;
    let external: ipnet::Ipv4Net = res["external_network"]["cidr"]
        .as_str()
        .context("no external cidr")?
        .parse()?;
    let tenant: ipnet::Ipv4Net = cloud.a("cidr")?.parse()?;
    let vms = res["projects"]["a"]["vms"].as_array().context("no VMs")?;
    Ok(SimLayout {
        router_id: cloud.a("router_id")?,
        gateway: ipnet::Ipv4Net::new(
            cloud.a("router_gateway_ip")?.parse()?,
            external.prefix_len(),
        )?,
        upstream: res["external_network"]["gateway_ip"]
            .as_str()
            .context("no external gateway")?
            .parse()?,
        internal: ipnet::Ipv4Net::new(
            cloud.a("router_interface_ip")?.parse()?,
            tenant.prefix_len(),
        )?,
        vm_ips: vms
            .iter()
            .map(|v| v["ip"].as_str().unwrap_or_default().parse())
            .collect::<Result<_, _>>()?,
    })
}

async fn exchange(client_ns: &str, dst: SocketAddrV4, msg: &'static str) -> Result<String> {
    let ns = client_ns.to_string();
    Ok(tokio::task::spawn_blocking(move || SimNode::tcp_exchange(&ns, None, dst, msg)).await??)
}

pub(super) async fn demo(driver: Driver, cloud: Option<Cloud>) -> Result<()> {
    let layout = cloud.as_ref().map(layout).transpose()?;
    match &layout {
        Some(l) => println!(
            "Building the network node an L3 agent would build for project A's router {} \
             (addresses as Neutron allocated them; Neutron's gateway rules; a client; 2 VMs)...",
            l.router_id
        ),
        None => println!("Building a simulated network node (router namespace with Neutron's gateway rules, client, 2 VMs)..."),
    }
    let node = tokio::task::spawn_blocking(move || {
        SimNode::new(SimNodeOptions {
            layout,
            ..Default::default()
        })
    })
    .await?
    .context("building the simulated network node")?;
    let gateway = node.gateway_ip;
    println!(
        "  router {} in namespace {} (gateway {gateway})",
        node.router_id, node.router_ns
    );
    for vm in &node.vms {
        println!("  VM {} in namespace {}", vm.ip, vm.namespace);
    }
    let _ssh = node.serve_tcp(0, 22)?;
    let _web = node.serve_tcp(1, 80)?;
    println!(
        "  echo servers on {}:22 and {}:80",
        node.vms[0].ip, node.vms[1].ip
    );

    // The all-in-one service as `praas all-in-one` runs it: SQLite, agent, API on loopback,
    // with the dev cloud's Keystone and Neutron when there is one.
    let dir = std::env::temp_dir().join(format!("praas-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cfg = Config::default();
    cfg.database.connection = format!("sqlite:///{}/praas.db", dir.display());
    cfg.praas.bind_address = Ipv4Addr::LOCALHOST.into();
    cfg.praas.port_app = 0;
    cfg.dataplane.driver = driver;
    let token = match &cloud {
        Some(c) => {
            cfg.openstack.clouds_file = Some(c.dir.join("clouds.yaml"));
            Some(
                c.session("a-member")?
                    .auth_token()
                    .await
                    .context("logging in as a-member")?,
            )
        }
        None => {
            cfg.praas.auth_strategy = AuthStrategy::Noauth;
            None
        }
    };
    let running = runtime::start(&cfg, Role::AllInOne)
        .await
        .context("starting praas all-in-one")?;
    let addr: SocketAddr = running.api_addr().context("the API listens")?;
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
        token,
    };
    let driver_name = match driver {
        Driver::Nftables => "nftables",
        Driver::Iptables => "iptables",
        Driver::Ovn => "ovn",
    };
    match &cloud {
        Some(c) => println!(
            "\nPRaaS all-in-one ({driver_name} dataplane) listening on http://{addr}, \
             authenticating with Keystone and checking with Neutron\n\
             TOKEN is project A's member's Keystone token (cloud a-member of {}/clouds.yaml)",
            c.dir.display()
        ),
        None => println!("\nPRaaS all-in-one ({driver_name} dataplane, no authentication) listening on http://{addr}"),
    }

    // A mapping by the VM's Neutron port (with a cloud) or by its address.
    let mapping = match &cloud {
        Some(c) => {
            let port = c.resources["projects"]["a"]["vms"][0]["port_id"]
                .as_str()
                .context("no VM port")?;
            json!({"mapping": {"internal_port_id": port, "internal_port": 22, "description": "ssh to vm0"}})
        }
        None => {
            json!({"mapping": {"router_id": node.router_id, "internal_ip_address": node.vms[0].ip.to_string(),
            "internal_port": 22, "description": "ssh to vm0"}})
        }
    };
    println!(
        "\n$ curl -X POST http://{addr}/v1/mappings -H 'Content-Type: application/json'{} -d '{mapping}'",
        client.curl_auth()
    );
    let (status, created) = client
        .call(reqwest::Method::POST, "/v1/mappings", Some(mapping))
        .await?;
    println!("HTTP {status} {created}");
    if status != 201 {
        bail!("the mapping was not created");
    }
    let id = created["mapping"]["id"]
        .as_str()
        .context("no mapping id")?
        .to_string();
    let port = created["mapping"]["external_port"]
        .as_u64()
        .context("no external port")? as u16;
    client.wait_active(&id).await?;
    println!(
        "  status ACTIVE: the rule is in {} and verified",
        node.router_ns
    );
    let upstream = cloud
        .as_ref()
        .and_then(|c| c.resources["external_network"]["gateway_ip"].as_str())
        .map(|s| s.parse::<Ipv4Addr>())
        .transpose()?
        .unwrap_or(UPSTREAM_IP);
    let gw = SocketAddrV4::new(gateway, port);
    let answer = exchange(&node.client_ns, gw, "hello").await?;
    println!("\nFrom the client namespace ({upstream}) to {gw}: the VM answered \"{answer}\"");

    if let Some(c) = &cloud {
        // What the checks refuse: no token, and another project's member on this router.
        // An empty X-Auth-Token is no token.
        let anonymous = Client {
            http: client.http.clone(),
            base: client.base.clone(),
            token: Some(String::new()),
        };
        let (status, body) = anonymous
            .call(reqwest::Method::GET, "/v1/mappings", None)
            .await?;
        println!("\nWithout a token: HTTP {status} {body}");
        let other = Client {
            http: client.http.clone(),
            base: client.base.clone(),
            token: Some(c.session("b-member")?.auth_token().await?),
        };
        // Its own VM, on project A's router: A's router does not exist for project B.
        let b_vm = c.resources["projects"]["b"]["vms"][0]["port_id"]
            .as_str()
            .context("no VM of project B")?;
        let attempt = json!({"mapping": {"router_id": c.a("router_id")?, "internal_port_id": b_vm,
            "internal_port": 80}});
        let (status, body) = other
            .call(reqwest::Method::POST, "/v1/mappings", Some(attempt))
            .await?;
        println!("Project B's member on project A's router: HTTP {status} {body}");
    }

    let legacy = format!(
        "/pat/create?server_ip={}&router_id=qrouter-{}&create_server_port=80&gateway={gateway}",
        node.vms[1].ip, node.router_id
    );
    println!(
        "\nThe original Proxy CLI protocol works too:\n$ curl -X POST{} 'http://{addr}{legacy}'",
        client.curl_auth()
    );
    let (status, answer) = client.call(reqwest::Method::POST, &legacy, None).await?;
    println!("HTTP {status} {answer}");
    let web_port: u16 = answer["create_router_port"]
        .as_str()
        .context("no router port")?
        .parse()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let web = SocketAddrV4::new(gateway, web_port);
    let answer = exchange(&node.client_ns, web, "hi").await?;
    println!("  {web} -> the VM answered \"{answer}\" (masqueraded, as the original did)");

    let ns = node.client_ns.clone();
    let mut open = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut c = SimNode::connect(&ns, None, gw)?;
        c.exchange("keep me open")?;
        Ok(c)
    })
    .await??;
    println!(
        "\n$ curl -X DELETE{} http://{addr}/v1/mappings/{id}",
        client.curl_auth()
    );
    let (status, _) = client
        .call(reqwest::Method::DELETE, &format!("/v1/mappings/{id}"), None)
        .await?;
    println!("HTTP {status}");
    let ns = node.client_ns.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while SimNode::tcp_exchange(&ns, None, gw, "again").is_ok() {
            if Instant::now() > deadline {
                bail!("the deleted mapping still forwards");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("  a new connection to {gw} fails");
        // The rule goes first, then the agent deletes the flows: the cut follows shortly.
        loop {
            match open.exchange("still there?") {
                Err(e) => {
                    println!("  the established connection is cut ({e})");
                    break;
                }
                Ok(answer) if Instant::now() > deadline => {
                    bail!("an established connection outlived its mapping: {answer}")
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Ok(())
    })
    .await??;

    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    praas::dataplane::netlink::sockets::forget(&node.router_ns);
    tokio::task::spawn_blocking(move || drop(node)).await?;
    println!("\nDone; the namespaces are removed.");
    Ok(())
}
