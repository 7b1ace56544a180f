//! What the service's calls to OpenStack cost: the latency of every HTTP request to Keystone
//! and Neutron, and the requests that failed, by service and operation (`login`, `validate`
//! for a caller's token, `read`). Registered as `praas_openstack_*` (see `docs/operations.md`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: &'static str,
    operation: &'static str,
    /// `unreachable` (no answer, or none in time), `server_error` (5xx, 429) or `refused`
    /// (another 4xx than 404; a 401 that a new token cures is not counted).
    kind: &'static str,
}

/// How a request to OpenStack ended, as far as the metrics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// An answer the caller expected (2xx, 404, a 401 that renews the token).
    Answered,
    Unreachable,
    ServerError,
    Refused,
}

impl CallEnd {
    /// The end of a request answered with `status`.
    pub fn of_status(status: u16) -> CallEnd {
        match status {
            200..=299 | 401 | 404 => CallEnd::Answered,
            429 | 500..=599 => CallEnd::ServerError,
            _ => CallEnd::Refused,
        }
    }
}

/// The session's request metrics; clones share their counts.
#[derive(Clone)]
pub struct CallMetrics {
    duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            duration: Family::new_with_constructor(|| {
                Histogram::new(crate::metrics::seconds_buckets(0.001, 15))
            }),
            errors: Family::default(),
        }
    }
}

impl CallMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "openstack_request_duration_seconds",
            "Time of each HTTP request to OpenStack, by service (keystone, neutron) and operation",
            self.duration.clone(),
        );
        registry.register(
            "openstack_request_errors",
            "HTTP requests to OpenStack that failed, by service, operation and kind",
            self.errors.clone(),
        );
    }

    /// Records one request to `service` (its name as errors give it: `Keystone`, `Neutron`).
    pub fn record(&self, service: &str, operation: &'static str, took: Duration, end: CallEnd) {
        let service = label(service);
        self.duration
            .get_or_create(&CallLabels { service, operation })
            .observe(took.as_secs_f64());
        let kind = match end {
            CallEnd::Answered => return,
            CallEnd::Unreachable => "unreachable",
            CallEnd::ServerError => "server_error",
            CallEnd::Refused => "refused",
        };
        self.errors
            .get_or_create(&ErrorLabels {
                service,
                operation,
                kind,
            })
            .inc();
    }
}

/// The label of a service: lower case, and only the services the session talks to, so that
/// the series stay few.
fn label(service: &str) -> &'static str {
    match service {
        "Keystone" => "keystone",
        "Neutron" => "neutron",
        "Nova" => "nova",
        _ => "other",
    }
}
