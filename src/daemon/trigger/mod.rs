//! What starts a reconcile in `credsync run` (DynamoDB Stream events, SQS
//! queues, a schedule, drift of managed Secrets, HTTP in `server`, the
//! rollback follower), and the messages they send the worker.

pub mod drift;
pub mod queue;
pub mod schedule;
pub mod stream;

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::reconcile::Changed;

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
pub struct ReconcileRequest {
    /// Every trigger this request came from (several once merged); each
    /// one's counter counts the reconcile.
    pub triggers: BTreeSet<Trigger>,
    /// None: a full reconcile.
    pub changed: Option<Changed>,
    /// For the stream lag metric.
    pub oldest_event: Option<chrono::DateTime<chrono::Utc>>,
    /// The queue's sequence number ([`Sequencer`]), the greatest once
    /// merged: what [`Finished`] reports as covered.
    pub seq: Option<u64>,
}

impl ReconcileRequest {
    pub fn full(trigger: Trigger) -> Self {
        Self::names(trigger, None)
    }

    /// A request from one trigger; `names: None` is a full reconcile.
    pub fn names(trigger: Trigger, names: Option<BTreeSet<String>>) -> Self {
        Self::changed(trigger, names.map(Changed::names))
    }

    /// A request from one trigger; `changed: None` is a full reconcile.
    pub fn changed(trigger: Trigger, changed: Option<Changed>) -> Self {
        Self {
            triggers: BTreeSet::from([trigger]),
            changed,
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
    pub(super) fn merge(&mut self, other: ReconcileRequest) {
        self.triggers.extend(other.triggers);
        self.changed = match (self.changed.take(), other.changed) {
            (Some(mut a), Some(b)) => {
                a.merge(b);
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
        requests: &mpsc::Sender<ReconcileRequest>,
        mut request: ReconcileRequest,
    ) -> Option<u64> {
        // Held across the send: numbers and queue order agree.
        let mut last = self.0.lock().await;
        *last += 1;
        request.seq = Some(*last);
        requests.send(request).await.ok()?;
        Some(*last)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Option<BTreeSet<String>> {
        Some(list.iter().map(|s| s.to_string()).collect())
    }

    fn changed(list: &[&str]) -> Option<Changed> {
        names(list).map(Changed::names)
    }

    #[test]
    fn merging_unions_names_and_a_full_request_wins() {
        let mut a = ReconcileRequest::names(Trigger::Stream, names(&["a"]));
        a.merge(ReconcileRequest::names(Trigger::Stream, names(&["b"])));
        assert_eq!(a.changed, changed(&["a", "b"]));
        a.merge(ReconcileRequest::full(Trigger::Schedule));
        assert_eq!(a.changed, None);
        assert_eq!(a.primary(), Trigger::Schedule);
    }

    #[test]
    fn a_merged_request_keeps_every_trigger() {
        let mut a = ReconcileRequest::names(Trigger::Stream, names(&["a"]));
        a.merge(ReconcileRequest::names(Trigger::Drift, names(&["b"])));
        a.merge(ReconcileRequest::names(Trigger::Stream, names(&["c"])));
        assert_eq!(
            a.triggers.iter().copied().collect::<Vec<_>>(),
            [Trigger::Stream, Trigger::Drift]
        );
        assert_eq!(a.primary(), Trigger::Stream);
    }
}
