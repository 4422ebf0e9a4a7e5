//! The self-service API of `credsync run --self-service`: a team writes its
//! own namespace's secrets with its own Kubernetes token, no AWS access.
//!
//! - `PUT /v1/secrets/{namespace}/{secret}/{KEY}`: the body is the value;
//!   stored as the next version of `namespace/secret/KEY` (a conditional
//!   put: a concurrent writer gets 409, never an overwrite). `If-Match:
//!   VERSION` refuses the write unless that is still the latest version.
//! - `DELETE` of the same path: every version, as `credstash delete`.
//! - `GET /v1/secrets/{namespace}`: names and latest versions, never values.
//!
//! Every call is authenticated by a TokenReview and authorized by a
//! SubjectAccessReview on `credentials.credsync.io` in the namespace
//! (verbs create, update, delete, list), before the table is touched. Who
//! wrote what is recorded without the value: an audit log line, an Event on
//! the Secret, and the snapshot commit that carries the change.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::{ServerState, bearer_token, error};
use crate::cluster::events::EventType;
use crate::cluster::review::{Caller, TokenVerdict};
use crate::credstash::{NewItem, PutVersion, WriteItemError, padded_version};
use crate::daemon::trigger::{ReconcileRequest, Trigger};
use crate::manifest::is_dns1123_label;
use crate::secret::SecretValue;
use crate::source::ItemId;

/// Settings of the self-service API, resolved once at start-up.
#[derive(Debug, Clone)]
pub struct SelfService {
    /// KMS key of the data keys (`--key-id`).
    pub key_id: String,
    /// Largest value accepted; larger bodies get 413.
    pub max_value_bytes: usize,
    /// The namespaces this cluster is the authority for
    /// (`--self-service-namespaces`): every other one is refused, however
    /// RBAC answers, because the table's names carry no cluster.
    pub namespaces: BTreeSet<String>,
    /// What the API remembers between calls.
    pub memory: Arc<Memory>,
}

/// How long a value may take to arrive once its headers have: a value of
/// 64 KiB takes milliseconds; a body that never comes must not hold a
/// connection.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Values being received at once; past this, 503 at once (the connection
/// slots stay free for everyone else, probes included).
const BODY_READS: usize = 64;
/// How long a TokenReview's answer (a refusal too) is reused.
const REVIEW_TTL: Duration = Duration::from_secs(10);
/// Answers remembered at most; past this, nothing new is cached.
const MAX_REVIEWS: usize = 4096;
/// TokenReviews in flight at once: a flood of made-up tokens waits here
/// rather than hammering the API server.
const REVIEWS_IN_FLIGHT: usize = 16;
/// One listing (a Scan of the table) per caller per this long.
const LIST_WINDOW: Duration = Duration::from_secs(2);

/// The longest a self-service call may take in all (reviews, the table,
/// the value's arrival): a connection is never held longer by one.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Ends a self-service call that takes longer than [`CALL_DEADLINE`] with
/// 503 (nothing half-written: the table write is one conditional put).
pub(super) async fn deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(CALL_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the call took too long (the API server or the table is slow): retry",
        )
        .into_response(),
    }
}

/// Reviews, listings and bodies in flight, shared by every call.
#[derive(Debug)]
pub struct Memory {
    /// SHA-256 of a token -> when it was reviewed and the verdict.
    reviews: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
    reviewing: Semaphore,
    /// Tokens being reviewed now, so a burst of one token costs one review.
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    /// Caller -> when their last listing was served.
    listings: Mutex<HashMap<String, Instant>>,
    bodies: Semaphore,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            reviews: Mutex::new(HashMap::new()),
            reviewing: Semaphore::new(REVIEWS_IN_FLIGHT),
            in_flight: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            bodies: Semaphore::new(BODY_READS),
        }
    }
}

