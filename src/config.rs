//! The service's configuration file, `/etc/praas/praas.conf` by default.
//!
//! The format is the INI dialect of the original PRaaS (Python's `ConfigParser`) and of
//! OpenStack services (oslo.config):
//!
//! - `[section]` headers; `key = value` lines (`key: value` is accepted too, as `ConfigParser`
//!   did). Keys are case-insensitive, section names are not.
//! - Whole-line comments start with `#` or `;`. A `#` or `;` that starts a value or follows
//!   whitespace inside it starts an inline comment: the original's sample file was written as
//!   `port_app = 3000 #RESTful API default run on port 3000`. A value therefore cannot contain
//!   ` #` or ` ;`; `;` or `#` glued to other characters (as in a database password) is kept.
//! - No quoting, no escapes and no continuation lines: every value is one line of plain text.
//! - Keys before the first section header belong to `[praas]`, because the original's README
//!   shows its three keys without a header.
//!
//! Unknown sections, unknown keys and a key given twice are errors, so that a typo is reported
//! when the service starts instead of silently leaving a default in place. Every error names
//! the line, the section and the key, and says what was expected.
//!
//! Every key is optional. Each key is declared once, in the table `SECTIONS` below: its
//! section, name, default, documentation and parser. The table drives parsing, the defaults
//! (`Config::default()`), the lists of known keys and sections in error messages, and
//! [`sample`], the annotated file shipped as `etc/praas.conf` (a test keeps the two equal).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::dataplane::ovn::ApplyWait;
use crate::dataplane::Driver;
use crate::model::{Limit, ModelError, PortRange, MAX_QUOTA_LIMIT};
use crate::ovsdb::{Remote, TlsFiles};
use crate::util::{redacted, TransportUrlError};

/// Where the service looks for its configuration when no path is given.
pub const DEFAULT_PATH: &str = "/etc/praas/praas.conf";

/// Where the original PRaaS kept it (`praas-install`), looked at when [`DEFAULT_PATH`] does not
/// exist, so that a node installed by the original keeps working.
pub const ORIGINAL_PATH: &str = "/usr/local/etc/praas/praas.conf";

/// The configuration file to read: `given` (`--config-file`), else the first of
/// [`DEFAULT_PATH`] and [`ORIGINAL_PATH`] that exists.
pub fn locate(given: Option<&Path>) -> Result<PathBuf, ConfigError> {
    locate_in(given, &[DEFAULT_PATH, ORIGINAL_PATH])
}

fn locate_in(given: Option<&Path>, search: &[&str]) -> Result<PathBuf, ConfigError> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    search
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ConfigError::NotFound {
            searched: search.join(", "),
        })
}

/// Longest accepted period, for `second_monitoring` and `resync_interval`. A period of more
/// than a day is certainly a typo, and the bound keeps timer arithmetic far from overflow.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// The whole configuration. `Config::default()` is what an empty file gives: every key's
/// default from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub praas: PraasSection,
    pub database: DatabaseSection,
    pub dataplane: DataplaneSection,
    pub openstack: OpenStackSection,
    pub notifications: NotificationsSection,
    pub quota: QuotaSection,
    pub ovn: OvnSection,
}

impl Default for Config {
    /// Every key's default from the table, which is what an empty file gives.
    fn default() -> Self {
        let mut config = Config::unset();
        for section in SECTIONS {
            for key in section.keys {
                (key.set)(&mut config, key.default.text()).unwrap_or_else(|e| {
                    panic!(
                        "the default of {} in [{}] is refused: {e}",
                        key.name, section.name
                    )
                });
            }
        }
        config
    }
}

impl Config {
    /// Placeholders, each overwritten by the default of the key that sets the field: every
    /// field has a key in `SECTIONS`, so no value here is ever seen.
    fn unset() -> Config {
        Config {
            praas: PraasSection {
                port_app: 0,
                bind_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                router_port_range: PortRange::single(u16::MAX).expect("65535 is a port"),
                second_monitoring: 0,
                port_allocation: Allocation::default(),
                auth_strategy: AuthStrategy::default(),
                on_port_deleted: crate::model::PortGone::default(),
                admin_role: String::new(),
                member_role: String::new(),
                reader_role: String::new(),
                agent_status_port: 0,
                monitor_status_port: 0,
                host: None,
                report_interval: 0,
                agent_down_time: 0,
                log_file: None,
                log_format: LogFormat::default(),
            },
            database: DatabaseSection {
                connection: String::new(),
                max_pool_size: 0,
            },
            dataplane: DataplaneSection {
                driver: Driver::default(),
                resync_interval: 0,
                enabled: false,
                usage_interval: 0,
                usage_series_limit: 0,
            },
            openstack: OpenStackSection {
                clouds_file: None,
                cloud: String::new(),
                request_timeout: 0,
                token_cache_seconds: 0,
                token_cache_size: 0,
                router_cache_seconds: 0,
            },
            notifications: NotificationsSection {
                transport_url: None,
                exchange: String::new(),
            },
            quota: QuotaSection {
                mappings_per_project: Limit::Unlimited,
                external_ports_per_project: Limit::Unlimited,
            },
            ovn: OvnSection {
                ovn_nb_connection: Vec::new(),
                tls: TlsFiles::default(),
                ovsdb_timeout: 0,
                wait_for: ApplyWait::None,
                apply_timeout: 0,
            },
        }
    }
}

/// `[notifications]`: Neutron's notifications on RabbitMQ, for the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationsSection {
    /// oslo.messaging's `rabbit://user:pass@host:5672/vhost`; unset: polling only.
    pub transport_url: Option<String>,
    /// The exchange Neutron publishes on (its `control_exchange`, default `neutron`).
    pub exchange: String,
}

impl Default for NotificationsSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().notifications
    }
}

/// `[ovn]`: OVN's northbound database, for `[dataplane] driver = ovn` (ML2/OVN clouds). The
/// connection and TLS keys have the names and syntax of Neutron's `[ovn]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvnSection {
    /// `tcp:IP:PORT`, `ssl:IP:PORT` or `unix:PATH`; several, comma-separated, for a cluster.
    pub ovn_nb_connection: Vec<Remote>,
    /// `ovn_nb_private_key`, `ovn_nb_certificate`, `ovn_nb_ca_cert` (PEM) for `ssl:`.
    pub tls: TlsFiles,
    /// Seconds one request to the database may take (default 10).
    pub ovsdb_timeout: u64,
    /// What "applied" means before a mapping is ACTIVE: `hv` (every chassis), `sb`, `none`.
    pub wait_for: ApplyWait,
    /// Seconds to wait for OVN to report a change applied (default 30).
    pub apply_timeout: u64,
}

impl Default for OvnSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().ovn
    }
}

impl OvnSection {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.ovsdb_timeout)
    }

    pub fn apply_period(&self) -> Duration {
        Duration::from_secs(self.apply_timeout)
    }
}

/// `[quota]`: what each project may hold unless an admin set its own quota
/// (`PUT /v1/quotas/{project_id}`). `-1` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSection {
    /// Mappings per project (default 100).
    pub mappings_per_project: Limit,
    /// External ports per project: a mapping of a range of N ports holds N (default 1010: the
    /// whole default range, 101 ports, on each of Neutron's default 10 routers).
    pub external_ports_per_project: Limit,
}

impl Default for QuotaSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().quota
    }
}

