//! The HTTP side of `credsync run` (axum).
//!
//! `POST /sync` queues a reconcile (all, a namespace, or one Secret) behind
//! a bearer token compared in constant time and a per-scope rate limit;
//! `GET /plan` shows what a sync would do; `/metrics`, `/healthz` and
//! `/readyz` serve Prometheus and the kubelet. Followers (not holding the
//! Lease) answer `/sync` with 503 naming the leader.

pub mod connections;
pub mod credentials;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use crate::cluster::lease::Leadership;
use crate::context::Context;
use crate::daemon::health::Health;
use crate::daemon::trigger::{ReconcileRequest, Trigger};
use crate::manifest::SecretRef;
use crate::plan::Plan;
use crate::reconcile::ScopeNames;
use crate::render::{self, Format, Heading};

/// Who may call `/sync` and `/plan`, the endpoints that change or reveal
/// something. Resolved once at start-up; there is no implicit open mode.
pub enum Access {
    /// `Authorization: Bearer TOKEN` (scheme in any case) or Kubestash-V2's
    /// `API-Key: TOKEN`, compared in constant time.
    Token(Zeroizing<String>),
    /// No token was configured: every call is refused with a message that
    /// says how to configure one.
    Unconfigured,
    /// `--insecure-no-auth`: anyone who reaches the port may call them.
    Open,
}

impl Access {
    /// How print-config and the start-up log describe it (never the token).
    pub fn describe(&self) -> &'static str {
        match self {
            Access::Token(_) => "token",
            Access::Unconfigured => "refused: no token configured",
            Access::Open => "insecure: open to anyone",
        }
    }
}

/// Most scopes remembered by the /sync rate limiter: expired ones are
/// dropped first, and past this a new scope waits for the window to pass,
/// so no stream of made-up scopes can grow the server's memory.
const MAX_RATE_SCOPES: usize = 4096;

/// Shared by every handler.
pub struct ServerState {
    pub context: Arc<Context>,
    pub health: Arc<Health>,
    pub access: Access,
    pub requests: mpsc::Sender<ReconcileRequest>,
    pub leadership: watch::Receiver<Leadership>,
    pub heading: Heading,
    /// Accepted /sync requests per scope, one per `rate_window`; /plan is
    /// computed at most once per window and served from cache meanwhile.
    pub rate_window: Duration,
    pub last_accepted: Mutex<HashMap<String, Instant>>,
    pub last_plan: tokio::sync::Mutex<Option<(Instant, Arc<Plan>)>>,
    /// The self-service API's settings; None: it is off.
    pub self_service: Option<credentials::SelfService>,
}

pub fn router(state: Arc<ServerState>) -> Router {
    // The routes that change or reveal something, behind the token.
    let guarded = Router::new()
        .route("/sync", post(sync))
        // Kubestash-V2's endpoint, so its callers keep working.
        .route("/syncnow", get(sync).post(sync))
        .route("/plan", get(plan))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_access,
        ));
    // Each caller's own Kubernetes token, reviewed per request; mounted
    // only with --self-service, so without it nothing there reads a body.
    let self_service = match &state.self_service {
        Some(_) => Router::new()
            .route(
                "/v1/secrets/{namespace}/{secret}/{key}",
                axum::routing::put(credentials::put).delete(credentials::delete),
            )
            .route("/v1/secrets/{namespace}", get(credentials::list))
            // The handlers read the value themselves, within their limits.
            .layer(axum::extract::DefaultBodyLimit::disable())
            .route_layer(middleware::from_fn(credentials::deadline)),
        None => Router::new(),
    };
    Router::new()
        .merge(guarded)
        .merge(self_service)
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Counts requests by route (unknown paths share one label) and status.
async fn count_requests(
    State(state): State<Arc<ServerState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    let path = match request.uri().path() {
        p @ ("/sync" | "/syncnow" | "/plan" | "/metrics" | "/healthz" | "/readyz") => p.to_owned(),
        p if p.starts_with("/v1/secrets/") => "/v1/secrets".to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    state
        .context
        .metrics
        .http_requests
        .with_label_values(&[path.as_str(), response.status().as_str()])
        .inc();
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Lets through only callers the configured [`Access`] admits.
async fn require_access(
    State(state): State<Arc<ServerState>>,
    request: HttpRequest,
    next: Next,
) -> Response {
    match check_access(&state.access, request.headers()) {
        Some(refusal) => refusal,
        None => next.run(request).await,
    }
}

/// The refusal for a caller `access` does not let in, if any.
fn check_access(access: &Access, headers: &HeaderMap) -> Option<Response> {
    let expected = match access {
        Access::Open => return None,
        Access::Unconfigured => {
            return Some(error(
                StatusCode::FORBIDDEN,
                "no sync token is configured, so /sync and /plan are closed: \
                 start credsync run with --sync-token-file (or CREDSYNC_SYNC_TOKEN), \
                 or with --insecure-no-auth to open them to anyone",
            ));
        }
        Access::Token(token) => token,
    };
    match presented_token(headers) {
        // Lengths may differ; the comparison of equal lengths is constant time.
        Some(given)
            if !expected.is_empty()
                && given.len() == expected.len()
                && bool::from(given.as_bytes().ct_eq(expected.as_bytes())) =>
        {
            None
        }
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer TOKEN",
        )),
    }
}

