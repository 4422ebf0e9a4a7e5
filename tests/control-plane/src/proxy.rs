//! A fault-injecting HTTP proxy in front of the real API server, for what a
//! healthy server does not do on demand: fail a verb with 500, 429 or 409,
//! refuse Events, or let another client edit an object between a reader's
//! GET and its write. Everything else passes through unchanged (watches
//! stream), with the upstream credential of the proxy's kube client: the
//! client talks plain HTTP on loopback with no credential of its own.

use std::net::TcpListener;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::{HeaderValue, Request, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Error;
use crate::target::Target;

/// Fails matching requests: `{"verb": .., "resource": .., "status": 500}`,
/// the first `times` of them, or every `every`-th; always when neither is set.
/// `namespace` and `name` narrow the match to one object. With `delay_ms`
/// a match is held that long first, then failed with `status`, or passed
/// through when `status` is 0 (a slow API server).
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    #[serde(default)]
    pub status: u16,
    pub delay_ms: Option<u64>,
    pub times: Option<u64>,
    pub every: Option<u64>,
    pub message: Option<String>,
    #[serde(skip)]
    seen: u64,
}

/// Another client's merge patch of an object, applied just before the next
/// (not dry-run) update or patch of it passes through.
#[derive(Debug, Clone, Deserialize)]
pub struct ConcurrentEdit {
    pub namespace: String,
    pub name: String,
    #[serde(default = "secrets")]
    pub resource: String,
    pub merge_patch: Value,
}

fn secrets() -> String {
    "secrets".to_owned()
}

#[derive(Default)]
struct Rules {
    faults: Vec<Fault>,
    edits: Vec<ConcurrentEdit>,
}

impl Rules {
    fn fault_for(&mut self, target: &Target) -> Option<(u16, Option<String>, Option<u64>)> {
        let mut hit = None;
        for f in &mut self.faults {
            let matches = f.verb.as_deref().is_none_or(|v| v == target.verb)
                && f.resource.as_deref().is_none_or(|r| r == target.resource)
                && f.namespace
                    .as_deref()
                    .is_none_or(|n| Some(n) == target.namespace.as_deref())
                && f.name
                    .as_deref()
                    .is_none_or(|n| Some(n) == target.name.as_deref());
            if !matches || hit.is_some() {
                continue;
            }
            f.seen += 1;
            let fire = match (f.every, f.times) {
                (Some(k), _) => k > 0 && f.seen % k == 0,
                (None, Some(n)) => f.seen <= n,
                (None, None) => true,
            };
            if fire {
                hit = Some((f.status, f.message.clone(), f.delay_ms));
            }
        }
        self.faults
            .retain(|f| f.every.is_some() || f.times.is_none_or(|n| f.seen < n));
        hit
    }

    fn take_edit(&mut self, target: &Target) -> Option<ConcurrentEdit> {
        if target.dry_run || !matches!(target.verb, "update" | "patch") {
            return None;
        }
        let i = self.edits.iter().position(|e| {
            e.resource == target.resource
                && Some(e.namespace.as_str()) == target.namespace.as_deref()
                && Some(e.name.as_str()) == target.name.as_deref()
        })?;
        Some(self.edits.remove(i))
    }
}

struct Shared {
    rules: Arc<Mutex<Rules>>,
    upstream: kube::Client,
}

