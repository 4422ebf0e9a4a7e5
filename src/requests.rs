//! Reviewed rollback requests: judging the request files of a snapshot
//! revision, showing them in plans, and, in `run`, following the remote
//! and applying those merged into the branch it follows.
//!
//! A request is applied once: the rollback commit it leads to carries its
//! key (`path@commit`) in a trailer, and the pins it sets carry it in an
//! annotation, so neither a restart nor a new leader applies it again.
//! Removing the file releases the pins; the next reconcile brings the
//! table's values back.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sops_age::Identities;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::apply::EventType;
use crate::cluster::lease::Leadership;
use crate::manifest::{DesiredSecret, NamespaceFilter, SecretRef};
use crate::plan::{RequestState, RequestView};
use crate::reconcile::{ReconcileError, Reconciler, record_blocking};
use crate::restore::Verified;
use crate::snapshot::remote::PushOutcome;
use crate::snapshot::request::RollbackRequest;
use crate::snapshot::store::{
    CommitInfo, FoundRequest, RequestOrigin, SnapshotError, SnapshotStore,
};
use crate::worker::{Request, Trigger};

/// A request that passed every check, ready to apply.
pub struct Approved {
    pub origin: RequestOrigin,
    pub commit: CommitInfo,
    pub restored: BTreeMap<SecretRef, DesiredSecret>,
}

/// Every request of a revision, judged.
pub struct Assessment {
    pub views: Vec<RequestView>,
    /// The pending requests that can be applied, by index into `views`.
    pub approved: Vec<(usize, Approved)>,
}

/// What is known of the requests besides their files.
#[derive(Default, Clone)]
pub struct Known {
    /// Keys rollback commits name as applied.
    pub applied: HashSet<String>,
    /// Pinned Secret -> the request key its pin carries (None: pinned by hand).
    pub pins: BTreeMap<SecretRef, Option<String>>,
}

impl Known {
    /// Applied: a rollback commit names it, or it pins every Secret it names.
    fn is_applied(&self, key: &str, secrets: &[SecretRef]) -> bool {
        self.applied.contains(key)
            || secrets
                .iter()
                .all(|s| self.pins.get(s).and_then(Option::as_deref) == Some(key))
    }
}

/// Judges the requests in `found` (blocking: it reads and decrypts
/// snapshot files, checking every MAC). Without `identities` a pending
/// request is listed but not checked. A failure of the repository itself
/// (a lock, a libgit2 error) is an error, to retry: only what is wrong
/// with a request refuses it.
pub fn assess(
    store: &SnapshotStore,
    filter: &NamespaceFilter,
    found: Vec<FoundRequest>,
    known: &Known,
    identities: Option<&Identities>,
    tip: Option<&str>,
) -> Result<Assessment, SnapshotError> {
    let conflicts = conflicts(&found, known);
    let mut views = Vec::new();
    let mut approved = Vec::new();
    for (index, found) in found.into_iter().enumerate() {
        let origin = found.origin;
        let mut view = RequestView {
            file: origin.path.clone(),
            commit: origin.commit.clone(),
            author: origin.author.clone(),
            revision: None,
            secrets: Vec::new(),
            reason: String::new(),
            state: RequestState::Pending,
            refusal: None,
            changes: Vec::new(),
        };
        let request = match found.request {
            Ok(request) => request,
            Err(malformed) => {
                view.secrets = found.named;
                view.state = RequestState::Refused;
                view.refusal = Some(malformed.to_string());
                views.push(view);
                continue;
            }
        };
        view.revision = Some(request.revision.clone());
        view.secrets = request.secrets.clone();
        view.reason = request.reason.clone();
        let refusal = if known.is_applied(&origin.key(), &request.secrets) {
            view.state = RequestState::Applied;
            None
        } else if let Some(conflict) = conflicts.get(index).cloned().flatten() {
            Some(conflict)
        } else if let Some((secret, why)) = request
            .secrets
            .iter()
            .find_map(|s| Some((s, filter.reason_to_skip(&s.namespace)?)))
        {
            Some(format!(
                "{secret} is outside the namespaces credsync writes ({why})"
            ))
        } else {
            match identities.map(|ids| restore(store, &request, ids, tip)) {
                None => None,
                Some(Ok(Restorable::Files(commit, restored))) => {
                    approved.push((
                        views.len(),
                        Approved {
                            origin,
                            commit,
                            restored,
                        },
                    ));
                    None
                }
                Some(Ok(Restorable::Refused(refusal))) => Some(refusal),
                Some(Err(err)) if err.is_transient() => return Err(err),
                Some(Err(err)) => Some(crate::errors::chain(&err)),
            }
        };
        if let Some(refusal) = refusal {
            view.state = RequestState::Refused;
            view.refusal = Some(refusal);
        }
        views.push(view);
    }
    Ok(Assessment { views, approved })
}

