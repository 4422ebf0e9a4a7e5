//! The reconcile worker of `credsync run`: one reconcile at a time.
//!
//! Every trigger (start-up, schedule, stream, drift, HTTP) sends a
//! [`ReconcileRequest`];
//! requests that arrive while a reconcile runs are merged into one follow-up,
//! so a burst of events costs one reconcile, not one each. A reconcile that
//! exceeds its timeout is cancelled, counted and retried with backoff; after
//! too many failures in a row `/healthz` fails so the kubelet restarts the pod.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::trigger::{Finished, ReconcileRequest, Trigger};
use crate::backoff::Backoff;
use crate::cluster::lease::Leadership;
use crate::metrics::{Metrics, ReconcileOutcome};
use crate::reconcile::{ReconcileError, Reconciler};

pub struct WorkerConfig {
    pub timeout: Duration,
    pub dry_run: bool,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// How the worker talks to the rest of `run`.
pub struct WorkerLinks {
    pub requests: mpsc::Receiver<ReconcileRequest>,
    /// Where a failed reconcile's retry is queued.
    pub retry: mpsc::Sender<ReconcileRequest>,
    pub leadership: watch::Receiver<Leadership>,
    /// Each reconcile's end, for the SQS consumer.
    pub finished: watch::Sender<Option<Finished>>,
    pub shutdown: CancellationToken,
}

/// How one reconcile ended.
enum Outcome {
    /// It ran to its end; `partial`: some Secret was not written (or an
    /// item not decrypted, a workload not restarted).
    Finished {
        writes: u64,
        partial: bool,
        unwritten: bool,
    },
    Failed(ReconcileError),
    TimedOut,
}

/// What the worker does next, after an outcome.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// All written: ready, backoff reset.
    Done,
    /// Some Secrets were refused (a 500, say): retry, without it counting
    /// against liveness.
    RetryWrites,
    /// The reconcile failed or timed out: retry with a full reconcile, and
    /// count it against liveness.
    Retry,
}

/// The retry decision, in one place (controller-rs' `error_policy`).
fn error_policy(outcome: &Outcome) -> Action {
    match outcome {
        Outcome::Finished {
            unwritten: true, ..
        } => Action::RetryWrites,
        Outcome::Finished { .. } => Action::Done,
        Outcome::Failed(_) | Outcome::TimedOut => Action::Retry,
    }
}

/// The counters and log lines of an outcome, in one place.
fn record(metrics: &Metrics, request: &ReconcileRequest, outcome: &Outcome, timeout: Duration) {
    let trigger = request.primary().as_str();
    let counted = match outcome {
        Outcome::Finished {
            writes, partial, ..
        } => {
            if request.triggers.contains(&Trigger::Drift) && *writes > 0 {
                metrics.drift_corrections.inc_by(*writes);
            }
            if *partial {
                ReconcileOutcome::Partial
            } else {
                ReconcileOutcome::Success
            }
        }
        Outcome::Failed(err) => {
            tracing::error!(trigger, error = %crate::errors::Chain(err), "reconcile failed");
            ReconcileOutcome::Error
        }
        Outcome::TimedOut => {
            tracing::error!(trigger, ?timeout, "reconcile timed out and was cancelled");
            metrics.reconcile_timeouts.inc();
            ReconcileOutcome::Timeout
        }
    };
    metrics
        .reconciles
        .with_label_values(&[counted.as_str()])
        .inc();
    for t in &request.triggers {
        metrics
            .reconciles_by_trigger
            .with_label_values(&[t.as_str(), counted.as_str()])
            .inc();
    }
}

