//! A Keystone session of the service: it logs in with the `clouds.yaml` credentials, keeps the
//! token in memory only (never on disk) and renews it before it expires, finds endpoints in the
//! catalog, retries reads with backoff, and validates other users' tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::clouds::{CloudConfig, Credentials, Domain, Named};
use super::metrics::{CallEnd, CallMetrics};
use super::OpenStackError;

/// A token is renewed when it has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// Tries of a read: the first and two retries, 0.2 s then 0.8 s apart.
const READ_TRIES: u32 = 3;

/// Who a validated token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub user_id: String,
    /// `None` for a token not scoped to a project (such a caller has no project to act in).
    pub project_id: Option<String>,
    pub roles: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

struct Token {
    value: String,
    expires_at: DateTime<Utc>,
    catalog: Vec<CatalogService>,
}

#[derive(Debug, Deserialize, Clone)]
struct CatalogService {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<CatalogEndpoint>,
}

#[derive(Debug, Deserialize, Clone)]
struct CatalogEndpoint {
    interface: String,
    url: String,
    region_id: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenFields,
}

#[derive(Deserialize)]
struct TokenFields {
    expires_at: DateTime<Utc>,
    user: IdOnly,
    project: Option<IdOnly>,
    #[serde(default)]
    roles: Vec<RoleRef>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct RoleRef {
    name: String,
}

/// The service's session with Keystone.
pub struct Session {
    http: reqwest::Client,
    cloud: CloudConfig,
    token: Mutex<Option<Token>>,
    metrics: CallMetrics,
}

impl Session {
    /// A session that logs in on first use. `timeout` bounds every request.
    pub fn new(cloud: CloudConfig, timeout: Duration) -> Result<Session, OpenStackError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("praas/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(!cloud.verify);
        if let Some(path) = &cloud.cacert {
            let pem = std::fs::read(path).map_err(|e| OpenStackError::Config {
                what: format!("cannot read cacert {}: {e}", path.display()),
            })?;
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| OpenStackError::Config {
                    what: format!("cacert {}: {e}", path.display()),
                })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| OpenStackError::Config {
            what: format!("HTTP client: {e}"),
        })?;
        Ok(Session {
            http,
            cloud,
            token: Mutex::new(None),
            metrics: CallMetrics::default(),
        })
    }

    /// The latency and failures of this session's requests.
    pub fn metrics(&self) -> &CallMetrics {
        &self.metrics
    }

    /// Sends `request`, recording its latency and how it ended under `service`, `operation`.
    async fn send(
        &self,
        service: &'static str,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let started = std::time::Instant::now();
        let result = request.send().await;
        let end = match &result {
            Ok(resp) => CallEnd::of_status(resp.status().as_u16()),
            Err(_) => CallEnd::Unreachable,
        };
        self.metrics
            .record(service, operation, started.elapsed(), end);
        result
    }

    /// Keystone's v3 root.
    pub fn auth_url(&self) -> &str {
        &self.cloud.auth_url
    }

