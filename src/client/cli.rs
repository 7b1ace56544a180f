//! The Proxy CLI's commands and options (`praas pat …`, `praas router …`), declared once:
//! the binary parses them, and its completions and man page are generated from them.
//!
//! Option names follow `openstack floating ip port forwarding` where the meaning is the same
//! (`--internal-ip-address`, `--internal-protocol-port`, `--external-protocol-port`,
//! `--protocol`, `--description`, `--port`); the original Proxy CLI's words (`--server-ip`,
//! `--server-port`, `--router-port`) stay as aliases, and so do `modify` and `remove`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::OutputOptions;

/// How the CLI logs in and where it finds PRaaS: the `openstack` client's options and
/// variables. As with `openstack`, they come before the command (`praas pat --os-cloud a
/// list`), and are shown once, in `praas pat --help`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Authentication")]
pub struct Connection {
    /// The cloud of clouds.yaml to log in as.
    #[arg(long, env = "OS_CLOUD", value_name = "NAME")]
    pub os_cloud: Option<String>,
    /// The clouds.yaml (else OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
    /// ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).
    #[arg(long, value_name = "FILE")]
    pub clouds_file: Option<PathBuf>,
    /// Keystone's URL (openrc: OS_AUTH_URL).
    #[arg(long, env = "OS_AUTH_URL", value_name = "URL", hide_env_values = true)]
    pub os_auth_url: Option<String>,
    /// The user's name (OS_USERNAME).
    #[arg(long, env = "OS_USERNAME", value_name = "NAME")]
    pub os_username: Option<String>,
    /// The user's id (OS_USER_ID).
    #[arg(long, env = "OS_USER_ID", value_name = "ID")]
    pub os_user_id: Option<String>,
    /// The password (OS_PASSWORD); asked for on a terminal when missing.
    #[arg(
        long,
        env = "OS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub os_password: Option<String>,
    /// The project to work in, by name (OS_PROJECT_NAME).
    #[arg(long, env = "OS_PROJECT_NAME", value_name = "NAME")]
    pub os_project_name: Option<String>,
    /// The project to work in, by id (OS_PROJECT_ID).
    #[arg(long, env = "OS_PROJECT_ID", value_name = "ID")]
    pub os_project_id: Option<String>,
    /// The user's domain (OS_USER_DOMAIN_NAME; default Default).
    #[arg(long, env = "OS_USER_DOMAIN_NAME", value_name = "NAME")]
    pub os_user_domain_name: Option<String>,
    /// The project's domain (OS_PROJECT_DOMAIN_NAME; default Default).
    #[arg(long, env = "OS_PROJECT_DOMAIN_NAME", value_name = "NAME")]
    pub os_project_domain_name: Option<String>,
    /// An application credential's id (OS_APPLICATION_CREDENTIAL_ID).
    #[arg(long, env = "OS_APPLICATION_CREDENTIAL_ID", value_name = "ID")]
    pub os_application_credential_id: Option<String>,
    /// An application credential's secret (OS_APPLICATION_CREDENTIAL_SECRET).
    #[arg(
        long,
        env = "OS_APPLICATION_CREDENTIAL_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub os_application_credential_secret: Option<String>,
    /// The region (OS_REGION_NAME).
    #[arg(long, env = "OS_REGION_NAME", value_name = "NAME")]
    pub os_region_name: Option<String>,
    /// Which catalog endpoints to use: public, internal or admin (OS_INTERFACE).
    #[arg(long, env = "OS_INTERFACE", value_name = "INTERFACE")]
    pub os_interface: Option<String>,
    /// A CA bundle to trust (OS_CACERT).
    #[arg(long, env = "OS_CACERT", value_name = "FILE")]
    pub os_cacert: Option<PathBuf>,
    /// A token to use instead of logging in (OS_TOKEN); with --os-url, or with OS_AUTH_URL to
    /// find PRaaS in the catalog.
    #[arg(long, env = "OS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub os_token: Option<String>,
    /// PRaaS's URL (else the catalog's port-forwarding endpoint).
    #[arg(long, visible_alias = "url", env = "PRAAS_URL", value_name = "URL")]
    pub os_url: Option<String>,
}

