//! The admin API (docs/admin-api.md): model versions over HTTP, on its own listener.
//!
//! Every route is under `/admin`, needs `Authorization: Bearer <token>` (compared in constant
//! time; the token is never logged) and is rate limited by one token bucket per process
//! (`429` with `Retry-After`). The bucket is checked before the token, so guessing tokens is
//! rate limited too. The handlers only parse and answer: the work is done by the
//! [`ControlPlane`] on a blocking thread (loading and the validation gate take a while).
//!
//! | route | does |
//! | --- | --- |
//! | `GET /admin/models` | versions, their states, the deployment |
//! | `POST /admin/models/{version}/load` | verify + warm up beside the champion |
//! | `POST /admin/models/{version}/promote[?force=true]` | gate (unless forced), then champion |
//! | `POST /admin/models/{version}/canary` `{"weight": 0.2}` | canary, or its new weight |
//! | `POST /admin/models/{version}/shadow` | shadow challenger |
//! | `POST /admin/challenger/clear` | remove the challenger |
//! | `POST /admin/rollback` | the previous champion serves again |
//! | `DELETE /admin/models/{version}` | unload a loaded version that serves nothing |

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{AdminToken, Config};
use crate::model::deploy::DeployControl;
use crate::repository::{ControlError, ControlPlane, ControlSettings, Watcher};
use crate::telemetry::names;
use crate::validate::LimitOverrides;

/// Compares two secrets in time that depends on neither their contents nor their lengths:
/// both are hashed to 32 bytes first, then every byte pair is compared without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    let diff = x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q));
    // black_box: keep the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// One token bucket for the whole API: `per_minute` requests a minute, bursts of as many.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self { capacity, per_second: capacity / 60.0, state: Mutex::new((capacity, Instant::now())) }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }

    /// As [`RateLimiter::try_acquire`] at a given instant (tests).
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.per_second).min(self.capacity);
        s.1 = s.1.max(now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.per_second))
        }
    }
}

struct Admin {
    control: Arc<ControlPlane>,
    token: AdminToken,
    limiter: Arc<RateLimiter>,
}

type Shared = State<Arc<Admin>>;
type Peer = ConnectInfo<SocketAddr>;

/// The admin routes. Serve them with [`serve`] (it provides the peer address the handlers log).
pub fn router(control: Arc<ControlPlane>, token: AdminToken, limiter: Arc<RateLimiter>) -> axum::Router {
    let state = Arc::new(Admin { control, token, limiter });
    axum::Router::new()
        .route("/admin/models", get(list))
        .route("/admin/models/{version}", delete(unload))
        .route("/admin/models/{version}/load", post(load))
        .route("/admin/models/{version}/promote", post(promote))
        .route("/admin/models/{version}/canary", post(canary))
        .route("/admin/models/{version}/shadow", post(shadow))
        .route("/admin/challenger/clear", post(clear_challenger))
        .route("/admin/rollback", post(rollback))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .with_state(state)
}

/// Binds `bind` and serves `router` until `stop` resolves.
pub async fn serve(
    bind: SocketAddr,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {bind} (admin.bind): {e}")))?;
    serve_on(listener, router, stop).await
}

/// Serves `router` on a bound listener until `stop` resolves (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stop).await
}

/// The control plane of a running pipeline: the repository watcher and the admin server, each
/// started only when configured. Keep it for as long as the pipeline runs; [`Running::stop`]
/// (or dropping it) stops both.
pub struct Running {
    /// `None` when neither the watcher nor the admin API is configured.
    pub control: Option<Arc<ControlPlane>>,
    /// Where the admin API listens (`admin.bind`, with the port resolved).
    pub admin_addr: Option<SocketAddr>,
    watcher: Option<Watcher>,
    server: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>)>,
}

