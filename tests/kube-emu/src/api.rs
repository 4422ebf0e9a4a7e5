//! The HTTP side: routing of Kubernetes API paths, discovery, the verbs,
//! watch streams, and the /_emu/ test hooks.
//!
//! Kubernetes paths are parsed by hand in one fallback handler: the URL
//! shapes (/api/v1/..., /apis/GROUP/VERSION/..., namespaced or not) are easier
//! to read as one `match` than as a dozen overlapping routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::SinkExt;
use futures::channel::mpsc;
use serde_json::{Value, json};

use crate::emu::{BeforeWrite, Emu, Fault, RequestInfo};
use crate::patch::PatchKind;
use crate::proto;
use crate::select::Selector;
use crate::store::{
    ApiError, Event, EventType, RESOURCES, ResourceType, Store, find_resource, meta_str, verbs,
};

pub struct AppState {
    pub store: Mutex<Store>,
    pub emu: Mutex<Emu>,
    pub token: String,
    pub bookmark_every: Duration,
    /// host:port, for /api's serverAddressByClientCIDRs.
    pub address: String,
}

impl AppState {
    /// A poisoned lock only means another request panicked; the data is still usable.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn emu(&self) -> MutexGuard<'_, Emu> {
        self.emu.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_emu/stats", get(stats))
        .route("/_emu/stats/reset", post(reset_stats))
        .route("/_emu/faults", post(add_fault).delete(clear_faults))
        .route("/_emu/before-write", post(before_write))
        .route("/_emu/compact", post(compact))
        .fallback(kube_api)
        .with_state(state)
}

// ---------------------------------------------------------------- responses

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let text = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn error_response(err: &ApiError) -> Response {
    let mut status = err.status();
    let mut resp_headers = vec![];
    if err.code == 429 {
        status["details"] = json!({"retryAfterSeconds": 1});
        resp_headers.push((header::RETRY_AFTER, "1"));
    }
    let mut resp = json_response(err.code, &status);
    for (k, v) in resp_headers {
        resp.headers_mut()
            .insert(k, axum::http::HeaderValue::from_static(v));
    }
    resp
}

fn success_status(res: &ResourceType, obj: &Value) -> Value {
    let mut details =
        json!({"name": meta_str(obj, "name"), "kind": res.plural, "uid": meta_str(obj, "uid")});
    if !res.group.is_empty() {
        details["group"] = json!(res.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// The Status a real server would send for an injected fault of this code.
fn fault_error(
    code: u16,
    verb: &str,
    res: &ResourceType,
    name: &str,
    ns: &str,
    message: Option<String>,
) -> ApiError {
    let (reason, default_msg) = match code {
        400 => ("BadRequest", "the server rejected our request for an unknown reason".to_string()),
        401 => ("Unauthorized", "Unauthorized".to_string()),
        403 => (
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: User \"kube-emu\" cannot {verb} resource \"{}\" in API group \"{}\" in the namespace \"{ns}\"",
                res.qualified(),
                res.plural,
                res.group
            ),
        ),
        404 => ("NotFound", format!("{} \"{name}\" not found", res.qualified())),
        409 => (
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        ),
        410 => ("Expired", "too old resource version".to_string()),
        422 => ("Invalid", format!("{} \"{name}\" is invalid", res.kind)),
        429 => ("TooManyRequests", "Too many requests, please try again later.".to_string()),
        500 => ("InternalError", "Internal error occurred: injected fault (kube-emu)".to_string()),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request".to_string()),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted, but may still be processing the request".to_string(),
        ),
        _ => ("Unknown", "an error on the server (\"injected fault\") has prevented the request from succeeding".to_string()),
    };
    ApiError::new(code, reason, message.unwrap_or(default_msg))
}

/// List items are sent without kind/apiVersion, as a real server does.
fn list_item(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

// ---------------------------------------------------------------- discovery

fn discovery(state: &AppState, segs: &[&str]) -> Option<Value> {
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = RESOURCES
            .iter()
            .map(|r| r.group)
            .filter(|g| !g.is_empty())
            .collect();
        g.dedup();
        g
    };
    let group_json = |g: &str| {
        let v = RESOURCES
            .iter()
            .find(|r| r.group == g)
            .map_or("v1", |r| r.version);
        let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
        json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
    };
    let resource_list = |group: &str, version: &str| {
        let resources: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .map(|r| {
                json!({
                    "name": r.plural,
                    "singularName": r.singular,
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": verbs(),
                    "shortNames": r.short_names,
                })
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    };
    match segs {
        ["version"] => Some(json!({
            "major": "1", "minor": "34", "gitVersion": "v1.34.0", "gitCommit": "kube-emu",
            "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
            "compiler": "gc", "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.address}],
        })),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis"] => Some(json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": groups.iter().map(|g| group_json(g)).collect::<Vec<_>>(),
        })),
        ["apis", g] if groups.contains(g) => {
            let mut v = group_json(g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            Some(v)
        }
        ["apis", g, v] if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) => {
            Some(resource_list(g, v))
        }
        ["openapi", "v3"] => Some(openapi_v3_root()),
        ["openapi", "v3", "api", "v1"] => Some(openapi_v3_doc("", "v1")),
        ["openapi", "v3", "apis", g, v]
            if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) =>
        {
            Some(openapi_v3_doc(g, v))
        }
        _ => None,
    }
}

