//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use praas::agent::Agent;
use praas::api::{self, AppState, Authenticator, RoleNames};
use praas::config::{self, Allocation, AuthStrategy, Config};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::Driver;
use praas::openstack::tokens::KeystoneTokens;
use praas::openstack::{clouds, NamespaceDirectory, NeutronDirectory, RouterDirectory, Session};
use praas::simnode::{SimNode, SimNodeOptions, GATEWAY_IP, UPSTREAM_IP};
use praas::store::{Policy, Store, Strategy};

#[derive(Parser)]
#[command(
    name = "praas",
    version,
    about = "Port Address Translation as a Service for OpenStack routers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The API, the agent and the store in one process: the embedded default for a single
    /// network node (SQLite unless `[database] connection` says otherwise).
    AllInOne {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config_file: PathBuf,
    },
    /// The REST API alone (the agents program the namespaces).
    Server {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config_file: PathBuf,
    },
    /// The agent alone: programs this node's router namespaces from the shared store.
    Agent {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config_file: PathBuf,
    },
    /// Creates or upgrades the database schema.
    DbSync {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config_file: PathBuf,
    },
    /// Build a simulated network node in throwaway namespaces, forward a port of the router's
    /// gateway to a VM and show connections going through it (needs root).
    Demo {
        /// Dataplane driver: nftables (default) or iptables.
        #[arg(long, default_value = "nftables")]
        driver: Driver,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRAAS_LOG")
                .unwrap_or_else(|_| "praas=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { driver } => demo(driver),
        Command::AllInOne { config_file } => {
            runtime().and_then(|rt| rt.block_on(serve(&config_file, true, true)))
        }
        Command::Server { config_file } => {
            runtime().and_then(|rt| rt.block_on(serve(&config_file, true, false)))
        }
        Command::Agent { config_file } => {
            runtime().and_then(|rt| rt.block_on(serve(&config_file, false, true)))
        }
        Command::DbSync { config_file } => {
            runtime().and_then(|rt| rt.block_on(db_sync(&config_file)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("praas: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(path: &Path) -> Result<Config> {
    config::load(path).with_context(|| format!("loading {}", path.display()))
}

async fn open_store(cfg: &Config) -> Result<Store> {
    let store = Store::open(&cfg.database.connection)
        .await
        .context("opening the database")?;
    store
        .migrate()
        .await
        .context("migrating the database schema")?;
    Ok(store)
}

async fn db_sync(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    open_store(&cfg).await?;
    println!("database schema is up to date");
    Ok(())
}

/// How callers are authenticated and where router facts come from, for the API role.
///
/// With `auth_strategy = keystone` the service's `clouds.yaml` is required: tokens are
/// validated with Keystone and routers and ports read from Neutron. With `noauth` Neutron is
/// still used when a `clouds.yaml` is configured; without one, router facts come from this
/// node's namespaces and ports are not checked.
fn openstack_parts(cfg: &Config) -> Result<(Authenticator, Option<Arc<dyn RouterDirectory>>)> {
    let roles = RoleNames {
        admin: cfg.praas.admin_role.clone(),
        member: cfg.praas.member_role.clone(),
        reader: cfg.praas.reader_role.clone(),
    };
    let file = clouds::clouds_file(cfg.openstack.clouds_file.as_deref());
    let session = match &file {
        Some(path) => {
            let cloud = clouds::load(path, &cfg.openstack.cloud)?;
            tracing::info!(file = %path.display(), cloud = %cfg.openstack.cloud, auth_url = %cloud.auth_url,
                "OpenStack credentials loaded");
            Some(Arc::new(Session::new(
                cloud,
                Duration::from_secs(cfg.openstack.request_timeout),
            )?))
        }
        None => None,
    };
    let directory: Arc<dyn RouterDirectory> = match &session {
        Some(s) => Arc::new(NeutronDirectory::new(s.clone())),
        None => {
            tracing::warn!(
                "no clouds.yaml ([openstack] clouds_file or OS_CLIENT_CONFIG_FILE): \
                router facts come from this node's namespaces and ports are not checked"
            );
            Arc::new(NamespaceDirectory)
        }
    };
    let auth = match cfg.praas.auth_strategy {
        AuthStrategy::Keystone => {
            let Some(session) = session else {
                bail!(
                    "auth_strategy = keystone needs the service's credentials: set [openstack] clouds_file \
                     (or OS_CLIENT_CONFIG_FILE) to a clouds.yaml with cloud {:?}",
                    cfg.openstack.cloud
                );
            };
            Authenticator::Keystone {
                auth_url: session.auth_url().to_string(),
                tokens: Arc::new(KeystoneTokens::new(
                    session,
                    Duration::from_secs(cfg.openstack.token_cache_seconds),
                    cfg.openstack.token_cache_size as usize,
                )),
                roles,
            }
        }
        AuthStrategy::Noauth => {
            tracing::warn!(
                "auth_strategy = noauth: requests are NOT authenticated; callers name their project and roles \
                 in X-Project-Id / X-Roles headers. Development only."
            );
            Authenticator::Noauth { roles }
        }
    };
    Ok((auth, Some(directory)))
}

/// Runs the API and/or the agent until interrupted.
async fn serve(path: &Path, api_role: bool, agent_role: bool) -> Result<()> {
    let cfg = load(path)?;
    let (auth, directory) = if api_role {
        openstack_parts(&cfg)?
    } else {
        (Authenticator::noauth(), None)
    };
    let store = Arc::new(open_store(&cfg).await?);
    let mut tasks = tokio::task::JoinSet::new();
    if agent_role && cfg.dataplane.enabled {
        let backend = cfg
            .dataplane
            .driver
            .backend()
            .context("starting the dataplane")?;
        let sync = Arc::new(RouterSync::new(Arc::from(backend), Arc::new(Conntrack)));
        let agent = Agent::new(store.clone(), sync, cfg.dataplane.resync_period());
        tracing::info!(driver = ?cfg.dataplane.driver, "agent started");
        tasks.spawn(async move {
            agent.run().await;
            Ok(())
        });
    }
    if api_role {
        let state = Arc::new(AppState {
            store: store.clone(),
            directory: directory.expect("set for the API role"),
            auth,
            policy: Policy {
                range: cfg.praas.router_port_range,
                strategy: match cfg.praas.port_allocation {
                    Allocation::Random => Strategy::Random,
                    Allocation::Sequential => Strategy::Sequential,
                },
            },
        });
        let addr = cfg.praas.listen_addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, "API listening");
        tasks.spawn(async move {
            axum::serve(listener, api::router(state))
                .await
                .context("serving the API")
        });
    }
    if tasks.is_empty() {
        bail!("nothing to run: the agent needs [dataplane] enabled = true");
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        Some(done) = tasks.join_next() => done.context("a task panicked")?,
    }
}

/// One HTTP/1.1 request to the demo's own API on loopback; returns (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nX-Project-Id: demo\r\nX-Roles: member,reader\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP answer")?;
    Ok((status, body.to_string()))
}

fn demo(driver: Driver) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    runtime()?.block_on(demo_async(driver))
}

async fn demo_async(driver: Driver) -> Result<()> {
    println!("Building a simulated network node (router namespace with Neutron's gateway rules, client, 2 VMs)...");
    let node = tokio::task::spawn_blocking(|| SimNode::new(SimNodeOptions::default()))
        .await?
        .context("building the simulated network node")?;
    println!(
        "  router {} in namespace {} (gateway {GATEWAY_IP})",
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

    // The all-in-one service: SQLite store, agent, API on loopback. Router facts are read from
    // the router namespace itself (no OpenStack in the demo).
    let dir = std::env::temp_dir().join(format!("praas-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(Store::open(&format!("sqlite:///{}/praas.db", dir.display())).await?);
    store.migrate().await?;
    let sync = Arc::new(RouterSync::new(
        Arc::from(driver.backend()?),
        Arc::new(Conntrack),
    ));
    let agent =
        tokio::spawn(Agent::new(store.clone(), sync, std::time::Duration::from_secs(300)).run());
    let state = Arc::new(AppState {
        store,
        directory: Arc::new(NamespaceDirectory),
        auth: Authenticator::noauth(),
        policy: Policy::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    println!(
        "\nPRaaS all-in-one ({} dataplane) listening on http://{addr}",
        driver_name(driver)
    );

    let body = format!(
        r#"{{"mapping": {{"router_id": "{}", "internal_ip_address": "{}", "internal_port": 22, "description": "ssh to vm0"}}}}"#,
        node.router_id, node.vms[0].ip
    );
    println!("\n$ curl -X POST http://{addr}/v1/mappings -H 'Content-Type: application/json' -d '{body}'");
    let (status, answer) = http(addr, "POST", "/v1/mappings", Some(&body)).await?;
    println!("HTTP {status} {answer}");
    let created: serde_json::Value = serde_json::from_str(&answer)?;
    let id = created["mapping"]["id"]
        .as_str()
        .context("no mapping id in the answer")?
        .to_string();
    let port = created["mapping"]["external_port"]
        .as_u64()
        .context("no external port")? as u16;
    wait_active(addr, &id).await?;
    println!(
        "  status ACTIVE: the rule is in {} and verified",
        node.router_ns
    );

    let client = node.client_ns.clone();
    let gw = SocketAddrV4::new(GATEWAY_IP, port);
    let answer =
        tokio::task::spawn_blocking(move || SimNode::tcp_exchange(&client, None, gw, "hello"))
            .await??;
    println!("\nFrom the client namespace ({UPSTREAM_IP}) to {gw}: the VM answered \"{answer}\"");

    let legacy = format!(
        "/pat/create?server_ip={}&router_id=qrouter-{}&create_server_port=80&gateway={GATEWAY_IP}",
        node.vms[1].ip, node.router_id
    );
    println!(
        "\nThe original Proxy CLI protocol works too:\n$ curl -X POST 'http://{addr}{legacy}'"
    );
    let (status, answer) = http(addr, "POST", &legacy, None).await?;
    println!("HTTP {status} {answer}");
    let legacy_answer: serde_json::Value = serde_json::from_str(&answer)?;
    let web_port: u16 = legacy_answer["create_router_port"]
        .as_str()
        .context("no router port")?
        .parse()?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let client = node.client_ns.clone();
    let web = SocketAddrV4::new(GATEWAY_IP, web_port);
    let answer =
        tokio::task::spawn_blocking(move || SimNode::tcp_exchange(&client, None, web, "hi"))
            .await??;
    println!("  {web} -> the VM answered \"{answer}\" (masqueraded, as the original did)");

    let client = node.client_ns.clone();
    let mut open = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut c = SimNode::connect(&client, None, gw)?;
        c.exchange("keep me open")?;
        Ok(c)
    })
    .await??;
    println!("\n$ curl -X DELETE http://{addr}/v1/mappings/{id}");
    let (status, _) = http(addr, "DELETE", &format!("/v1/mappings/{id}"), None).await?;
    println!("HTTP {status}");
    let client = node.client_ns.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while SimNode::tcp_exchange(&client, None, gw, "again").is_ok() {
            if std::time::Instant::now() > deadline {
                bail!("the deleted mapping still forwards");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!("  a new connection to {gw} fails");
        // The rule goes first, then the agent deletes the flows: the cut follows shortly.
        loop {
            match open.exchange("still there?") {
                Err(e) => {
                    println!("  the established connection is cut ({e})");
                    break;
                }
                Ok(answer) if std::time::Instant::now() > deadline => {
                    bail!("an established connection outlived its mapping: {answer}")
                }
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        Ok(())
    })
    .await??;

    agent.abort();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    tokio::task::spawn_blocking(move || drop(node)).await?;
    println!("\nDone; the namespaces are removed.");
    Ok(())
}

fn driver_name(driver: Driver) -> &'static str {
    match driver {
        Driver::Nftables => "nftables",
        Driver::Iptables => "iptables",
    }
}

async fn wait_active(addr: std::net::SocketAddr, id: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = http(addr, "GET", &format!("/v1/mappings/{id}"), None).await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        match v["mapping"]["status"].as_str() {
            Some("ACTIVE") => return Ok(()),
            Some("ERROR") => bail!("mapping failed: {}", v["mapping"]["status_reason"]),
            _ if std::time::Instant::now() > deadline => {
                bail!("mapping not active after 10 s: {body}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}