/// `[praas]`: the API and the allocation of router ports. The first three keys are the
/// original's, with the original's meaning and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PraasSection {
    /// TCP port of the HTTP API (original key; default 3000).
    pub port_app: u16,
    /// Address the HTTP API listens on (default 0.0.0.0, all IPv4 addresses, as the original).
    pub bind_address: IpAddr,
    /// Router ports that are handed out for new mappings (original key; default 4000:4100).
    pub router_port_range: PortRange,
    /// Seconds between two rounds of the monitor, which removes the mappings of deleted VMs
    /// (original key; default 30).
    pub second_monitoring: u64,
    /// How a free router port is picked from `router_port_range`.
    pub port_allocation: Allocation,
    /// Who may call the API.
    pub auth_strategy: AuthStrategy,
    /// What the monitor does with the mappings of a deleted port: `delete` (default, as
    /// Neutron does with port forwardings) or `down` (keep them, held DOWN).
    pub on_port_deleted: crate::model::PortGone,
    /// Role names of the policy (defaults `admin`, `member`, `reader`).
    pub admin_role: String,
    pub member_role: String,
    pub reader_role: String,
    /// TCP port of the `/healthz` and `/readyz` listener of `praas agent` (default 3001), on
    /// `bind_address`. The API roles serve them on `port_app`.
    pub agent_status_port: u16,
    /// The same for `praas monitor` (default 3002).
    pub monitor_status_port: u16,
    /// The name this node's agent reports under; unset: the machine's host name (as Neutron's
    /// agents use `host`).
    pub host: Option<String>,
    /// Seconds between two heartbeats of an agent (default 10).
    pub report_interval: u64,
    /// Seconds without a heartbeat after which an agent counts as down, and a pending
    /// mapping of a router no live agent serves says so (default 30).
    pub agent_down_time: u64,
    /// Where the roles write their log; unset: standard error (the journal under systemd).
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
}

impl Default for PraasSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().praas
    }
}

impl PraasSection {
    /// The socket the HTTP API listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.port_app)
    }

    /// The period of the monitor.
    pub fn monitoring_interval(&self) -> Duration {
        Duration::from_secs(self.second_monitoring)
    }

    /// How often an agent reports.
    pub fn report_period(&self) -> Duration {
        Duration::from_secs(self.report_interval)
    }

    /// How long an agent may stay silent and still count as alive.
    pub fn agent_down_period(&self) -> Duration {
        Duration::from_secs(self.agent_down_time)
    }

    /// The name this node's agent reports under.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSection {
    /// Database URL in OpenStack's notation: `sqlite:////absolute/path.db` (four slashes for an
    /// absolute path) or `mysql://user:password@host/praas`.
    pub connection: String,
    /// Connections each process keeps to a MySQL/MariaDB server (oslo.db's name; default 10).
    pub max_pool_size: u32,
}

impl Default for DatabaseSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().database
    }
}

/// `[dataplane]`: how the rules are programmed into the router namespaces of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSection {
    /// `nftables` (default) or `iptables` (the original's chain layout).
    pub driver: Driver,
    /// Seconds between two full resyncs, which rewrite every namespace from the database and
    /// repair whatever was changed behind our back (default 300).
    pub resync_interval: u64,
    /// `false` runs the API without touching namespaces, on a node that hosts no routers.
    pub enabled: bool,
    /// Seconds between two readings of the kernel's per-mapping counters, added to the
    /// mappings' `packets`, `bytes` and `last_used` (default 30; 0: not read).
    pub usage_interval: u64,
    /// Per-mapping metric series are served while this node programs at most this many
    /// mappings (default 1000; 0: never); above it, only the node's totals.
    pub usage_series_limit: u64,
}

impl Default for DataplaneSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().dataplane
    }
}

impl DataplaneSection {
    /// The period of the full resync.
    pub fn resync_period(&self) -> Duration {
        Duration::from_secs(self.resync_interval)
    }

    /// The period of the usage readings; `None` when they are off.
    pub fn usage_period(&self) -> Option<Duration> {
        (self.usage_interval > 0).then(|| Duration::from_secs(self.usage_interval))
    }
}

/// `[openstack]`: how the service reaches Keystone, Neutron and Nova.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStackSection {
    /// The `clouds.yaml` file. Unset: the file named by `OS_CLIENT_CONFIG_FILE`, as the
    /// original found it.
    pub clouds_file: Option<PathBuf>,
    /// Name of the entry of `clouds.yaml` to use (default `openstack`, the original's name).
    pub cloud: String,
    /// Seconds any request to Keystone or Neutron may take (default 10).
    pub request_timeout: u64,
    /// Seconds a validated token is trusted without asking Keystone again (default 300): a
    /// revoked token is refused at most this long after its revocation.
    pub token_cache_seconds: u64,
    /// Tokens remembered at most (default 10000).
    pub token_cache_size: u64,
    /// Seconds a router's facts (gateway, subnets, owner) read from Neutron are reused by the
    /// API (default 10; 0 reads them for every request). Neutron's notifications, when
    /// configured, drop them at once.
    pub router_cache_seconds: u64,
}

impl Default for OpenStackSection {
    /// The table's defaults, as for [`Config::default`].
    fn default() -> Self {
        Config::default().openstack
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

impl FromStr for LogFormat {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ValueError::NotALogFormat),
        }
    }
}

/// How the router port of a new mapping is chosen from `router_port_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Allocation {
    /// A random free port, as the original did: ports are not guessable from the order in
    /// which mappings were created.
    #[default]
    Random,
    /// The lowest free port: predictable, easier to read in listings and firewall rules.
    Sequential,
}

impl Allocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Allocation::Random => "random",
            Allocation::Sequential => "sequential",
        }
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Allocation {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(Allocation::Random),
            "sequential" => Ok(Allocation::Sequential),
            _ => Err(ValueError::NotAnAllocation),
        }
    }
}

/// Who may call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthStrategy {
    /// Every request carries a Keystone token, and a project acts only on its own routers.
    /// The original had no authentication at all; this closes that hole by default.
    #[default]
    Keystone,
    /// No authentication: anyone who reaches the API acts as an administrator. Only for tests
    /// and for an API bound to a trusted address.
    Noauth,
}

impl AuthStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthStrategy::Keystone => "keystone",
            AuthStrategy::Noauth => "noauth",
        }
    }
}

impl fmt::Display for AuthStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthStrategy {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "keystone" => Ok(AuthStrategy::Keystone),
            "noauth" => Ok(AuthStrategy::Noauth),
            _ => Err(ValueError::NotAnAuthStrategy),
        }
    }
}

/// What is wrong with a configuration file. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no configuration file: none of {searched} exists (give --config-file)")]
    NotFound { searched: String },

    #[error("cannot read configuration file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },

    #[error("line {line}: invalid value {value:?} for {key} in [{section}]: {reason}")]
    Invalid {
        line: usize,
        section: &'static str,
        key: String,
        value: String,
        /// Part of the message rather than its `#[source]`, so that a report of the whole
        /// chain (`{:#}`) does not say it twice.
        reason: ValueError,
    },

    #[error("line {line}: unknown key {key:?} in [{section}] (known keys: {known})")]
    Unknown {
        line: usize,
        section: &'static str,
        key: String,
        known: String,
    },

    #[error("line {line}: unknown section [{section}] (known sections: {known})")]
    UnknownSection {
        line: usize,
        section: String,
        known: String,
    },

    #[error("line {line}: {key} is set a second time in [{section}] (first on line {first})")]
    Duplicate {
        line: usize,
        first: usize,
        section: &'static str,
        key: String,
    },
}

