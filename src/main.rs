//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::{Context, Result};

mod demo;
use clap::{Parser, Subcommand};
use praas::config::{self, Config};
use praas::dataplane::Driver;
use praas::runtime::{self, Role};

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
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
    },
    /// The REST API alone (the agents program the namespaces).
    Server {
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
    },
    /// The agent alone: programs this node's router namespaces from the shared store.
    Agent {
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
    },
    /// The monitor alone: keeps mappings true to Neutron (one acts when several run).
    Monitor {
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
    },
    /// The Proxy CLI: manage your project's port forwardings (PAT) through PRaaS, as the user
    /// of a clouds.yaml cloud.
    Pat {
        #[command(flatten)]
        connection: PatConnection,
        #[command(subcommand)]
        command: PatCommand,
    },
    /// For operators: the agents with their heartbeats and last sync, the monitor's lease
    /// holder, mappings by status and the mappings that are not working, read from the
    /// database of the configuration.
    Status {
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Creates or upgrades the database schema.
    DbSync {
        /// The configuration [default: /etc/praas/praas.conf, else the original's
        /// /usr/local/etc/praas/praas.conf]
        #[arg(long)]
        config_file: Option<PathBuf>,
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

/// Sends the log to standard error, or to `[praas] log_file` in `[praas] log_format` for the
/// roles; the level comes from `PRAAS_LOG` (default `praas=info`).
fn init_logging(cfg: Option<&Config>) -> Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRAAS_LOG")
        .unwrap_or_else(|_| "praas=info".into());
    let (file, format) = match cfg {
        Some(c) => (c.praas.log_file.as_deref(), c.praas.log_format),
        None => (None, config::LogFormat::Text),
    };
    let (writer, ansi) = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(f)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.with_ansi(ansi).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::AllInOne { .. }
            | Command::Server { .. }
            | Command::Agent { .. }
            | Command::Monitor { .. }
    );
    if !serving {
        // The roles start theirs once their configuration is read.
        let _ = init_logging(None);
    }
    let result = match cli.command {
        Command::Demo { driver, cloud_dir } => demo::run(driver, cloud_dir.as_deref()),
        Command::AllInOne { config_file } => serve(config_file, Role::AllInOne),
        Command::Server { config_file } => serve(config_file, Role::Server),
        Command::Agent { config_file } => serve(config_file, Role::Agent),
        Command::Monitor { config_file } => serve(config_file, Role::Monitor),
        Command::Pat {
            connection,
            command,
        } => async_runtime().and_then(|rt| rt.block_on(pat(connection, command))),
        Command::Status { config_file, json } => {
            async_runtime().and_then(|rt| rt.block_on(status(config_file, json)))
        }
        Command::DbSync { config_file } => {
            async_runtime().and_then(|rt| rt.block_on(db_sync(config_file)))
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

fn async_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The configuration at `given` (`--config-file`), else at the first default place.
fn load(given: Option<PathBuf>) -> Result<Config> {
    let path = config::locate(given.as_deref())?;
    config::load(&path).with_context(|| format!("loading {}", path.display()))
}

async fn status(given: Option<PathBuf>, json: bool) -> Result<()> {
    let cfg = load(given)?;
    // Read only: the schema is the roles' and db-sync's to change.
    let store = praas::store::Store::open(&cfg.database.connection).await?;
    let overview = praas::status::overview(
        &store,
        std::time::Duration::from_secs(cfg.praas.agent_down_time),
    )
    .await
    .context("reading the status from the database (run praas db-sync if it is new)")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&overview)?);
    } else {
        print!("{}", overview.render());
    }
    Ok(())
}

async fn db_sync(given: Option<PathBuf>) -> Result<()> {
    let cfg = load(given)?;
    let (_, migration) = runtime::db_sync(&cfg).await?;
    println!("{migration}");
    Ok(())
}

/// Runs `role` until SIGTERM or SIGINT.
fn serve(given: Option<PathBuf>, role: Role) -> Result<()> {
    praas::util::limit_malloc_arenas();
    let cfg = load(given)?;
    init_logging(Some(&cfg))?;
    async_runtime()?.block_on(async {
        let running = runtime::start(&cfg, role)
            .await
            .with_context(|| format!("starting praas {}", role.name()))?;
        running.run_until_signalled().await?;
        Ok(())
    })
}
