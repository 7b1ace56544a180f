//! Prometheus metrics: one registry per process, served at `GET /metrics` by every role (on
//! the API's listener for `server` and `all-in-one`, on the status listener for `agent` and
//! `monitor`).
//!
//! The parts that count own their metrics (the agent's [`crate::agent::Counters`], the
//! monitor's [`crate::monitor::MonitorCounters`], the OpenStack session's
//! [`crate::openstack::CallMetrics`], the HTTP layer's [`http::HttpMetrics`]) and register them
//! here when the role is wired ([`crate::runtime`]). What is a fact of the database rather than
//! of the process (mappings by status, who holds the monitor's lease) is read when scraped.
//! The list of metrics, with their labels, is in `docs/operations.md`.
//!
//! The answer is the Prometheus text format (0.0.4), or OpenMetrics when the scraper asks for
//! it in `Accept` (Prometheus does).

pub mod http;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::{Status, Store};

/// OpenMetrics' content type, as the text encoder writes it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabels {
    holder: String,
}

/// What a scrape reads from the database.
struct FromStore {
    store: Arc<Store>,
    /// Mappings per status (every status is shown, 0 when none has it).
    mappings: Option<Family<StatusLabels, Gauge>>,
    /// 1 for the monitor that holds the lease, when a lease is held.
    lease_holder: Option<Family<HolderLabels, Gauge>>,
}

/// A process's metrics: registered while the role is wired, then served.
pub struct Metrics {
    registry: Registry,
    from_store: Option<FromStore>,
}

impl Metrics {
    /// A registry with `praas_build_info` for `role`.
    pub fn new(role: &str) -> Self {
        let mut registry = Registry::with_prefix("praas");
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                role: role.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running version and role (always 1)",
            build,
        );
        Metrics {
            registry,
            from_store: None,
        }
    }

    /// Where the parts register what they count.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Makes every scrape read `praas_mappings{status}` (and, with `lease`, the monitor's
    /// lease holder) from `store`.
    pub fn reading_store(&mut self, store: Arc<Store>, mappings: bool, lease: bool) {
        let mappings = mappings.then(|| {
            let family: Family<StatusLabels, Gauge> = Family::default();
            self.registry.register(
                "mappings",
                "Mappings by status, in the database",
                family.clone(),
            );
            family
        });
        let lease_holder = lease.then(|| {
            let family: Family<HolderLabels, Gauge> = Family::default();
            self.registry.register(
                "monitor_lease_holder",
                "1 for the monitor that holds the lease (host:pid:id), read from the database",
                family.clone(),
            );
            family
        });
        self.from_store = Some(FromStore {
            store,
            mappings,
            lease_holder,
        });
    }

    /// Reads what comes from the database. A database that does not answer leaves the last
    /// values (and `/readyz` says why).
    async fn refresh(&self) {
        let Some(from) = &self.from_store else {
            return;
        };
        if let Some(family) = &from.mappings {
            match from.store.count_by_status().await {
                Ok(counts) => {
                    for status in Status::ALL {
                        let n = counts.get(status.as_str()).copied().unwrap_or(0);
                        family
                            .get_or_create(&StatusLabels {
                                status: status.as_str().into(),
                            })
                            .set(n);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::util::Chain(&e), "metrics: cannot count mappings")
                }
            }
        }
        if let Some(family) = &from.lease_holder {
            match from.store.lease().await {
                Ok(lease) => {
                    family.clear();
                    let now = chrono::Utc::now().timestamp_millis();
                    if let Some(l) = lease.filter(|l| l.expires_ms > now) {
                        family
                            .get_or_create(&HolderLabels { holder: l.holder })
                            .set(1);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %crate::util::Chain(&e), "metrics: cannot read the lease")
                }
            }
        }
    }

    /// The metrics as text: OpenMetrics when `openmetrics`, else Prometheus 0.0.4.
    pub async fn render(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        self.refresh().await;
        let mut out = String::new();
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

/// `GET /metrics`.
pub async fn serve(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match metrics.render(openmetrics).await {
        Ok(text) => {
            let content_type = if openmetrics {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            ([(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The `/metrics` route alone.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .with_state(metrics)
}

/// Buckets for durations from `first` seconds, doubling `n` times.
pub fn seconds_buckets(first: f64, n: u16) -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(first, 2.0, n)
}