/// A call's share of the one review of its token; dropping the last share
/// removes the entry (a call the client gave up on included).
struct InFlight<'m> {
    memory: &'m Memory,
    key: [u8; 32],
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'m> InFlight<'m> {
    fn join(memory: &'m Memory, key: [u8; 32]) -> Self {
        let lock = match memory.in_flight.lock() {
            // Past the cap a call reviews on its own: no entry to leak.
            Ok(mut map) if map.len() < MAX_REVIEWS || map.contains_key(&key) => {
                map.entry(key).or_default().clone()
            }
            _ => Arc::default(),
        };
        Self { memory, key, lock }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.memory.in_flight.lock()
            && map.get(&self.key).is_some_and(|held| Arc::ptr_eq(held, &self.lock))
            // The map's own reference and this one: no other call waits.
            && Arc::strong_count(&self.lock) == 2
        {
            map.remove(&self.key);
        }
    }
}

/// A TokenReview's answer, as cached.
#[derive(Debug, Clone)]
enum Verdict {
    Caller(Caller),
    Refused(String),
}

/// A refusal: the status and a message that says what to do.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    /// Closes the connection: a refused request's body is never read, and a
    /// connection left waiting for it would hold a slot.
    fn into_response(self) -> Response {
        let mut response = error(self.status, self.message);
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        response
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

fn service(state: &ServerState) -> Result<&SelfService, Refused> {
    state.self_service.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "the self-service API is off: start credsync run with --self-service",
        )
    })
}

/// The caller behind the bearer token, as a TokenReview reports them. An
/// answer (a refusal too) is reused for a few seconds, keyed by the
/// token's hash: a client retrying, or a flood of one bad token, costs one
/// review. A review that failed is not kept.
async fn authenticate(
    state: &ServerState,
    service: &SelfService,
    headers: &HeaderMap,
) -> Result<Caller, Refused> {
    let Some(token) = bearer_token(headers) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no token: send your Kubernetes token as Authorization: Bearer TOKEN \
             (the one kubectl uses; credsync put --server sends it for you)",
        ));
    };
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let memory = &service.memory;
    let cached = || {
        memory.reviews.lock().ok().and_then(|reviews| {
            reviews
                .get(&key)
                .filter(|(at, _)| at.elapsed() < REVIEW_TTL)
                .map(|(_, verdict)| verdict.clone())
        })
    };
    let verdict = match cached() {
        Some(verdict) => verdict,
        None => {
            // One review per token at a time: calls with the same token
            // wait for the first one's answer. The entry goes with the last
            // call holding it, whichever way that call ends.
            let same_token = InFlight::join(memory, key);
            let _same = same_token.lock.lock().await;
            let _slot = memory.reviewing.acquire().await.map_err(|_| {
                refuse(StatusCode::SERVICE_UNAVAILABLE, "credsync is shutting down")
            })?;
            // Answered while this call waited its turn?
            if let Some(verdict) = cached() {
                return match verdict {
                    Verdict::Caller(caller) => Ok(caller),
                    Verdict::Refused(reason) => Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        format!("the API server did not accept the token: {reason}"),
                    )),
                };
            }
            let verdict = match state.context.cluster.review_token(token).await {
                Ok(TokenVerdict::Authenticated(caller)) => Verdict::Caller(caller),
                Ok(TokenVerdict::Refused(reason)) => Verdict::Refused(reason),
                Err(err) => {
                    tracing::error!(error = %crate::errors::Chain(&err), "TokenReview failed");
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("cannot check the token now: {}", crate::errors::chain(&err)),
                    ));
                }
            };
            if let Ok(mut reviews) = memory.reviews.lock() {
                if reviews.len() >= MAX_REVIEWS {
                    reviews.retain(|_, (at, _)| at.elapsed() < REVIEW_TTL);
                }
                if reviews.len() < MAX_REVIEWS {
                    reviews.insert(key, (Instant::now(), verdict.clone()));
                }
            }
            verdict
        }
    };
    match verdict {
        Verdict::Caller(caller) => Ok(caller),
        Verdict::Refused(reason) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("the API server did not accept the token: {reason}"),
        )),
    }
}