/// What a request's revision gives: its Secrets, or why it is refused.
enum Restorable {
    Files(CommitInfo, BTreeMap<SecretRef, DesiredSecret>),
    Refused(String),
}

/// What `request` restores, decrypted with every MAC checked; a refusal
/// when its revision is not a signed commit in the followed branch's history.
fn restore(
    store: &SnapshotStore,
    request: &RollbackRequest,
    identities: &Identities,
    tip: Option<&str>,
) -> Result<Restorable, SnapshotError> {
    let commit = store.resolve(&request.revision)?;
    if !store.in_history(&commit.id, tip)? {
        return Ok(Restorable::Refused(format!(
            "revision {} is not in the history of the branch credsync follows: pick one `credsync history` lists",
            &commit.id[..commit.id.len().min(12)]
        )));
    }
    if !store.authenticated(&commit.id)? {
        return Ok(Restorable::Refused(format!(
            "revision {} is not a snapshot commit credsync signed: a request may only restore what credsync itself recorded (pick one `credsync history` marks as signed)",
            &commit.id[..commit.id.len().min(12)]
        )));
    }
    let restored = store.desired(&commit.id, &request.secrets, identities)?;
    Ok(Restorable::Files(commit, restored))
}

/// A request whose files were checked against the sources too.
pub struct Checked {
    pub origin: RequestOrigin,
    pub commit: CommitInfo,
    pub restored: Verified,
}

/// Checks every approved request's files against the sources (see
/// [`crate::restore`]): one whose content the sources do not vouch for is
/// refused in its view; a source that cannot be read is an error, to retry.
pub async fn check_sources(
    reconciler: &Reconciler,
    assessment: Assessment,
) -> Result<(Vec<RequestView>, Vec<(usize, Checked)>), ReconcileError> {
    let mut views = assessment.views;
    let mut checked = Vec::new();
    for (index, approved) in assessment.approved {
        // The revision is signed: assess refuses any other.
        match reconciler.verify_restore(approved.restored, true).await {
            Ok(restored) => checked.push((
                index,
                Checked {
                    origin: approved.origin,
                    commit: approved.commit,
                    restored,
                },
            )),
            Err(err) if err.is_transient() => return Err(ReconcileError::Restore(err)),
            Err(err) => {
                views[index].state = RequestState::Refused;
                views[index].refusal = Some(crate::errors::chain(&err));
            }
        }
    }
    Ok((views, checked))
}

/// Why each not-yet-applied request clashes with another, by index: two
/// requests naming one Secret are both refused (which one wins is for the
/// reviewers to say), and a Secret another request pins stays its own.
fn conflicts(found: &[FoundRequest], known: &Known) -> Vec<Option<String>> {
    let parsed: Vec<Option<(String, &[SecretRef])>> = found
        .iter()
        .map(|f| {
            f.request
                .as_ref()
                .ok()
                .map(|r| (f.origin.key(), r.secrets.as_slice()))
        })
        .collect();
    parsed
        .iter()
        .enumerate()
        .map(|(index, this)| {
            let (key, secrets) = this.as_ref()?;
            if known.is_applied(key, secrets) {
                return None;
            }
            secrets.iter().find_map(|secret| {
                match known.pins.get(secret) {
                    Some(None) => {
                        return Some(format!(
                            "{secret} is pinned by a `credsync rollback` run by hand: `credsync unpin {secret}` first"
                        ));
                    }
                    Some(Some(pinned_by)) if pinned_by != key => {
                        return Some(format!(
                            "{secret} is pinned by request {pinned_by}: remove that file first"
                        ));
                    }
                    _ => {}
                }
                let other = parsed.iter().enumerate().find_map(|(i, other)| {
                    let (_, theirs) = other.as_ref()?;
                    (i != index && theirs.contains(secret)).then(|| &found[i].origin.path)
                })?;
                Some(format!(
                    "{secret} is also named by {other}: one request per Secret"
                ))
            })
        })
        .collect()
}

