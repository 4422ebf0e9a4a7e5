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

use super::events::{EventType, RefusedEvents, event_note};
use super::{Cluster, ClusterError, MAX_SECRET_BYTES, OwnWrite, describe_kube_error};
use crate::labels::{
    CREATED_ANNOTATION, FINGERPRINT_ANNOTATION, HELD_OUT_ANNOTATION, KUBESTASH_V2_ANNOTATION,
    KUBESTASH_V2_CHANGED_AT, LAST_SYNC_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
    MANAGED_KEYS_ANNOTATION, PINNED_ANNOTATION, PINNED_BY_ANNOTATION, PINNED_BY_REQUEST_ANNOTATION,
    PINNED_BY_ROLLOUT_FAILURE,
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
    /// A rollout credsync started that is not done after this long has
    /// failed (`--rollout-timeout`; a Deployment's own deadline may say so first).
    pub rollout_timeout: std::time::Duration,
    /// Put a failed rotation's Secret back to its last good content
    /// (`--rollout-revert`); false only reports.
    pub rollout_revert: bool,
}

/// What a rollback pins the Secrets it writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The snapshot commit restored.
    pub commit: String,
    /// The reviewed request (`path@commit`) that asked for it; None for a
    /// `credsync rollback` run by hand, which takes any request's pin over.
    pub request: Option<String>,
    /// For a reverted rotation: the item versions it holds out
    /// (`credsync.io/held-out`), beside `pinned-by: rollout-failure`.
    pub held_out: Option<String>,
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
            rollout_timeout: std::time::Duration::from_secs(600),
            rollout_revert: true,
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

/// Per Secret written, why its workloads restart: the keys that changed
/// and the items they come from (names and versions, never values).
fn restart_reasons(written: &[SecretChange], manifest: &Manifest) -> BTreeMap<SecretRef, String> {
    written
        .iter()
        .filter(|c| c.content_changed())
        .map(|change| {
            let keys =
                crate::manifest::marked_keys(&change.added, &change.changed, &change.removed);
            let items: Vec<String> = manifest
                .secrets
                .get(&change.secret)
                .map(|d| {
                    change
                        .added
                        .iter()
                        .chain(&change.changed)
                        .filter_map(|key| d.keys.get(key))
                        .map(|k| k.source.to_string())
                        .collect()
                })
                .unwrap_or_default();
            let mut why = format!("keys {keys} changed");
            if !items.is_empty() {
                why.push_str(&format!(", items {}", items.join(" ")));
            }
            (change.secret.clone(), why)
        })
        .collect()
}

/// Writes made before the whole plan was known (each Secret as soon as its
/// items were decrypted): the apply that follows skips those Secrets and
/// reports these writes with its own.
#[derive(Default)]
pub struct EarlyWrites {
    refused: RefusedEvents,
    done: std::sync::Mutex<Vec<WriteResult>>,
}

type WriteResult = (SecretRef, Result<Option<SecretChange>, WriteError>);

impl EarlyWrites {
    /// How many Secrets were written (or tried) so far.
    pub fn len(&self) -> usize {
        self.done.lock().map(|done| done.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Attempt {
    Done,
    /// The Secret moved under us: re-read and re-plan.
    Stale,
}

impl Cluster {
    /// Writes one Secret ahead of its plan (`change` is what the plan will
    /// say of it); `early` keeps the outcome for [`Cluster::apply`].
    pub async fn write_early(
        &self,
        change: SecretChange,
        desired: DesiredSecret,
        live: Option<LiveSecret>,
        options: &ApplyOptions,
        early: &EarlyWrites,
    ) {
        let secret = change.secret.clone();
        let result = self
            .apply_one(change, Some(&desired), live, options, &early.refused)
            .await;
        // The lock is only poisoned by a panic, and a release build aborts
        // on one; a debug build would lose this result, and the apply would
        // find the Secret right on its re-read and not report the write.
        if let Ok(mut done) = early.done.lock() {
            done.push((secret, result));
        }
    }

    /// Applies every change of `plan` but those `early` wrote already; one
    /// Secret's failure does not stop the others.
    pub async fn apply(
        &self,
        plan: &Plan,
        manifest: &Manifest,
        live: &LiveState,
        options: &ApplyOptions,
        early: EarlyWrites,
    ) -> ApplyOutcome {
        let refused_events = early.refused;
        let mut results = early.done.into_inner().unwrap_or_else(|p| p.into_inner());
        let written_early: BTreeSet<SecretRef> =
            results.iter().map(|(secret, _)| secret.clone()).collect();
        // Futures are made as slots free up, not all at once: at 10000
        // changes, holding every pending write at once costs tens of MiB.
        // (Owned items: a closure taking a reference would make the
        // reconcile future !Send for tokio::spawn, rust-lang/rust#102211.)
        let to_write = plan
            .changes
            .iter()
            .cloned()
            .filter_map(|change| (!written_early.contains(&change.secret)).then_some(change));
        let now: Vec<WriteResult> = futures::stream::iter(to_write)
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
        results.extend(now);
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
        // Restarts only after the writes: a restart for a Secret this plan
        // changes waits for its write to land (a pod must never restart into
        // a value that did not); one owed from before goes ahead.
        let planned_changes = plan.content_changes();
        let written: BTreeSet<SecretRef> = outcome
            .written
            .iter()
            .filter(|c| c.content_changed())
            .map(|c| c.secret.clone())
            .collect();
        let restarts: Vec<Restart> = plan
            .restarts
            .iter()
            .filter(|r| {
                r.secrets
                    .iter()
                    .all(|s| written.contains(s) || !planned_changes.contains(s))
            })
            .cloned()
            .collect();
        if options.dry_run {
            outcome.restarted = restarts;
        } else if !restarts.is_empty() {
            let why = restart_reasons(&outcome.written, manifest);
            (outcome.restarted, outcome.restart_failures) = self.restart(restarts, &why).await;
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
        None => desired.keys.keys().map(|k| (k.clone(), ())).collect(),
    };
    let mut annotations = BTreeMap::from([
        (
            MANAGED_KEYS_ANNOTATION.to_owned(),
            owned
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(","),
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
        if let Some(held_out) = &pin.held_out {
            annotations.insert(
                PINNED_BY_ANNOTATION.to_owned(),
                PINNED_BY_ROLLOUT_FAILURE.to_owned(),
            );
            annotations.insert(HELD_OUT_ANNOTATION.to_owned(), held_out.clone());
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
    if pin.is_none_or(|p| p.held_out.is_none()) && live.held_out.is_some() {
        // Not a revert (anymore): nothing is held out.
        annotations[PINNED_BY_ANNOTATION] = Value::Null;
        annotations[HELD_OUT_ANNOTATION] = Value::Null;
    }
    if pin.is_none() && live.pinned.is_some() {
        // Only a released hold plans a write to a pinned Secret: the pin lifts.
        annotations[PINNED_ANNOTATION] = Value::Null;
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
