//! Names collected into batches: one reconcile per burst of records.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A batch of changed table names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedNames {
    pub names: BTreeSet<String>,
    /// ApproximateCreationDateTime of the oldest record in the batch, for the lag metric.
    pub oldest_record: Option<DateTime<Utc>>,
}
/// A busy table still propagates: a batch waits at most this many debounces.
pub(crate) const MAX_WAIT_FACTOR: u32 = 5;

/// Collects names until `debounce` passes with no new record, or until
/// `MAX_WAIT_FACTOR` debounces after the first one so steady traffic cannot
/// hold a batch back forever.
#[derive(Debug)]
pub(crate) struct Debouncer {
    pub(crate) debounce: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) names: BTreeSet<String>,
    pub(crate) oldest: Option<DateTime<Utc>>,
    pub(crate) first_at: Option<Instant>,
    pub(crate) last_at: Option<Instant>,
}

impl Debouncer {
    pub(crate) fn new(debounce: Duration) -> Self {
        Self {
            debounce,
            max_wait: debounce.saturating_mul(MAX_WAIT_FACTOR),
            names: BTreeSet::new(),
            oldest: None,
            first_at: None,
            last_at: None,
        }
    }

    /// Adds the names of records seen at `now`; a record without a name
    /// does not restart the quiet time.
    pub(crate) fn add<I>(&mut self, names: I, oldest: Option<DateTime<Utc>>, now: Instant)
    where
        I: IntoIterator<Item = String>,
    {
        let mut any = false;
        for name in names {
            any = true;
            self.names.insert(name);
        }
        if !any {
            return;
        }
        // A name already pending is still traffic: the quiet time restarts.
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.oldest = match (self.oldest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// When the pending batch becomes due, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let first = self.first_at?;
        let last = self.last_at.unwrap_or(first);
        Some((last + self.debounce).min(first + self.max_wait))
    }

    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Takes everything pending, due or not.
    pub(crate) fn take(&mut self) -> Option<ChangedNames> {
        self.first_at = None;
        self.last_at = None;
        let oldest_record = self.oldest.take();
        if self.names.is_empty() {
            return None;
        }
        Some(ChangedNames {
            names: std::mem::take(&mut self.names),
            oldest_record,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn debounce_waits_for_quiet_then_sends_one_batch() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(1000));
        assert_eq!(d.deadline(), None);
        d.add(names(&["a/b/c"]), None, t0);
        d.add(names(&["a/b/d"]), None, at(t0, 400));
        d.add(names(&["a/b/c"]), None, at(t0, 800));
        assert!(
            !d.is_due(at(t0, 1500)),
            "quiet time restarts on each record"
        );
        assert_eq!(d.deadline(), Some(at(t0, 1800)));
        assert!(d.is_due(at(t0, 1800)));
        let batch = d.take().unwrap();
        assert_eq!(batch.names, ["a/b/c", "a/b/d"].map(String::from).into());
        assert_eq!(d.deadline(), None);
        assert!(d.take().is_none());
    }

    #[test]
    fn debounce_caps_the_wait_under_continuous_traffic() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(1000));
        for i in 0..20u64 {
            d.add(vec![format!("ns/s/k{i}")], None, at(t0, i * 300));
        }
        // Traffic never paused for 1 s, but 5 s after the first record it is due.
        assert_eq!(d.deadline(), Some(at(t0, 5000)));
        assert!(d.is_due(at(t0, 5000)));
        assert_eq!(d.take().unwrap().names.len(), 20);
    }

    #[test]
    fn debounce_keeps_the_oldest_record_time_and_ignores_nameless_records() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(100));
        d.add(Vec::new(), DateTime::from_timestamp(5, 0), t0);
        assert_eq!(d.deadline(), None, "a record without a name starts nothing");
        d.add(names(&["x"]), DateTime::from_timestamp(20, 0), t0);
        d.add(names(&["y"]), DateTime::from_timestamp(10, 0), t0);
        d.add(names(&["z"]), None, t0);
        let batch = d.take().unwrap();
        assert_eq!(batch.oldest_record, DateTime::from_timestamp(10, 0));
        d.add(names(&["x"]), None, t0);
        assert_eq!(
            d.take().unwrap().oldest_record,
            None,
            "reset between batches"
        );
    }

    #[test]
    fn zero_debounce_is_due_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::ZERO);
        d.add(names(&["a"]), None, t0);
        assert!(d.is_due(t0));
    }
}