/// The requests at `rev` (HEAD when None) with what applying each would
/// write, for `plan` and `rollback --propose`.
pub async fn plan_requests(
    reconciler: &Reconciler,
    store: Arc<SnapshotStore>,
    rev: Option<String>,
    identities: Option<Identities>,
) -> Result<Vec<RequestView>, ReconcileError> {
    // Most plans find no request: the cluster's pins are read only for one.
    let at = rev.clone();
    let found = record_blocking(store.clone(), move |store| store.requests(at.as_deref())).await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let pins = reconciler.cluster().pins().await?.by_secret();
    let filter = reconciler.namespace_filter().clone();
    let assessment = record_blocking(store, move |store| {
        let (applied, _) = store.applied_requests(None)?;
        let known = Known { applied, pins };
        let tip = rev.as_deref();
        assess(store, &filter, found, &known, identities.as_ref(), tip)
    })
    .await?;
    let (mut views, checked) = check_sources(reconciler, assessment).await?;
    for (index, checked) in checked {
        let planned = reconciler
            .plan_rollback(checked.restored.into_secrets())
            .await?;
        views[index].changes = planned.plan.changes;
    }
    Ok(views)
}

/// How `run` follows the snapshot remote for requests.
pub struct FollowConfig {
    /// How often the remote is fetched (`--request-poll-interval`).
    pub interval: Duration,
    /// To check every MAC of what a request restores.
    pub identities: Identities,
}

/// What the follower remembers between polls.
#[derive(Default)]
struct Follower {
    known: Known,
    /// HEAD when `known.applied` was last brought up to date.
    applied_head: Option<String>,
    /// HEAD at the last complete poll: an unchanged HEAD costs nothing.
    seen_head: Option<String>,
    /// Refusals already reported (`key: reason`): one Event each, not one per poll.
    reported: HashSet<String>,
    /// Whether the last fetch worked (None before the first).
    remote_up: Option<bool>,
}

/// Follows the remote until `shutdown`: every `interval`, while leading,
/// fetches the followed branch, releases the pins of removed requests,
/// applies new ones and reports those it refuses.
pub async fn follow(
    reconciler: Arc<Reconciler>,
    config: FollowConfig,
    requests: mpsc::Sender<Request>,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let Some(store) = reconciler.snapshots().cloned() else {
        return;
    };
    let mut state = Follower::default();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if *leadership.borrow() != Leadership::Leading {
            // A new leader reads everything afresh.
            state.seen_head = None;
            continue;
        }
        if let Err(err) = state.poll(&reconciler, &store, &config, &requests).await {
            state.seen_head = None;
            tracing::warn!(error = %crate::errors::Chain(&err), "rollback requests not handled; retried at the next poll");
        }
    }
}

impl Follower {
    async fn poll(
        &mut self,
        reconciler: &Reconciler,
        store: &Arc<SnapshotStore>,
        config: &FollowConfig,
        requests: &mpsc::Sender<Request>,
    ) -> Result<(), ReconcileError> {
        let fetched = record_blocking(store.clone(), |store| store.share()).await;
        self.note_remote(reconciler, fetched.as_ref().err());
        // Only a clone that holds the remote's head may release or apply:
        // a stale one (a standby that took over while the remote is down)
        // would release the pins of every request merged since it last read.
        if !matches!(fetched, Ok(PushOutcome::UpToDate)) {
            self.seen_head = None;
            return Ok(());
        }
        let since = self.applied_head.clone();
        let (applied, head) = record_blocking(store.clone(), move |store| {
            store.applied_requests(since.as_deref())
        })
        .await?;
        self.known.applied.extend(applied);
        self.applied_head = head.clone();
        if head.is_some() && head == self.seen_head {
            return Ok(());
        }
        let pins = reconciler.cluster().pins().await?;
        self.known.pins = pins.by_secret();
        let filter = reconciler.namespace_filter().clone();
        let identities = config.identities.clone();
        let known = self.known.clone();
        let (found, assessment) = record_blocking(store.clone(), move |store| {
            let found = store.requests(None)?;
            let keys: HashSet<String> = found.iter().map(|f| f.origin.key()).collect();
            let assessment = assess(store, &filter, found, &known, Some(&identities), None)?;
            Ok((keys, assessment))
        })
        .await?;
        let (mut views, checked) = check_sources(reconciler, assessment).await?;
        let mut retry = false;
        let released = {
            // Writes only: reconciles wait for these, not for the reads above.
            let _writing = reconciler.exclusive().await;
            let released = reconciler.cluster().unpin_released(pins, &found).await?;
            for (index, checked) in checked {
                retry |= !self.apply(reconciler, checked, &mut views[index]).await;
            }
            released
        };
        reconciler.set_requests(views.clone());
        self.report_released(reconciler, &released).await;
        if !released.is_empty() {
            let _ = requests.send(Request::full(Trigger::Request)).await;
        }
        self.report_refusals(reconciler, &views).await;
        // Our own rollback commits moved HEAD: the next poll reads them.
        self.seen_head = if retry { None } else { head };
        Ok(())
    }

