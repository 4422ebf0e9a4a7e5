//! Writing a plan: only Secrets with differences, only the changed keys.
//!
//! Every update is a JSON merge patch carrying the resourceVersion it was
//! planned against, so a concurrent edit makes the API server answer 409
//! instead of being overwritten; credsync then re-reads that one Secret,
//! re-plans it and tries again (bounded).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Map, Value, json};

use super::{Cluster, ClusterError, MAX_SECRET_BYTES, OwnWrite, describe_kube_error};
use crate::labels::{
    CREATED_ANNOTATION, FINGERPRINT_ANNOTATION, KUBESTASH_V2_ANNOTATION, KUBESTASH_V2_CHANGED_AT,
    LAST_SYNC_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGED_KEYS_ANNOTATION,
    PINNED_ANNOTATION, PINNED_BY_REQUEST_ANNOTATION,
};
use crate::manifest::{DesiredSecret, Manifest, SecretRef};
use crate::plan::{Action, DiffOptions, Plan, SecretChange, diff_secret, owned_after};
use crate::plan::{LiveSecret, LiveState};
use crate::rollout_rules::Restart;

use super::rollout::RestartFailure;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Send server-side dry-run requests: validated, never stored.
    pub dry_run: bool,
    /// Secrets written at once.
    pub concurrency: usize,
    /// Tries per Secret when the API server reports a concurrent change.
    pub max_attempts: u32,
    pub diff: DiffOptions,
    /// Pin written Secrets to a snapshot commit (rollback).
    pub pin: Option<Pin>,
    /// Plan and make restarts of the workloads that opted in (`--rollouts`).
    pub rollouts: bool,
}

/// An Event's type: Normal for what credsync did, Warning for what it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// What a rollback pins the Secrets it writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The snapshot commit restored.
    pub commit: String,
    /// The reviewed request (`path@commit`) that asked for it; None for a
    /// `credsync rollback` run by hand, which takes any request's pin over.
    pub request: Option<String>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            concurrency: 8,
            max_attempts: 4,
            diff: DiffOptions::default(),
            pin: None,
            rollouts: false,
        }
    }
}

/// A Secret that was not written, and why (never a value).
#[derive(Debug, serde::Serialize)]
pub struct WriteFailure {
    pub secret: SecretRef,
    /// Serialized as its message, as plans and JSON output print it.
    #[serde(serialize_with = "as_message")]
    pub reason: WriteError,
}

/// Why one Secret's write did not happen. The message says what to do; the
/// Kubernetes error it came from is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "not written: the Secret would exceed Kubernetes' 1 MiB size limit; split its keys across Secrets"
    )]
    TooLarge,
    /// The API server's answer is said in the message (see
    /// [`super::ClusterError::Api`]).
    #[error("API server refused the write: {detail}")]
    Refused {
        detail: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "gave up after {attempts} attempts: the Secret kept changing concurrently; the next reconcile retries"
    )]
    KeptChanging { attempts: u32 },
    /// Re-read after a conflict, the Secret is one credsync must not write
    /// (another type, say).
    #[error("{0}")]
    NotWritable(String),
    #[error("reading it again after a conflict failed")]
    Reread(#[source] super::ClusterError),
}

impl WriteError {
    /// The `reason` label of `secret_write_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::KeptChanging { .. } => "conflict",
            Self::TooLarge | Self::Refused { .. } | Self::NotWritable(_) | Self::Reread(_) => {
                "rejected"
            }
        }
    }
}

fn as_message<S: serde::Serializer>(error: &WriteError, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&crate::errors::Chain(error))
}

#[derive(Debug, Default)]
pub struct ApplyOutcome {
    /// The changes as finally written (re-planned ones may differ from the plan).
    pub written: Vec<SecretChange>,
    pub failed: Vec<WriteFailure>,
    /// Workloads restarted (with a dry run: that would be), each for the
    /// written Secrets it uses.
    pub restarted: Vec<Restart>,
    pub restart_failures: Vec<RestartFailure>,
}

