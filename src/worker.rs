//! The reconcile worker of `credsync run`: one reconcile at a time.
//!
//! Every trigger (start-up, schedule, stream, drift, HTTP) sends a [`Request`];
//! requests that arrive while a reconcile runs are merged into one follow-up,
//! so a burst of events costs one reconcile, not one each. A reconcile that
//! exceeds its timeout is cancelled, counted and retried with backoff; after
//! too many failures in a row `/healthz` fails so the kubelet restarts the pod.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::cluster::lease::Leadership;
use crate::metrics::ReconcileOutcome;
use crate::reconcile::Reconciler;

/// Why a reconcile runs; the label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    Startup,
    Schedule,
    Stream,
    Queue,
    Drift,
    Http,
    /// A rollback request was removed: its Secrets go back to the table.
    Request,
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Schedule => "schedule",
            Trigger::Stream => "stream",
            Trigger::Queue => "queue",
            Trigger::Drift => "drift",
            Trigger::Http => "http",
            Trigger::Request => "request",
            Trigger::Retry => "retry",
        }
    }
}

/// What to reconcile: everything, or the Secrets some table names map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Every trigger this request came from (several once merged); each
    /// one's counter counts the reconcile.
    pub triggers: BTreeSet<Trigger>,
    /// None: a full reconcile.
    pub names: Option<BTreeSet<String>>,
    /// For the stream lag metric.
    pub oldest_event: Option<chrono::DateTime<chrono::Utc>>,
    /// The queue's sequence number ([`Sequencer`]), the greatest once
    /// merged: what [`Finished`] reports as covered.
    pub seq: Option<u64>,
}

impl Request {
    pub fn full(trigger: Trigger) -> Self {
        Self::names(trigger, None)
    }

    /// A request from one trigger; `names: None` is a full reconcile.
    pub fn names(trigger: Trigger, names: Option<BTreeSet<String>>) -> Self {
        Self {
            triggers: BTreeSet::from([trigger]),
            names,
            oldest_event: None,
            seq: None,
        }
    }

    /// The trigger that labels the reconcile's duration: the first in
    /// `Trigger`'s order (startup before schedule before stream ...).
    pub fn primary(&self) -> Trigger {
        self.triggers.first().copied().unwrap_or(Trigger::Retry)
    }

    /// Merges a request that arrived while another was pending.
    fn merge(&mut self, other: Request) {
        self.triggers.extend(other.triggers);
        self.names = match (self.names.take(), other.names) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            _ => None,
        };
        self.oldest_event = match (self.oldest_event, other.oldest_event) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.seq = self.seq.max(other.seq);
    }
}

/// Numbers requests in the order they enter the worker's queue, so "taken
/// by a reconcile" is a number, not a time: everything up to the greatest
/// number a reconcile took was taken by it or an earlier one.
#[derive(Clone, Default)]
pub struct Sequencer(Arc<tokio::sync::Mutex<u64>>);

impl Sequencer {
    /// Sends `request` numbered; its number, or None if the worker is gone.
    pub async fn send(
        &self,
        requests: &mpsc::Sender<Request>,
        mut request: Request,
    ) -> Option<u64> {
        // Held across the send: numbers and queue order agree.
        let mut last = self.0.lock().await;
        *last += 1;
        request.seq = Some(*last);
        requests.send(request).await.ok()?;
        Some(*last)
    }
}

/// Liveness and readiness, read by the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    consecutive_failures: AtomicU32,
    failure_limit: AtomicU32,
}