    /// Reports the remote's state when it changes: a remote that cannot
    /// be reached stops nothing but the requests.
    fn note_remote(
        &mut self,
        reconciler: &Reconciler,
        error: Option<&crate::snapshot::store::SnapshotError>,
    ) {
        let up = error.is_none();
        reconciler.metrics().snapshot_remote_up.set(i64::from(up));
        match (error, self.remote_up) {
            (Some(err), Some(true) | None) => tracing::warn!(
                error = %crate::errors::Chain(&err),
                "the snapshot remote cannot be read: requests wait, the loop goes on reconciling from the table"
            ),
            (None, Some(false)) => tracing::info!("the snapshot remote answers again"),
            _ => {}
        }
        self.remote_up = Some(up);
    }

    /// Log, metric and Event for each Secret whose request was removed.
    async fn report_released(&mut self, reconciler: &Reconciler, released: &[(SecretRef, String)]) {
        for (secret, request) in released {
            self.known.pins.remove(secret);
            reconciler
                .metrics()
                .rollback_requests
                .with_label_values(&["released"])
                .inc();
            tracing::info!(%secret, %request, "rollback request removed: Secret unpinned, the table's state returns");
            let note = format!("rollback request {request} was removed: back to the table");
            event(reconciler, secret, EventType::Normal, "Unpinned", note).await;
        }
    }

    /// Applies one approved request; false when it should be tried again.
    async fn apply(
        &mut self,
        reconciler: &Reconciler,
        approved: Checked,
        view: &mut RequestView,
    ) -> bool {
        let key = approved.origin.key();
        let secrets: Vec<String> = approved
            .restored
            .secrets()
            .keys()
            .map(ToString::to_string)
            .collect();
        match reconciler
            .rollback(
                approved.restored,
                &approved.commit,
                false,
                Some(&approved.origin),
            )
            .await
        {
            Ok(report) if !report.outcome.failed.is_empty() => {
                // Not applied until every Secret is: no rollback commit yet,
                // and the next poll writes what is missing.
                for failure in &report.outcome.failed {
                    tracing::warn!(request = %approved.origin.path, secret = %failure.secret, reason = %crate::errors::Chain(&failure.reason), "Secret of a rollback request not written; retried at the next poll");
                }
                false
            }
            Ok(report) => {
                self.known.applied.insert(key);
                reconciler
                    .metrics()
                    .rollback_requests
                    .with_label_values(&["applied"])
                    .inc();
                tracing::info!(
                    request = %approved.origin.path,
                    commit = %approved.origin.commit,
                    claimed_author = %approved.origin.author,
                    revision = %approved.commit.id,
                    secrets = %secrets.join(","),
                    written = report.outcome.written.len(),
                    "applied rollback request: Secrets restored and pinned"
                );
                view.state = RequestState::Applied;
                view.changes = report.plan.changes;
                true
            }
            Err(err) => {
                tracing::warn!(request = %approved.origin.path, error = %crate::errors::Chain(&err), "rollback request not applied; retried at the next poll");
                false
            }
        }
    }

    /// Log, metric and Warning Event for each refusal, once per request
    /// and reason; the gauge counts the refusals standing now.
    async fn report_refusals(&mut self, reconciler: &Reconciler, views: &[RequestView]) {
        let metrics = reconciler.metrics();
        let refused: Vec<&RequestView> = views
            .iter()
            .filter(|v| v.state == RequestState::Refused)
            .collect();
        metrics.rollback_requests_refused.set(refused.len() as i64);
        let standing: HashSet<String> = refused.iter().map(|v| refusal_id(v)).collect();
        self.reported.retain(|id| standing.contains(id));
        for view in refused {
            if !self.reported.insert(refusal_id(view)) {
                continue;
            }
            let reason = view.refusal.as_deref().unwrap_or_default();
            metrics
                .rollback_requests
                .with_label_values(&["refused"])
                .inc();
            tracing::warn!(request = %view.file, commit = %view.commit, claimed_author = %view.author, %reason, "rollback request refused: nothing of it applied");
            let note = format!("rollback request {} refused: {reason}", view.file);
            // No Event where credsync does not write.
            let reachable = view
                .secrets
                .iter()
                .filter(|s| reconciler.namespace_refusal(&s.namespace).is_none());
            for secret in reachable {
                let note = note.clone();
                event(
                    reconciler,
                    secret,
                    EventType::Warning,
                    "RollbackRefused",
                    note,
                )
                .await;
            }
        }
    }
}

