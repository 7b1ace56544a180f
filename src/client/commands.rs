//! What each `praas pat` command does: resolve the names it was given, call PRaaS, print.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::cli::{CreateArgs, ListArgs, Pat, PatCommand, Router, RouterCommand, SetArgs};
use super::output::OutputOptions;
use super::{auth, views, Client, ClientError, Create, Filters, Modify};
use crate::api::v1::MappingView;

/// How long `--wait` waits for a mapping to leave `PENDING`.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Every request's time limit.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `N` or `N:M`: (the single port, the range).
pub fn port_or_range(
    option: &str,
    value: &str,
) -> Result<(Option<u16>, Option<String>), ClientError> {
    if value.contains(':') {
        return Ok((None, Some(value.to_string())));
    }
    let port = value
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ClientError::Usage {
            message: format!("{option} {value:?} is not a port (1-65535) or a range N:M"),
        })?;
    Ok((Some(port), None))
}

fn print(text: &str) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(ClientError::Terminal)
}

/// Runs `praas pat …`.
pub async fn pat(args: Pat) -> Result<(), ClientError> {
    let login = auth::login(&args.connection, &auth::Terminal)?;
    let client = Client::connect(login, args.connection.os_url.as_deref(), TIMEOUT).await?;
    let out = &args.output;
    match args.command {
        PatCommand::List(list) => self::list(&client, list, out).await,
        PatCommand::Show { mapping } => {
            let m = client.show(&mapping).await?;
            let servers = server_names(&client).await;
            print(&views::record(&m, &servers).render(out)?)
        }
        PatCommand::Create(create) => self::create(&client, create, out).await,
        PatCommand::Set(set) => self::set(&client, set, out).await,
        PatCommand::Delete { mappings } => delete(&client, &mappings).await,
    }
}

/// Port id → server name, for tables; empty (the addresses are shown) when Nova cannot be
/// read, with a line saying why.
async fn server_names(client: &Client) -> HashMap<String, String> {
    let Some(cloud) = client.cloud() else {
        return HashMap::new();
    };
    match cloud.server_names_by_port().await {
        Ok(names) => names,
        Err(e) => {
            eprintln!(
                "praas: servers are shown by address: {}",
                crate::util::Chain(&e)
            );
            HashMap::new()
        }
    }
}

/// The user's cloud, for a command that was given a name.
fn cloud_for<'a>(client: &'a Client, option: &str) -> Result<super::cloud::Cloud<'a>, ClientError> {
    client.cloud().ok_or_else(|| ClientError::Usage {
        message: format!(
            "{option} by name needs Keystone (OS_AUTH_URL or a cloud of clouds.yaml), not a token alone"
        ),
    })
}

/// The id of the project's router `name_or_id`, from PRaaS's own list of them.
async fn router_id(client: &Client, name_or_id: &str) -> Result<String, ClientError> {
    Ok(client.router_named(name_or_id).await?.id)
}

async fn port_id(client: &Client, name_or_id: &str) -> Result<String, ClientError> {
    if client.cloud().is_none() && uuid::Uuid::parse_str(name_or_id).is_ok() {
        return Ok(name_or_id.to_string());
    }
    Ok(cloud_for(client, "--port")?.port(name_or_id).await?.id)
}

