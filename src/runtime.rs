//! Role wiring: how a process of each role is built from the configuration, in one place.
//!
//! [`start`] builds what a [`Role`] needs (store, OpenStack session, router directory, mapping
//! service, authentication, agent, monitor, notification listener, HTTP listeners) and runs
//! it; [`Running::stop`] ends it the way systemd's SIGTERM does. The binary, the demo, the
//! end-to-end tests and the benchmarks all start their processes through here; the builders
//! ([`open_store`], [`session`], [`directory`], [`authenticator`], [`api`], [`agent`],
//! [`monitor`]) are public so that a test can assemble one part on real services.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::agent::Agent;
use crate::api::health::{self, Readiness};
use crate::api::{self, AppState, Authenticator, RoleNames};
use crate::config::{Allocation, AuthStrategy, Config};
use crate::dataplane::conntrack::Conntrack;
use crate::dataplane::ovn::{Northbound, OvnBackend};
use crate::dataplane::sync::{FlowCleaner, RouterSync};
use crate::dataplane::{DataplaneError, Driver};
use crate::metrics::http::HttpMetrics;
use crate::metrics::Metrics;
use crate::monitor::notifications::{self, EventCounts, Subscription};
use crate::monitor::Monitor;
use crate::openstack::tokens::KeystoneTokens;
use crate::openstack::{
    clouds, CachedDirectory, NamespaceDirectory, NeutronDirectory, OpenStackError, RouterDirectory,
    Session,
};
use crate::placement::ovn::OvnRouters;
use crate::placement::{LocalNamespaces, Placement};
use crate::service::MappingService;
use crate::store::{LeaseRole, Migration, Policy, Quotas, Store, StoreError, Strategy};
use crate::util::{redacted, Chain};

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API, agent and (with OpenStack credentials) monitor: one network node on SQLite.
    AllInOne,
    /// The API alone.
    Server,
    /// The agent alone: programs this node's router namespaces.
    Agent,
    /// The monitor alone.
    Monitor,
}

/// Whether a role runs the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MonitorNeed {
    No,
    /// When OpenStack credentials are configured (all-in-one also runs without).
    WithCredentials,
    Required,
}

impl Role {
    fn api(self) -> bool {
        matches!(self, Role::AllInOne | Role::Server)
    }

    fn agent(self) -> bool {
        matches!(self, Role::AllInOne | Role::Agent)
    }

    fn monitor(self) -> MonitorNeed {
        match self {
            Role::AllInOne => MonitorNeed::WithCredentials,
            Role::Monitor => MonitorNeed::Required,
            Role::Server | Role::Agent => MonitorNeed::No,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::AllInOne => "all-in-one",
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Monitor => "monitor",
        }
    }
}