/// Refuses a namespace this cluster is not the authority for, or one that
/// does not exist here: RBAC in this cluster says nothing about the same
/// name in another cluster on the same table.
async fn authority(
    state: &ServerState,
    service: &SelfService,
    namespace: &str,
) -> Result<(), Refused> {
    if !service.namespaces.contains(namespace) {
        let listed: Vec<&str> = service.namespaces.iter().map(String::as_str).collect();
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "this credsync is not the authority for namespace '{namespace}': it writes only \
                 for {} (--self-service-namespaces); the table is shared by every cluster that \
                 reads it, so write where that namespace is listed",
                listed.join(", ")
            ),
        ));
    }
    match state.context.cluster.namespace_exists(namespace).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("namespace '{namespace}' does not exist in this cluster"),
        )),
        Err(err) => {
            tracing::error!(error = %crate::errors::Chain(&err), "namespace lookup failed");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot check the namespace now: {}",
                    crate::errors::chain(&err)
                ),
            ))
        }
    }
}

/// One listing per caller per [`LIST_WINDOW`]: each is a Scan of the table.
fn list_rate(service: &SelfService, caller: &Caller) -> Result<(), Refused> {
    let Ok(mut listings) = service.memory.listings.lock() else {
        return Ok(());
    };
    let now = Instant::now();
    if let Some(last) = listings.get(&caller.username) {
        let wait = LIST_WINDOW.saturating_sub(now.duration_since(*last));
        if !wait.is_zero() {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "one listing every {} s per caller: retry in {} ms",
                    LIST_WINDOW.as_secs(),
                    wait.as_millis()
                ),
            ));
        }
    }
    if listings.len() >= MAX_REVIEWS {
        listings.retain(|_, at| now.duration_since(*at) < LIST_WINDOW);
    }
    if listings.len() < MAX_REVIEWS {
        listings.insert(caller.username.clone(), now);
    }
    Ok(())
}

/// Reads a value, after the caller was authenticated and authorized: at
/// most [`BODY_READS`] at once, each within [`BODY_DEADLINE`].
async fn read_value(service: &SelfService, body: Body) -> Result<SecretValue, Refused> {
    let Ok(_slot) = service.memory.bodies.try_acquire() else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many values being received at once: retry in a moment",
        ));
    };
    let read = tokio::time::timeout(
        BODY_DEADLINE,
        axum::body::to_bytes(body, service.max_value_bytes),
    )
    .await
    .map_err(|_| {
        refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the value did not arrive within {} s of the headers",
                BODY_DEADLINE.as_secs()
            ),
        )
    })?;
    let bytes = read.map_err(|err| {
        let too_large = std::error::Error::source(&err)
            .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the value is over the limit of {} bytes",
                    service.max_value_bytes
                ),
            )
        } else {
            refuse(StatusCode::BAD_REQUEST, "cannot read the value")
        }
    })?;
    Ok(SecretValue::new(bytes.to_vec()))
}

/// Which of `verbs` RBAC grants `caller` on credentials in `namespace`;
/// 403 naming the namespace if none.
async fn authorize<'v>(
    state: &ServerState,
    caller: &Caller,
    verbs: &[&'v str],
    namespace: &str,
    secret: Option<&str>,
) -> Result<BTreeSet<&'v str>, Refused> {
    // One review per verb, asked at once.
    let cluster = &state.context.cluster;
    let answers = futures::future::join_all(
        verbs
            .iter()
            .map(|verb| cluster.may(caller, verb, namespace, secret)),
    )
    .await;
    let mut granted = BTreeSet::new();
    for (verb, answer) in verbs.iter().zip(answers) {
        match answer {
            Ok(true) => {
                granted.insert(*verb);
            }
            Ok(false) => {}
            Err(err) => {
                tracing::error!(error = %crate::errors::Chain(&err), "SubjectAccessReview failed");
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "cannot check permissions now: {}",
                        crate::errors::chain(&err)
                    ),
                ));
            }
        }
    }
    if granted.is_empty() {
        return Err(forbidden(caller, verbs, namespace));
    }
    Ok(granted)
}