impl Health {
    pub fn new(failure_limit: u32) -> Arc<Self> {
        let health = Self::default();
        health
            .failure_limit
            .store(failure_limit.max(1), Ordering::Relaxed);
        Arc::new(health)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// False after `failure_limit` failed reconciles in a row.
    pub fn is_live(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed)
            < self.failure_limit.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

/// A reconcile that ended. `taken`: the greatest [`Sequencer`] number taken
/// by it or an earlier reconcile (a request numbered up to it is past the
/// queue). `done`: every request numbered up to it was reconciled with
/// every write landed: a reconcile that took it, or a full one after it,
/// finished ok, and no failure since waits for a retry. A request numbered
/// above `taken` (sent while a reconcile waited for the write lock, say)
/// is in neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub taken: u64,
    pub done: u64,
    pub ok: bool,
}

pub struct WorkerConfig {
    pub timeout: Duration,
    pub dry_run: bool,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// How the worker talks to the rest of `run`.
pub struct WorkerLinks {
    pub requests: mpsc::Receiver<Request>,
    /// Where a failed reconcile's retry is queued.
    pub retry: mpsc::Sender<Request>,
    pub leadership: watch::Receiver<Leadership>,
    /// Each reconcile's end, for the SQS consumer.
    pub finished: watch::Sender<Option<Finished>>,
    pub shutdown: CancellationToken,
}

/// Runs reconciles from `requests` until `shutdown`; only while leading.
pub async fn run(
    reconciler: Arc<Reconciler>,
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
    let metrics = reconciler.metrics().clone();
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
        let full = request.names.is_none();
        // Followers do not write: wait to lead, then do a full reconcile.
        let mut full = full;
        if *leadership.borrow() != Leadership::Leading {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = leadership.wait_for(|l| *l == Leadership::Leading) => {}
            }
            request.names = None;
            full = true;
        }
        if let Some(oldest) = request.oldest_event {
            let lag = (chrono::Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0;
            metrics.stream_lag_seconds.set(lag);
        }
        let trigger = request.primary().as_str();
        let count = |outcome: ReconcileOutcome| {
            for t in &request.triggers {
                metrics
                    .reconciles_by_trigger
                    .with_label_values(&[t.as_str(), outcome.as_str()])
                    .inc();
            }
        };
        // Waiting for the request follower's writes is not the reconcile's time.
        let _writing = tokio::select! {
            _ = shutdown.cancelled() => return,
            writing = reconciler.exclusive() => writing,
        };
        let began = Instant::now();
        let work = async {
            match &request.names {
                Some(names) => reconciler.sync_names(names, config.dry_run).await,
                None => reconciler.sync(config.dry_run).await,
            }
        };
        // Dropping the future on timeout or shutdown cancels it between API
        // calls: a Secret write is one request, so none is left half-written.
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tokio::time::timeout(config.timeout, work) => result,
        };
        metrics
            .reconcile_duration
            .with_label_values(&[trigger])
            .observe(began.elapsed().as_secs_f64());
        let mut retry_partial = false;
        let failed = match outcome {
            Ok(Ok(report)) => {
                // A Secret the API server refused (a 500, say) is retried
                // like a failed reconcile, without counting against liveness.
                retry_partial = !report.outcome.failed.is_empty();
                let writes = report.outcome.written.len() as u64;
                if request.triggers.contains(&Trigger::Drift) && writes > 0 {
                    metrics.drift_corrections.inc_by(writes);
                }
                count(if report.has_errors() {
                    ReconcileOutcome::Partial
                } else {
                    ReconcileOutcome::Success
                });
                false
            }
            Ok(Err(err)) => {
                tracing::error!(trigger, error = %crate::errors::Chain(&err), "reconcile failed");
                count(ReconcileOutcome::Error);
                true
            }
            Err(_) => {
                tracing::error!(trigger, timeout = ?config.timeout, "reconcile timed out and was cancelled");
                metrics.reconcile_timeouts.inc();
                count(ReconcileOutcome::Timeout);
                true
            }
        };
        // Only the first reconcile of `run` shows progress on a terminal.
        reconciler.finish_progress();
        let ok = !(failed || retry_partial);
        if !ok {
            failing = true;
        } else if full || !failing {
            // A full reconcile covers everything taken before it; a targeted
            // one only what it took, and only if nothing failed before it.
            done = taken;
            failing = false;
        }
        finished.send_replace(Some(Finished { taken, done, ok }));
        if failed || retry_partial {
            let delay = backoff.next_delay();
            if failed {
                let failures = health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
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
                    _ = tokio::time::sleep(delay) => { let _ = retry.send(Request::full(Trigger::Retry)).await; }
                }
            });
        } else {
            health.consecutive_failures.store(0, Ordering::Relaxed);
            health.set_ready();
            backoff.reset();
            // Caught up: no stream record is waiting any more.
            if request.oldest_event.is_some() {
                metrics.stream_lag_seconds.set(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Option<BTreeSet<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn merging_unions_names_and_a_full_request_wins() {
        let mut a = Request::names(Trigger::Stream, names(&["a"]));
        a.merge(Request::names(Trigger::Stream, names(&["b"])));
        assert_eq!(a.names, names(&["a", "b"]));
        a.merge(Request::full(Trigger::Schedule));
        assert_eq!(a.names, None);
        assert_eq!(a.primary(), Trigger::Schedule);
    }

    #[test]
    fn a_merged_request_keeps_every_trigger() {
        let mut a = Request::names(Trigger::Stream, names(&["a"]));
        a.merge(Request::names(Trigger::Drift, names(&["b"])));
        a.merge(Request::names(Trigger::Stream, names(&["c"])));
        assert_eq!(
            a.triggers.iter().copied().collect::<Vec<_>>(),
            [Trigger::Stream, Trigger::Drift]
        );
        assert_eq!(a.primary(), Trigger::Stream);
    }

    #[test]
    fn health_fails_after_the_limit() {
        let h = Health::new(2);
        assert!(h.is_live() && !h.is_ready());
        h.consecutive_failures.store(2, Ordering::Relaxed);
        assert!(!h.is_live());
    }
}