/// The API server refuses an `events.k8s.io/v1` note over this many bytes.
const EVENT_NOTE_LIMIT: usize = 1024;

/// "credsync updated 3 keys: +A ~B -C", cut to fit [`EVENT_NOTE_LIMIT`]
/// with "(+N more)" for the keys left out. Key names only, never values.
pub(crate) fn event_note(change: &SecretChange) -> String {
    let verb = match change.action {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Delete => "deleted",
    };
    let marks: Vec<String> =
        crate::manifest::key_marks(&change.added, &change.changed, &change.removed).collect();
    if marks.is_empty() {
        return format!("credsync {verb} the Secret");
    }
    let mut note = format!("credsync {verb} {} key(s):", marks.len());
    // Room kept for the longest possible tail.
    let tail_room = format!(" (+{} more)", marks.len()).len();
    for (shown, mark) in marks.iter().enumerate() {
        let left = marks.len() - shown;
        let tail = if left > 1 { tail_room } else { 0 };
        if note.len() + 1 + mark.len() + tail > EVENT_NOTE_LIMIT {
            note.push_str(&format!(" (+{left} more)"));
            return note;
        }
        note.push(' ');
        note.push_str(mark);
    }
    note
}

/// Events the API server refused during one apply: logged once at warn,
/// with the count and the first refusal, not once per Secret.
#[derive(Default)]
struct RefusedEvents {
    count: std::sync::atomic::AtomicUsize,
    first: std::sync::Mutex<Option<(SecretRef, ClusterError)>>,
}

impl RefusedEvents {
    fn note(&self, secret: &SecretRef, error: ClusterError) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| (secret.clone(), error));
        }
    }

    fn log_once(&self) {
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed);
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        if let Some((secret, error)) = first {
            tracing::warn!(
                refused = count,
                first = %secret,
                error = %crate::errors::Chain(&error),
                "the API server refused Events about credsync's writes (the writes themselves succeeded); check RBAC for events.k8s.io create"
            );
        }
    }
}

enum Attempt {
    Done,
    /// The Secret moved under us: re-read and re-plan.
    Stale,
}

impl Cluster {
    /// Applies every change of `plan`; one Secret's failure does not stop the others.
    pub async fn apply(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        live: &LiveState,
        options: &ApplyOptions,
    ) -> ApplyOutcome {
        let refused_events = RefusedEvents::default();
        // Futures are made as slots free up, not all at once: at 10000
        // changes, holding every pending write at once costs tens of MiB.
        let results: Vec<(SecretRef, Result<Option<SecretChange>, WriteError>)> =
            // (Owned items: a closure taking a reference would make the
            // reconcile future !Send for tokio::spawn, rust-lang/rust#102211.)
            futures::stream::iter(plan.changes.iter().cloned())
                .map(|change| {
                    let desired = manifest.secrets.get(&change.secret);
                    let live = live.secrets.get(&change.secret).cloned();
                    let secret = change.secret.clone();
                    let write = self.apply_one(change, desired, live, options, &refused_events);
                    async move { (secret, write.await) }
                })
                .buffer_unordered(options.concurrency.max(1))
                .collect()
                .await;
        let mut outcome = ApplyOutcome::default();
        for (secret, result) in results {
            match result {
                Ok(Some(change)) => {
                    self.metrics
                        .secrets_written
                        .with_label_values(&[change.action.as_str()])
                        .inc();
                    outcome.written.push(change);
                }
                Ok(None) => {}
                Err(reason) => outcome.failed.push(WriteFailure { secret, reason }),
            }
        }
        outcome.written.sort_by(|a, b| a.secret.cmp(&b.secret));
        outcome.failed.sort_by(|a, b| a.secret.cmp(&b.secret));
        refused_events.log_once();
        // Restarts only after the writes, and only for Secrets written:
        // a pod must never restart into a value that did not land.
        let written: BTreeSet<SecretRef> = outcome
            .written
            .iter()
            .filter(|c| c.content_changed())
            .map(|c| c.secret.clone())
            .collect();
        if options.dry_run {
            outcome.restarted = plan
                .restarts
                .iter()
                .filter(|r| r.secrets.iter().any(|s| written.contains(s)))
                .cloned()
                .collect();
        } else if !plan.restarts.is_empty() {
            (outcome.restarted, outcome.restart_failures) =
                self.restart(&plan.restarts, &written, manifest).await;
        }
        outcome
    }