/// A skeleton OpenAPI v3 document for one group/version. kubectl apply and
/// create only look here to learn that PATCH takes `fieldValidation` (so it
/// validates server-side instead of downloading full schemas); component
/// schemas are left out so it computes strategic patches from its built-in types.
fn openapi_v3_doc(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        let op = json!({
            "operationId": format!("patch{}", r.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
            "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

/// The /openapi/v3 index; the hash changes whenever a document would.
fn openapi_v3_root() -> Value {
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    let mut paths = serde_json::Map::new();
    for (g, v) in gvs {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        // FNV-1a of the document, as a cache key for the client.
        let text = openapi_v3_doc(g, v).to_string();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash:016X}")}),
        );
    }
    json!({"paths": paths})
}

// ---------------------------------------------------------------- routing

/// A parsed resource URL.
struct Target {
    res: &'static ResourceType,
    /// The namespace in the URL; None for cluster-scoped or all-namespaces.
    ns: Option<String>,
    name: Option<String>,
}

fn parse_target(segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| find_resource(group, version, plural);
    let target = |res, ns: Option<&str>, name: Option<&str>| Target {
        res,
        ns: ns.map(str::to_string),
        name: name.map(str::to_string),
    };
    match rest {
        ["namespaces", ns, plural] => find(plural)
            .filter(|r| r.namespaced)
            .map(|r| target(r, Some(ns), None)),
        ["namespaces", ns, plural, name] => find(plural)
            .filter(|r| r.namespaced)
            .map(|r| target(r, Some(ns), Some(name))),
        [plural] => find(plural).map(|r| target(r, None, None)),
        [plural, name] => find(plural)
            .filter(|r| !r.namespaced)
            .map(|r| target(r, None, Some(name))),
        _ => None,
    }
}

fn not_found_path() -> Response {
    error_response(&ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ))
}

fn parse_body(content_type: &str, body: &Bytes) -> Result<Option<Value>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    if content_type.contains("protobuf") {
        return proto::decode(body)
            .map(Some)
            .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
    }
    let value = if content_type.contains("yaml") {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })?
    };
    Ok(Some(value))
}

/// Every Kubernetes API request lands here.
async fn kube_api(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = handle(&state, &method, &uri, &headers, &body).await;
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), "request");
    resp
}

