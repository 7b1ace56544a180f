//! What each `praas pat` command does: resolve the names it was given, call PRaaS, print.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::cli::{CreateArgs, ListArgs, Pat, PatCommand, Router, RouterCommand, SetArgs};
use super::interactive::{self, Dialog};
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

/// The ports of `server` a mapping could reach: those on `network` when given.
async fn server_ports(
    client: &Client,
    server: &str,
    network: Option<&str>,
) -> Result<(super::cloud::Server, Vec<super::cloud::Port>), ClientError> {
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
    if ports.is_empty() {
        return Err(ClientError::Usage {
            message: match network {
                Some(n) => format!("server {} has no port on network {n}", server.name),
                None => format!("server {} has no port", server.name),
            },
        });
    }
    Ok((server, ports))
}

/// A server's NICs, listed by network for an error saying to choose one.
async fn several_nics(
    client: &Client,
    server: &super::cloud::Server,
    ports: &[super::cloud::Port],
) -> ClientError {
    let networks = match client.cloud() {
        Some(cloud) => cloud.network_names().await.unwrap_or_default(),
        None => HashMap::new(),
    };
    ClientError::Usage {
        message: format!(
            "server {} has {} NICs that routers with a gateway serve: give --network or --port ({})",
            server.name,
            ports.len(),
            ports
                .iter()
                .map(|p| format!(
                    "{}: {}",
                    networks.get(&p.network_id).unwrap_or(&p.network_id),
                    p.ipv4()
                        .iter()
                        .map(|ip| ip.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// Those of `ports` on a subnet that a router of the project with a gateway (`router`, when
/// given) has an interface on: the NICs a mapping can reach.
async fn routed(
    client: &Client,
    ports: Vec<super::cloud::Port>,
    router: Option<&str>,
) -> Result<Vec<super::cloud::Port>, ClientError> {
    let cloud = cloud_for(client, "--server")?;
    let routers: Vec<_> = match router {
        Some(r) => vec![client.router_named(r).await?],
        None => client.routers(None).await?,
    };
    let mut subnets = std::collections::HashSet::new();
    for r in routers.iter().filter(|r| r.external_gateway_ip.is_some()) {
        subnets.extend(cloud.router_subnets(&r.id).await?);
    }
    Ok(ports
        .into_iter()
        .filter(|p| p.fixed_ips.iter().any(|f| subnets.contains(&f.subnet_id)))
        .collect())
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
    if asks(&args) {
        return match Dialog::terminal() {
            Some(mut d) => create_interactive(client, args, &mut d).await,
            None => Err(missing_for_create(client, &args).await),
        };
    }
    let router = match &args.router {
        Some(r) => Some(router_id(client, r).await?),
        None => None,
    };
    let port = match (&args.server, &args.port) {
        (Some(s), _) => {
            let (server, mut ports) = server_ports(client, s, args.network.as_deref()).await?;
            if ports.len() > 1 {
                // Only the NICs a router with a gateway serves can be mapped.
                let mut reachable = routed(client, ports.clone(), args.router.as_deref()).await?;
                match reachable.len() {
                    1 => ports = vec![reachable.remove(0)],
                    // Several: chosen on a terminal, named in the error without one.
                    n => {
                        let listed = if n == 0 { &ports } else { &reachable };
                        return match Dialog::terminal() {
                            Some(mut d) => create_interactive(client, args, &mut d).await,
                            None => Err(several_nics(client, &server, listed).await),
                        };
                    }
                }
            }
            Some(ports.remove(0).id)
        }
        (None, Some(p)) => Some(port_id(client, p).await?),
        (None, None) => None,
    };
    if port.is_none() && args.internal_ip_address.is_none() {
        return Err(missing_for_create(client, &args).await);
    }
    let Some(internal) = args.internal_protocol_port.as_deref() else {
        return Err(missing_for_create(client, &args).await);
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
    print_result(client, created, args.wait, out).await
}

/// Picks one of the project's mappings from a menu.
async fn pick_mapping(
    client: &Client,
    d: &mut Dialog<'_>,
    what: &str,
) -> Result<MappingView, ClientError> {
    let mut mappings = client.list(&Filters::default()).await?;
    if mappings.is_empty() {
        return Err(ClientError::Usage {
            message: "your project has no mapping".into(),
        });
    }
    let servers = server_names(client).await;
    let listing = views::listing(&mappings, &servers, false);
    let rows: Vec<Vec<String>> = listing
        .rows
        .iter()
        .map(|r| r.iter().skip(1).cloned().map(interactive::cell).collect())
        .collect();
    let headers: Vec<&str> = listing.columns.iter().skip(1).map(String::as_str).collect();
    d.say("Your mappings:\n")?;
    let i = d.choose(what, &headers, &rows)?;
    Ok(mappings.swap_remove(i))
}

/// The mapping a command acts on: the one given, else one picked on a terminal.
async fn given_or_picked(
    client: &Client,
    given: Option<String>,
    what: &str,
) -> Result<(MappingView, Option<Dialog<'static>>), ClientError> {
    if let Some(id) = given {
        return Ok((client.show(&id).await?, Dialog::terminal()));
    }
    let Some(mut d) = Dialog::terminal() else {
        return Err(ClientError::Usage {
            message: "give the mapping's id (praas pat list shows them)".into(),
        });
    };
    let m = pick_mapping(client, &mut d, what).await?;
    Ok((m, Some(d)))
}

async fn set(client: &Client, mut args: SetArgs, out: &OutputOptions) -> Result<(), ClientError> {
    let nothing_given = args.internal_protocol_port.is_none()
        && args.external_protocol_port.is_none()
        && args.description.is_none()
        && args.allow.is_empty()
        && !args.allow_all
        && !args.masquerade
        && !args.no_masquerade;
    if args.interactive || args.mapping.is_none() {
        let (current, dialog) = given_or_picked(client, args.mapping.take(), "Mapping").await?;
        let Some(mut d) = dialog else {
            return Err(ClientError::Usage {
                message: "-i needs a terminal".into(),
            });
        };
        let port = |single: Option<u16>, range: &str| match single {
            Some(p) => p.to_string(),
            None => range.to_string(),
        };
        if nothing_given {
            let keep = |answer: String, now: &str| (answer != now).then_some(answer);
            let now_int = port(current.internal_port, &current.internal_port_range);
            let now_ext = port(current.external_port, &current.external_port_range);
            args.internal_protocol_port = keep(
                d.ask_required(&format!("Port on the server [{now_int}]: "), Some(&now_int))?,
                &now_int,
            );
            args.external_protocol_port = keep(
                d.ask_required(&format!("Port on the router [{now_ext}]: "), Some(&now_ext))?,
                &now_ext,
            );
            args.description = keep(
                d.ask_required(
                    &format!("Description [{}]: ", current.description),
                    Some(&current.description),
                )?,
                &current.description,
            );
        }
        if !d.confirm(&format!("Change mapping {}?", current.id))? {
            return Err(ClientError::Usage {
                message: "cancelled: nothing was changed".into(),
            });
        }
        args.mapping = Some(current.id);
    }
    let Some(mapping) = args.mapping.clone() else {
        return Err(ClientError::Usage {
            message: "give the mapping's id (praas pat list shows them)".into(),
        });
    };
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
            &mapping,
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
    print_result(client, changed, args.wait, out).await
}

/// Prints a created or changed mapping, every field, once it is ACTIVE when asked to wait.
async fn print_result(
    client: &Client,
    m: MappingView,
    wait_active: bool,
    out: &OutputOptions,
) -> Result<(), ClientError> {
    let shown = if wait_active {
        wait(client, &m.id).await?
    } else {
        m
    };
    let servers = server_names(client).await;
    print(&views::record(&shown, &servers).render(out)?)
}

async fn delete(client: &Client, ids: &[String]) -> Result<(), ClientError> {
    if ids.is_empty() {
        let (m, dialog) = given_or_picked(client, None, "Mapping to delete").await?;
        let mut d = dialog.expect("a picked mapping comes with its terminal");
        let servers = server_names(client).await;
        d.say(&interactive::result_table(&views::listing(
            std::slice::from_ref(&m),
            &servers,
            false,
        )))?;
        if !d.confirm(&format!(
            "Delete mapping {}? Its connections are cut.",
            m.id
        ))? {
            return Err(ClientError::Usage {
                message: "cancelled: nothing was deleted".into(),
            });
        }
        return client.remove(&m.id).await;
    }
    if let [one] = ids {
        // One id: its own error, with its exit code.
        return client.remove(one).await;
    }
    let mut failed = 0;
    for id in ids {
        if let Err(e) = client.remove(id).await {
            eprintln!("praas: {id}: {}", crate::util::Chain(&e));
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
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

/// Whether `create` should ask: `-i`, or a terminal and something to choose missing.
fn asks(args: &CreateArgs) -> bool {
    let missing =
        (args.server.is_none() && args.port.is_none() && args.internal_ip_address.is_none())
            || args.internal_protocol_port.is_none();
    args.interactive || (missing && std::io::stdin().is_terminal())
}

/// `create` from menus (see [`super::interactive`]).
async fn create_interactive(
    client: &Client,
    args: CreateArgs,
    d: &mut Dialog<'_>,
) -> Result<(), ClientError> {
    let cloud = cloud_for(client, "choosing a server")?;
    if !cloud.has_compute().await {
        return Err(ClientError::Usage {
            message: "this cloud's catalog has no compute service (Nova) to choose a server \
                      from: give --port or --internal-ip-address"
                .into(),
        });
    }
    // The server.
    let server = match &args.server {
        Some(s) => cloud.server(s).await?,
        None => {
            let mut servers = cloud.servers().await?;
            if servers.is_empty() {
                return Err(ClientError::Usage {
                    message: "your project has no server".into(),
                });
            }
            servers.sort_by(|a, b| a.name.cmp(&b.name));
            d.say("Your servers:\n")?;
            let i = d.choose(
                "Server",
                &["Name", "Status", "Addresses"],
                &interactive::server_rows(&servers),
            )?;
            servers.swap_remove(i)
        }
    };
    // Its NIC.
    let mut ports = match &args.port {
        Some(p) => vec![cloud.port(p).await?],
        None => cloud.ports_of(&server.id).await?,
    };
    let networks = cloud.network_names().await?;
    if let Some(n) = &args.network {
        let network = cloud.network(n).await?;
        ports.retain(|p| p.network_id == network.id);
    }
    if ports.len() > 1 {
        // The one NIC a router with a gateway serves needs no question.
        let reachable = routed(client, ports.clone(), args.router.as_deref()).await?;
        if reachable.len() == 1 {
            ports = reachable;
        }
    }
    let port = match ports.len() {
        0 => {
            return Err(ClientError::Usage {
                message: format!("server {} has no port to forward to", server.name),
            })
        }
        1 => ports.remove(0),
        _ => {
            d.say(&format!("{} has {} NICs:\n", server.name, ports.len()))?;
            let i = d.choose(
                "NIC",
                &["Port", "Network", "Addresses"],
                &interactive::port_rows(&ports, &networks),
            )?;
            ports.swap_remove(i)
        }
    };
    let subnets: Vec<String> = port.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
    // The router: the one with a gateway on the NIC's subnet, else a choice.
    let router = match &args.router {
        Some(r) => client.router_named(r).await?,
        None => {
            let mut serving = vec![];
            for r in client.routers(None).await? {
                if r.external_gateway_ip.is_none() {
                    continue;
                }
                let on = cloud.router_subnets(&r.id).await?;
                if on.iter().any(|s| subnets.contains(s)) {
                    serving.push(r);
                }
            }
            match serving.len() {
                0 => {
                    return Err(ClientError::Usage {
                        message: format!(
                            "no router of yours with an external gateway has an interface on the \
                             network of {} ({})",
                            server.name,
                            networks.get(&port.network_id).unwrap_or(&port.network_id)
                        ),
                    })
                }
                1 => {
                    let r = serving.remove(0);
                    d.say(&format!(
                        "Router: {} (gateway {})\n",
                        router_label(&r),
                        r.external_gateway_ip
                            .map(|ip| ip.to_string())
                            .unwrap_or_default()
                    ))?;
                    r
                }
                _ => {
                    let rows: Vec<Vec<String>> = serving
                        .iter()
                        .map(|r| {
                            vec![
                                router_label(r),
                                r.external_gateway_ip
                                    .map(|ip| ip.to_string())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect();
                    d.say("Several routers serve that network:\n")?;
                    let i = d.choose("Router", &["Router", "Gateway"], &rows)?;
                    serving.swap_remove(i)
                }
            }
        }
    };
    // What the server already has on that router.
    let existing = client
        .list(&Filters {
            router_id: Some(router.id.clone()),
            internal_port_id: Some(port.id.clone()),
            ..Default::default()
        })
        .await?;
    let names = HashMap::from([(port.id.clone(), server.name.clone())]);
    if existing.is_empty() {
        d.say(&format!(
            "{} has no mapping on {} yet.\n",
            server.name,
            router_label(&router)
        ))?;
    } else {
        d.say(&format!(
            "Mappings of {} on {}:\n",
            server.name,
            router_label(&router)
        ))?;
        d.say(&interactive::result_table(&views::listing(
            &existing, &names, false,
        )))?;
    }
    // The ports.
    let internal = match &args.internal_protocol_port {
        Some(p) => p.clone(),
        None => d.ask_required("Port on the server (N, or a range N:M): ", None)?,
    };
    let (internal_port, internal_port_range) =
        port_or_range("--internal-protocol-port", &internal)?;
    let protocol = match &args.protocol {
        Some(p) => p.to_ascii_lowercase(),
        None => d
            .ask_required("Protocol (tcp or udp) [tcp]: ", Some("tcp"))?
            .to_ascii_lowercase(),
    };
    let external = match &args.external_protocol_port {
        Some(p) => Some(p.clone()),
        None => {
            let shown = client.router(&router.id).await?;
            let free = match protocol.as_str() {
                "udp" => &shown.udp.free_ports,
                _ => &shown.tcp.free_ports,
            };
            d.say(&format!(
                "Free ports on {}: {}\n",
                router_label(&router),
                interactive::ranges_text(free)
            ))?;
            let answer = d.ask_required(
                "Port on the router (N, N:M, or empty for any free one) [any]: ",
                Some(""),
            )?;
            (!answer.is_empty() && answer != "any").then_some(answer)
        }
    };
    let (external_port, external_port_range) = match external.as_deref() {
        Some(v) => port_or_range("--external-protocol-port", v)?,
        None => (None, None),
    };
    let ip = port
        .ipv4()
        .first()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let question = format!(
        "Forward {}:{} ({protocol}) to {} {ip}:{internal}?",
        router
            .external_gateway_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        external.as_deref().unwrap_or("<any free port>"),
        server.name,
    );
    if !d.confirm(&question)? {
        return Err(ClientError::Usage {
            message: "cancelled: nothing was created".into(),
        });
    }
    let created = client
        .create(&Create {
            router_id: Some(router.id.clone()),
            internal_port_id: Some(port.id.clone()),
            internal_ip_address: args.internal_ip_address.clone(),
            internal_port,
            internal_port_range,
            external_port,
            external_port_range,
            protocol: Some(protocol),
            description: args.description.clone(),
            allowed_cidrs: args.allow.clone(),
            masquerade: args.masquerade,
        })
        .await?;
    let shown = if args.wait {
        wait(client, &created.id).await?
    } else {
        created
    };
    print(&interactive::result_table(&views::listing(
        std::slice::from_ref(&shown),
        &names,
        false,
    )))
}

/// What `create` without a terminal says is missing, with the candidates.
async fn missing_for_create(client: &Client, args: &CreateArgs) -> ClientError {
    if args.server.is_none() && args.port.is_none() && args.internal_ip_address.is_none() {
        let servers = match client.cloud() {
            Some(cloud) if cloud.has_compute().await => cloud
                .servers()
                .await
                .map(|s| s.into_iter().map(|s| s.name).collect::<Vec<_>>().join(", "))
                .ok(),
            _ => None,
        };
        return ClientError::Usage {
            message: match servers {
                Some(s) if !s.is_empty() => format!(
                    "give the server to reach: --server (your servers: {s}), --port or --internal-ip-address"
                ),
                _ => "give the server to reach: --server, --port or --internal-ip-address".into(),
            },
        };
    }
    ClientError::Usage {
        message: "give the port on the server: --internal-protocol-port".into(),
    }
}