fn forbidden(caller: &Caller, verbs: &[&str], namespace: &str) -> Refused {
    refuse(
        StatusCode::FORBIDDEN,
        format!(
            "user '{}' may not {} credentials in namespace '{namespace}': a cluster admin grants it \
             with a RoleBinding in '{namespace}' to the ClusterRole credsync-credentials-editor \
             (or -viewer to list)",
            caller.username,
            verbs.join(" or ")
        ),
    )
}

/// The credstash name of a path, if it maps to a Secret key credsync writes.
fn target(
    state: &ServerState,
    namespace: &str,
    secret: &str,
    key: &str,
) -> Result<String, Refused> {
    let name = format!("{namespace}/{secret}/{key}");
    if let Err(reason) = state.context.mapping.map(&name) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("'{name}' does not map to a Secret key: {reason}"),
        ));
    }
    namespace_served(state, namespace)?;
    Ok(name)
}

/// 422 for a namespace credsync never writes: a value put there would
/// never reach a Secret.
fn namespace_served(state: &ServerState, namespace: &str) -> Result<(), Refused> {
    match state.context.reconciler.namespace_refusal(namespace) {
        None => Ok(()),
        Some(reason) => Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("credsync does not write Secrets in namespace '{namespace}': {reason}"),
        )),
    }
}

/// Records who did what, without the value: an audit log line, an Event on
/// the Secret, the author of the next snapshot commit; then asks for a
/// reconcile of the name at once.
async fn record(state: &ServerState, caller: &Caller, action: &str, item: &ItemId) {
    // The API server's words for who it is (an OIDC claim, say): escaped.
    let user = crate::text::one_line(&caller.username, 200);
    tracing::info!(
        target: "credsync::audit",
        user = %user,
        groups = ?caller.groups,
        action,
        item = %item.name,
        version = %item.version,
        "self-service write"
    );
    let deleted = action == "delete";
    state
        .context
        .reconciler
        .note_author(item.clone(), deleted, caller.username.clone());
    if let Ok(target) = state.context.mapping.map(&item.name) {
        let (reason, verb) = if deleted {
            ("CredentialDeleted", "Delete")
        } else {
            ("CredentialWritten", "Put")
        };
        let note = if deleted {
            format!(
                "{user} deleted key {} (item {}, every version) through the credsync API",
                target.key, item.name
            )
        } else {
            format!(
                "{user} put key {} (item {} version {}) through the credsync API",
                target.key, item.name, item.version
            )
        };
        if let Err(err) = state
            .context
            .cluster
            .event_on_secret(&target.secret, EventType::Normal, reason, verb, note)
            .await
        {
            tracing::warn!(error = %crate::errors::Chain(&err), "the Event about a self-service write was refused");
        }
    }
    let names = BTreeSet::from([item.name.clone()]);
    if state
        .requests
        .try_send(ReconcileRequest::names(Trigger::Http, Some(names)))
        .is_err()
    {
        tracing::warn!(item = %item.name, "reconcile queue full: the write reaches the cluster with the next reconcile");
    }
}

fn write_failed(err: &WriteItemError) -> Refused {
    let status = match err {
        WriteItemError::VersionExists { .. } => StatusCode::CONFLICT,
        WriteItemError::VersionNotNumeric { .. } => StatusCode::CONFLICT,
        WriteItemError::NotText => StatusCode::BAD_REQUEST,
        WriteItemError::NoSuchName(_) => StatusCode::NOT_FOUND,
        WriteItemError::DataKey { .. } | WriteItemError::Table { .. } => StatusCode::BAD_GATEWAY,
    };
    refuse(status, crate::errors::chain(err))
}