/// Starts what `config` asks for over the pipeline's `deploy` handle: the repository watcher
/// when `model.watch_interval` is not zero, the admin API when `admin.enabled`. A bind error is
/// returned (naming `admin.bind`); the rest of the control plane's problems are logged.
///
/// The pipeline's wiring: `let (deploy, end) = DeployControl::channel();`
/// `let _control = admin::start(&config, &deploy).await?;` then
/// `pipeline::run_with_control(config, stats, end, shutdown)`.
pub async fn start(config: &Config, deploy: &DeployControl) -> std::io::Result<Running> {
    let mut running = Running { control: None, admin_addr: None, watcher: None, server: None };
    let Some(settings) = ControlSettings::from_config(config) else {
        // check_into refuses admin.enabled without a repository; the watcher has nothing to watch.
        return Ok(running);
    };
    let watch = !settings.repository.watch_interval.is_zero();
    if !watch && !config.admin.enabled {
        return Ok(running);
    }
    let control = Arc::new(ControlPlane::from_control(settings, deploy));
    if watch {
        let c = control.clone();
        running.watcher =
            tokio::task::spawn_blocking(move || c.spawn_watcher()).await.map_err(std::io::Error::other)??;
    }
    if config.admin.enabled {
        let token = config.admin.token.clone().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "admin.enabled without a token (admin.token_file)")
        })?;
        let limiter = Arc::new(RateLimiter::per_minute(config.admin.rate_limit_per_minute));
        let bind = config.admin.bind;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {bind} (admin.bind): {e}")))?;
        running.admin_addr = listener.local_addr().ok();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(control.clone(), token, limiter);
        let server = tokio::spawn(serve_on(listener, app, async move {
            let _ = stopped.await;
        }));
        running.server = Some((stop, server));
    }
    running.control = Some(control);
    Ok(running)
}

impl Running {
    /// Stops the admin server (requests in flight finish) and the watcher.
    pub async fn stop(mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            let _ = server.await;
        }
        if let Some(w) = self.watcher.take() {
            let _ = tokio::task::spawn_blocking(move || w.stop()).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.server.take() {
            let _ = stop.send(());
        }
        // The watcher's own Drop stops its thread (after the scan in progress).
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn count(route: &'static str, result: &'static str) {
    metrics::counter!(names::ADMIN_REQUESTS, "route" => route, "result" => result).increment(1);
}

/// Rate limit, then authentication; `Some` is the refusal to send.
fn guard(admin: &Admin, route: &'static str, headers: &HeaderMap, peer: SocketAddr) -> Option<Response> {
    if let Err(wait) = admin.limiter.try_acquire() {
        count(route, "rate_limited");
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = json(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": format!("admin API rate limit exceeded; retry in {secs}s")}),
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Some(r);
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // An absent token is compared too, so both failures take the same time.
    let ok = constant_time_eq(presented.unwrap_or("").as_bytes(), admin.token.expose()) && presented.is_some();
    if !ok {
        count(route, "unauthorized");
        tracing::warn!(route, %peer, token_presented = presented.is_some(), "admin request refused: missing or wrong bearer token");
        let mut r = json(StatusCode::UNAUTHORIZED, serde_json::json!({"error": "missing or wrong bearer token"}));
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"streamscore-admin\""));
        return Some(r);
    }
    None
}

fn error_response(e: &ControlError) -> (StatusCode, &'static str, serde_json::Value) {
    let mut body = serde_json::json!({"error": e.to_string()});
    let (status, result) = match e {
        ControlError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "not_found"),
        ControlError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        ControlError::Refused { reason, .. } => {
            body["reason"] = serde_json::json!(reason);
            (StatusCode::UNPROCESSABLE_ENTITY, "refused")
        }
        ControlError::GateFailed { report, .. } => {
            body["report"] = serde_json::to_value(report).unwrap_or_default();
            (StatusCode::CONFLICT, "conflict")
        }
        ControlError::GateError { .. } | ControlError::Conflict(_) | ControlError::Deploy(_) => {
            (StatusCode::CONFLICT, "conflict")
        }
        ControlError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ControlError::Disconnected => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ControlError::Repository { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
    };
    (status, result, body)
}

/// Guards, then runs `work` on a blocking thread with the caller's name (`admin <peer>`).
async fn handle<T: serde::Serialize + Send + 'static>(
    admin: Arc<Admin>,
    route: &'static str,
    headers: &HeaderMap,
    peer: SocketAddr,
    work: impl FnOnce(&ControlPlane, &str) -> Result<T, ControlError> + Send + 'static,
) -> Response {
    if let Some(r) = guard(&admin, route, headers, peer) {
        return r;
    }
    let control = admin.control.clone();
    let actor = format!("admin {peer}");
    match tokio::task::spawn_blocking(move || work(&control, &actor)).await {
        Ok(Ok(v)) => {
            count(route, "ok");
            json(StatusCode::OK, serde_json::to_value(v).unwrap_or_default())
        }
        Ok(Err(e)) => {
            let (status, result, body) = error_response(&e);
            count(route, result);
            json(status, body)
        }
        Err(e) => {
            count(route, "error");
            tracing::error!(route, error = %e, "admin request failed");
            json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": "internal error"}))
        }
    }
}

async fn list(State(a): Shared, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    handle(a, "list", &headers, peer, |c, _| c.list()).await
}

async fn load(State(a): Shared, ConnectInfo(peer): Peer, Path(version): Path<String>, headers: HeaderMap) -> Response {
    handle(a, "load", &headers, peer, move |c, who| c.load(&version, who)).await
}

/// `?force=true` (or `1`) skips the gate; anything else but `false`/`0` is a bad request.
fn force_flag(uri: &Uri) -> Result<bool, ControlError> {
    let mut force = false;
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        match (k, v) {
            ("force", "true" | "1") => force = true,
            ("force", "false" | "0") => force = false,
            _ => {
                return Err(ControlError::BadRequest(format!(
                    "unknown query parameter `{pair}`; only force=true|false"
                )))
            }
        }
    }
    Ok(force)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    /// Limits replacing the manifest's for this gate run.
    #[serde(default)]
    overrides: LimitOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    weight: f64,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("body: {e}; expected {what}")))
}