/// Why a value is refused. The message completes "invalid value ... for KEY in [SECTION]: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("port 0 cannot be listened on (expected 1-65535)")]
    PortZero,
    #[error("expected a port number (1-65535)")]
    NotAPort,
    #[error("expected an IPv4 or IPv6 address")]
    NotAnAddress,
    #[error("expected a port range such as 4000:4100")]
    NoPortRange,
    #[error(transparent)]
    PortRange(ModelError),
    #[error("expected a whole number of seconds")]
    NotSeconds,
    #[error("must be at least 1 second")]
    ZeroSeconds,
    #[error("must be at most {} seconds (one day)", MAX_INTERVAL_SECS)]
    TooManySeconds,
    #[error("expected true or false (also yes/no, on/off, 1/0)")]
    NotABool,
    #[error("expected random or sequential")]
    NotAnAllocation,
    #[error("expected text or json")]
    NotALogFormat,
    #[error("must be an absolute path")]
    NotAnAbsolutePath,
    #[error("expected keystone or noauth")]
    NotAnAuthStrategy,
    #[error("expected delete or down")]
    NotAPortGone,
    #[error("expected one role name")]
    NotARole,
    #[error("expected a number from 1 to 10000000")]
    NotACacheSize,
    #[error("expected a number from 0 to 1000000")]
    NotASeriesLimit,
    #[error("expected a number from 1 to 1000")]
    NotAPoolSize,
    #[error(
        "expected a database URL such as sqlite:////var/lib/praas/praas.db or \
         mysql://praas:password@controller/praas"
    )]
    NotADatabaseUrl,
    /// The dataplane's own message, which names the drivers.
    #[error("{0}")]
    Driver(String),
    #[error("expected an absolute path")]
    RelativePath,
    #[error("expected the name of a cloud of clouds.yaml")]
    NoCloud,
    #[error(transparent)]
    TransportUrl(TransportUrlError),
    #[error("expected an exchange name")]
    NoExchange,
    /// The OVSDB client's message, which says what is wrong with the remote.
    #[error("{0}")]
    OvsdbRemote(String),
    #[error("expected hv (every chassis), sb (the southbound database) or none")]
    NotAWait,
    #[error(
        "expected -1 (unlimited) or a whole number from 0 to {}",
        MAX_QUOTA_LIMIT
    )]
    NotALimit,
}