pub(super) async fn put(
    State(state): State<Arc<ServerState>>,
    Path((namespace, secret, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    put_inner(&state, &namespace, &secret, &key, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn put_inner(
    state: &ServerState,
    namespace: &str,
    secret: &str,
    key: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refused> {
    let service = service(state)?;
    // Who, where and whether, all from the headers: the body is read last,
    // so no one unauthorized can hold a connection by withholding it.
    let caller = authenticate(state, service, headers).await?;
    let name = target(state, namespace, secret, key)?;
    authority(state, service, namespace).await?;
    let granted = authorize(
        state,
        &caller,
        &["update", "create"],
        namespace,
        Some(secret),
    )
    .await?;
    let value = read_value(service, body).await?;
    if std::str::from_utf8(value.expose()).is_err() {
        return Err(write_failed(&WriteItemError::NotText));
    }
    let source = state.context.table.as_ref();
    let latest = source
        .latest_version(&name)
        .await
        .map_err(|e| write_failed(&e))?;
    let needed = if latest.is_some() { "update" } else { "create" };
    if !granted.contains(needed) {
        return Err(forbidden(&caller, &[needed], namespace));
    }
    if let Some(expected) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let expected = expected.trim().trim_matches('"');
        let same = match (expected.parse::<u64>(), &latest) {
            (Ok(n), Some(latest)) => padded_version(n) == *latest,
            _ => false,
        };
        if !same {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "{name} changed: its latest version is {}, not {expected}; read it again and retry",
                    latest.as_deref().unwrap_or("none")
                ),
            ));
        }
    }
    let version = match latest {
        None => 1,
        Some(latest) => match latest.trim().parse::<u64>() {
            Ok(n) => n.saturating_add(1),
            Err(_) => {
                return Err(write_failed(&WriteItemError::VersionNotNumeric {
                    name,
                    version: latest,
                }));
            }
        },
    };
    let written = source
        .put(NewItem {
            name: &name,
            value: &value,
            version: PutVersion::Exact(version),
            key_id: &service.key_id,
        })
        .await
        .map_err(|e| write_failed(&e))?;
    record(state, &caller, "put", &written).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": written.name,
            "version": written.version,
            "secret": { "namespace": namespace, "name": secret },
            "key": key,
        })),
    )
        .into_response())
}

pub(super) async fn delete(
    State(state): State<Arc<ServerState>>,
    Path((namespace, secret, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let result: Result<Response, Refused> = async {
        let service = service(&state)?;
        let caller = authenticate(&state, service, &headers).await?;
        let name = target(&state, &namespace, &secret, &key)?;
        authority(&state, service, &namespace).await?;
        authorize(&state, &caller, &["delete"], &namespace, Some(&secret)).await?;
        let deleted = state
            .context
            .table
            .delete(&name)
            .await
            .map_err(|e| write_failed(&e))?;
        let item = ItemId {
            name: name.clone(),
            version: String::new(),
        };
        record(&state, &caller, "delete", &item).await;
        let versions: Vec<&str> = deleted.iter().map(|d| d.version.as_str()).collect();
        Ok((
            StatusCode::OK,
            Json(json!({ "name": name, "deleted_versions": versions })),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn list(
    State(state): State<Arc<ServerState>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result: Result<Response, Refused> = async {
        let service = service(&state)?;
        let caller = authenticate(&state, service, &headers).await?;
        if !is_dns1123_label(&namespace) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("'{namespace}' is not a namespace name (a DNS-1123 label)"),
            ));
        }
        namespace_served(&state, &namespace)?;
        authority(&state, service, &namespace).await?;
        list_rate(service, &caller)?;
        authorize(&state, &caller, &["list"], &namespace, None).await?;
        let found = state
            .context
            .table
            .latest_versions(&format!("{namespace}/"))
            .await
            .map_err(|e| write_failed(&e))?;
        let items: Vec<serde_json::Value> = found
            .iter()
            .filter_map(|id| {
                let target = state.context.mapping.map(&id.name).ok()?;
                (target.secret.namespace == namespace).then(|| {
                    json!({
                        "name": id.name,
                        "version": id.version,
                        "secret": target.secret.name,
                        "key": target.key,
                    })
                })
            })
            .collect();
        Ok((
            StatusCode::OK,
            Json(json!({ "namespace": namespace, "items": items })),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