/// `praas pat`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  praas pat list
  praas pat create --server web --internal-protocol-port 22
  praas pat create -i                      (pick the server, NIC and router from menus)
  praas pat show 2f0a3c1e-… -f yaml
  praas pat delete 2f0a3c1e-… 7b1d…

Logging in: OS_CLOUD (a cloud of clouds.yaml), an openrc's OS_* variables, or OS_TOKEN with
PRAAS_URL, as for the openstack client.

Exit codes: 0 done; 1 refused by PRaaS or the cloud (not found, forbidden, over quota, in use);
2 not given right (options, ambiguous names, a choice missing without a terminal);
3 PRaaS, Keystone, Neutron or Nova unreachable or unavailable.")]
pub struct Pat {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: OutputOptions,
    #[command(subcommand)]
    pub command: PatCommand,
}

#[derive(Debug, Subcommand)]
pub enum PatCommand {
    /// Lists your project's mappings (admins: every project's, unless --project).
    #[command(after_help = "Examples:
  praas pat list
  praas pat list --router router-a --long
  praas pat list -c ID -c \"Router Port\" -f value")]
    List(ListArgs),
    /// Shows one mapping, every field.
    #[command(after_help = "Examples:
  praas pat show 2f0a3c1e-5b7d-4c8e-9f10-1a2b3c4d5e6f
  praas pat show 2f0a3c1e-5b7d-4c8e-9f10-1a2b3c4d5e6f -f json")]
    Show {
        /// The mapping's id.
        mapping: String,
    },
    /// Forwards a port of a router's gateway address to a server.
    #[command(after_help = "Examples:
  praas pat create --server web --internal-protocol-port 22
  praas pat create --port web-port --internal-protocol-port 8000:8009 --external-protocol-port 4080:4089
  praas pat create --internal-ip-address 10.0.0.5 --internal-protocol-port 53 --protocol udp --router router-a
  praas pat create --server web --free-ports          (the router's free ports)
  praas pat create -i                                  (choose from menus, as the original did)")]
    Create(CreateArgs),
    /// Changes a mapping's ports, description, allowed sources or masquerading.
    #[command(
        visible_alias = "modify",
        after_help = "Examples:
  praas pat set 2f0a3c1e-… --external-protocol-port 4022
  praas pat set 2f0a3c1e-… --allow 198.51.100.0/24 --allow 192.0.2.7
  praas pat set 2f0a3c1e-… --allow-all
  praas pat set                            (on a terminal: pick it and answer the changes)"
    )]
    Set(SetArgs),
    /// Deletes mappings; their connections are cut.
    #[command(
        visible_alias = "remove",
        after_help = "Examples:
  praas pat delete 2f0a3c1e-5b7d-4c8e-9f10-1a2b3c4d5e6f
  praas pat delete 2f0a3c1e-… 7b1d9e20-…
  praas pat delete                         (on a terminal: pick it from a menu)"
    )]
    Delete {
        /// The mappings' ids (on a terminal, none: pick one from a menu).
        #[arg(value_name = "MAPPING")]
        mappings: Vec<String>,
    },
}

#[derive(Debug, Args, Default)]
pub struct ListArgs {
    /// Only the mappings of this router (name or id).
    #[arg(long)]
    pub router: Option<String>,
    /// Only the mappings of this server (name or id).
    #[arg(long)]
    pub server: Option<String>,
    /// Only the mappings of this Neutron port (name or id).
    #[arg(long)]
    pub port: Option<String>,
    /// Only the mappings to this address.
    #[arg(long, visible_alias = "server-ip", value_name = "IP")]
    pub internal_ip_address: Option<String>,
    /// Another project's mappings (admins).
    #[arg(long)]
    pub project: Option<String>,
    /// More columns: router, address, port, allowed sources, masquerading, traffic.
    #[arg(long)]
    pub long: bool,
}