/// The token a caller sent: `Authorization: Bearer T` (auth schemes are
/// case-insensitive, RFC 9110) or Kubestash-V2's `API-Key: T`. An absent or
/// empty credential is None, never an empty string that could match.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty());
    bearer_token(headers).or(api_key)
}

/// The credential of `Authorization: Bearer T` (the scheme in any case),
/// None when absent or empty.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
}

/// Why a `/sync` scope is refused (400).
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("unknown parameter '{0}': use namespace and secret")]
    Unknown(String),
    #[error("secret needs namespace")]
    SecretAlone,
    #[error("bad scope: {0}")]
    Bad(#[from] crate::manifest::MappingError),
}

/// `?namespace=NS` and `&secret=NAME` (secret needs namespace); anything else is 400.
pub fn parse_scope(
    query: &HashMap<String, String>,
) -> Result<Option<(String, Option<String>)>, ScopeError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "namespace" | "secret"))
    {
        return Err(ScopeError::Unknown(unknown.clone()));
    }
    match (query.get("namespace"), query.get("secret")) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ScopeError::SecretAlone),
        (Some(ns), secret) => {
            let probe = format!("{ns}/{}/KEY", secret.map(String::as_str).unwrap_or("probe"));
            crate::manifest::map_name(&probe)?;
            Ok(Some((ns.clone(), secret.cloned())))
        }
    }
}

async fn sync(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let scope = match parse_scope(&query) {
        Ok(scope) => scope,
        Err(refusal) => return error(StatusCode::BAD_REQUEST, refusal.to_string()),
    };
    if let Leadership::Following { holder } = &*state.leadership.borrow() {
        let leader = holder.clone().unwrap_or_else(|| "none yet".to_owned());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "this replica is not the leader", "leader": leader })),
        )
            .into_response();
    }
    let key = match &scope {
        None => "all".to_owned(),
        Some((ns, None)) => ns.clone(),
        Some((ns, Some(name))) => format!("{ns}/{name}"),
    };
    if let Some(wait) = rate_limited(&state, &key) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("one /sync per {:?} for {key}", state.rate_window),
        );
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    // A scope reconciles only the Secrets its table names map to; one that
    // names nothing reconciles nothing, never the whole table.
    let names = match &scope {
        None => None,
        Some((ns, name)) => {
            let secret = name.as_ref().map(|n| SecretRef::new(ns, n));
            match state.context.reconciler.names_in(ns, secret.as_ref()) {
                ScopeNames::Names(names) => Some(names),
                ScopeNames::NotIndexed => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the first full reconcile has not finished; retry shortly",
                    );
                }
                ScopeNames::Nothing => {
                    return (
                        StatusCode::NOT_FOUND,
                        Json(json!({
                            "error": format!(
                                "no table item maps to {key}: nothing to reconcile \
                                 (POST /sync without a scope also prunes Secrets whose items were all deleted)"
                            ),
                            "queued": null,
                        })),
                    )
                        .into_response();
                }
            }
        }
    };
    let request = ReconcileRequest::names(Trigger::Http, names);
    if state.requests.try_send(request).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reconcile queue is full; retry shortly",
        );
    }
    (StatusCode::ACCEPTED, Json(json!({ "queued": key }))).into_response()
}

/// Returns how long to wait if `key` was accepted within the window.
fn rate_limited(state: &ServerState, key: &str) -> Option<Duration> {
    let Ok(mut last) = state.last_accepted.lock() else {
        return Some(state.rate_window);
    };
    admit(&mut last, key, Instant::now(), state.rate_window)
}

/// The limiter itself: one accepted request per key per `window`, in a map
/// that holds at most [`MAX_RATE_SCOPES`] keys.
fn admit(
    last: &mut HashMap<String, Instant>,
    key: &str,
    now: Instant,
    window: Duration,
) -> Option<Duration> {
    if let Some(previous) = last.get(key) {
        let elapsed = now.duration_since(*previous);
        if elapsed < window {
            return Some(window - elapsed);
        }
    }
    if last.len() >= MAX_RATE_SCOPES && !last.contains_key(key) {
        last.retain(|_, at| now.duration_since(*at) < window);
        if last.len() >= MAX_RATE_SCOPES {
            // Full of scopes accepted within the window: the oldest frees first.
            let oldest = last.values().min().copied().unwrap_or(now);
            return Some(window.saturating_sub(now.duration_since(oldest)));
        }
    }
    last.insert(key.to_owned(), now);
    None
}