    async fn apply_one(
        &self,
        mut change: SecretChange,
        desired: Option<&DesiredSecret>,
        mut live: Option<LiveSecret>,
        options: &ApplyOptions,
        refused_events: &RefusedEvents,
    ) -> Result<Option<SecretChange>, WriteError> {
        let empty = DesiredSecret::default();
        let desired_or_empty = desired.unwrap_or(&empty);
        for _ in 0..options.max_attempts.max(1) {
            match self
                .write(&change, desired_or_empty, live.as_ref(), options)
                .await
            {
                Ok(Attempt::Done) => {
                    if !options.dry_run
                        && let Err(err) = self.record_event(&change).await
                    {
                        refused_events.note(&change.secret, err);
                    }
                    return Ok(Some(change));
                }
                Ok(Attempt::Stale) => {}
                Err(error) => return Err(self.counted(error)),
            }
            live = match self.get(&change.secret).await {
                Ok(live) => live,
                Err(error) => return Err(self.counted(WriteError::Reread(error))),
            };
            match diff_secret(&change.secret, desired, live.as_ref(), options.diff) {
                Ok(Some(replanned)) => change = replanned,
                Ok(None) => return Ok(None),
                Err(skip) => return Err(self.counted(WriteError::NotWritable(skip.reason))),
            }
        }
        Err(self.counted(WriteError::KeptChanging {
            attempts: options.max_attempts,
        }))
    }

    fn counted(&self, error: WriteError) -> WriteError {
        self.metrics
            .secret_write_failures
            .with_label_values(&[error.metric_label()])
            .inc();
        error
    }

    /// An Event on the Secret saying what credsync changed (key names only).
    /// A failure to record it is reported to the caller, never fatal.
    ///
    /// Created directly rather than through kube's `Recorder`, which keeps
    /// every Event it sent for six minutes to merge repeats into a series:
    /// 17 MiB after a first sync of 5000 Secrets, for repeats that do not
    /// happen (each write is a different change).
    async fn record_event(&self, change: &SecretChange) -> Result<(), ClusterError> {
        let (reason, action) = match change.action {
            Action::Create => ("Created", "Create"),
            Action::Update => ("Synced", "Update"),
            Action::Delete => ("Deleted", "Delete"),
        };
        self.event_on_secret(
            &change.secret,
            EventType::Normal,
            reason,
            action,
            event_note(change),
        )
        .await
    }