    fn auth_body(&self) -> Value {
        fn domain(d: &Domain) -> Value {
            match d {
                Domain::Id(id) => json!({ "id": id }),
                Domain::Name(name) => json!({ "name": name }),
            }
        }
        fn named(n: &Named) -> Value {
            match n {
                Named::Id(id) => json!({ "id": id }),
                Named::Name { name, domain: d } => json!({ "name": name, "domain": domain(d) }),
            }
        }
        match &self.cloud.credentials {
            Credentials::Password {
                user,
                password,
                project,
            } => {
                let mut user = named(user);
                user["password"] = json!(password);
                json!({ "auth": {
                    "identity": { "methods": ["password"], "password": { "user": user } },
                    "scope": { "project": named(project) },
                }})
            }
            Credentials::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                let mut credential = json!({ "secret": secret });
                if let Some(id) = id {
                    credential["id"] = json!(id);
                } else {
                    credential["name"] = json!(name);
                    if let Some(user) = user {
                        credential["user"] = named(user);
                    }
                }
                json!({ "auth": { "identity": {
                    "methods": ["application_credential"],
                    "application_credential": credential,
                }}})
            }
            Credentials::Token { token } => json!({ "auth": { "identity": {
                "methods": ["token"], "token": { "id": token },
            }}}),
        }
    }

    /// `GET` Keystone's `url` (`…/auth/tokens`) about `subject`, authenticated by `token`.
    async fn show_token(
        &self,
        url: &str,
        token: &str,
        subject: &str,
    ) -> Result<reqwest::Response, OpenStackError> {
        self.send(
            "Keystone",
            "validate",
            self.http
                .get(url)
                .header("X-Auth-Token", token)
                .header("X-Subject-Token", subject),
        )
        .await
        .map_err(|e| OpenStackError::unreachable("Keystone", url, e))
    }

    /// A given token's expiry and catalog, as Keystone shows them to the token itself.
    async fn adopt(&self, token: &str) -> Result<Token, OpenStackError> {
        let url = format!("{}/auth/tokens", self.cloud.auth_url);
        let resp = self.show_token(&url, token, token).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED
            || status == StatusCode::FORBIDDEN
            || status == StatusCode::NOT_FOUND
        {
            return Err(OpenStackError::LoginRefused {
                auth_url: self.cloud.auth_url.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(OpenStackError::Status {
                service: "Keystone",
                url,
                status: status.as_u16(),
                body: resp.text().await.unwrap_or_default(),
            });
        }
        let body: TokenBody = resp.json().await.map_err(|e| OpenStackError::Malformed {
            service: "Keystone",
            what: format!("token answer: {e}"),
        })?;
        Ok(Token {
            value: token.to_string(),
            expires_at: body.token.expires_at,
            catalog: body.token.catalog,
        })
    }

    async fn login(&self) -> Result<Token, OpenStackError> {
        if let Credentials::Token { token } = &self.cloud.credentials {
            return self.adopt(token).await;
        }
        let url = format!("{}/auth/tokens", self.cloud.auth_url);
        let resp = self
            .send(
                "Keystone",
                "login",
                self.http.post(&url).json(&self.auth_body()),
            )
            .await
            .map_err(|e| OpenStackError::unreachable("Keystone", &url, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(OpenStackError::LoginRefused {
                auth_url: self.cloud.auth_url.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(OpenStackError::Status {
                service: "Keystone",
                url,
                status: status.as_u16(),
                body: resp.text().await.unwrap_or_default(),
            });
        }
        let value = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| OpenStackError::Malformed {
                service: "Keystone",
                what: "a login answer without X-Subject-Token".into(),
            })?;
        let body: TokenBody = resp.json().await.map_err(|e| OpenStackError::Malformed {
            service: "Keystone",
            what: format!("login answer: {e}"),
        })?;
        debug!(expires_at = %body.token.expires_at, "logged in to Keystone");
        Ok(Token {
            value,
            expires_at: body.token.expires_at,
            catalog: body.token.catalog,
        })
    }

    /// The current token, logging in when there is none or it is about to expire.
    async fn token(&self, renew: bool) -> Result<(String, Vec<CatalogService>), OpenStackError> {
        let mut guard = self.token.lock().await;
        let fresh = guard.as_ref().is_some_and(|t| {
            !renew
                && t.expires_at - Utc::now()
                    > chrono::Duration::from_std(RENEW_BEFORE).expect("small duration")
        });
        if !fresh {
            *guard = Some(self.login().await?);
        }
        let t = guard.as_ref().expect("just set");
        Ok((t.value.clone(), t.catalog.clone()))
    }

    /// A valid token of the service's own (logging in if needed), e.g. to call an API this
    /// client has no method for.
    pub async fn auth_token(&self) -> Result<String, OpenStackError> {
        Ok(self.token(false).await?.0)
    }

    /// The URL of `service_type` in the catalog, for the configured interface and region.
    pub async fn endpoint(&self, service_type: &str) -> Result<String, OpenStackError> {
        let (_, catalog) = self.token(false).await?;
        let interface = self.cloud.interface.as_str();
        catalog
            .iter()
            .filter(|s| s.kind == service_type)
            .flat_map(|s| &s.endpoints)
            .find(|e| {
                e.interface == interface
                    && self.cloud.region_name.as_deref().is_none_or(|r| {
                        e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r)
                    })
            })
            .map(|e| e.url.trim_end_matches('/').to_string())
            .ok_or_else(|| OpenStackError::NoEndpoint {
                service_type: service_type.to_string(),
                interface,
                region: self.cloud.region_name.clone(),
            })
    }

    /// GETs `url` with the service's token: retried with backoff on transport errors, 5xx and
    /// 429; a 401 renews the token once. `Ok(None)` for 404.
    pub async fn get_json(
        &self,
        service: &'static str,
        url: &str,
    ) -> Result<Option<Value>, OpenStackError> {
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (token, _) = self.token(false).await?;
            let result = self
                .send(
                    service,
                    "read",
                    self.http
                        .request(Method::GET, url)
                        .header("X-Auth-Token", token)
                        .header("Accept", "application/json"),
                )
                .await;
            let retry_after = match result {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::NOT_FOUND {
                        return Ok(None);
                    }
                    if status == StatusCode::UNAUTHORIZED && !renewed {
                        renewed = true;
                        self.token(true).await?;
                        attempt -= 1;
                        continue;
                    }
                    if status.is_success() {
                        return resp.json().await.map(Some).map_err(|e| {
                            OpenStackError::Malformed {
                                service,
                                what: format!("{url}: {e}"),
                            }
                        });
                    }
                    let error = OpenStackError::Status {
                        service,
                        url: url.to_string(),
                        status: status.as_u16(),
                        body: resp.text().await.unwrap_or_default(),
                    };
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(error);
                    }
                    error
                }
                Err(e) => OpenStackError::unreachable(service, url, e),
            };
            if attempt >= READ_TRIES {
                return Err(retry_after);
            }
            let pause = Duration::from_millis(200 * 4u64.pow(attempt - 1));
            warn!(%url, error = %retry_after, ?pause, "read failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Validates a user's token (`GET /v3/auth/tokens` with the service's own token).
    /// `Ok(None)`: Keystone does not accept it (invalid, expired or revoked).
    pub async fn validate(&self, subject: &str) -> Result<Option<TokenInfo>, OpenStackError> {
        let url = format!("{}/auth/tokens?nocatalog", self.cloud.auth_url);
        let mut renewed = false;
        loop {
            let (token, _) = self.token(false).await?;
            let resp = self.show_token(&url, &token, subject).await?;
            let status = resp.status();
            // An unknown or expired subject token answers 404; our own token being refused
            // answers 401, after which we log in again once.
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                self.token(true).await?;
                continue;
            }
            if !status.is_success() {
                return Err(OpenStackError::Status {
                    service: "Keystone",
                    url,
                    status: status.as_u16(),
                    body: resp.text().await.unwrap_or_default(),
                });
            }
            let body: TokenBody = resp.json().await.map_err(|e| OpenStackError::Malformed {
                service: "Keystone",
                what: format!("token validation answer: {e}"),
            })?;
            let t = body.token;
            if t.expires_at <= Utc::now() {
                return Ok(None);
            }
            return Ok(Some(TokenInfo {
                user_id: t.user.id,
                project_id: t.project.map(|p| p.id),
                roles: t.roles.into_iter().map(|r| r.name).collect(),
                expires_at: t.expires_at,
            }));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::{Json, Router};

    use super::*;
    use crate::openstack::clouds;

    #[derive(Default)]
    pub(crate) struct Counts {
        pub logins: AtomicUsize,
        pub flaky: AtomicUsize,
        pub bad: AtomicUsize,
        pub validations: AtomicUsize,
    }

    async fn fake_cloud() -> (String, Arc<Counts>) {
        fake_cloud_with(chrono::Duration::hours(1)).await
    }

    /// A stand-in Keystone and Neutron on loopback, to make the failure cases happen on cue;
    /// its tokens live `lifetime`. Validation accepts subject tokens starting with "good".
    pub(crate) async fn fake_cloud_with(lifetime: chrono::Duration) -> (String, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (c1, c2, c3, b) = (counts.clone(), counts.clone(), counts.clone(), base.clone());
        let b2 = base.clone();
        let c4 = counts.clone();
        let app = Router::new()
            .route(
                "/v3/auth/tokens",
                get(move |headers: HeaderMap| {
                    c4.validations.fetch_add(1, Ordering::SeqCst);
                    let subject = headers
                        .get("x-subject-token")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    async move {
                        if !subject.starts_with("good") {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        Json(json!({"token": {
                            "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                            "user": {"id": format!("user-of-{subject}")}, "project": {"id": "p1"},
                            "roles": [{"name": "member"}]}}))
                        .into_response()
                    }
                })
                .post(move || {
                    let n = c1.logins.fetch_add(1, Ordering::SeqCst) + 1;
                    let b = b.clone();
                    async move {
                        let body = json!({"token": {
                            "expires_at": (Utc::now() + lifetime).to_rfc3339(),
                            "user": {"id": "u"}, "project": {"id": "p"}, "roles": [{"name": "admin"}],
                            "catalog": [{"type": "network", "endpoints": [
                                {"interface": "internal", "url": format!("{b}/wrong"), "region_id": "RegionOne"},
                                {"interface": "public", "url": format!("{b}/net/"), "region_id": "RegionOne"}]}]}});
                        ([("x-subject-token", format!("t{n}"))], Json(body))
                    }
                }),
            )
            .route(
                "/net/flaky",
                get(move || {
                    let n = c2.flaky.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 2 {
                            StatusCode::SERVICE_UNAVAILABLE.into_response()
                        } else {
                            Json(json!({"ok": true})).into_response()
                        }
                    }
                }),
            )
            .route(
                "/net/first-token-expired",
                get(|headers: HeaderMap| async move {
                    if headers.get("x-auth-token").unwrap() == "t1" {
                        StatusCode::UNAUTHORIZED.into_response()
                    } else {
                        Json(json!({"ok": true})).into_response()
                    }
                }),
            )
            .route(
                "/net/bad",
                get(move || {
                    c3.bad.fetch_add(1, Ordering::SeqCst);
                    async { StatusCode::BAD_REQUEST }
                }),
            )
            // Five ports in pages of two, whatever the limit asked for, as Neutron with a
            // low `pagination_max_limit`; the last page links to an empty one.
            .route(
                "/net/v2.0/ports",
                get(
                    move |axum::extract::Query(q): axum::extract::Query<
                        std::collections::HashMap<String, String>,
                    >| {
                        let b = b2.clone();
                        async move {
                            let start = q
                                .get("marker")
                                .and_then(|m| m.strip_prefix('p'))
                                .map_or(0, |n| n.parse::<usize>().unwrap() + 1);
                            let page: Vec<_> = (start..(start + 2).min(5))
                                .map(|n| json!({"id": format!("p{n}"), "device_id": "vm",
                                    "fixed_ips": [{"ip_address": format!("10.0.0.{n}"), "subnet_id": "s"}]}))
                                .collect();
                            let mut links = vec![];
                            if let Some(last) = page.last() {
                                links.push(json!({"rel": "next", "href":
                                    format!("{b}/net/v2.0/ports?limit=500&marker={}", last["id"].as_str().unwrap())}));
                            }
                            Json(json!({"ports": page, "ports_links": links}))
                        }
                    },
                ),
            )
            // An answer without its collection.
            .route(
                "/net/v2.0/routers",
                get(|| async { Json(json!({"unexpected": []})) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, counts)
    }

    pub(crate) fn session(base: &str) -> Session {
        let yaml = format!(
            "clouds:\n  openstack:\n    auth:\n      auth_url: {base}\n      username: praas\n      \
             password: fake\n      project_name: service\n    region_name: RegionOne\n"
        );
        Session::new(
            clouds::parse(&yaml, "openstack").unwrap(),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn reads_retry_server_errors_relogin_on_401_and_stop_on_client_errors() {
        let (base, counts) = fake_cloud().await;
        let s = session(&base);
        // The public endpoint of the region, without its trailing slash.
        assert_eq!(s.endpoint("network").await.unwrap(), format!("{base}/net"));
        assert!(matches!(
            s.endpoint("compute").await,
            Err(OpenStackError::NoEndpoint { .. })
        ));

        let got = s.get_json("Neutron", &format!("{base}/net/flaky")).await;
        assert_eq!(got.unwrap(), Some(json!({"ok": true})));
        assert_eq!(counts.flaky.load(Ordering::SeqCst), 3, "two retries");

        let got = s
            .get_json("Neutron", &format!("{base}/net/first-token-expired"))
            .await;
        assert_eq!(got.unwrap(), Some(json!({"ok": true})));
        assert_eq!(counts.logins.load(Ordering::SeqCst), 2, "one new login");

        assert_eq!(
            s.get_json("Neutron", &format!("{base}/net/none"))
                .await
                .unwrap(),
            None
        );
        let bad = s.get_json("Neutron", &format!("{base}/net/bad")).await;
        assert!(
            matches!(bad, Err(OpenStackError::Status { status: 400, .. })),
            "{bad:?}"
        );
        assert_eq!(counts.bad.load(Ordering::SeqCst), 1, "no retry of a 400");
    }

    #[tokio::test]
    async fn a_token_about_to_expire_is_renewed_before_use() {
        let (base, counts) = fake_cloud_with(chrono::Duration::hours(1)).await;
        let s = session(&base);
        for _ in 0..3 {
            s.endpoint("network").await.unwrap();
        }
        assert_eq!(
            counts.logins.load(Ordering::SeqCst),
            1,
            "a fresh token is reused"
        );
        // Tokens that live less than the renewal margin are replaced before every use.
        let (base, counts) = fake_cloud_with(chrono::Duration::seconds(60)).await;
        let s = session(&base);
        for _ in 0..3 {
            s.endpoint("network").await.unwrap();
        }
        assert_eq!(counts.logins.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_keystone_is_an_error_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = session(&base).auth_token().await.unwrap_err();
        assert!(
            matches!(
                err,
                OpenStackError::Unreachable {
                    service: "Keystone",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&base), "{err}");
    }
}