async fn handle(
    state: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    // kubectl (client-go) never sends a bearer token over plain http, so a
    // missing Authorization header is let through; a wrong one is refused.
    let authorized = match headers.get(header::AUTHORIZATION) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == state.token),
    };
    if !authorized {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    if *method == Method::GET
        && let Some(doc) = discovery(state, &segs)
    {
        return json_response(200, &doc);
    }
    let Some(target) = parse_target(&segs) else {
        return not_found_path();
    };
    let query: HashMap<String, String> = Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or("");
    let is_watch = matches!(q("watch"), "true" | "1");
    let verb = match (method.as_str(), &target.name) {
        ("GET", _) if is_watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", None) => "create",
        ("PUT", Some(_)) => "update",
        ("PATCH", Some(_)) => "patch",
        ("DELETE", Some(_)) => "delete",
        _ => {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".to_string(),
            ));
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("cbor") {
        return error_response(&ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    let parsed = parse_body(content_type, body);
    let body_value = parsed.as_ref().ok().cloned().flatten();
    let dry_run = match q("dryRun") {
        "" => body_value
            .as_ref()
            .and_then(|b| b.get("dryRun"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All")),
        "All" => true,
        other => {
            return error_response(&ApiError::bad_request(format!(
                "Invalid dry run value: {other:?}; supported values: \"All\""
            )));
        }
    };
    let ns = target.ns.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let fault = {
        let mut emu = state.emu();
        emu.record(&RequestInfo {
            verb,
            resource: target.res.plural,
            namespace: &ns,
            name: &name,
            dry_run,
            content_type,
            body: body_value
                .clone()
                .or_else(|| (!body.is_empty()).then(|| json!(String::from_utf8_lossy(body)))),
        });
        emu.fault_for(verb, target.res.plural)
    };
    if let Some((code, message)) = fault {
        return error_response(&fault_error(code, verb, target.res, &name, &ns, message));
    }
    let body_value = match parsed {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let needs_body = matches!(verb, "create" | "update" | "patch");
    let body_value = match body_value {
        Some(b) => b,
        None if needs_body => {
            return error_response(&ApiError::bad_request("the request body is empty"));
        }
        None => Value::Null,
    };
    let res = target.res;
    let result = match verb {
        "list" => return list(state, res, target.ns.as_deref(), &query, headers),
        "watch" => return watch(state.clone(), res, target.ns, target.name, &query, headers),
        "get" => state.store().get(res, &ns, &name).map(|o| (200, o)),
        "create" => state
            .store()
            .create(res, &ns, body_value, dry_run)
            .map(|o| (201, o)),
        "update" | "patch" => {
            let kind = if verb == "patch" {
                match PatchKind::from_content_type(content_type) {
                    Some(k) => Some(k),
                    None => {
                        return error_response(&ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?}; server-side apply is not emulated)"
                            ),
                        ));
                    }
                }
            } else {
                None
            };
            let hook = if dry_run {
                None
            } else {
                state.emu().take_before_write(res.plural, &ns, &name)
            };
            let mut store = state.store();
            if let Some(hook) = hook {
                apply_before_write(&mut store, res, &hook);
            }
            match kind {
                Some(k) => store.patch(res, &ns, &name, k, &body_value, dry_run),
                None => store.update(res, &ns, &name, body_value, dry_run),
            }
            .map(|o| (200, o))
        }
        "delete" => state
            .store()
            .delete(res, &ns, &name, &body_value, dry_run)
            .map(|o| (200, success_status(res, &o))),
        _ => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
    };
    match result {
        Ok((code, obj)) => json_response(code, &obj),
        Err(e) => error_response(&e),
    }
}

/// The simulated concurrent edit: a merge patch by "another client".
fn apply_before_write(store: &mut Store, res: &'static ResourceType, hook: &BeforeWrite) {
    if let Err(e) = store.patch(
        res,
        &hook.namespace,
        &hook.name,
        PatchKind::Merge,
        &hook.merge_patch,
        false,
    ) {
        tracing::warn!(error = %e.message, "before-write hook could not be applied");
    }
}

// ---------------------------------------------------------------- list

fn list(
    state: &AppState,
    res: &'static ResourceType,
    ns: Option<&str>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or("");
    let sel = match Selector::parse(res, q("labelSelector"), q("fieldSelector")) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let (all, rv) = {
        let store = state.store();
        (store.list(res, ns), store.resource_version())
    };
    let mut items: Vec<Value> = all.into_iter().filter(|o| sel.matches(o)).collect();
    // Pagination: `continue` is the (namespace, name) of the last item sent.
    if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
        let after = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            });
        let Some((after_ns, after_name)) = after else {
            return error_response(&ApiError::bad_request(
                "continue key is not valid: illegal base64 data",
            ));
        };
        items.retain(|o| {
            (meta_str(o, "namespace"), meta_str(o, "name"))
                > (after_ns.as_str(), after_name.as_str())
        });
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    let limit = q("limit").parse::<usize>().unwrap_or(0);
    if limit > 0 && items.len() > limit {
        let rest = items.split_off(limit);
        if let Some(last) = items.last() {
            let token = URL_SAFE_NO_PAD.encode(format!(
                "{}/{}",
                meta_str(last, "namespace"),
                meta_str(last, "name")
            ));
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(rest.len());
        }
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("as=Table") {
        return json_response(200, &table(res, &items, metadata, q("includeObject")));
    }
    json_response(
        200,
        &json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": items.into_iter().map(list_item).collect::<Vec<_>>(),
        }),
    )
}