/// Why a role could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("opening the database {url}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("loading the service's OpenStack credentials")]
    Credentials(#[source] OpenStackError),
    #[error(
        "{what} needs the service's OpenStack credentials: set [openstack] clouds_file (or \
         OS_CLIENT_CONFIG_FILE) to a clouds.yaml with cloud {cloud:?}"
    )]
    NoCredentials { what: &'static str, cloud: String },
    #[error("starting the dataplane")]
    Dataplane(#[source] DataplaneError),
    #[error("nothing to run: the agent needs [dataplane] enabled = true")]
    NothingToRun,
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("handling signals")]
    Signals(#[source] std::io::Error),
    #[error("a task of the process failed")]
    Task(#[from] tokio::task::JoinError),
}

/// The store of `[database] connection`, its schema brought up to date, with the `[quota]`
/// defaults.
pub async fn open_store(cfg: &Config) -> Result<Arc<Store>, RuntimeError> {
    let (store, _) = db_sync(cfg).await?;
    Ok(Arc::new(store.with_quota_defaults(quotas(cfg))))
}

/// The quota of projects without their own, from `[quota]`.
pub fn quotas(cfg: &Config) -> Quotas {
    Quotas {
        mappings: cfg.quota.mappings_per_project,
        external_ports: cfg.quota.external_ports_per_project,
    }
}

/// Opens the store and brings its schema up to date (`praas db-sync`), saying what it did.
pub async fn db_sync(cfg: &Config) -> Result<(Store, Migration), RuntimeError> {
    let url = &cfg.database.connection;
    let failed = |source| RuntimeError::Store {
        url: redacted(url),
        source,
    };
    let store = Store::open_pooled(url, cfg.database.max_pool_size)
        .await
        .map_err(failed)?;
    let migration = store.migrate().await.map_err(failed)?;
    tracing::info!(database = %redacted(url), "{migration}");
    Ok((store, migration))
}

/// The service's Keystone session, when a `clouds.yaml` is configured.
pub fn session(cfg: &Config) -> Result<Option<Arc<Session>>, RuntimeError> {
    let Some(path) = clouds::clouds_file(cfg.openstack.clouds_file.as_deref()) else {
        return Ok(None);
    };
    let cloud = clouds::load(&path, &cfg.openstack.cloud).map_err(RuntimeError::Credentials)?;
    tracing::info!(file = %path.display(), cloud = %cfg.openstack.cloud, auth_url = %cloud.auth_url,
        "OpenStack credentials loaded");
    let session = Session::new(cloud, Duration::from_secs(cfg.openstack.request_timeout))
        .map_err(RuntimeError::Credentials)?;
    Ok(Some(Arc::new(session)))
}

/// Where the API reads router and port facts: Neutron behind a short router cache (which the
/// caller drops on Neutron's notifications), or without credentials this node's namespaces.
pub fn directory(
    cfg: &Config,
    session: Option<&Arc<Session>>,
) -> (Arc<dyn RouterDirectory>, Option<Arc<CachedDirectory>>) {
    match session {
        Some(s) => {
            let cache = Arc::new(CachedDirectory::new(
                Arc::new(NeutronDirectory::new(s.clone())),
                Duration::from_secs(cfg.openstack.router_cache_seconds),
            ));
            (cache.clone(), Some(cache))
        }
        None => {
            tracing::warn!(
                "no clouds.yaml ([openstack] clouds_file or OS_CLIENT_CONFIG_FILE): \
                router facts come from this node's namespaces and ports are not checked"
            );
            (Arc::new(NamespaceDirectory), None)
        }
    }
}

/// How API callers are recognised.
pub fn authenticator(
    cfg: &Config,
    session: Option<&Arc<Session>>,
) -> Result<Authenticator, RuntimeError> {
    let roles = RoleNames {
        admin: cfg.praas.admin_role.clone(),
        member: cfg.praas.member_role.clone(),
        reader: cfg.praas.reader_role.clone(),
    };
    match cfg.praas.auth_strategy {
        AuthStrategy::Keystone => {
            let session = session.ok_or_else(|| RuntimeError::NoCredentials {
                what: "auth_strategy = keystone",
                cloud: cfg.openstack.cloud.clone(),
            })?;
            Ok(Authenticator::Keystone {
                auth_url: session.auth_url().to_string(),
                tokens: Arc::new(KeystoneTokens::new(
                    session.clone(),
                    Duration::from_secs(cfg.openstack.token_cache_seconds),
                    cfg.openstack.token_cache_size as usize,
                )),
                roles,
            })
        }
        AuthStrategy::Noauth => {
            tracing::warn!(
                "auth_strategy = noauth: requests are NOT authenticated; callers name their project and roles \
                 in X-Project-Id / X-Roles headers. Development only."
            );
            Ok(Authenticator::Noauth { roles })
        }
    }
}

/// The allocation policy of `[praas]`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        range: cfg.praas.router_port_range,
        strategy: match cfg.praas.port_allocation {
            Allocation::Random => Strategy::Random,
            Allocation::Sequential => Strategy::Sequential,
        },
    }
}