/// An Event about a request on one of its Secrets; one that cannot be
/// recorded is logged, never fatal.
async fn event(
    reconciler: &Reconciler,
    secret: &SecretRef,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorded = reconciler
        .cluster()
        .event_on_secret(secret, type_, reason, "Rollback", note)
        .await;
    if let Err(err) = recorded {
        tracing::warn!(%secret, error = %crate::errors::Chain(&err), "Event not recorded");
    }
}

fn refusal_id(view: &RequestView) -> String {
    format!(
        "{}@{}: {}",
        view.file,
        view.commit,
        view.refusal.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::request::MalformedRequest;

    fn found(file: &str, secrets: &[&str]) -> FoundRequest {
        FoundRequest {
            origin: RequestOrigin {
                path: format!("prod/.requests/{file}"),
                commit: "c".repeat(40),
                author: "A <a@x>".to_owned(),
            },
            request: Ok(RollbackRequest {
                revision: "a".repeat(40),
                secrets: secrets.iter().map(|s| s.parse().unwrap()).collect(),
                reason: String::new(),
            }),
            named: Vec::new(),
        }
    }

    #[test]
    fn two_requests_for_one_secret_are_both_refused_and_named() {
        let all = [
            found("one.yaml", &["app/db"]),
            found("two.yaml", &["app/api", "app/db"]),
            found("three.yaml", &["app/web"]),
        ];
        let out = conflicts(&all, &Known::default());
        assert_eq!(
            out[0].as_deref(),
            Some("app/db is also named by prod/.requests/two.yaml: one request per Secret")
        );
        assert_eq!(
            out[1].as_deref(),
            Some("app/db is also named by prod/.requests/one.yaml: one request per Secret")
        );
        assert_eq!(out[2], None);
    }

    #[test]
    fn a_secret_another_request_pins_is_refused_and_the_applied_one_stands() {
        let applied = found("old.yaml", &["app/db"]);
        let newer = found("new.yaml", &["app/db"]);
        let known = Known {
            applied: HashSet::from([applied.origin.key()]),
            pins: BTreeMap::from([("app/db".parse().unwrap(), Some(applied.origin.key()))]),
        };
        let out = conflicts(&[applied.clone(), newer], &known);
        assert_eq!(out[0], None, "the applied request is not in conflict");
        assert!(
            out[1].as_deref().is_some_and(
                |r| r.starts_with("app/db is pinned by request prod/.requests/old.yaml@")
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_secret_pinned_by_hand_is_not_taken_over() {
        let known = Known {
            pins: BTreeMap::from([("app/db".parse().unwrap(), None)]),
            ..Known::default()
        };
        let out = conflicts(&[found("new.yaml", &["app/db"])], &known);
        assert_eq!(
            out[0].as_deref(),
            Some(
                "app/db is pinned by a `credsync rollback` run by hand: `credsync unpin app/db` first"
            )
        );
    }

    #[test]
    fn a_malformed_request_clashes_with_nothing() {
        let mut bad = found("bad.yaml", &["app/db"]);
        bad.request = Err(MalformedRequest::new("nope"));
        let out = conflicts(&[bad, found("ok.yaml", &["app/db"])], &Known::default());
        assert_eq!(out, vec![None, None]);
    }

    #[test]
    fn applied_means_named_in_a_commit_or_pinning_every_secret() {
        let secrets: Vec<SecretRef> = vec!["a/x".parse().unwrap(), "a/y".parse().unwrap()];
        let mut known = Known::default();
        known.pins.insert(secrets[0].clone(), Some("k".to_owned()));
        assert!(!known.is_applied("k", &secrets), "one pin of two: not yet");
        known.pins.insert(secrets[1].clone(), Some("k".to_owned()));
        assert!(known.is_applied("k", &secrets));
        assert!(!known.is_applied("other", &secrets));
        known.applied.insert("other".to_owned());
        assert!(known.is_applied("other", &secrets));
    }
}