/// Server-side printing for `kubectl get` (meta.k8s.io/v1 Table).
fn table(res: &ResourceType, items: &[Value], metadata: Value, include_object: &str) -> Value {
    let col = |name: &str, ty: &str, format: &str| json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0});
    let mut columns = vec![col("Name", "string", "name")];
    if res.is("", "secrets") {
        columns.push(col("Type", "string", ""));
        columns.push(col("Data", "string", ""));
    }
    if res.is("", "namespaces") {
        columns.push(col("Status", "string", ""));
    }
    columns.push(col("Age", "string", ""));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![json!(meta_str(o, "name"))];
            if res.is("", "secrets") {
                cells.push(o.get("type").cloned().unwrap_or(json!("Opaque")));
                cells.push(json!(o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())));
            }
            if res.is("", "namespaces") {
                cells.push(json!("Active"));
            }
            cells.push(json!(age(meta_str(o, "creationTimestamp"))));
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns, "rows": rows})
}

/// "5s", "3m", "2h", "4d" since an RFC 3339 timestamp written by this process.
fn age(created: &str) -> String {
    let now = crate::store::now_rfc3339();
    let secs = |t: &str| -> Option<i64> {
        let (date, time) = t.trim_end_matches('Z').split_once('T')?;
        let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
        let h: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
        if d.len() != 3 || h.len() != 3 {
            return None;
        }
        // Good enough for ages within one process lifetime: month lengths are approximated.
        Some((((d[0] * 372 + d[1] * 31 + d[2]) * 24 + h[0]) * 60 + h[1]) * 60 + h[2])
    };
    let Some(s) = secs(&now).zip(secs(created)).map(|(a, b)| (a - b).max(0)) else {
        return "<unknown>".into();
    };
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

// ---------------------------------------------------------------- watch

enum WatchStart {
    /// No resourceVersion, "0", or sendInitialEvents: synthetic ADDED first.
    Initial,
    From(u64),
}

struct WatchSpec {
    res: &'static ResourceType,
    ns: Option<String>,
    sel: Selector,
    start: WatchStart,
    timeout: Duration,
    bookmarks: bool,
    send_initial_events: bool,
    /// `includeObject` when the client asked for Table rows (kubectl get -w).
    table: Option<String>,
}

impl WatchSpec {
    /// The event's object as the client asked for it: itself or a one-row Table.
    fn shown(&self, obj: &Value) -> Value {
        match &self.table {
            Some(include) => {
                let meta = json!({"resourceVersion": meta_str(obj, "resourceVersion")});
                table(self.res, std::slice::from_ref(obj), meta, include)
            }
            None => obj.clone(),
        }
    }
}

fn watch(
    state: Arc<AppState>,
    res: &'static ResourceType,
    ns: Option<String>,
    name: Option<String>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or("");
    let sel = match Selector::parse(res, q("labelSelector"), q("fieldSelector")) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let table = accept
        .contains("as=Table")
        .then(|| q("includeObject").to_string());
    let sel = match &name {
        Some(n) => sel.with_name(n),
        None => sel,
    };
    let send_initial_events = q("sendInitialEvents") == "true";
    let start = match q("resourceVersion") {
        "" | "0" => WatchStart::Initial,
        _ if send_initial_events => WatchStart::Initial,
        rv => match rv.parse::<u64>() {
            Ok(n) => WatchStart::From(n),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version: {rv}"
                )));
            }
        },
    };
    let timeout = Duration::from_secs(
        q("timeoutSeconds")
            .parse::<u64>()
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(1800),
    );
    let bookmarks = q("allowWatchBookmarks") == "true";
    let spec = WatchSpec {
        res,
        ns,
        sel,
        start,
        timeout,
        bookmarks,
        send_initial_events,
        table,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(run_watch(state, spec, tx));
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(rx))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What a watcher with this spec sees of an event, if anything. A MODIFIED
/// object that starts or stops matching the selector becomes ADDED or DELETED.
fn visible<'a>(spec: &WatchSpec, ev: &'a Event) -> Option<(&'static str, &'a Value)> {
    if !ev.resource.is(spec.res.group, spec.res.plural) {
        return None;
    }
    if let Some(ns) = &spec.ns
        && spec.res.namespaced
        && ev.namespace != *ns
    {
        return None;
    }
    let now = spec.sel.matches(&ev.object);
    let before = ev.old.as_ref().map(|o| spec.sel.matches(o));
    match (ev.kind, before, now) {
        (EventType::Modified, Some(false), true) => Some(("ADDED", &ev.object)),
        (EventType::Modified, Some(true), false) => Some(("DELETED", &ev.object)),
        (kind, _, true) => Some((kind.as_str(), &ev.object)),
        _ => None,
    }
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends one event line; false when the client has gone away.
async fn send_event(tx: &mut Tx, kind: &str, object: &Value) -> bool {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}

fn bookmark(res: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": metadata})
}

fn expired(rv: u64, oldest: u64) -> Value {
    ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {rv} ({oldest})"),
    )
    .status()
}