/// The HTTP API over the given parts, with the service's defaults for what they do not name
/// (`agent_down_time`): what in-process tests call.
pub fn api(
    store: Arc<Store>,
    directory: Arc<dyn RouterDirectory>,
    auth: Authenticator,
    policy: Policy,
    readiness: Arc<Readiness>,
) -> axum::Router {
    serve_service(
        MappingService::new(store, directory, policy),
        auth,
        readiness,
    )
}

/// The mapping service of `[praas]`.
pub fn service(
    cfg: &Config,
    store: Arc<Store>,
    directory: Arc<dyn RouterDirectory>,
) -> MappingService {
    MappingService::new(store, directory, policy(cfg))
        .with_agent_down_time(cfg.praas.agent_down_period())
}

/// The HTTP API over `service`, ready to serve: what `server` and `all-in-one` serve.
pub fn serve_service(
    service: MappingService,
    auth: Authenticator,
    readiness: Arc<Readiness>,
) -> axum::Router {
    api::router(Arc::new(AppState {
        service: Arc::new(service),
        auth,
        readiness,
    }))
}

/// The agent of this node, on the configured dataplane driver. With the OVN driver it comes
/// with the task that keeps the OVN worker lease (to be run beside it): only the holder
/// programs the routers.
pub fn agent(
    cfg: &Config,
    store: Arc<Store>,
) -> Result<(Agent, Option<OvnLeaseKeeper>), RuntimeError> {
    let (sync, placement, keeper): (_, Arc<dyn Placement>, _) = match cfg.dataplane.driver {
        Driver::Ovn => {
            let nb = Arc::new(Northbound::new(
                cfg.ovn.ovn_nb_connection.clone(),
                cfg.ovn.tls.clone(),
                cfg.ovn.request_timeout(),
            ));
            let backend = Arc::new(OvnBackend::new(
                nb.clone(),
                cfg.ovn.wait_for,
                cfg.ovn.apply_period(),
            ));
            let active = Arc::new(AtomicBool::new(false));
            // ct_flush on our load balancers has OVN delete the flows of a removed forward.
            let sync = Arc::new(RouterSync::new(backend.clone(), Arc::new(NoFlowCleaner)));
            let keeper = OvnLeaseKeeper {
                store: store.clone(),
                backend,
                active: active.clone(),
                holder: format!("{}:{}", cfg.praas.host_name(), std::process::id()),
            };
            (
                sync,
                Arc::new(OvnRouters::new(nb, active)) as _,
                Some(keeper),
            )
        }
        driver => {
            let backend = driver.backend().map_err(RuntimeError::Dataplane)?;
            let sync = Arc::new(RouterSync::new(Arc::from(backend), Arc::new(Conntrack)));
            (sync, Arc::new(LocalNamespaces::default()) as _, None)
        }
    };
    let agent = Agent::new(store, sync, placement, cfg.dataplane.resync_period())
        .reporting(cfg.praas.host_name(), cfg.praas.report_period());
    let agent = match cfg.dataplane.usage_period() {
        Some(every) => agent.counting_usage(
            every,
            usize::try_from(cfg.dataplane.usage_series_limit).unwrap_or(usize::MAX),
        ),
        None => agent,
    };
    Ok((agent, keeper))
}

/// How often the OVN worker renews its lease; it runs three times as long.
pub const OVN_LEASE_RENEWAL: Duration = Duration::from_secs(5);

/// Keeps the OVN worker lease for this agent: while held, the agent serves every router of the
/// northbound database and load balancers of ours whose router is gone are deleted; on
/// standby it serves none.
pub struct OvnLeaseKeeper {
    store: Arc<Store>,
    backend: Arc<OvnBackend>,
    active: Arc<AtomicBool>,
    holder: String,
}

