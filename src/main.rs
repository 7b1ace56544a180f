//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures_util::FutureExt;

mod demo;
use clap::{Parser, Subcommand};
use praas::agent::Agent;
use praas::api::{self, AppState, Authenticator, RoleNames};
use praas::config::{self, Allocation, AuthStrategy, Config};
use praas::dataplane::conntrack::Conntrack;
use praas::dataplane::sync::RouterSync;
use praas::dataplane::Driver;
use praas::monitor::notifications::Subscription;
use praas::monitor::Monitor;
use praas::openstack::tokens::KeystoneTokens;
use praas::openstack::{clouds, NamespaceDirectory, NeutronDirectory, RouterDirectory, Session};
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

// Parsed once at start-up: the size of the `pat` variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// The monitor alone: keeps mappings true to Neutron (one acts when several run).
    Monitor {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config_file: PathBuf,
    },
    /// The Proxy CLI: manage your project's port forwardings (PAT) through PRaaS, as the user
    /// of a clouds.yaml cloud.
    Pat {
        #[command(flatten)]
        connection: PatConnection,
        #[command(subcommand)]
        command: PatCommand,
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
        /// Run on the dev cloud of `scripts/dev-cloud` (its state directory): real Keystone
        /// authentication and Neutron checks, the node built from Neutron's allocation.
        #[arg(long)]
        cloud_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PatConnection {
    /// The cloud of clouds.yaml to log in as.
    #[arg(long, env = "OS_CLOUD", default_value = "openstack", global = true)]
    os_cloud: String,
    /// The clouds.yaml (else OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
    /// ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).
    #[arg(long, global = true)]
    clouds_file: Option<PathBuf>,
    /// PRaaS's URL (else the catalog's `port-forwarding` endpoint).
    #[arg(long, env = "PRAAS_URL", global = true)]
    url: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum PatCommand {
    /// Lists mappings (admins: every project's, unless --project).
    List {
        #[arg(long)]
        router: Option<String>,
        /// The VM's address.
        #[arg(long)]
        server_ip: Option<String>,
        /// The VM's Neutron port.
        #[arg(long)]
        port: Option<String>,
        #[arg(long)]
        project: Option<String>,
    },
    /// Shows one mapping.
    Show { id: String },
    /// Forwards a port of a router's gateway to a VM: give the VM's port or its address.
    Create {
        /// The VM's Neutron port.
        #[arg(long, required_unless_present = "server_ip")]
        port: Option<String>,
        /// The VM's address (one of its port's fixed IPs).
        #[arg(long)]
        server_ip: Option<String>,
        /// The port on the VM, or a range `N:M`.
        #[arg(long)]
        server_port: String,
        /// The router (needed when several serve the VM).
        #[arg(long)]
        router: Option<String>,
        /// The port on the gateway, or a range `N:M` (default: one from the router's range).
        #[arg(long)]
        router_port: Option<String>,
        /// tcp (default) or udp.
        #[arg(long)]
        protocol: Option<String>,
        /// Sources allowed to connect (repeat; default: everyone).
        #[arg(long = "allow")]
        allow: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// The VM sees the router's address instead of the client's.
        #[arg(long)]
        masquerade: bool,
    },
    /// Changes a mapping.
    Modify {
        id: String,
        #[arg(long)]
        server_port: Option<u16>,
        #[arg(long)]
        router_port: Option<u16>,
        #[arg(long)]
        description: Option<String>,
        /// Sources allowed to connect (repeat); `--allow-all` lets everyone in again.
        #[arg(long = "allow", conflicts_with = "allow_all")]
        allow: Vec<String>,
        #[arg(long)]
        allow_all: bool,
        #[arg(long, value_parser = clap::value_parser!(bool))]
        masquerade: Option<bool>,
    },
    /// Removes a mapping; its connections are cut.
    Remove { id: String },
}

/// `N` or `N:M`: (the single port, the range).
fn port_or_range(value: &str) -> Result<(Option<u16>, Option<String>)> {
    if value.contains(':') {
        return Ok((None, Some(value.to_string())));
    }
    let port = value
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("{value:?} is not a port (1-65535) or a range N:M"))?;
    Ok((Some(port), None))
}

async fn pat(connection: PatConnection, command: PatCommand) -> Result<()> {
    use praas::client::{self, Client, Create, Filters, Modify};
    let file = client::clouds_file(connection.clouds_file.as_deref())?;
    let client = Client::connect(
        &file,
        &connection.os_cloud,
        connection.url.as_deref(),
        Duration::from_secs(30),
    )
    .await?;
    let mappings = match command {
        PatCommand::List {
            router,
            server_ip,
            port,
            project,
        } => {
            client
                .list(&Filters {
                    router_id: router,
                    internal_ip_address: server_ip,
                    internal_port_id: port,
                    project_id: project,
                })
                .await?
        }
        PatCommand::Show { id } => vec![client.show(&id).await?],
        PatCommand::Create {
            port,
            server_ip,
            server_port,
            router,
            router_port,
            protocol,
            allow,
            description,
            masquerade,
        } => {
            let (internal_port, internal_port_range) = port_or_range(&server_port)?;
            let (external_port, external_port_range) = match router_port.as_deref() {
                Some(v) => port_or_range(v)?,
                None => (None, None),
            };
            vec![
                client
                    .create(&Create {
                        router_id: router,
                        internal_port_id: port,
                        internal_ip_address: server_ip,
                        internal_port,
                        internal_port_range,
                        external_port,
                        external_port_range,
                        protocol,
                        description,
                        allowed_cidrs: allow,
                        masquerade,
                    })
                    .await?,
            ]
        }
        PatCommand::Modify {
            id,
            server_port,
            router_port,
            description,
            allow,
            allow_all,
            masquerade,
        } => {
            let allowed_cidrs = match (allow_all, allow.is_empty()) {
                (true, _) => Some(vec![]),
                (false, false) => Some(allow),
                (false, true) => None,
            };
            vec![
                client
                    .modify(
                        &id,
                        &Modify {
                            internal_port: server_port,
                            external_port: router_port,
                            description,
                            allowed_cidrs,
                            masquerade,
                        },
                    )
                    .await?,
            ]
        }
        PatCommand::Remove { id } => {
            client.remove(&id).await?;
            if connection.json {
                println!("{}", serde_json::json!({"removed": id}));
            } else {
                println!("removed {id}");
            }
            return Ok(());
        }
    };
    if connection.json {
        println!("{}", serde_json::to_string_pretty(&mappings)?);
    } else {
        print!("{}", client::table::render(&mappings));
    }
    Ok(())
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
        Command::Demo { driver, cloud_dir } => demo::run(driver, cloud_dir.as_deref()),
        Command::AllInOne { config_file } => runtime().and_then(|rt| {
            rt.block_on(serve(
                &config_file,
                Roles {
                    api: true,
                    agent: true,
                    monitor: Some(false),
                },
            ))
        }),
        Command::Server { config_file } => runtime().and_then(|rt| {
            rt.block_on(serve(
                &config_file,
                Roles {
                    api: true,
                    agent: false,
                    monitor: None,
                },
            ))
        }),
        Command::Agent { config_file } => runtime().and_then(|rt| {
            rt.block_on(serve(
                &config_file,
                Roles {
                    api: false,
                    agent: true,
                    monitor: None,
                },
            ))
        }),
        Command::Monitor { config_file } => runtime().and_then(|rt| {
            rt.block_on(serve(
                &config_file,
                Roles {
                    api: false,
                    agent: false,
                    monitor: Some(true),
                },
            ))
        }),
        Command::Pat {
            connection,
            command,
        } => runtime().and_then(|rt| rt.block_on(pat(connection, command))),
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
/// The service's Keystone session, when a `clouds.yaml` is configured.
fn openstack_session(cfg: &Config) -> Result<Option<Arc<Session>>> {
    let Some(path) = clouds::clouds_file(cfg.openstack.clouds_file.as_deref()) else {
        return Ok(None);
    };
    let cloud = clouds::load(&path, &cfg.openstack.cloud)?;
    tracing::info!(file = %path.display(), cloud = %cfg.openstack.cloud, auth_url = %cloud.auth_url,
        "OpenStack credentials loaded");
    Ok(Some(Arc::new(Session::new(
        cloud,
        Duration::from_secs(cfg.openstack.request_timeout),
    )?)))
}

fn openstack_parts(
    cfg: &Config,
    session: Option<Arc<Session>>,
) -> Result<(Authenticator, Option<Arc<dyn RouterDirectory>>)> {
    let roles = RoleNames {
        admin: cfg.praas.admin_role.clone(),
        member: cfg.praas.member_role.clone(),
        reader: cfg.praas.reader_role.clone(),
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

/// Which roles a process runs.
struct Roles {
    api: bool,
    agent: bool,
    /// `Some(true)`: required; `Some(false)`: when OpenStack credentials are configured.
    monitor: Option<bool>,
}

/// Runs the API, the agent and/or the monitor until interrupted.
async fn serve(path: &Path, roles: Roles) -> Result<()> {
    let cfg = load(path)?;
    let session = if roles.api || roles.monitor.is_some() {
        openstack_session(&cfg)?
    } else {
        None
    };
    let (auth, directory) = if roles.api {
        openstack_parts(&cfg, session.clone())?
    } else {
        (Authenticator::noauth(), None)
    };
    let (api_role, agent_role) = (roles.api, roles.agent);
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
    // Set at shutdown: the monitor then gives its lease up.
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut monitor_task = None;
    match (roles.monitor, &session) {
        (Some(_), Some(session)) => {
            let monitor = Monitor::new(
                store.clone(),
                Arc::new(NeutronDirectory::new(session.clone())),
                cfg.praas.on_port_deleted,
            );
            let interval = cfg.praas.monitoring_interval();
            let wake = Arc::new(tokio::sync::Notify::new());
            match &cfg.notifications.transport_url {
                Some(url) => {
                    tasks.spawn(praas::monitor::notifications::listen(
                        Subscription::new(url.clone(), cfg.notifications.exchange.clone()),
                        wake.clone(),
                        Arc::default(),
                    )
                    .map(Ok));
                }
                None => tracing::info!("no [notifications] transport_url: the monitor polls only"),
            }
            tracing::info!(?interval, "monitor started");
            let mut stopping = stopping.subscribe();
            monitor_task = Some(tokio::spawn(monitor.run_until(interval, wake, async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })));
        }
        (Some(true), None) => bail!(
            "the monitor reads Neutron: set [openstack] clouds_file (or OS_CLIENT_CONFIG_FILE) to a clouds.yaml \
             with cloud {:?}",
            cfg.openstack.cloud
        ),
        (Some(false), None) => tracing::warn!(
            "no clouds.yaml: the monitor does not run, so mappings of deleted or changed VMs are not updated"
        ),
        (None, _) => {}
    }
    if tasks.is_empty() && monitor_task.is_none() {
        bail!("nothing to run: the agent needs [dataplane] enabled = true");
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    let monitor_done = async {
        match monitor_task.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; stopping");
            Ok(())
        }
        Some(done) = tasks.join_next() => done.context("a task panicked")?,
        done = monitor_done => done.context("the monitor panicked").map(drop),
    };
    if let Some(task) = monitor_task.filter(|t| !t.is_finished()) {
        stopping.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("the monitor did not stop within 5 s; its lease runs out by itself");
        }
    }
    outcome
}
