//! `praas`: one binary, a subcommand per role.

use std::io::IsTerminal;
use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{Context, Result};

mod demo;
use clap::{CommandFactory, Parser, Subcommand};
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
    /// The Proxy CLI: your project's port forwardings (PAT) through its routers' gateways.
    Pat(praas::client::cli::Pat),
    /// Your project's routers: gateway addresses, port ranges, ports used and free.
    Router(praas::client::cli::Router),
    /// Prints a shell completion script: `source <(praas completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff), generated from the same definitions as --help.
    #[command(hide = true)]
    Man,
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
        /// Run on the one-chassis OVN of `scripts/ovn` under the dev cloud's OVN Neutron
        /// (`PRAAS_CLOUD_OVN=1 scripts/dev-cloud up`; needs --cloud-dir): VMs bound to project
        /// A's Neutron ports, the OVN driver programming its router.
        #[arg(long, conflicts_with = "driver", requires = "cloud_dir")]
        ovn: bool,
    },
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
        Command::Demo {
            driver,
            cloud_dir,
            ovn,
        } => demo::run(driver, cloud_dir.as_deref(), ovn),
        Command::AllInOne { config_file } => serve(config_file, Role::AllInOne),
        Command::Server { config_file } => serve(config_file, Role::Server),
        Command::Agent { config_file } => serve(config_file, Role::Agent),
        Command::Monitor { config_file } => serve(config_file, Role::Monitor),
        Command::Pat(pat) => {
            return client(|| praas::client::commands::pat(pat));
        }
        Command::Router(router) => {
            return client(|| praas::client::commands::router(router));
        }
        Command::Completion { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "praas", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
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

/// Runs a client command; its error decides the exit code (1 refused, 2 usage, 3
/// unreachable or unavailable).
fn client<F, Fut>(run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), praas::client::ClientError>>,
{
    let rt = match async_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("praas: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("praas: {}", praas::util::Chain(&e));
            ExitCode::from(e.exit_kind().code())
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
