//! The daemon's follower of reviewed rollback requests: while leading, it
//! fetches the snapshot remote every `--request-poll-interval`, releases
//! the pins of removed requests, applies the new ones judged fit
//! ([`crate::rollback_requests`]) and reports those it refuses.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sops_age::Identities;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::events::EventType;
use crate::cluster::lease::Leadership;
use crate::context::Context;
use crate::daemon::trigger::{ReconcileRequest, Trigger};
use crate::manifest::SecretRef;
use crate::plan::{RequestState, RequestView};
use crate::reconcile::ReconcileError;
use crate::rollback_requests::{Checked, Known, assess, check_sources};
use crate::snapshot::remote::PushOutcome;
use crate::snapshot::store::{RollbackCause, SnapshotStore};

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
    context: Arc<Context>,
    config: FollowConfig,
    requests: mpsc::Sender<ReconcileRequest>,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let Some(store) = context.snapshots.clone() else {
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
        if let Err(err) = state.poll(&context, &store, &config, &requests).await {
            state.seen_head = None;
            tracing::warn!(error = %crate::errors::Chain(&err), "rollback requests not handled; retried at the next poll");
        }
    }
}

impl Follower {
    async fn poll(
        &mut self,
        context: &Context,
        store: &Arc<SnapshotStore>,
        config: &FollowConfig,
        requests: &mpsc::Sender<ReconcileRequest>,
    ) -> Result<(), ReconcileError> {
        let fetched = store.blocking(|store| store.share()).await;
        self.note_remote(context, fetched.as_ref().err());
        // Only a clone that holds the remote's head may release or apply:
        // a stale one (a standby that took over while the remote is down)
        // would release the pins of every request merged since it last read.
        if !matches!(fetched, Ok(PushOutcome::UpToDate)) {
            self.seen_head = None;
            return Ok(());
        }
        let since = self.applied_head.clone();
        let (applied, head) = store
            .blocking(move |store| store.applied_requests(since.as_deref()))
            .await?;
        self.known.applied.extend(applied);
        self.applied_head = head.clone();
        if head.is_some() && head == self.seen_head {
            return Ok(());
        }
        let pins = context.cluster.pins().await?;
        self.known.pins = pins.by_secret();
        let filter = context.reconciler.namespace_filter().clone();
        let identities = config.identities.clone();
        let known = self.known.clone();
        let (found, assessment) = store
            .blocking(move |store| {
                let found = store.requests(None)?;
                let keys: HashSet<String> = found.iter().map(|f| f.origin.key()).collect();
                let assessment = assess(store, &filter, found, &known, Some(&identities), None)?;
                Ok((keys, assessment))
            })
            .await?;
        let (mut views, checked) = check_sources(&context.reconciler, assessment).await?;
        let mut retry = false;
        let released = {
            // Writes only: reconciles wait for these, not for the reads above.
            let _writing = context.reconciler.exclusive().await;
            let released = context.cluster.unpin_released(pins, &found).await?;
            for (index, checked) in checked {
                retry |= !self.apply(context, checked, &mut views[index]).await;
            }
            released
        };
        context.reconciler.set_requests(views.clone());
        self.report_released(context, &released).await;
        if !released.is_empty() {
            let _ = requests
                .send(ReconcileRequest::full(Trigger::Request))
                .await;
        }
        self.report_refusals(context, &views).await;
        // Our own rollback commits moved HEAD: the next poll reads them.
        self.seen_head = if retry { None } else { head };
        Ok(())
    }

    /// Reports the remote's state when it changes: a remote that cannot
    /// be reached stops nothing but the requests.
    fn note_remote(
        &mut self,
        context: &Context,
        error: Option<&crate::snapshot::store::SnapshotError>,
    ) {
        let up = error.is_none();
        context.metrics.snapshot_remote_up.set(i64::from(up));
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
    async fn report_released(&mut self, context: &Context, released: &[(SecretRef, String)]) {
        for (secret, request) in released {
            self.known.pins.remove(secret);
            context
                .metrics
                .rollback_requests
                .with_label_values(&["released"])
                .inc();
            tracing::info!(%secret, %request, "rollback request removed: Secret unpinned, the table's state returns");
            let note = format!("rollback request {request} was removed: back to the table");
            event(context, secret, EventType::Normal, "Unpinned", note).await;
        }
    }

    /// Applies one approved request; false when it should be tried again.
    async fn apply(
        &mut self,
        context: &Context,
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
        match context
            .reconciler
            .rollback(
                approved.restored,
                &approved.commit,
                false,
                RollbackCause::Request(approved.origin.clone()),
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
                context
                    .metrics
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
    async fn report_refusals(&mut self, context: &Context, views: &[RequestView]) {
        let metrics = &context.metrics;
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
                .filter(|s| context.reconciler.namespace_refusal(&s.namespace).is_none());
            for secret in reachable {
                let note = note.clone();
                event(context, secret, EventType::Warning, "RollbackRefused", note).await;
            }
        }
    }
}

/// An Event about a request on one of its Secrets; one that cannot be
/// recorded is logged, never fatal.
async fn event(
    context: &Context,
    secret: &SecretRef,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let recorded = context
        .cluster
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