    /// An Event about `secret` (which need not exist yet). `note` must
    /// hold names only, never a value; it is cut to the API's limit.
    pub async fn event_on_secret(
        &self,
        secret: &SecretRef,
        type_: EventType,
        reason: &str,
        action: &str,
        mut note: String,
    ) -> Result<(), ClusterError> {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::events::v1::Event;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        if note.len() > EVENT_NOTE_LIMIT {
            let mut cut = EVENT_NOTE_LIMIT;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        // `<secret>.<nanoseconds, hex>`, as kubectl and client-go name
        // Events; the prefix is cut so the name stays within 253 characters.
        let prefix: String = secret.name.chars().take(220).collect();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{prefix}.{:x}", now.as_nanosecond())),
                namespace: Some(secret.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            note: Some(note),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Secret".to_owned()),
                namespace: Some(secret.namespace.clone()),
                name: Some(secret.name.clone()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some(MANAGED_BY_VALUE.to_owned()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..Event::default()
        };
        self.count("event");
        let events: kube::Api<Event> =
            kube::Api::namespaced(self.client.clone(), &secret.namespace);
        events
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|err| super::api_error(&format!("recording an Event on Secret {secret}"), err))
    }

    async fn write(
        &self,
        change: &SecretChange,
        desired: &DesiredSecret,
        live: Option<&LiveSecret>,
        options: &ApplyOptions,
    ) -> Result<Attempt, WriteError> {
        let (dry_run, pin) = (options.dry_run, options.pin.as_ref());
        let secret = &change.secret;
        let api = self.secrets(&secret.namespace);
        if !dry_run {
            self.own_writes.note(secret, Some(OwnWrite::InFlight));
        }
        let result = match (change.action, live) {
            (Action::Delete, Some(live)) => {
                let params = DeleteParams {
                    dry_run,
                    preconditions: Some(Preconditions {
                        resource_version: live.resource_version.clone(),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                self.count("delete");
                api.delete(&secret.name, &params)
                    .await
                    .map(|_| OwnWrite::Deleted)
            }
            (Action::Create, _) => {
                check_size(change, desired, None)?;
                let body = new_secret(change, desired, pin);
                let params = PostParams {
                    dry_run,
                    field_manager: Some(self.field_manager.clone()),
                };
                self.count("create");
                api.create(&params, &body).await.map(written_version)
            }
            // The Secret vanished since it was read: re-plan it.
            (Action::Update | Action::Delete, None) => {
                self.own_writes.note(secret, None);
                return Ok(Attempt::Stale);
            }
            (Action::Update, Some(live)) => {
                check_size(change, desired, Some(live))?;
                let body = update_patch(change, desired, live, pin);
                let params = PatchParams {
                    dry_run,
                    field_manager: Some(self.field_manager.clone()),
                    ..PatchParams::default()
                };
                self.count("patch");
                api.patch(&secret.name, &params, &Patch::Merge(&body))
                    .await
                    .map(written_version)
            }
        };
        if !dry_run {
            self.own_writes.note(secret, result.as_ref().ok().cloned());
        }
        match result {
            Ok(_) => Ok(Attempt::Done),
            Err(kube::Error::Api(status))
                if status.is_conflict() || status.is_already_exists() || status.is_not_found() =>
            {
                tracing::info!(secret = %secret, reason = %status.reason, "Secret changed concurrently; re-planning it");
                Ok(Attempt::Stale)
            }
            Err(source) => Err(WriteError::Refused {
                detail: describe_kube_error(&source),
                source,
            }),
        }
    }
}

pub(super) fn written_version(secret: Secret) -> OwnWrite {
    OwnWrite::Version(secret.metadata.resource_version.unwrap_or_default())
}

fn check_size(
    change: &SecretChange,
    desired: &DesiredSecret,
    live: Option<&LiveSecret>,
) -> Result<(), WriteError> {
    let mut sizes: BTreeMap<&str, usize> = live
        .map(|l| {
            l.data
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose().len()))
                .collect()
        })
        .unwrap_or_default();
    for key in &change.removed {
        sizes.remove(key.as_str());
    }
    for key in change.added.iter().chain(&change.changed) {
        if let Some(want) = desired.keys.get(key) {
            sizes.insert(key, want.value.expose().len());
        }
    }
    if sizes.values().sum::<usize>() > MAX_SECRET_BYTES {
        return Err(WriteError::TooLarge);
    }
    Ok(())
}

fn annotations(
    desired: &DesiredSecret,
    live: Option<&LiveSecret>,
    removed: &[String],
    pin: Option<&Pin>,
) -> BTreeMap<String, String> {
    let owned = match live {
        Some(live) => owned_after(desired, live, removed),
        None => desired.keys.keys().cloned().collect(),
    };
    let mut annotations = BTreeMap::from([
        (
            MANAGED_KEYS_ANNOTATION.to_owned(),
            owned.into_iter().collect::<Vec<_>>().join(","),
        ),
        (
            LAST_SYNC_ANNOTATION.to_owned(),
            Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        ),
        (FINGERPRINT_ANNOTATION.to_owned(), desired.fingerprint()),
    ]);
    if let Some(pin) = pin {
        annotations.insert(PINNED_ANNOTATION.to_owned(), pin.commit.clone());
        if let Some(request) = &pin.request {
            annotations.insert(PINNED_BY_REQUEST_ANNOTATION.to_owned(), request.clone());
        }
    }
    annotations
}

fn new_secret(change: &SecretChange, desired: &DesiredSecret, pin: Option<&Pin>) -> Secret {
    let mut annotations = annotations(desired, None, &[], pin);
    annotations.insert(CREATED_ANNOTATION.to_owned(), "true".to_owned());
    Secret {
        metadata: ObjectMeta {
            name: Some(change.secret.name.clone()),
            namespace: Some(change.secret.namespace.clone()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            desired
                .keys
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.value.expose().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A merge patch with only the changed keys, guarded by resourceVersion.
fn update_patch(
    change: &SecretChange,
    desired: &DesiredSecret,
    live: &LiveSecret,
    pin: Option<&Pin>,
) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = Map::new();
    for key in change.added.iter().chain(&change.changed) {
        if let Some(want) = desired.keys.get(key) {
            data.insert(key.clone(), Value::String(b64.encode(want.value.expose())));
        }
    }
    for key in &change.removed {
        data.insert(key.clone(), Value::Null);
    }
    if change.merge_only {
        // Kubestash-V2's way: the keys alone; its annotations stay.
        return json!({
            "metadata": { "resourceVersion": live.resource_version },
            "data": Value::Object(data),
        });
    }
    let mut annotations = json!(annotations(desired, Some(live), &change.removed, pin));
    if change.adopt && live.kubestash_v2 {
        // Taken over: Kubestash-V2's marks give way to credsync's.
        annotations[KUBESTASH_V2_ANNOTATION] = Value::Null;
        annotations[KUBESTASH_V2_CHANGED_AT] = Value::Null;
    }
    if pin.is_some_and(|p| p.request.is_none()) && live.pinned_by_request.is_some() {
        // A rollback by hand: the pin is no longer the request's to lift.
        annotations[PINNED_BY_REQUEST_ANNOTATION] = Value::Null;
    }
    let mut patch = json!({
        "metadata": {
            "resourceVersion": live.resource_version,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY_VALUE },
            "annotations": annotations,
        }
    });
    if !data.is_empty() {
        patch["data"] = Value::Object(data);
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(added: usize, changed: usize) -> SecretChange {
        let keys = |prefix: &str, n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("{prefix}_A_RATHER_LONG_KEY_NAME_{i:05}"))
                .collect()
        };
        SecretChange {
            secret: SecretRef::new("app", "db"),
            action: Action::Update,
            adopt: false,
            added: keys("NEW", added),
            changed: keys("CHANGED", changed),
            removed: vec!["OLD".to_owned()],
            merge_only: false,
        }
    }

    #[test]
    fn a_short_event_note_lists_every_key() {
        assert_eq!(
            event_note(&change(1, 1)),
            "credsync updated 3 key(s): +NEW_A_RATHER_LONG_KEY_NAME_00000 \
             ~CHANGED_A_RATHER_LONG_KEY_NAME_00000 -OLD"
        );
    }

    #[test]
    fn a_long_event_note_stays_within_the_api_servers_limit() {
        for (added, changed) in [(3000, 0), (20, 20), (25, 5), (0, 31), (1, 3000)] {
            let note = event_note(&change(added, changed));
            assert!(
                note.len() <= EVENT_NOTE_LIMIT,
                "{} bytes: {note}",
                note.len()
            );
            let total = added + changed + 1;
            let shown = note
                .split(' ')
                .filter(|w| w.starts_with(['+', '~', '-']))
                .count();
            let more: usize = note
                .rsplit_once("(+")
                .map(|(_, tail)| tail.trim_end_matches(" more)").parse().unwrap())
                .unwrap_or(0);
            assert_eq!(shown + more, total, "{note}");
            assert!(note.starts_with(&format!("credsync updated {total} key(s): ")));
        }
    }
}