impl OvnLeaseKeeper {
    /// Renews (or waits for) the lease every [`OVN_LEASE_RENEWAL`] until `stop`, then gives it
    /// up so that a standby takes over at once.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let held = match self
                .store
                .acquire_lease_of(LeaseRole::OvnWorker, &self.holder, OVN_LEASE_RENEWAL * 3)
                .await
            {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %crate::util::Chain(&e), "cannot renew the OVN worker lease; standing by");
                    false
                }
            };
            if self.active.swap(held, Ordering::AcqRel) != held {
                if held {
                    tracing::info!(holder = %self.holder, "took the OVN worker lease: programming every router");
                } else {
                    tracing::info!(holder = %self.holder, "lost the OVN worker lease: standing by");
                }
            }
            if held {
                let backend = self.backend.clone();
                match tokio::task::spawn_blocking(move || backend.remove_orphans()).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(
                        routers = n,
                        "removed the load balancers of routers that are gone"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %crate::util::Chain(&e), "cannot remove the load balancers of routers that are gone")
                    }
                    Err(e) => tracing::warn!(error = %e, "orphan cleanup task failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(OVN_LEASE_RENEWAL) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if self.active.swap(false, Ordering::AcqRel) {
            if let Err(e) = self
                .store
                .release_lease_of(LeaseRole::OvnWorker, &self.holder)
                .await
            {
                tracing::warn!(error = %crate::util::Chain(&e), "cannot give the OVN worker lease up");
            }
        }
    }
}

/// OVN deletes the flows of removed forwards itself (`ct_flush` on our load balancers).
struct NoFlowCleaner;

impl FlowCleaner for NoFlowCleaner {
    fn delete_flows(
        &self,
        _namespace: &crate::model::RouterNamespace,
        _stale: &[(crate::dataplane::ExternalKey, crate::dataplane::Target)],
    ) -> Result<usize, crate::dataplane::DataplaneError> {
        Ok(0)
    }
}

/// The monitor, reading Neutron with `session`.
pub fn monitor(cfg: &Config, store: Arc<Store>, session: Arc<Session>) -> Monitor {
    Monitor::new(
        store,
        Arc::new(NeutronDirectory::new(session)),
        cfg.praas.on_port_deleted,
    )
}

/// A running process of one role.
pub struct Running {
    role: Role,
    api_addr: Option<SocketAddr>,
    status_addr: Option<SocketAddr>,
    tasks: JoinSet<Result<(), RuntimeError>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
    stopping: watch::Sender<bool>,
    store: Arc<Store>,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, RuntimeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Listen { addr, source })
}

fn serve(
    tasks: &mut JoinSet<Result<(), RuntimeError>>,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stopping: watch::Receiver<bool>,
) {
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            })
            .await
            .map_err(RuntimeError::Serve)
    });
}