async fn plan(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let format = match query.get("format").map(String::as_str) {
        None | Some("json") => Format::Json,
        Some("markdown") => Format::Markdown,
        Some("text") => Format::Text,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown format '{other}': json, markdown or text"),
            );
        }
    };
    let (plan, age) = match cached_plan(&state).await {
        Ok(found) => found,
        Err(err) => return error(StatusCode::BAD_GATEWAY, crate::errors::chain(&err)),
    };
    let body = render::render(&plan, None, &state.heading, format, false);
    let content_type = match format {
        Format::Json => "application/json",
        Format::Markdown => "text/markdown; charset=utf-8",
        Format::Text => "text/plain; charset=utf-8",
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Ok(value) = HeaderValue::from_str(&age.as_secs().to_string()) {
        response.headers_mut().insert(header::AGE, value);
    }
    response
}

/// A plan costs a table Scan and the cluster reads: it is computed at most
/// once per rate window, by one caller while the others wait for it, and
/// served with its age (the `Age` header) in between. The cache holds the
/// plan only, which carries key names and never a value.
async fn cached_plan(
    state: &ServerState,
) -> Result<(Arc<Plan>, Duration), crate::reconcile::ReconcileError> {
    let mut cache = state.last_plan.lock().await;
    if let Some((at, plan)) = cache.as_ref()
        && at.elapsed() < state.rate_window
    {
        return Ok((plan.clone(), at.elapsed()));
    }
    let plan = Arc::new(state.context.reconciler.plan().await?.plan);
    *cache = Some((Instant::now(), plan.clone()));
    Ok((plan, Duration::ZERO))
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.context.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let failures = state.health.consecutive_failures();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {failures} reconciles failed in a row\n"),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    let following = matches!(&*state.leadership.borrow(), Leadership::Following { .. });
    if state.health.is_ready() || following {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first reconcile has not succeeded\n",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn scopes_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_scope(&q(&[])).unwrap(), None);
        assert_eq!(
            parse_scope(&q(&[("namespace", "team-a")])).unwrap(),
            Some(("team-a".into(), None))
        );
        assert_eq!(
            parse_scope(&q(&[("namespace", "team-a"), ("secret", "db")])).unwrap(),
            Some(("team-a".into(), Some("db".into())))
        );
        assert!(parse_scope(&q(&[("secret", "db")])).is_err());
        assert!(parse_scope(&q(&[("namespace", "Bad_NS")])).is_err());
        assert!(parse_scope(&q(&[("nmespace", "a")])).is_err());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_empty_credentials_never_match() {
        let access = Access::Token(Zeroizing::new("s3cret".to_owned()));
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret ",
        ] {
            assert!(
                check_access(&access, &headers(&[("authorization", ok)])).is_none(),
                "{ok}"
            );
        }
        assert!(check_access(&access, &headers(&[("api-key", "s3cret")])).is_none());
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
            "Bearer s3cre",
            "",
        ] {
            let refused = check_access(&access, &headers(&[("authorization", bad)]));
            assert_eq!(
                refused.map(|r| r.status()),
                Some(StatusCode::UNAUTHORIZED),
                "{bad}"
            );
        }
        assert!(check_access(&access, &HeaderMap::new()).is_some());
    }

    #[test]
    fn without_a_token_the_endpoints_are_closed_unless_opened() {
        let refused = check_access(&Access::Unconfigured, &HeaderMap::new());
        assert_eq!(refused.map(|r| r.status()), Some(StatusCode::FORBIDDEN));
        assert!(check_access(&Access::Open, &HeaderMap::new()).is_none());
    }

    #[test]
    fn the_rate_limiter_holds_a_bounded_number_of_scopes() {
        let window = Duration::from_secs(60);
        let start = Instant::now();
        let mut last = HashMap::new();
        for i in 0..MAX_RATE_SCOPES {
            assert_eq!(admit(&mut last, &format!("ghost-{i}"), start, window), None);
        }
        // Full of live scopes: a new one waits, an old one is still limited.
        assert!(admit(&mut last, "ghost-new", start, window).is_some());
        assert!(admit(&mut last, "ghost-1", start, window).is_some());
        assert_eq!(last.len(), MAX_RATE_SCOPES);
        // Once the window passed, expired scopes make room.
        let later = start + window;
        assert_eq!(admit(&mut last, "ghost-new", later, window), None);
        assert_eq!(last.len(), 1);
    }
}