async fn promote(
    State(a): Shared,
    ConnectInfo(peer): Peer,
    Path(version): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(a, "promote", &headers, peer, move |c, who| {
        let force = force_flag(&uri)?;
        let body: PromoteBody = if body.iter().all(u8::is_ascii_whitespace) {
            PromoteBody::default()
        } else {
            parse_body(&body, "{\"overrides\": {\"min_roc_auc\": 0.9, ...}} or no body")?
        };
        c.promote(&version, force, &body.overrides, who)
    })
    .await
}

async fn canary(
    State(a): Shared,
    ConnectInfo(peer): Peer,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(a, "canary", &headers, peer, move |c, who| {
        let body: CanaryBody = parse_body(&body, "{\"weight\": 0.05}")?;
        c.canary(&version, body.weight, who)
    })
    .await
}

async fn shadow(
    State(a): Shared,
    ConnectInfo(peer): Peer,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(a, "shadow", &headers, peer, move |c, who| c.shadow(&version, who)).await
}

async fn clear_challenger(State(a): Shared, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    handle(a, "clear_challenger", &headers, peer, |c, who| c.clear_challenger(who)).await
}

async fn rollback(State(a): Shared, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    handle(a, "rollback", &headers, peer, |c, who| c.rollback(who)).await
}

async fn unload(
    State(a): Shared,
    ConnectInfo(peer): Peer,
    Path(version): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(a, "unload", &headers, peer, move |c, who| c.unload(&version, who)).await
}

/// Unknown paths answer 404 only to an authenticated caller (401 otherwise): the API's shape
/// is not disclosed without the token.
async fn not_found(State(a): Shared, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = guard(&a, "unknown", &headers, peer) {
        return r;
    }
    count("unknown", "not_found");
    json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such admin route; see docs/admin-api.md"}))
}

/// A known path with another method: 405 only to an authenticated caller, as for [`not_found`].
async fn not_allowed(State(a): Shared, ConnectInfo(peer): Peer, headers: HeaderMap) -> Response {
    if let Some(r) = guard(&a, "unknown", &headers, peer) {
        return r;
    }
    count("unknown", "method_not_allowed");
    json(StatusCode::METHOD_NOT_ALLOWED, serde_json::json!({"error": "method not allowed here; see docs/admin-api.md"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"s3cret-token-0123", b"s3cret-token-0123"));
        assert!(!constant_time_eq(b"s3cret-token-0123", b"s3cret-token-0124"));
        assert!(!constant_time_eq(b"s3cret-token-0123", b"s3cret-token-012"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn limiter_allows_a_burst_then_refills_at_the_rate() {
        let l = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.try_acquire_at(t0).expect("burst");
        }
        let wait = l.try_acquire_at(t0).expect_err("bucket empty");
        // 3 a minute: one token every 20 s.
        assert!((wait.as_secs_f64() - 20.0).abs() < 0.01, "{wait:?}");
        assert!(l.try_acquire_at(t0 + Duration::from_secs(10)).is_err(), "half a token is not one");
        l.try_acquire_at(t0 + Duration::from_secs(21)).expect("refilled");
        // The bucket never holds more than its capacity, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            l.try_acquire_at(later).expect("full again");
        }
        assert!(l.try_acquire_at(later).is_err());
    }

    #[test]
    fn force_flag_parses_true_false_and_refuses_the_rest() {
        let f = |q: &str| force_flag(&format!("/x{q}").parse::<Uri>().unwrap());
        assert!(!f("").unwrap());
        assert!(f("?force=true").unwrap());
        assert!(f("?force=1").unwrap());
        assert!(!f("?force=false").unwrap());
        assert!(f("?force=yes").is_err());
        assert!(f("?forse=true").is_err());
    }
}