async fn list(client: &Client, args: ListArgs, out: &OutputOptions) -> Result<(), ClientError> {
    let router_id = match &args.router {
        Some(r) => Some(router_id(client, r).await?),
        None => None,
    };
    let internal_port_id = match &args.port {
        Some(p) => Some(port_id(client, p).await?),
        None => None,
    };
    // A server's mappings are those of its ports.
    let server_ports = match &args.server {
        Some(s) => {
            let cloud = cloud_for(client, "--server")?;
            let server = cloud.server(s).await?;
            Some(
                cloud
                    .ports_of(&server.id)
                    .await?
                    .into_iter()
                    .map(|p| p.id)
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    let mut mappings = client
        .list(&Filters {
            router_id,
            internal_ip_address: args.internal_ip_address,
            internal_port_id,
            project_id: args.project,
        })
        .await?;
    if let Some(ports) = server_ports {
        mappings.retain(|m| {
            m.internal_port_id
                .as_ref()
                .is_some_and(|p| ports.contains(p))
        });
    }
    let servers = server_names(client).await;
    print(&views::listing(&mappings, &servers, args.long).render(out)?)
}

/// The port of `server` that a mapping should reach: the one on `network` when given, else
/// its only one.
async fn server_port(
    client: &Client,
    server: &str,
    network: Option<&str>,
) -> Result<String, ClientError> {
    let cloud = cloud_for(client, "--server")?;
    if !cloud.has_compute().await {
        return Err(ClientError::Usage {
            message: "this cloud's catalog has no compute service (Nova): give --port or \
                      --internal-ip-address instead of --server"
                .into(),
        });
    }
    let server = cloud.server(server).await?;
    let mut ports = cloud.ports_of(&server.id).await?;
    if let Some(network) = network {
        let network = cloud.network(network).await?;
        ports.retain(|p| p.network_id == network.id);
    }
    match ports.len() {
        1 => Ok(ports.remove(0).id),
        0 => Err(ClientError::Usage {
            message: match network {
                Some(n) => format!("server {} has no port on network {n}", server.name),
                None => format!("server {} has no port", server.name),
            },
        }),
        _ => Err(ClientError::Usage {
            message: format!(
                "server {} has {} NICs: give --network or --port ({})",
                server.name,
                ports.len(),
                ports
                    .iter()
                    .map(|p| format!(
                        "{}: {}",
                        if p.name.is_empty() { &p.id } else { &p.name },
                        p.ipv4()
                            .iter()
                            .map(|ip| ip.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
    }
}

/// The router a command acts on: the one given, else the project's only router with a
/// gateway.
async fn router_or_only(
    client: &Client,
    given: Option<&str>,
) -> Result<crate::api::routers::RouterView, ClientError> {
    if let Some(r) = given {
        return client.router_named(r).await;
    }
    let mut usable: Vec<_> = client
        .routers(None)
        .await?
        .into_iter()
        .filter(|r| r.external_gateway_ip.is_some())
        .collect();
    match usable.len() {
        1 => Ok(usable.remove(0)),
        0 => Err(ClientError::Usage {
            message: "your project has no router with an external gateway".into(),
        }),
        _ => Err(ClientError::Usage {
            message: format!(
                "give --router: your project has {} routers with a gateway ({})",
                usable.len(),
                usable
                    .iter()
                    .map(|r| if r.name.is_empty() {
                        r.id.clone()
                    } else {
                        r.name.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `praas pat create --free-ports`: the external ports the router has left.
async fn free_ports(
    client: &Client,
    args: &CreateArgs,
    out: &OutputOptions,
) -> Result<(), ClientError> {
    let router = router_or_only(client, args.router.as_deref()).await?;
    let router = client.router(&router.id).await?;
    let protocol = args
        .protocol
        .as_deref()
        .unwrap_or("tcp")
        .to_ascii_lowercase();
    let ports = match protocol.as_str() {
        "tcp" => &router.tcp,
        "udp" => &router.udp,
        other => {
            return Err(ClientError::Usage {
                message: format!("--protocol {other:?} is not tcp or udp"),
            })
        }
    };
    let record = super::output::Record::new()
        .field("router", router_label(&router))
        .field(
            "external_gateway_ip",
            serde_json::json!(router.external_gateway_ip),
        )
        .field("protocol", protocol.as_str())
        .field("port_range", router.port_range.as_str())
        .field("ports_free", ports.ports_free)
        .field("free_ports", serde_json::json!(ports.free_ports));
    print(&record.render(out)?)
}

fn router_label(r: &crate::api::routers::RouterView) -> String {
    if r.name.is_empty() {
        r.id.clone()
    } else {
        r.name.clone()
    }
}

/// Runs `praas router …`.
pub async fn router(args: Router) -> Result<(), ClientError> {
    let login = auth::login(&args.connection, &auth::Terminal)?;
    let client = Client::connect(login, args.connection.os_url.as_deref(), TIMEOUT).await?;
    let out = &args.output;
    match args.command {
        RouterCommand::List { project } => {
            let routers = client.routers(project.as_deref()).await?;
            let mut l = super::output::Listing::new(&[
                "ID",
                "Name",
                "Gateway",
                "Port Range",
                "TCP Used",
                "TCP Free",
                "UDP Used",
                "UDP Free",
                "Mappings",
            ]);
            for r in routers {
                l.rows.push(vec![
                    serde_json::json!(r.id),
                    serde_json::json!(r.name),
                    serde_json::json!(r.external_gateway_ip),
                    serde_json::json!(r.port_range),
                    serde_json::json!(r.tcp.ports_used),
                    serde_json::json!(r.tcp.ports_free),
                    serde_json::json!(r.udp.ports_used),
                    serde_json::json!(r.udp.ports_free),
                    serde_json::json!(r.mappings),
                ]);
            }
            print(&l.render(out)?)
        }
        RouterCommand::Show { router } => {
            let id = client.router_named(&router).await?.id;
            let r = client.router(&id).await?;
            let record = super::output::Record::new()
                .field("id", r.id.as_str())
                .field("name", r.name.as_str())
                .field("project_id", serde_json::json!(r.project_id))
                .field(
                    "external_gateway_ip",
                    serde_json::json!(r.external_gateway_ip),
                )
                .field("distributed", r.distributed)
                .field("port_range", r.port_range.as_str())
                .field("mappings", r.mappings)
                .field("tcp_ports_used", r.tcp.ports_used)
                .field("tcp_ports_free", r.tcp.ports_free)
                .field("tcp_free_ports", serde_json::json!(r.tcp.free_ports))
                .field("udp_ports_used", r.udp.ports_used)
                .field("udp_ports_free", r.udp.ports_free)
                .field("udp_free_ports", serde_json::json!(r.udp.free_ports));
            print(&record.render(out)?)
        }
    }
}

async fn create(client: &Client, args: CreateArgs, out: &OutputOptions) -> Result<(), ClientError> {
    if args.free_ports {
        return free_ports(client, &args, out).await;
    }
    if args.server.is_some() && args.port.is_some() {
        return Err(ClientError::Usage {
            message: "give --server or --port, not both".into(),
        });
    }
    let router = match &args.router {
        Some(r) => Some(router_id(client, r).await?),
        None => None,
    };
    let port = match (&args.server, &args.port) {
        (Some(s), _) => Some(server_port(client, s, args.network.as_deref()).await?),
        (None, Some(p)) => Some(port_id(client, p).await?),
        (None, None) => None,
    };
    if port.is_none() && args.internal_ip_address.is_none() {
        return Err(ClientError::Usage {
            message: "give the server to reach: --server, --port or --internal-ip-address \
                      (or -i to choose from menus)"
                .into(),
        });
    }
    let Some(internal) = args.internal_protocol_port.as_deref() else {
        return Err(ClientError::Usage {
            message: "give the port on the server: --internal-protocol-port".into(),
        });
    };
    let (internal_port, internal_port_range) = port_or_range("--internal-protocol-port", internal)?;
    let (external_port, external_port_range) = match args.external_protocol_port.as_deref() {
        Some(v) => port_or_range("--external-protocol-port", v)?,
        None => (None, None),
    };
    let created = client
        .create(&Create {
            router_id: router,
            internal_port_id: port,
            internal_ip_address: args.internal_ip_address,
            internal_port,
            internal_port_range,
            external_port,
            external_port_range,
            protocol: args.protocol,
            description: args.description,
            allowed_cidrs: args.allow,
            masquerade: args.masquerade,
        })
        .await?;
    let shown = if args.wait {
        wait(client, &created.id).await?
    } else {
        created
    };
    let servers = server_names(client).await;
    print(&views::record(&shown, &servers).render(out)?)
}

async fn set(client: &Client, args: SetArgs, out: &OutputOptions) -> Result<(), ClientError> {
    let (internal_port, internal_port_range) = match args.internal_protocol_port.as_deref() {
        Some(v) => port_or_range("--internal-protocol-port", v)?,
        None => (None, None),
    };
    let (external_port, external_port_range) = match args.external_protocol_port.as_deref() {
        Some(v) => port_or_range("--external-protocol-port", v)?,
        None => (None, None),
    };
    let allowed_cidrs = match (args.allow_all, args.allow.is_empty()) {
        (true, _) => Some(vec![]),
        (false, false) => Some(args.allow),
        (false, true) => None,
    };
    let masquerade = match (args.masquerade, args.no_masquerade) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let changed = client
        .modify(
            &args.mapping,
            &Modify {
                internal_port,
                internal_port_range,
                external_port,
                external_port_range,
                description: args.description,
                allowed_cidrs,
                masquerade,
            },
        )
        .await?;
    let shown = if args.wait {
        wait(client, &changed.id).await?
    } else {
        changed
    };
    let servers = server_names(client).await;
    print(&views::record(&shown, &servers).render(out)?)
}

async fn delete(client: &Client, ids: &[String]) -> Result<(), ClientError> {
    let mut failed = 0;
    for id in ids {
        if let Err(e) = client.remove(id).await {
            eprintln!("praas: {id}: {}", crate::util::Chain(&e));
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        // One id: its own error says it all, with its exit code.
        _ if ids.len() == 1 => {
            Err(client
                .remove(&ids[0])
                .await
                .err()
                .unwrap_or(ClientError::SomeFailed {
                    failed,
                    total: ids.len(),
                }))
        }
        _ => Err(ClientError::SomeFailed {
            failed,
            total: ids.len(),
        }),
    }
}

/// Waits until mapping `id` is `ACTIVE` (returned) or `ERROR` (refused with its reason),
/// saying on a terminal how long it has waited.
pub async fn wait(client: &Client, id: &str) -> Result<MappingView, ClientError> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    loop {
        let m = client.show(id).await?;
        match m.status.as_str() {
            "ACTIVE" => {
                if terminal {
                    eprintln!(
                        "\rmapping {id}: ACTIVE after {:.1} s      ",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(m);
            }
            "ERROR" | "DOWN" => {
                if terminal {
                    eprintln!();
                }
                return Err(ClientError::Refused {
                    status: 409,
                    code: format!("mapping_{}", m.status.as_str().to_lowercase()),
                    message: format!(
                        "mapping {id} is {}: {}",
                        m.status.as_str(),
                        m.status_reason.as_deref().unwrap_or("no reason given")
                    ),
                });
            }
            _ if started.elapsed() > WAIT_LIMIT => {
                return Err(ClientError::Refused {
                    status: 504,
                    code: "still_pending".into(),
                    message: format!(
                        "mapping {id} is still {} after {} s{}",
                        m.status.as_str(),
                        WAIT_LIMIT.as_secs(),
                        m.status_reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                });
            }
            status => {
                if terminal {
                    eprint!(
                        "\rmapping {id}: {status}, waiting {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