/// Reads and parses the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Parses the text of a configuration file. Keys that are absent keep their defaults.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut config = Config::default();
    // Keys before any header belong to [praas], the first section of the table (the
    // original's README shows no header).
    let mut section = &SECTIONS[0];
    // Line where each (section, key) was first set.
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();

    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some((name, after)) = rest.split_once(']') else {
                return Err(ConfigError::Syntax {
                    line,
                    reason: format!("section header {trimmed:?} lacks its closing `]`"),
                });
            };
            if !strip_inline_comment(after).trim().is_empty() {
                return Err(ConfigError::Syntax {
                    line,
                    reason: format!(
                        "unexpected text {:?} after the section header",
                        after.trim()
                    ),
                });
            }
            let name = name.trim();
            section = SECTIONS.iter().find(|s| s.name == name).ok_or_else(|| {
                ConfigError::UnknownSection {
                    line,
                    section: name.to_string(),
                    known: SECTIONS
                        .iter()
                        .map(|s| format!("[{}]", s.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            continue;
        }
        let Some(separator) = trimmed.find(['=', ':']) else {
            return Err(ConfigError::Syntax {
                line,
                reason: format!(
                    "expected `key = value`, `[section]` or a comment, found {trimmed:?}"
                ),
            });
        };
        let key = trimmed[..separator].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(ConfigError::Syntax {
                line,
                reason: format!("missing key before `{}`", &trimmed[separator..=separator]),
            });
        }
        let value = strip_inline_comment(&trimmed[separator + 1..]).trim();

        let Some(entry) = section.keys.iter().find(|k| k.name == key) else {
            return Err(ConfigError::Unknown {
                line,
                section: section.name,
                key,
                known: section
                    .keys
                    .iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if let Some(&first) = seen.get(&(section.name, entry.name)) {
            return Err(ConfigError::Duplicate {
                line,
                first,
                section: section.name,
                key,
            });
        }
        seen.insert((section.name, entry.name), line);
        (entry.set)(&mut config, value).map_err(|reason| ConfigError::Invalid {
            line,
            section: section.name,
            key,
            // URLs may carry passwords: messages never show them.
            value: if value.contains("://") {
                redacted(value)
            } else {
                value.to_string()
            },
            reason,
        })?;
    }
    Ok(config)
}

/// Cuts an inline comment off a value: a `#` or `;` at the start of the value or after
/// whitespace. A `#` or `;` glued to other text (a password, a URL fragment) is kept.
fn strip_inline_comment(value: &str) -> &str {
    let mut previous_is_space = true;
    for (i, c) in value.char_indices() {
        if (c == '#' || c == ';') && previous_is_space {
            return &value[..i];
        }
        previous_is_space = c.is_whitespace();
    }
    value
}

/// A section of the file: its `[name]` and its keys, in the order of the sample and of the
/// list of known keys in error messages.
struct Section {
    name: &'static str,
    keys: &'static [Key],
}

/// One key, declared once: everything the parser, the defaults, the error messages and the
/// sample know of it.
struct Key {
    name: &'static str,
    default: DefaultValue,
    /// The comment above the key in the sample, after the string's first line break and less
    /// the indentation its lines share. Empty: the key shares the comment of the key before it
    /// and follows it without a blank line.
    doc: &'static str,
    /// Parses a value (without its inline comment and surrounding spaces) and stores it.
    set: fn(&mut Config, &str) -> Result<(), ValueError>,
}

/// What an absent key is.
enum DefaultValue {
    /// The value the key has when the file does not set it, as the file would spell it.
    Is(&'static str),
    /// The key is unset, as if given the empty value. The sample shows `example` instead.
    Unset { example: &'static str },
}

use DefaultValue::{Is, Unset};

impl DefaultValue {
    /// The value applied for an absent key.
    fn text(&self) -> &'static str {
        match self {
            Is(value) => value,
            Unset { .. } => "",
        }
    }

    /// The value shown, commented out, in the sample.
    fn shown(&self) -> &'static str {
        match self {
            Is(value) => value,
            Unset { example } => example,
        }
    }
}

/// Every section and key of the file. Keys before the first header belong to the first
/// section, `[praas]`.
static SECTIONS: &[Section] = &[
    Section {
        name: "praas",
        keys: PRAAS,
    },
    Section {
        name: "database",
        keys: DATABASE,
    },
    Section {
        name: "dataplane",
        keys: DATAPLANE,
    },
    Section {
        name: "openstack",
        keys: OPENSTACK,
    },
    Section {
        name: "notifications",
        keys: NOTIFICATIONS,
    },
    Section {
        name: "quota",
        keys: QUOTA,
    },
    Section {
        name: "ovn",
        keys: OVN,
    },
];

static PRAAS: &[Key] = &[
    Key {
        name: "port_app",
        default: Is("3000"),
        doc: "
            TCP port of the HTTP API (the original's key and default).",
        set: |c, v| {
            c.praas.port_app = parse_port(v)?;
            Ok(())
        },
    },
    Key {
        name: "bind_address",
        default: Is("0.0.0.0"),
        doc: "
            Address the HTTP API listens on: an IPv4 or IPv6 address. 0.0.0.0 is every IPv4 address.",
        set: |c, v| {
            c.praas.bind_address = v.parse().map_err(|_| ValueError::NotAnAddress)?;
            Ok(())
        },
    },
    Key {
        name: "router_port_range",
        default: Is("4000:4100"),
        doc: "
            Router ports handed out for new mappings, `first:last` (inclusive) or one port. A mapping
            created with an explicit router port may use a port outside this range. (Original key.)",
        set: |c, v| {
            c.praas.router_port_range = parse_port_range(v)?;
            Ok(())
        },
    },
    Key {
        name: "second_monitoring",
        default: Is("30"),
        doc: "
            Seconds between two rounds of the monitor, which updates the mappings of VMs that were deleted
            or changed address, and of routers whose gateway changed. 1 to 86400. (Original key.)",
        set: |c, v| {
            c.praas.second_monitoring = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "port_allocation",
        default: Is("random"),
        doc: "
            How a free router port is chosen from router_port_range:
              random      a random free port, as the original did (ports are not guessable)
              sequential  the lowest free port (predictable, easier to read)",
        set: |c, v| {
            c.praas.port_allocation = v.parse()?;
            Ok(())
        },
    },
    Key {
        name: "auth_strategy",
        default: Is("keystone"),
        doc: "
            Who may call the API:
              keystone  every request carries a Keystone token (X-Auth-Token), validated with Keystone;
                        a project acts only on its own routers and ports. Needs [openstack] clouds_file.
              noauth    no authentication, for development: the caller names its project and roles in
                        the X-Project-Id and X-Roles headers (default: project \"default\", member)",
        set: |c, v| {
            c.praas.auth_strategy = v.parse()?;
            Ok(())
        },
    },
    Key {
        name: "on_port_deleted",
        default: Is("delete"),
        doc: "
            What the monitor does with the mappings of a VM port that was deleted (or unbound):
              delete  remove the mapping, its rules and its connections (as Neutron does)
              down    keep the mapping, held DOWN with the reason, for an operator to look at",
        set: |c, v| {
            c.praas.on_port_deleted = v
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| ValueError::NotAPortGone)?;
            Ok(())
        },
    },
    Key {
        name: "admin_role",
        default: Is("admin"),
        doc: "
            Role names of the policy: admin may do everything in every project, member may create,
            change and delete its project's mappings, reader may list and show them.",
        set: |c, v| {
            c.praas.admin_role = parse_role(v)?;
            Ok(())
        },
    },
    Key {
        name: "member_role",
        default: Is("member"),
        doc: "",
        set: |c, v| {
            c.praas.member_role = parse_role(v)?;
            Ok(())
        },
    },
    Key {
        name: "reader_role",
        default: Is("reader"),
        doc: "",
        set: |c, v| {
            c.praas.reader_role = parse_role(v)?;
            Ok(())
        },
    },
    Key {
        name: "agent_status_port",
        default: Is("3001"),
        doc: "
            TCP ports of the /healthz and /readyz listener of `praas agent` and of `praas monitor`, on
            bind_address (`praas server` and `praas all-in-one` answer them on port_app).",
        set: |c, v| {
            c.praas.agent_status_port = parse_port(v)?;
            Ok(())
        },
    },
    Key {
        name: "monitor_status_port",
        default: Is("3002"),
        doc: "",
        set: |c, v| {
            c.praas.monitor_status_port = parse_port(v)?;
            Ok(())
        },
    },
    Key {
        name: "host",
        default: Unset {
            example: "network-node-1",
        },
        doc: "
            The name this node's agent reports under in GET /v1/agents (unset: the machine's host
            name). Give each agent of a cloud its own.",
        set: |c, v| {
            c.praas.host = (!v.is_empty()).then(|| v.to_string());
            Ok(())
        },
    },
    Key {
        name: "report_interval",
        default: Is("10"),
        doc: "
            Seconds between two heartbeats of an agent: when it last reported, the routers whose
            namespaces it holds, its last successful sync and its last error.",
        set: |c, v| {
            c.praas.report_interval = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "agent_down_time",
        default: Is("30"),
        doc: "
            Seconds without a heartbeat after which an agent is shown as down, and a PENDING
            mapping whose router no live agent serves says so in its status_reason.",
        set: |c, v| {
            c.praas.agent_down_time = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "log_file",
        default: Unset {
            example: "/var/log/praas/praas.log",
        },
        doc: "
            A file the role appends its log to (absolute path; /etc/logrotate.d/praas rotates
            /var/log/praas/*.log). Unset: standard error, which systemd puts in the journal.",
        set: |c, v| {
            c.praas.log_file = match v {
                "" => None,
                path if path.starts_with('/') => Some(PathBuf::from(path)),
                _ => return Err(ValueError::NotAnAbsolutePath),
            };
            Ok(())
        },
    },
    Key {
        name: "log_format",
        default: Is("text"),
        doc: "
            How log lines are written: text (one line per event) or json (one JSON object per
            line, for log collectors). PRAAS_LOG sets the level (default praas=info).",
        set: |c, v| {
            c.praas.log_format = v.parse()?;
            Ok(())
        },
    },
];

static DATABASE: &[Key] = &[
    Key {
        name: "connection",
        default: Is("sqlite:////var/lib/praas/praas.db"),
        doc: "
            Where mappings are stored, as an OpenStack-style database URL:
              sqlite:////var/lib/praas/praas.db         (four slashes: an absolute path)
              mysql://praas:PASSWORD@controller/praas",
        set: |c, v| {
            c.database.connection = parse_database_url(v)?;
            Ok(())
        },
    },
    Key {
        name: "max_pool_size",
        default: Is("10"),
        doc: "
            Connections each process keeps open to a MySQL/MariaDB server (as oslo.db's option
            of the same name). A request waits up to 5 s for a free one, then answers 503.
            1 to 1000. (SQLite keeps its own small pool.)",
        set: |c, v| {
            c.database.max_pool_size = v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n) && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(ValueError::NotAPoolSize)?;
            Ok(())
        },
    },
];

static DATAPLANE: &[Key] = &[
    Key {
        name: "driver",
        default: Is("nftables"),
        doc: "
            How rules are programmed into the router namespaces of this node:
              nftables  our own table with one DNAT map per namespace (constant lookup time)
              iptables  the original's custom-PREROUTING / custom-POSTROUTING chains
              ovn       load balancers in OVN's northbound database, for ML2/OVN clouds (see [ovn]);
                        one agent anywhere serves every router, no agent on the network nodes",
        set: |c, v| {
            c.dataplane.driver = v.to_ascii_lowercase().parse().map_err(ValueError::Driver)?;
            Ok(())
        },
    },
    Key {
        name: "resync_interval",
        default: Is("300"),
        doc: "
            Seconds between two full resyncs, which rewrite every router namespace from the database
            and repair rules changed or flushed behind our back. 1 to 86400.",
        set: |c, v| {
            c.dataplane.resync_interval = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "enabled",
        default: Is("true"),
        doc: "
            false: run the API without touching any namespace, on a node that hosts no routers.
            (true/false, yes/no, on/off, 1/0)",
        set: |c, v| {
            c.dataplane.enabled = parse_bool(v)?;
            Ok(())
        },
    },
    Key {
        name: "usage_interval",
        default: Is("30"),
        doc: "
            Seconds between two readings of the kernel's per-mapping packet and byte counters
            (nftables driver), which the API shows as packets, bytes and last_used. 0: not read.
            Up to 86400.",
        set: |c, v| {
            c.dataplane.usage_interval = match v {
                "0" => 0,
                v => parse_seconds(v)?,
            };
            Ok(())
        },
    },
    Key {
        name: "usage_series_limit",
        default: Is("1000"),
        doc: "
            /metrics shows praas_mapping_packets_total and praas_mapping_bytes_total per mapping
            (labelled by mapping id) while this node programs at most this many mappings; above
            it only the node's totals, so that a large node does not flood Prometheus. 0: never.",
        set: |c, v| {
            c.dataplane.usage_series_limit = v
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= 1_000_000 && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(ValueError::NotASeriesLimit)?;
            Ok(())
        },
    },
];

static OPENSTACK: &[Key] = &[
    Key {
        name: "clouds_file",
        default: Unset {
            example: "/etc/praas/clouds.yaml",
        },
        doc: "
            The clouds.yaml file holding the service's credentials (absolute path). Unset: the file
            named by the OS_CLIENT_CONFIG_FILE environment variable, as the original found it.",
        set: |c, v| {
            c.openstack.clouds_file = parse_optional_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "cloud",
        default: Is("openstack"),
        doc: "
            Which cloud of clouds.yaml holds the service's credentials (the original's name). Password
            (username/password/project) and application credentials (auth_type v3applicationcredential,
            by id, or by name with the user) are supported; region_name and interface are honoured.
            The service user needs the `service` role (to validate callers' tokens) and read access to
            every project's routers and ports (the admin role in practice).",
        set: |c, v| {
            c.openstack.cloud = parse_name(v, ValueError::NoCloud)?;
            Ok(())
        },
    },
    Key {
        name: "request_timeout",
        default: Is("10"),
        doc: "
            Seconds any request to Keystone or Neutron may take. Reads are retried twice with backoff.",
        set: |c, v| {
            c.openstack.request_timeout = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "token_cache_seconds",
        default: Is("300"),
        doc: "
            Seconds a validated token is trusted without asking Keystone again (a revoked token is
            refused at most this long after its revocation), and how many tokens are remembered.",
        set: |c, v| {
            c.openstack.token_cache_seconds = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "token_cache_size",
        default: Is("10000"),
        doc: "",
        set: |c, v| {
            c.openstack.token_cache_size = v
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or(ValueError::NotACacheSize)?;
            Ok(())
        },
    },
    Key {
        name: "router_cache_seconds",
        default: Is("10"),
        doc: "
            Seconds the API reuses a router's facts read from Neutron (gateway, interface subnets,
            owner), so that a create costs one Neutron round trip for the port. 0 reads them for every
            request. Neutron's notifications ([notifications] transport_url) drop them at once; ports
            are always read fresh.",
        set: |c, v| {
            c.openstack.router_cache_seconds = match v {
                "0" => 0,
                _ => parse_seconds(v)?,
            };
            Ok(())
        },
    },
];

static NOTIFICATIONS: &[Key] = &[
    Key {
        name: "transport_url",
        default: Unset {
            example: "rabbit://praas:PASSWORD@controller:5672/",
        },
        doc: "
            Neutron's notifications on RabbitMQ (oslo.messaging's transport URL, as in neutron.conf), so
            that the monitor reacts to deleted ports and changed routers within moments (polling every
            second_monitoring seconds stays as the safety net) and the API drops the router facts it
            keeps. The same broker carries PRaaS's own announcements (exchange praas.changes): servers
            and the monitor announce their commits, and agents on other nodes program them at once
            instead of at their next look at the database (every 2 s). Unset: polling only.",
        set: |c, v| {
            c.notifications.transport_url = if v.is_empty() {
                None
            } else {
                crate::util::amqp_url(v).map_err(ValueError::TransportUrl)?;
                Some(v.to_string())
            };
            Ok(())
        },
    },
    Key {
        name: "exchange",
        default: Is("neutron"),
        doc: "
            The exchange Neutron publishes its notifications on (Neutron's control_exchange).",
        set: |c, v| {
            c.notifications.exchange = parse_name(v, ValueError::NoExchange)?;
            Ok(())
        },
    },
];

static QUOTA: &[Key] = &[
    Key {
        name: "mappings_per_project",
        default: Is("100"),
        doc: "
            How many mappings each project may have, and how many external ports (a mapping of a range
            of N ports holds N), unless an admin set the project's own quota (PUT /v1/quotas/PROJECT).
            -1 is unlimited, 0 allows none. A mapping counts against the quota of its router's project,
            whoever creates it. The default for ports is the whole default router_port_range (101
            ports) on each of Neutron's default 10 routers per project.",
        set: |c, v| {
            c.quota.mappings_per_project = parse_limit(v)?;
            Ok(())
        },
    },
    Key {
        name: "external_ports_per_project",
        default: Is("1010"),
        doc: "",
        set: |c, v| {
            c.quota.external_ports_per_project = parse_limit(v)?;
            Ok(())
        },
    },
];

static OVN: &[Key] = &[
    Key {
        name: "ovn_nb_connection",
        default: Is("tcp:127.0.0.1:6641"),
        doc: "
            OVN's northbound database, as in Neutron's ml2_conf.ini: tcp:IP:PORT, ssl:IP:PORT or
            unix:PATH; the members of a clustered database separated by commas. Read only with
            [dataplane] driver = ovn.",
        set: |c, v| {
            c.ovn.ovn_nb_connection = Remote::parse_list(v)
                .map_err(|e| ValueError::OvsdbRemote(e.to_string()))?;
            Ok(())
        },
    },
    Key {
        name: "ovn_nb_private_key",
        default: Unset {
            example: "/etc/praas/ovn/key.pem",
        },
        doc: "
            For an ssl: connection: this client's private key and certificate (both, or neither
            when the server does not ask for one), and the CA certificate that signed the
            server's (required). PEM files, as Neutron's options of the same names.",
        set: |c, v| {
            c.ovn.tls.private_key = parse_optional_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "ovn_nb_certificate",
        default: Unset {
            example: "/etc/praas/ovn/cert.pem",
        },
        doc: "",
        set: |c, v| {
            c.ovn.tls.certificate = parse_optional_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "ovn_nb_ca_cert",
        default: Unset {
            example: "/etc/praas/ovn/ca.pem",
        },
        doc: "",
        set: |c, v| {
            c.ovn.tls.ca_cert = parse_optional_path(v)?;
            Ok(())
        },
    },
    Key {
        name: "ovsdb_timeout",
        default: Is("10"),
        doc: "
            Seconds one request to the northbound database may take before the connection is
            given up and made again. 1 to 86400.",
        set: |c, v| {
            c.ovn.ovsdb_timeout = parse_seconds(v)?;
            Ok(())
        },
    },
    Key {
        name: "wait_for",
        default: Is("hv"),
        doc: "
            When a change counts as applied, so that its mappings become ACTIVE (as ovn-nbctl --wait):
              hv    every chassis has applied it (NB_Global.hv_cfg)
              sb    northd has written it to the southbound database (NB_Global.sb_cfg)
              none  committed in the northbound database",
        set: |c, v| {
            c.ovn.wait_for = v.parse().map_err(|_| ValueError::NotAWait)?;
            Ok(())
        },
    },
    Key {
        name: "apply_timeout",
        default: Is("30"),
        doc: "
            Seconds to wait for that; a change not applied by then leaves its mappings in ERROR,
            and is tried again. 1 to 86400.",
        set: |c, v| {
            c.ovn.apply_timeout = parse_seconds(v)?;
            Ok(())
        },
    },
];

/// The comment at the top of the sample, after its first line (which names [`DEFAULT_PATH`]),
/// written as the docs of the table are.
const SAMPLE_HEADER: &str = "

    Every key is optional. Each one is shown commented out with its default value, so this file
    as shipped configures nothing beyond the defaults. Uncomment a line to change it.

    Syntax: `key = value`; comments start with `#` or `;`, at the start of a line or after a
    space inside a value (`port_app = 3000  # the API`). Values are not quoted. Unknown sections,
    unknown keys and a key set twice are errors, so typos are reported at start-up.

    A file from the original PRaaS (port_app, router_port_range, second_monitoring, with or
    without a [praas] header) is read unchanged: keys before any header belong to [praas].";

/// The annotated sample configuration, shipped as `etc/praas.conf`: a header, then every
/// section with each key's documentation and, commented out, its default. It parses to
/// `Config::default()`.
pub fn sample() -> String {
    fn comment(out: &mut String, text: &str) {
        for line in doc_lines(text) {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "# PRaaS configuration: {DEFAULT_PATH}");
    comment(&mut out, SAMPLE_HEADER);
    for section in SECTIONS {
        let _ = writeln!(out, "\n[{}]", section.name);
        for (i, key) in section.keys.iter().enumerate() {
            if !key.doc.is_empty() {
                if i > 0 {
                    out.push('\n');
                }
                comment(&mut out, key.doc);
            }
            let _ = writeln!(out, "#{} = {}", key.name, key.default.shown());
        }
    }
    out
}

/// The lines of a doc string of the table: the text after its first line break, less the
/// indentation its non-empty lines share, without trailing spaces.
fn doc_lines(doc: &str) -> impl Iterator<Item = &str> {
    let body = doc.split_once('\n').map_or(doc, |(_, rest)| rest);
    let indent = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.lines()
        .map(move |l| l.get(indent..).unwrap_or_default().trim_end())
}

fn parse_port(value: &str) -> Result<u16, ValueError> {
    match value.parse::<u16>() {
        Ok(0) => Err(ValueError::PortZero),
        Ok(port) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(ValueError::NotAPort),
    }
}

fn parse_port_range(value: &str) -> Result<PortRange, ValueError> {
    if value.is_empty() {
        return Err(ValueError::NoPortRange);
    }
    value.parse::<PortRange>().map_err(ValueError::PortRange)
}

fn parse_seconds(value: &str) -> Result<u64, ValueError> {
    let seconds = value
        .parse::<u64>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(ValueError::NotSeconds)?;
    if seconds == 0 {
        return Err(ValueError::ZeroSeconds);
    }
    if seconds > MAX_INTERVAL_SECS {
        return Err(ValueError::TooManySeconds);
    }
    Ok(seconds)
}

fn parse_bool(value: &str) -> Result<bool, ValueError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(ValueError::NotABool),
    }
}

/// Checks the shape `scheme://rest`; the database layer decides which schemes it supports.
fn parse_database_url(value: &str) -> Result<String, ValueError> {
    let shape_ok = value.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !rest.is_empty()
    });
    if shape_ok {
        Ok(value.to_string())
    } else {
        Err(ValueError::NotADatabaseUrl)
    }
}

/// An empty value means "not set". A relative path would depend on the directory the service
/// was started from, so only absolute paths are accepted.
fn parse_optional_path(value: &str) -> Result<Option<PathBuf>, ValueError> {
    if value.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(Some(path))
    } else {
        Err(ValueError::RelativePath)
    }
}

/// One role name: not empty, without spaces or commas.
fn parse_role(value: &str) -> Result<String, ValueError> {
    let name = value.trim();
    if name.is_empty() || name.contains(',') || name.contains(char::is_whitespace) {
        return Err(ValueError::NotARole);
    }
    Ok(name.to_string())
}

/// A quota limit: `-1` (unlimited) or a whole number up to [`MAX_QUOTA_LIMIT`].
fn parse_limit(value: &str) -> Result<Limit, ValueError> {
    value.parse().map_err(|_| ValueError::NotALimit)
}

/// A name that must not be empty; `missing` says which.
fn parse_name(value: &str, missing: ValueError) -> Result<String, ValueError> {
    if value.is_empty() {
        Err(missing)
    } else {
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_key(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid value error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn passwords_in_urls_never_show_in_errors() {
        for text in [
            "[notifications]\ntransport_url = kafka://u:s3cret@h:9092/\n",
            "[database]\nconnection = 9db://praas:s3cret@db/praas\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(!e.contains("s3cret") && e.contains("***"), "{e}");
        }
    }

    #[test]
    fn defaults_are_the_originals_and_ours() {
        let c = Config::default();
        assert_eq!(c.praas.port_app, 3000);
        assert_eq!(c.praas.bind_address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.praas.router_port_range.to_string(), "4000:4100");
        assert_eq!(c.praas.second_monitoring, 30);
        assert_eq!(c.praas.port_allocation, Allocation::Random);
        assert_eq!(c.praas.auth_strategy, AuthStrategy::Keystone);
        assert_eq!(c.database.connection, "sqlite:////var/lib/praas/praas.db");
        assert_eq!(c.dataplane.driver, Driver::Nftables);
        assert_eq!(c.dataplane.resync_interval, 300);
        assert_eq!(c.database.max_pool_size, 10);
        assert!(c.dataplane.enabled);
        assert_eq!(c.openstack.clouds_file, None);
        assert_eq!(c.openstack.cloud, "openstack");
        assert_eq!(c.praas.on_port_deleted, crate::model::PortGone::Delete);
        assert_eq!(
            (
                c.praas.admin_role.as_str(),
                c.praas.member_role.as_str(),
                c.praas.reader_role.as_str()
            ),
            ("admin", "member", "reader")
        );
        assert_eq!(
            (c.praas.agent_status_port, c.praas.monitor_status_port),
            (3001, 3002)
        );
        assert_eq!(c.openstack.request_timeout, 10);
        assert_eq!(c.openstack.token_cache_seconds, 300);
        assert_eq!(c.openstack.token_cache_size, 10_000);
        assert_eq!(c.openstack.router_cache_seconds, 10);
        assert_eq!(c.notifications.transport_url, None);
        assert_eq!(c.notifications.exchange, "neutron");
        assert_eq!(c.quota.mappings_per_project, Limit::AtMost(100));
        assert_eq!(c.quota.external_ports_per_project, Limit::AtMost(1010));
        assert_eq!(c.praas.listen_addr().to_string(), "0.0.0.0:3000");
        assert_eq!(c.praas.monitoring_interval(), Duration::from_secs(30));
        assert_eq!(c.dataplane.resync_period(), Duration::from_secs(300));
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(
            parse("\n  \n# only a comment\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn the_sample_file_gives_the_defaults() {
        assert_eq!(
            parse(include_str!("../etc/praas.conf")).unwrap(),
            Config::default()
        );
    }

    /// `UPDATE_SAMPLE=1 cargo test --lib config::tests::the_sample_file_is_the_rendered_sample`
    /// rewrites `etc/praas.conf` from the table.
    #[test]
    fn the_sample_file_is_the_rendered_sample() {
        let rendered = sample();
        if std::env::var_os("UPDATE_SAMPLE").is_some() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/praas.conf");
            std::fs::write(&path, &rendered).unwrap();
        } else {
            assert!(
                include_str!("../etc/praas.conf") == rendered,
                "etc/praas.conf is not config::sample(); rewrite it with UPDATE_SAMPLE=1 \
                 cargo test --lib config::tests::the_sample_file_is_the_rendered_sample"
            );
        }
    }

    #[test]
    fn the_table_is_consistent() {
        assert_eq!(
            SECTIONS[0].name, "praas",
            "keys before any header are [praas]'s"
        );
        for (i, section) in SECTIONS.iter().enumerate() {
            assert!(
                SECTIONS[..i].iter().all(|s| s.name != section.name),
                "[{}] twice",
                section.name
            );
            assert!(!section.keys[0].doc.is_empty(), "[{}]", section.name);
            for (j, key) in section.keys.iter().enumerate() {
                // The parser looks keys up in lower case.
                assert_eq!(key.name, key.name.to_ascii_lowercase());
                assert!(
                    section.keys[..j].iter().all(|k| k.name != key.name),
                    "{} twice in [{}]",
                    key.name,
                    section.name
                );
                if let Unset { example } = key.default {
                    let mut c = Config::default();
                    (key.set)(&mut c, example).unwrap();
                    assert_ne!(c, Config::default(), "{}", key.name);
                }
            }
        }
    }

    #[test]
    fn the_originals_file_parses_verbatim_without_a_header() {
        let original = "# praas.conf\n\
            port_app = 3000 #RESTful API default run on port 3000\n\
            router_port_range = 4000:4100 #Specific router port range using for pat agent\n\
            second_monitoring = 30 #Specific period working of monitor agent.\n";
        let c = parse(original).unwrap();
        assert_eq!(c.praas.port_app, 3000);
        assert_eq!(
            c.praas.router_port_range,
            PortRange::new(4000, 4100).unwrap()
        );
        assert_eq!(c.praas.second_monitoring, 30);
    }

    #[test]
    fn the_originals_file_parses_with_its_praas_header() {
        let c = parse(
            "[praas]\nport_app = 3001\nrouter_port_range = 5000:5100\nsecond_monitoring = 10\n",
        )
        .unwrap();
        assert_eq!(c.praas.port_app, 3001);
        assert_eq!(
            c.praas.router_port_range,
            PortRange::new(5000, 5100).unwrap()
        );
        assert_eq!(c.praas.second_monitoring, 10);
    }

    #[test]
    fn every_key_is_read() {
        let c = parse(
            "[praas]\n\
             port_app = 8080\n\
             bind_address = ::1\n\
             router_port_range = 10000\n\
             second_monitoring = 5\n\
             port_allocation = sequential\n\
             auth_strategy = noauth\n\
             [database]\n\
             connection = mysql+pymysql://praas:s3cr;t#@db/praas\n\
             [dataplane]\n\
             driver = iptables\n\
             resync_interval = 60\n\
             enabled = no\n\
             [openstack]\n\
             clouds_file = /etc/openstack/clouds.yaml\n\
             cloud = admin\n\
             [quota]\n\
             mappings_per_project = -1\n\
             external_ports_per_project = 0\n",
        )
        .unwrap();
        assert_eq!(c.quota.mappings_per_project, Limit::Unlimited);
        assert_eq!(c.quota.external_ports_per_project, Limit::AtMost(0));
        assert_eq!(c.praas.listen_addr().to_string(), "[::1]:8080");
        assert_eq!(c.praas.router_port_range, PortRange::single(10000).unwrap());
        assert_eq!(c.praas.second_monitoring, 5);
        assert_eq!(c.praas.port_allocation, Allocation::Sequential);
        assert_eq!(c.praas.auth_strategy, AuthStrategy::Noauth);
        assert_eq!(
            c.database.connection,
            "mysql+pymysql://praas:s3cr;t#@db/praas"
        );
        assert_eq!(c.dataplane.driver, Driver::Iptables);
        assert_eq!(c.dataplane.resync_interval, 60);
        assert!(!c.dataplane.enabled);
        assert_eq!(
            c.openstack.clouds_file.as_deref(),
            Some(Path::new("/etc/openstack/clouds.yaml"))
        );
        assert_eq!(c.openstack.cloud, "admin");
    }

    #[test]
    fn inline_comments_after_hash_or_semicolon_are_ignored() {
        let c = parse(
            "[praas] ; the API\n\
             port_app = 3100 ; comment\n\
             second_monitoring = 7\t# tab before the comment\n\
             [openstack]\n\
             clouds_file = # unset, the empty value\n\
             cloud = mycloud #name\n",
        )
        .unwrap();
        assert_eq!(c.praas.port_app, 3100);
        assert_eq!(c.praas.second_monitoring, 7);
        assert_eq!(c.openstack.clouds_file, None);
        assert_eq!(c.openstack.cloud, "mycloud");
    }

    #[test]
    fn booleans_accept_the_usual_spellings_in_any_case() {
        for (text, expected) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("1", true),
            ("on", true),
            ("false", false),
            ("False", false),
            ("NO", false),
            ("0", false),
            ("off", false),
        ] {
            let c = parse(&format!("[dataplane]\nenabled = {text}\n")).unwrap();
            assert_eq!(c.dataplane.enabled, expected, "{text}");
        }
        let err = parse("[dataplane]\nenabled = maybe\n").unwrap_err();
        assert!(err.to_string().contains("enabled"), "{err}");
        assert!(err.to_string().contains("maybe"), "{err}");
    }

    #[test]
    fn keys_are_case_insensitive_and_separators_may_be_colons() {
        let c = parse("[praas]\nPort_App: 3002\nrouter_port_range: 4000:4010\n").unwrap();
        assert_eq!(c.praas.port_app, 3002);
        assert_eq!(
            c.praas.router_port_range,
            PortRange::new(4000, 4010).unwrap()
        );
    }

    #[test]
    fn crlf_line_ends_and_a_bom_are_accepted() {
        let c = parse("\u{feff}[praas]\r\nport_app = 3003\r\n").unwrap();
        assert_eq!(c.praas.port_app, 3003);
    }

    #[test]
    fn each_invalid_value_names_its_key() {
        for (text, key) in [
            ("port_app = 0", "port_app"),
            ("port_app = 65536", "port_app"),
            ("port_app = +3000", "port_app"),
            ("port_app =", "port_app"),
            ("bind_address = localhost", "bind_address"),
            ("router_port_range = 4100:4000", "router_port_range"),
            ("router_port_range = 0:10", "router_port_range"),
            ("router_port_range = 4000-4100", "router_port_range"),
            ("router_port_range =", "router_port_range"),
            ("second_monitoring = 0", "second_monitoring"),
            ("second_monitoring = -1", "second_monitoring"),
            ("second_monitoring = 1.5", "second_monitoring"),
            ("second_monitoring = 86401", "second_monitoring"),
            ("port_allocation = lowest", "port_allocation"),
            ("auth_strategy = none", "auth_strategy"),
            ("[database]\nconnection = /var/lib/praas.db", "connection"),
            ("[database]\nconnection =", "connection"),
            ("[dataplane]\ndriver = ebpf", "driver"),
            ("[dataplane]\nresync_interval = 0", "resync_interval"),
            ("[dataplane]\nenabled = 2", "enabled"),
            ("[database]\nmax_pool_size = 0", "max_pool_size"),
            ("[database]\nmax_pool_size = many", "max_pool_size"),
            ("[openstack]\nclouds_file = clouds.yaml", "clouds_file"),
            ("[openstack]\ncloud =", "cloud"),
            ("[quota]\nmappings_per_project = -2", "mappings_per_project"),
            (
                "[quota]\nmappings_per_project = 2147483648",
                "mappings_per_project",
            ),
            (
                "[quota]\nexternal_ports_per_project = many",
                "external_ports_per_project",
            ),
            (
                "[quota]\nexternal_ports_per_project =",
                "external_ports_per_project",
            ),
        ] {
            assert_eq!(invalid_key(text), key, "{text}");
            let message = parse(text).unwrap_err().to_string();
            assert!(message.contains(key), "{message}");
        }
    }

    #[test]
    fn an_invalid_value_error_says_where_and_why() {
        let err = parse("[praas]\n\nsecond_monitoring = 0 # never\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: invalid value \"0\" for second_monitoring in [praas]: \
             must be at least 1 second"
        );
    }

    #[test]
    fn each_reason_reads_as_it_always_did() {
        for (text, reason) in [
            (
                "port_app = 0",
                "port 0 cannot be listened on (expected 1-65535)",
            ),
            ("port_app = x", "expected a port number (1-65535)"),
            ("bind_address = x", "expected an IPv4 or IPv6 address"),
            (
                "router_port_range =",
                "expected a port range such as 4000:4100",
            ),
            (
                "router_port_range = 4100:4000",
                "port range 4100:4000 ends before it starts",
            ),
            (
                "second_monitoring = x",
                "expected a whole number of seconds",
            ),
            ("second_monitoring = 0", "must be at least 1 second"),
            (
                "second_monitoring = 86401",
                "must be at most 86400 seconds (one day)",
            ),
            ("port_allocation = x", "expected random or sequential"),
            ("auth_strategy = x", "expected keystone or noauth"),
            ("on_port_deleted = x", "expected delete or down"),
            ("admin_role = a,b", "expected one role name"),
            (
                "[openstack]\ntoken_cache_size = 0",
                "expected a number from 1 to 10000000",
            ),
            (
                "[database]\nconnection = x",
                "expected a database URL such as sqlite:////var/lib/praas/praas.db or \
                 mysql://praas:password@controller/praas",
            ),
            (
                "[dataplane]\ndriver = x",
                "unknown dataplane driver \"x\" (expected nftables, iptables or ovn)",
            ),
            (
                "[dataplane]\nenabled = x",
                "expected true or false (also yes/no, on/off, 1/0)",
            ),
            ("[openstack]\nclouds_file = x", "expected an absolute path"),
            (
                "[openstack]\ncloud =",
                "expected the name of a cloud of clouds.yaml",
            ),
            (
                "[notifications]\ntransport_url = kafka://h/",
                "\"kafka://h/\" is not a rabbit:// transport URL",
            ),
            ("[notifications]\nexchange =", "expected an exchange name"),
            (
                "[quota]\nmappings_per_project = -5",
                "expected -1 (unlimited) or a whole number from 0 to 2147483647",
            ),
            (
                "[ovn]\novn_nb_connection = 127.0.0.1:6641",
                "invalid OVSDB remote \"127.0.0.1:6641\": unknown scheme (expected \
                 tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH)",
            ),
            (
                "[ovn]\novn_nb_connection = ptcp:6641",
                "invalid OVSDB remote \"ptcp:6641\": that is a listening address (for the \
                 server); a client connects to tcp:, ssl: or unix:",
            ),
            (
                "[ovn]\nwait_for = chassis-ish",
                "expected hv (every chassis), sb (the southbound database) or none",
            ),
            (
                "[ovn]\novn_nb_ca_cert = ca.pem",
                "expected an absolute path",
            ),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { reason: r, .. }) => {
                    assert_eq!(r.to_string(), reason, "{text}")
                }
                other => panic!("expected an invalid value for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_known_ones_listed() {
        let err = parse("[praas]\nport_ap = 3000\n").unwrap_err();
        match &err {
            ConfigError::Unknown {
                section, key, line, ..
            } => {
                assert_eq!((*section, key.as_str(), *line), ("praas", "port_ap", 2));
            }
            other => panic!("expected an unknown key, got {other:?}"),
        }
        assert!(err.to_string().contains("port_app"), "{err}");
        assert_eq!(
            parse("[dataplane]\ndrivers = nft\n")
                .unwrap_err()
                .to_string(),
            "line 2: unknown key \"drivers\" in [dataplane] \
             (known keys: driver, resync_interval, enabled, usage_interval, usage_series_limit)"
        );
        // A key of another section is unknown where it stands.
        assert!(matches!(
            parse("[database]\nport_app = 3000\n"),
            Err(ConfigError::Unknown {
                section: "database",
                ..
            })
        ));
        // Keys before any header are [praas] keys.
        assert!(matches!(
            parse("connection = sqlite:////x.db\n"),
            Err(ConfigError::Unknown {
                section: "praas",
                ..
            })
        ));
    }

    #[test]
    fn unknown_sections_are_rejected() {
        let err = parse("[DEFAULT]\n").unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownSection { line: 1, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "line 1: unknown section [DEFAULT] (known sections: [praas], [database], \
             [dataplane], [openstack], [notifications], [quota], [ovn])"
        );
        assert!(matches!(
            parse("[Praas]\nport_app = 1\n"),
            Err(ConfigError::UnknownSection { .. })
        ));
    }

    #[test]
    fn a_key_set_twice_is_rejected() {
        let err = parse("port_app = 1\n[praas]\nport_app = 2\n").unwrap_err();
        match err {
            ConfigError::Duplicate {
                line, first, key, ..
            } => assert_eq!((line, first, key.as_str()), (3, 1, "port_app")),
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn repeating_a_section_header_is_allowed() {
        let c =
            parse("[praas]\nport_app = 1\n[dataplane]\n[praas]\nsecond_monitoring = 2\n").unwrap();
        assert_eq!((c.praas.port_app, c.praas.second_monitoring), (1, 2));
    }

    #[test]
    fn malformed_lines_are_syntax_errors_with_line_numbers() {
        for (text, line) in [
            ("[praas\n", 1),
            ("[praas] extra\n", 1),
            ("\nport_app 3000\n", 2),
            ("[praas]\n= 3000\n", 2),
        ] {
            match parse(text) {
                Err(ConfigError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("expected a syntax error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn load_names_the_file_it_cannot_read() {
        let path = Path::new("/nonexistent/praas/praas.conf");
        let err = load(path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains("/nonexistent/praas/praas.conf"),
            "{err}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("praas-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("praas.conf");
        std::fs::write(&path, "[praas]\nport_app = 3999\n").unwrap();
        let c = load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.praas.port_app, 3999);
    }

    #[test]
    fn enum_names_round_trip() {
        for a in [Allocation::Random, Allocation::Sequential] {
            assert_eq!(a.to_string().parse::<Allocation>().unwrap(), a);
        }
        for s in [AuthStrategy::Keystone, AuthStrategy::Noauth] {
            assert_eq!(s.to_string().parse::<AuthStrategy>().unwrap(), s);
        }
    }

    #[test]
    fn the_configuration_is_the_given_file_else_the_first_that_exists() {
        let dir = std::env::temp_dir().join(format!("praas-locate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ours, original) = (dir.join("praas.conf"), dir.join("original.conf"));
        let search = [ours.to_str().unwrap(), original.to_str().unwrap()];
        let given = Path::new("/somewhere/else.conf");
        assert_eq!(locate_in(Some(given), &search).unwrap(), given);
        let err = locate_in(None, &search).unwrap_err().to_string();
        assert!(err.contains(search[0]) && err.contains(search[1]), "{err}");
        std::fs::write(&original, "").unwrap();
        assert_eq!(locate_in(None, &search).unwrap(), original);
        std::fs::write(&ours, "").unwrap();
        assert_eq!(locate_in(None, &search).unwrap(), ours);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_goes_to_an_absolute_file_in_text_or_json() {
        let c = parse("[praas]\nlog_file = /var/log/praas/praas.log\nlog_format = JSON\n").unwrap();
        assert_eq!(
            c.praas.log_file.as_deref(),
            Some(Path::new("/var/log/praas/praas.log"))
        );
        assert_eq!(c.praas.log_format, LogFormat::Json);
        assert_eq!(Config::default().praas.log_file, None);
        assert_eq!(Config::default().praas.log_format, LogFormat::Text);
        let err = parse("[praas]\nlog_file = praas.log\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("absolute path") && err.contains("log_file"),
            "{err}"
        );
        let err = parse("[praas]\nlog_format = xml\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected text or json"), "{err}");
    }
}
