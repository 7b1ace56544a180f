//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::Arc;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use praas::agent::Agent;
use praas::api::{self, AppState};
use praas::config::{self, Allocation, AuthStrategy, Config};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::{Driver, Forward, Protocol, RuleSet};
use praas::openstack::NamespaceDirectory;
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

/// Runs the API and/or the agent until interrupted.
async fn serve(path: &Path, api_role: bool, agent_role: bool) -> Result<()> {
    let cfg = load(path)?;
    if api_role {
        match cfg.praas.auth_strategy {
            AuthStrategy::Keystone => bail!(
                "auth_strategy = keystone: Keystone token validation is not available in this build yet; \
                 set auth_strategy = noauth in [praas] for development"
            ),
            AuthStrategy::Noauth => tracing::warn!(
                "auth_strategy = noauth: requests are NOT authenticated; callers name their project and roles \
                 in X-Project-Id / X-Roles headers. Development only."
            ),
        }
    }
    let store = Arc::new(open_store(&cfg).await?);
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    if agent_role && cfg.dataplane.enabled {
        let backend = cfg
            .dataplane
            .driver
            .backend()
            .context("starting the dataplane")?;
        let sync = Arc::new(RouterSync::new(Arc::from(backend), Arc::new(Conntrack)));
        let agent = Agent::new(
            store.clone(),
            sync,
            changed.clone(),
            cfg.dataplane.resync_period(),
        );
        tracing::info!(driver = ?cfg.dataplane.driver, "agent started");
        tasks.spawn(async move {
            agent.run().await;
            Ok(())
        });
    }
    if api_role {
        let state = Arc::new(AppState {
            store: store.clone(),
            directory: Arc::new(NamespaceDirectory),
            policy: Policy {
                range: cfg.praas.router_port_range,
                strategy: match cfg.praas.port_allocation {
                    Allocation::Random => Strategy::Random,
                    Allocation::Sequential => Strategy::Sequential,
                },
            },
            changed,
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

fn demo(driver: Driver) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and needs root");
    }
    println!("Building a simulated network node (router namespace with Neutron's gateway rules, client, 2 VMs)...");
    let node =
        SimNode::new(SimNodeOptions::default()).context("building the simulated network node")?;
    println!(
        "  router namespace {} (gateway {GATEWAY_IP} on {})",
        node.router_ns, node.gateway_device
    );
    for vm in &node.vms {
        println!("  VM {} in namespace {}", vm.ip, vm.namespace);
    }
    let _ssh = node.serve_tcp(0, 22)?;
    let _dns = node.serve_udp(1, 53)?;
    println!(
        "  echo servers: {}:22/tcp and {}:53/udp",
        node.vms[0].ip, node.vms[1].ip
    );

    let sync = RouterSync::new(Arc::from(driver.backend()?), Arc::new(Conntrack));
    let forward = |id: &str, protocol, ext: &str, vm: usize, int: &str| -> Result<Forward> {
        Ok(Forward {
            id: id.into(),
            protocol,
            external_ip: GATEWAY_IP,
            external_ports: ext.parse().map_err(anyhow::Error::msg)?,
            internal_ip: node.vms[vm].ip,
            internal_ports: int.parse().map_err(anyhow::Error::msg)?,
            allowed_cidrs: vec![],
            masquerade: false,
        })
    };
    let desired = RuleSet::from_forwards(&[
        forward("ssh-vm0", Protocol::Tcp, "4000", 0, "22")?,
        forward("dns-vm1", Protocol::Udp, "4001", 1, "53")?,
    ])?;
    let outcome = sync.sync(&node.router_ns, &desired)?;
    println!(
        "\nProgrammed with {}: {GATEWAY_IP}:4000/tcp -> {}:22, {GATEWAY_IP}:4001/udp -> {}:53 ({:?} sync, verified)",
        sync.backend().name(),
        node.vms[0].ip,
        node.vms[1].ip,
        outcome.mode
    );

    let gw = |port| SocketAddrV4::new(GATEWAY_IP, port);
    println!("\nFrom the client namespace ({UPSTREAM_IP}):");
    let answer = SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "hello over tcp")?;
    println!("  tcp {GATEWAY_IP}:4000 -> VM answered: {answer}");
    let answer = SimNode::udp_exchange(&node.client_ns, None, gw(4001), "hello over udp")?;
    println!("  udp {GATEWAY_IP}:4001 -> VM answered: {answer}");

    let mut open = SimNode::connect(&node.client_ns, None, gw(4000))?;
    open.exchange("keep me open")?;
    let outcome = sync.sync(&node.router_ns, &RuleSet::default())?;
    println!(
        "\nRemoved both forwards ({:?} update, {} conntrack flows deleted)",
        outcome.mode, outcome.flows_deleted
    );
    match open.exchange("still there?") {
        Ok(answer) => bail!("an established connection outlived its forward: {answer}"),
        Err(e) => println!("  the established connection is cut: {e}"),
    }
    match SimNode::tcp_exchange(&node.client_ns, None, gw(4000), "again") {
        Ok(answer) => bail!("the removed forward still answers: {answer}"),
        Err(e) => println!("  a new connection to {GATEWAY_IP}:4000 fails: {e}"),
    }
    println!("\nDone; the namespaces are removed.");
    Ok(())
}