#[derive(Debug, Args, Default)]
pub struct CreateArgs {
    /// The server to reach (name or id); its port on the router's network is used.
    #[arg(long)]
    pub server: Option<String>,
    /// The server's Neutron port (name or id).
    #[arg(long, visible_alias = "internal-port-id")]
    pub port: Option<String>,
    /// Which of the server's networks (name or id), when it has several NICs.
    #[arg(long)]
    pub network: Option<String>,
    /// The address to reach (one of the port's fixed IPs).
    #[arg(long, visible_alias = "server-ip", value_name = "IP")]
    pub internal_ip_address: Option<String>,
    /// The port on the server, or a range N:M.
    #[arg(long, visible_alias = "server-port", value_name = "PORT")]
    pub internal_protocol_port: Option<String>,
    /// The port on the router's gateway, or a range N:M (default: a free one of the router's
    /// range).
    #[arg(long, visible_alias = "router-port", value_name = "PORT")]
    pub external_protocol_port: Option<String>,
    /// The router (name or id; default: the one router with a gateway on the server's
    /// network).
    #[arg(long)]
    pub router: Option<String>,
    /// tcp (default) or udp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// A source allowed to connect (repeat; default: everyone).
    #[arg(long = "allow", visible_alias = "allowed-cidr", value_name = "CIDR")]
    pub allow: Vec<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// The server sees the router's address instead of the client's.
    #[arg(long)]
    pub masquerade: bool,
    /// Wait until the mapping is ACTIVE (or ERROR, with its reason).
    #[arg(long)]
    pub wait: bool,
    /// Choose the server, its NIC, the router and the ports from menus, as the original did
    /// (also when arguments are missing on a terminal).
    #[arg(short, long)]
    pub interactive: bool,
    /// Print the router's free external ports instead of creating.
    #[arg(long)]
    pub free_ports: bool,
}

#[derive(Debug, Args, Default)]
pub struct SetArgs {
    /// The mapping's id (on a terminal, none: pick it from a menu).
    pub mapping: Option<String>,
    /// The port on the server (a range N:M keeps its length).
    #[arg(long, visible_alias = "server-port", value_name = "PORT")]
    pub internal_protocol_port: Option<String>,
    /// The port on the router's gateway, or a range N:M.
    #[arg(long, visible_alias = "router-port", value_name = "PORT")]
    pub external_protocol_port: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// A source allowed to connect (repeat; replaces the list).
    #[arg(
        long = "allow",
        visible_alias = "allowed-cidr",
        value_name = "CIDR",
        conflicts_with = "allow_all"
    )]
    pub allow: Vec<String>,
    /// Let every source connect again.
    #[arg(long)]
    pub allow_all: bool,
    /// The server sees the router's address instead of the client's.
    #[arg(long, conflicts_with = "no_masquerade")]
    pub masquerade: bool,
    /// The server sees the client's address.
    #[arg(long)]
    pub no_masquerade: bool,
    /// Wait until the mapping is ACTIVE again (or ERROR, with its reason).
    #[arg(long)]
    pub wait: bool,
    /// Answer the changes to questions, as the original did (also when no mapping is given
    /// on a terminal).
    #[arg(short, long)]
    pub interactive: bool,
}

/// `praas router`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  praas router list
  praas router show router-a")]
pub struct Router {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub output: OutputOptions,
    #[command(subcommand)]
    pub command: RouterCommand,
}

#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// Your project's routers: gateway address, port range, ports used and free, mappings.
    #[command(after_help = "Examples:
  praas router list
  praas router list -c Name -c Gateway -c \"TCP Free\" -f value")]
    List {
        /// Another project's routers (admins).
        #[arg(long)]
        project: Option<String>,
    },
    /// One router, with its free ports.
    #[command(after_help = "Examples:
  praas router show router-a
  praas router show router-a -c tcp_free_ports -f value")]
    Show {
        /// The router (name or id).
        router: String,
    },
}