/// The proxy; stops (and drops every open connection) on drop.
pub struct FaultProxy {
    url: String,
    rules: Arc<Mutex<Rules>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding with `upstream`.
    /// It runs on a thread of its own, so a test may block while a child
    /// process talks through it.
    pub fn start(upstream: kube::Config) -> Result<Self, Error> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io("binding the fault proxy", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("binding the fault proxy", e))?
            .port();
        let rules = Arc::new(Mutex::new(Rules::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let shared_rules = rules.clone();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::io("starting the proxy's runtime", e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = kube::Client::try_from(upstream)
                    .map_err(Error::from)
                    .and_then(|client| {
                        tokio::net::TcpListener::from_std(listener)
                            .map(|l| (client, l))
                            .map_err(|e| Error::io("listening", e))
                    });
                let (client, listener) = match started {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(Shared {
                    rules: shared_rules,
                    upstream: client,
                });
                let app = axum::Router::new().fallback(forward).with_state(shared);
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx.recv().map_err(|_| {
            Error::io(
                "starting the fault proxy",
                std::io::Error::other("its thread ended"),
            )
        })??;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            rules,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig for clients of the proxy (no credential: the proxy adds its own).
    pub fn kubeconfig_yaml(&self) -> String {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "none", "user": {}}],
            "contexts": [{"name": "fault-proxy", "context": {"cluster": "fault-proxy", "user": "none", "namespace": "default"}}],
            "current-context": "fault-proxy",
        });
        serde_yaml::to_string(&config).unwrap_or_default()
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn inject(&self, fault: Fault) {
        self.rules().faults.push(fault);
    }

    /// [`Self::inject`] from its JSON form.
    pub fn inject_json(&self, fault: Value) {
        match serde_json::from_value(fault) {
            Ok(f) => self.inject(f),
            Err(e) => panic!("not a fault: {e}"),
        }
    }

    pub fn clear_faults(&self) {
        self.rules().faults.clear();
    }

    pub fn edit_before_next_write(&self, edit: ConcurrentEdit) {
        self.rules().edits.push(edit);
    }

    /// [`Self::edit_before_next_write`] from its JSON form.
    pub fn edit_before_next_write_json(&self, edit: Value) {
        match serde_json::from_value(edit) {
            Ok(e) => self.edit_before_next_write(e),
            Err(e) => panic!("not a concurrent edit: {e}"),
        }
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let target = Target::parse(&parts.method, parts.uri.path(), parts.uri.query());
    if let Some(target) = &target {
        let (fault, edit) = {
            let mut rules = shared.rules.lock().unwrap_or_else(PoisonError::into_inner);
            (rules.fault_for(target), rules.take_edit(target))
        };
        if let Some((code, message, delay)) = fault {
            if let Some(ms) = delay {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            if code != 0 {
                return status_response(code, target, message);
            }
        }
        if let Some(edit) = edit
            && let Err(e) = apply_edit(&shared.upstream, &parts.uri, &edit).await
        {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("concurrent edit failed: {e}"),
            );
        }
    }
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut upstream = Request::builder().method(parts.method).uri(path);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::AUTHORIZATION && name != header::HOST {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(kube::client::Body::from(bytes)) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match shared.upstream.send(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in [
                header::CONNECTION,
                header::TRANSFER_ENCODING,
                header::CONTENT_LENGTH,
            ] {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, format!("upstream: {e}")),
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == "keep-alive"
}

/// The other client's merge patch, sent to the object the write is for.
async fn apply_edit(
    client: &kube::Client,
    uri: &http::Uri,
    edit: &ConcurrentEdit,
) -> Result<(), kube::Error> {
    let request = Request::patch(uri.path())
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(edit.merge_patch.to_string().into_bytes())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await.map(|_| ())
}

fn plain(code: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = code;
    response
}

/// A `Status` shaped the way kube-apiserver words each code.
fn status_response(code: u16, target: &Target, message: Option<String>) -> Response {
    let name = target.name.as_deref().unwrap_or("");
    let ns = target.namespace.as_deref().unwrap_or("");
    let qualified = if target.group.is_empty() {
        target.resource.clone()
    } else {
        format!("{}.{}", target.resource, target.group)
    };
    let (reason, default_message) = match code {
        403 => (
            "Forbidden",
            format!(
                "{qualified} \"{name}\" is forbidden: User \"credsync\" cannot {} resource \"{}\" in API group \"{}\" in the namespace \"{ns}\"",
                target.verb, target.resource, target.group
            ),
        ),
        404 => ("NotFound", format!("{qualified} \"{name}\" not found")),
        409 => (
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        ),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".to_owned(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_owned(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted".to_owned(),
        ),
        _ => (
            "InternalError",
            format!("Internal error occurred: injected fault {code}"),
        ),
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.unwrap_or(default_message),
        "reason": reason,
        "details": {"name": name, "group": target.group, "kind": target.resource},
        "code": code,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if code == 429 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(value: Value) -> Fault {
        serde_json::from_value(value).unwrap()
    }

    fn patch_secret() -> Target {
        Target::parse(
            &http::Method::PATCH,
            "/api/v1/namespaces/ns/secrets/app",
            None,
        )
        .unwrap()
    }

    #[test]
    fn times_fires_that_often_then_the_fault_is_gone() {
        let mut rules = Rules::default();
        rules.faults.push(fault(
            json!({"verb": "patch", "resource": "secrets", "status": 409, "times": 2}),
        ));
        let hits: Vec<_> = (0..4)
            .map(|_| rules.fault_for(&patch_secret()).map(|h| h.0))
            .collect();
        assert_eq!(hits, [Some(409), Some(409), None, None]);
        assert!(rules.faults.is_empty());
    }

    #[test]
    fn every_fires_on_each_kth_request_and_other_verbs_pass() {
        let mut rules = Rules::default();
        rules.faults.push(fault(
            json!({"resource": "secrets", "status": 500, "every": 2}),
        ));
        let hits: Vec<_> = (0..4)
            .map(|_| rules.fault_for(&patch_secret()).is_some())
            .collect();
        assert_eq!(hits, [false, true, false, true]);
        let lease = Target::parse(
            &http::Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
            None,
        )
        .unwrap();
        assert!(rules.fault_for(&lease).is_none());
    }

    #[test]
    fn an_edit_waits_for_a_real_write_of_its_object() {
        let mut rules = Rules::default();
        rules.edits.push(
            serde_json::from_value(json!({"namespace": "ns", "name": "app", "merge_patch": {}}))
                .unwrap(),
        );
        let dry = Target::parse(
            &http::Method::PATCH,
            "/api/v1/namespaces/ns/secrets/app",
            Some("dryRun=All"),
        )
        .unwrap();
        let get = Target::parse(
            &http::Method::GET,
            "/api/v1/namespaces/ns/secrets/app",
            None,
        )
        .unwrap();
        assert!(rules.take_edit(&dry).is_none());
        assert!(rules.take_edit(&get).is_none());
        assert!(rules.take_edit(&patch_secret()).is_some());
        assert!(rules.take_edit(&patch_secret()).is_none(), "once");
    }

    #[test]
    fn a_fault_answers_like_the_api_server() {
        let response = status_response(403, &patch_secret(), None);
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
