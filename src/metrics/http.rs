//! Requests served, by route and status, with their latency.
//!
//! The route is the path template that matched (`/v1/mappings/{id}`), never the requested
//! path, so the number of series is bounded by the routes; a request no route matched is
//! counted under `unmatched`. axum knows the matched route only inside the router, so a
//! route layer ([`mark_route`]) copies it into the response, where the outer layer
//! ([`track`]) reads it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The HTTP layer's metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Durations,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(super::seconds_buckets(0.001, 15))
            }),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status",
            self.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method and matched route",
            self.duration.clone(),
        );
    }

    /// The number of requests counted for `method`, `route`, `status` (for tests).
    pub fn requests(&self, method: &str, route: &str, status: u16) -> u64 {
        self.requests
            .get(&RequestLabels {
                method: method.into(),
                route: route.into(),
                status,
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// The route that matched, carried from the router to [`track`].
#[derive(Clone)]
struct Route(Arc<str>);

/// Route layer: puts the matched route into the response.
pub async fn mark_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| Route(Arc::from(p.as_str())));
    let mut response = next.run(req).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Outer layer: counts the request and its latency under the route [`mark_route`] found.
pub async fn track(State(metrics): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let response = next.run(req).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map(|r| r.0.to_string())
        .unwrap_or_else(|| "unmatched".into());
    metrics
        .duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `router` with its requests counted into `metrics`.
pub fn tracked(router: axum::Router, metrics: HttpMetrics) -> axum::Router {
    router
        .route_layer(axum::middleware::from_fn(mark_route))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
}