/// Runs reconciles from `requests` until `shutdown`; only while leading.
pub async fn run(
    reconciler: Arc<Reconciler>,
    metrics: Arc<Metrics>,
    config: WorkerConfig,
    health: Arc<Health>,
    links: WorkerLinks,
) {
    let WorkerLinks {
        mut requests,
        retry,
        mut leadership,
        finished,
        shutdown,
    } = links;
    let mut backoff = Backoff::exact(config.backoff, config.max_backoff);
    // See [`Finished`]; `failing`: a failure waits for its (full) retry.
    let (mut taken, mut done, mut failing) = (0u64, 0u64, false);
    loop {
        let mut request = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = requests.recv() => match next {
                Some(request) => request,
                None => return,
            },
        };
        // Coalesce everything that queued up meanwhile into this one.
        while let Ok(more) = requests.try_recv() {
            request.merge(more);
        }
        // What this reconcile covers is fixed now: a request queued from
        // here on (while it waits to lead or for the request follower's
        // writes) is not in it, so it must not count as covered by it.
        taken = taken.max(request.seq.unwrap_or(0));
        // Followers do not write: wait to lead, then do a full reconcile.
        if *leadership.borrow() != Leadership::Leading {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = leadership.wait_for(|l| *l == Leadership::Leading) => {}
            }
            request.changed = None;
        }
        let full = request.changed.is_none();
        if let Some(oldest) = request.oldest_event {
            let lag = (chrono::Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0;
            metrics.stream_lag_seconds.set(lag);
        }
        // Waiting for the request follower's writes is not the reconcile's time.
        let _writing = tokio::select! {
            _ = shutdown.cancelled() => return,
            writing = reconciler.exclusive() => writing,
        };
        let began = Instant::now();
        let work = async {
            match &request.changed {
                Some(changed) => reconciler.sync_changed(changed, config.dry_run).await,
                None => reconciler.sync(config.dry_run).await,
            }
        };
        // Dropping the future on timeout or shutdown cancels it between API
        // calls: a Secret write is one request, so none is left half-written.
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tokio::time::timeout(config.timeout, work) => result,
        };
        metrics
            .reconcile_duration
            .with_label_values(&[request.primary().as_str()])
            .observe(began.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(Ok(report)) => Outcome::Finished {
                writes: report.outcome.written.len() as u64,
                partial: report.has_errors(),
                unwritten: !report.outcome.failed.is_empty(),
            },
            Ok(Err(err)) => Outcome::Failed(err),
            Err(_) => Outcome::TimedOut,
        };
        record(&metrics, &request, &outcome, config.timeout);
        // Only the first reconcile of `run` shows progress on a terminal.
        reconciler.finish_progress();
        let action = error_policy(&outcome);
        let ok = action == Action::Done;
        if !ok {
            failing = true;
        } else if full || !failing {
            // A full reconcile covers everything taken before it; a targeted
            // one only what it took, and only if nothing failed before it.
            done = taken;
            failing = false;
        }
        finished.send_replace(Some(Finished { taken, done, ok }));
        match action {
            Action::Done => {
                health.record_success();
                backoff.reset();
                // Caught up: no stream record is waiting any more.
                if request.oldest_event.is_some() {
                    metrics.stream_lag_seconds.set(0.0);
                }
            }
            Action::RetryWrites | Action::Retry => {
                let delay = backoff.next_delay();
                if action == Action::Retry {
                    let failures = health.record_failure();
                    tracing::warn!(failures, retry_in = ?delay, "will retry with a full reconcile");
                } else {
                    health.set_ready();
                    tracing::warn!(retry_in = ?delay, "some Secrets were not written; will retry");
                }
                let retry = retry.clone();
                let cancel = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {
                            let _ = retry.send(ReconcileRequest::full(Trigger::Retry)).await;
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_retry_without_liveness_failures_retry_with_it() {
        let finished = |unwritten| Outcome::Finished {
            writes: 1,
            partial: unwritten,
            unwritten,
        };
        assert_eq!(error_policy(&finished(false)), Action::Done);
        assert_eq!(error_policy(&finished(true)), Action::RetryWrites);
        assert_eq!(error_policy(&Outcome::TimedOut), Action::Retry);
        let failed = Outcome::Failed(ReconcileError::Refused("x".to_owned()));
        assert_eq!(error_policy(&failed), Action::Retry);
    }
}
