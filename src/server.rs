//! The HTTP side of `credsync run` (axum).
//!
//! `POST /sync` queues a reconcile (all, a namespace, or one Secret) behind
//! a bearer token compared in constant time and a per-scope rate limit;
//! `GET /plan` shows what a sync would do; `/metrics`, `/healthz` and
//! `/readyz` serve Prometheus and the kubelet. Followers (not holding the
//! Lease) answer `/sync` with 503 naming the leader.

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
use crate::manifest::SecretRef;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::render::{self, Format, Heading};
use crate::worker::{Health, Request, Trigger};

/// Shared by every handler.
pub struct ServerState {
    pub reconciler: Arc<Reconciler>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Bearer token for /sync and /plan; None leaves them open (local use only).
    pub token: Option<Zeroizing<String>>,
    pub requests: mpsc::Sender<Request>,
    pub leadership: watch::Receiver<Leadership>,
    pub heading: Heading,
    /// Accepted /sync requests per scope, one per `rate_window`.
    pub rate_window: Duration,
    pub last_accepted: Mutex<HashMap<String, Instant>>,
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/sync", post(sync))
        // Kubestash-V2's endpoint, so its callers keep working.
        .route("/syncnow", get(sync).post(sync))
        .route("/plan", get(plan))
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
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[path.as_str(), response.status().as_str()])
        .inc();
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn authorized(state: &ServerState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token else {
        return true;
    };
    // `Authorization: Bearer T`, or Kubestash-V2's `API-Key: T`.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let api_key = headers.get("api-key").and_then(|v| v.to_str().ok());
    let given = bearer.or(api_key).unwrap_or("");
    // Lengths may differ; the comparison of equal lengths is constant time.
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// `?namespace=NS` and `&secret=NAME` (secret needs namespace); anything else is 400.
fn parse_scope(
    query: &HashMap<String, String>,
) -> Result<Option<(String, Option<String>)>, String> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "namespace" | "secret"))
    {
        return Err(format!(
            "unknown parameter '{unknown}': use namespace and secret"
        ));
    }
    match (query.get("namespace"), query.get("secret")) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err("secret needs namespace".to_owned()),
        (Some(ns), secret) => {
            let probe = format!("{ns}/{}/KEY", secret.map(String::as_str).unwrap_or("probe"));
            crate::manifest::map_name(&probe).map_err(|e| format!("bad scope: {e}"))?;
            Ok(Some((ns.clone(), secret.cloned())))
        }
    }
}

async fn sync(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let scope = match parse_scope(&query) {
        Ok(scope) => scope,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
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
    let names = scope.as_ref().and_then(|(ns, name)| {
        let secret = name.as_ref().map(|n| SecretRef::new(ns, n));
        state.reconciler.names_in(ns, secret.as_ref())
    });
    let request = Request {
        trigger: Trigger::Http,
        names,
        oldest_event: None,
    };
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
    let now = Instant::now();
    if let Some(previous) = last.get(key) {
        let elapsed = now.duration_since(*previous);
        if elapsed < state.rate_window {
            return Some(state.rate_window - elapsed);
        }
    }
    last.insert(key.to_owned(), now);
    None
}

async fn plan(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
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
    match state.reconciler.plan().await {
        Ok(planned) => {
            let body = render::render(&planned.plan, None, &state.heading, format, false);
            let content_type = match format {
                Format::Json => "application/json",
                Format::Markdown => "text/markdown; charset=utf-8",
                Format::Text => "text/plain; charset=utf-8",
            };
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
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
}