async fn run_watch(state: Arc<AppState>, spec: WatchSpec, mut tx: Tx) {
    let deadline = tokio::time::Instant::now() + spec.timeout;
    // Subscribe and snapshot under one lock so that no event falls in between.
    let snapshot = {
        let store = state.store();
        let changes = store.subscribe();
        match spec.start {
            WatchStart::Initial => {
                let objs: Vec<Value> = store
                    .list(spec.res, spec.ns.as_deref())
                    .into_iter()
                    .filter(|o| spec.sel.matches(o))
                    .collect();
                Ok((changes, store.resource_version(), objs))
            }
            WatchStart::From(rv) => match store.events_since(rv) {
                Ok(_) => Ok((changes, rv, vec![])),
                Err(oldest) => Err(expired(rv, oldest)),
            },
        }
    };
    let (mut changes, mut last_rv, initial) = match snapshot {
        Ok(s) => s,
        Err(status) => {
            send_event(&mut tx, "ERROR", &status).await;
            return;
        }
    };
    for obj in &initial {
        if !send_event(&mut tx, "ADDED", &spec.shown(obj)).await {
            return;
        }
    }
    if spec.send_initial_events
        && spec.bookmarks
        && !send_event(&mut tx, "BOOKMARK", &bookmark(spec.res, last_rv, true)).await
    {
        return;
    }
    let mut ticker = tokio::time::interval(state.bookmark_every);
    ticker.tick().await;
    loop {
        // Drain everything after last_rv before waiting again.
        let drained = {
            let store = state.store();
            store
                .events_since(last_rv)
                .map(|evs| (evs, store.resource_version()))
        };
        let (events, head) = match drained {
            Ok(x) => x,
            Err(oldest) => {
                send_event(&mut tx, "ERROR", &expired(last_rv, oldest)).await;
                return;
            }
        };
        for ev in &events {
            if let Some((kind, obj)) = visible(&spec, ev)
                && !send_event(&mut tx, kind, &spec.shown(obj)).await
            {
                return;
            }
        }
        last_rv = last_rv.max(head);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = ticker.tick(), if spec.bookmarks => {
                if !send_event(&mut tx, "BOOKMARK", &bookmark(spec.res, last_rv, false)).await {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- /_emu hooks

async fn stats(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.emu().stats())
}

async fn reset_stats(State(state): State<Arc<AppState>>) -> Json<Value> {
    state.emu().reset_stats();
    Json(json!({"ok": true}))
}

async fn add_fault(State(state): State<Arc<AppState>>, Json(fault): Json<Fault>) -> Json<Value> {
    state.emu().add_fault(fault);
    Json(json!({"ok": true}))
}

async fn clear_faults(State(state): State<Arc<AppState>>) -> Json<Value> {
    state.emu().clear_faults();
    Json(json!({"ok": true}))
}

async fn before_write(
    State(state): State<Arc<AppState>>,
    Json(hook): Json<BeforeWrite>,
) -> Json<Value> {
    state.emu().add_before_write(hook);
    Json(json!({"ok": true}))
}

/// Drops the watch history, so resuming watches get 410 Gone and must re-list.
async fn compact(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut store = state.store();
    store.compact();
    Json(json!({"ok": true, "resourceVersion": store.resource_version().to_string()}))
}