/// Builds and starts `role` from `cfg`. Listeners are bound before this returns (a port of 0
/// takes a free one: see [`Running::api_addr`]).
pub async fn start(cfg: &Config, role: Role) -> Result<Running, RuntimeError> {
    let needs_openstack = role.api() || role.monitor() != MonitorNeed::No;
    let session = if needs_openstack { session(cfg)? } else { None };
    if role.monitor() == MonitorNeed::Required && session.is_none() {
        return Err(RuntimeError::NoCredentials {
            what: "the monitor (it reads Neutron)",
            cloud: cfg.openstack.cloud.clone(),
        });
    }
    let auth = if role.api() {
        Some(authenticator(cfg, session.as_ref())?)
    } else {
        None
    };
    if role == Role::Agent && !cfg.dataplane.enabled {
        return Err(RuntimeError::NothingToRun);
    }
    let store = open_store(cfg).await?;
    let (stopping, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Every part registers what it counts before the listeners serve `/metrics`.
    let mut metrics = Metrics::new(role.name());
    let http_metrics = HttpMetrics::default();
    http_metrics.register(metrics.registry());
    if let Some(s) = &session {
        s.metrics().register(metrics.registry());
    }
    let runs_monitor = role.monitor() != MonitorNeed::No && session.is_some();
    metrics.reading_store(store.clone(), role.api() || runs_monitor, runs_monitor);
    let events = EventCounts::default();
    // Neutron's notifications wake the monitor and drop the API's router cache.
    if cfg.notifications.transport_url.is_some()
        && (runs_monitor || (role.api() && session.is_some()))
    {
        events.register(metrics.registry());
    }
    // Woken by Neutron's notifications: the monitor, and the API's router cache.
    let mut wakes: Vec<Arc<Notify>> = vec![];

    let mut agent_counters = None;
    if role.agent() && cfg.dataplane.enabled {
        let (mut agent, ovn_lease) = agent(cfg, store.clone())?;
        if let Some(keeper) = ovn_lease {
            let stop = stopping.subscribe();
            tasks.spawn(async move {
                keeper.run(stop).await;
                Ok(())
            });
        }
        agent_counters = Some(agent.counters());
        agent.counters().register(metrics.registry());
        if let Some(usage) = agent.usage_metrics() {
            usage.register(metrics.registry());
        }
        tracing::info!(driver = ?cfg.dataplane.driver, "agent started");
        let mut stop = stopping.subscribe();
        // An agent of its own process hears of the servers' commits over RabbitMQ (all-in-one
        // sees its own through the store's change feed).
        let announced = match (&cfg.notifications.transport_url, role) {
            (Some(url), Role::Agent) => {
                let wake = Arc::new(Notify::new());
                agent = agent.woken_by(wake.clone());
                Some(crate::changes::listen(url.clone(), wake))
            }
            _ => None,
        };
        tasks.spawn(async move {
            let announced = async {
                match announced {
                    Some(listen) => listen.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = agent.run() => {}
                _ = announced => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    // Processes that write mappings without an agent tell the agents elsewhere.
    if let (Some(url), Role::Server | Role::Monitor) = (&cfg.notifications.transport_url, role) {
        let (url, feed, mut stop) = (url.clone(), store.feed(), stopping.subscribe());
        tasks.spawn(async move {
            tokio::select! {
                _ = crate::changes::announce(url, feed) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }

    // The monitor is built here, so that its counters are registered before `/metrics` is
    // served, and started once the listeners are.
    let monitor_part = match (role.monitor(), &session) {
        (MonitorNeed::No, _) => None,
        (_, Some(session)) => {
            let monitor = monitor(cfg, store.clone(), session.clone());
            monitor.counters().register(metrics.registry());
            Some(monitor)
        }
        (_, None) => {
            tracing::warn!(
                "no clouds.yaml: the monitor does not run, so mappings of deleted or changed VMs are not updated"
            );
            None
        }
    };
    let metrics = Arc::new(metrics);
    let readiness = Arc::new(Readiness {
        store: store.clone(),
        session: session.clone(),
        agent: agent_counters.clone(),
    });
    let (mut api_addr, mut status_addr) = (None, None);
    if let Some(auth) = auth {
        let (directory, cache) = directory(cfg, session.as_ref());
        if let Some(cache) = cache {
            let wake = Arc::new(Notify::new());
            wakes.push(wake.clone());
            let mut stop = stopping.subscribe();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = wake.notified() => cache.forget_all(),
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            });
        }
        let app = serve_service(
            service(cfg, store.clone(), directory),
            auth,
            readiness.clone(),
        )
        .merge(crate::metrics::routes(metrics.clone()));
        let app = crate::metrics::http::tracked(app, http_metrics.clone());
        let listener = bind(cfg.praas.listen_addr()).await?;
        let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
        tracing::info!(%addr, "API listening");
        serve(&mut tasks, listener, app, stopping.subscribe());
        api_addr = Some(addr);
    } else {
        let port = match role {
            Role::Monitor => cfg.praas.monitor_status_port,
            _ => cfg.praas.agent_status_port,
        };
        let listener = bind(SocketAddr::new(cfg.praas.bind_address, port)).await?;
        let addr = listener.local_addr().map_err(RuntimeError::Serve)?;
        tracing::info!(%addr, "status (/healthz, /readyz, /metrics) listening");
        let app = health::routes(readiness).merge(crate::metrics::routes(metrics.clone()));
        serve(
            &mut tasks,
            listener,
            crate::metrics::http::tracked(app, http_metrics.clone()),
            stopping.subscribe(),
        );
        status_addr = Some(addr);
    }

    let mut monitor_task = None;
    if let Some(monitor) = monitor_part {
        let wake = Arc::new(Notify::new());
        wakes.push(wake.clone());
        let interval = cfg.praas.monitoring_interval();
        tracing::info!(?interval, "monitor started");
        let mut stop = stopping.subscribe();
        monitor_task = Some(tokio::spawn(monitor.run_until(
            interval,
            wake,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
    }

    // Servers and monitors report to the database, as agents do, for `praas status`.
    if role != Role::Agent {
        let (store, host, every) = (
            store.clone(),
            cfg.praas.host_name(),
            cfg.praas.report_period(),
        );
        let address = api_addr
            .or(status_addr)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let role_name = role.name();
        let mut stop = stopping.subscribe();
        tasks.spawn(async move {
            let started_at = chrono::Utc::now();
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                if let Err(e) = store
                    .report_service(role_name, &host, &address, started_at)
                    .await
                {
                    tracing::warn!(error = %Chain(&e), "cannot record this process's heartbeat");
                }
            }
        });
    }

    match &cfg.notifications.transport_url {
        Some(url) if !wakes.is_empty() => {
            let mut subscription =
                Subscription::new(url.clone(), cfg.notifications.exchange.clone());
            subscription.events = events;
            let mut stop = stopping.subscribe();
            tasks.spawn(async move {
                tokio::select! {
                    _ = notifications::listen_all(subscription, wakes, Arc::default()) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                Ok(())
            });
        }
        Some(_) => {}
        None if !wakes.is_empty() => {
            tracing::info!("no [notifications] transport_url: the monitor polls only");
        }
        None => {}
    }

    // systemd (`Type=notify` units) is told once the role serves: once its listeners are
    // bound (here) for the API and the monitor, after the agent's first pass over the node
    // for the agent roles. Without NOTIFY_SOCKET (not started by systemd) this does nothing.
    {
        let counters = agent_counters.clone();
        let mut stop = stopping.subscribe();
        tasks.spawn(async move {
            let ready = async {
                if let Some(c) = counters {
                    while c.full_passes.get() == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    tracing::warn!(error = %e, "cannot tell systemd that the service is ready");
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = ready => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            Ok(())
        });
    }
    Ok(Running {
        role,
        api_addr,
        status_addr,
        tasks,
        monitor: monitor_task,
        stopping,
        store,
    })
}

impl Running {
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the API listens (server, all-in-one).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// Where `/healthz` and `/readyz` are served by a role without the API (agent, monitor).
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// The store the process uses.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs until `stop` completes or a task ends (which is an error), then stops.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), RuntimeError> {
        let monitor_done = async {
            match self.monitor.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            _ = stop => Ok(()),
            Some(done) = self.tasks.join_next() => done?,
            done = monitor_done => done.map_err(RuntimeError::from),
        };
        self.stop().await;
        outcome
    }

    /// Runs until SIGTERM (systemd) or SIGINT.
    pub async fn run_until_signalled(self) -> Result<(), RuntimeError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).map_err(RuntimeError::Signals)?;
        self.run_until(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
                _ = terminate.recv() => tracing::info!("terminated; stopping"),
            }
        })
        .await
    }

    /// Stops every part: listeners finish their requests, the monitor gives its lease up (so
    /// a standby acts at once), the agent and the listener of notifications end.
    pub async fn stop(mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stopping.send_replace(true);
        if let Some(task) = self.monitor.take().filter(|t| !t.is_finished()) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("the monitor did not stop within 5 s; its lease runs out by itself");
            }
        }
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %Chain(&e), "a part ended with an error while stopping");
                }
            }
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}
