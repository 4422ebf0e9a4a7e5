//! How long a shard reader waits after a GetRecords that found nothing.
//!
//! A shard that had records lately is polled every `active` interval (a
//! change reaches its Secret about `active + debounce` after the put). One
//! that stayed empty for [`IDLE_AFTER`] slows down, doubling up to `idle`:
//! most shards of most tables are idle most of the day, and at 250 ms each
//! costs 14,400 GetRecords an hour. The price is at most `idle` of added
//! latency for the first change after a quiet spell; the next record puts
//! the shard back on the `active` pace.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;

/// Quiet time after which a shard counts as idle.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(30);

/// The poll pace of one shard.
#[derive(Debug, Clone)]
pub(crate) struct Pacing {
    active: Duration,
    ramp: Backoff,
    last_record: Instant,
}

impl Pacing {
    /// `idle` no greater than `active` keeps the shard on the active pace.
    pub(crate) fn new(active: Duration, idle: Duration, now: Instant) -> Self {
        Self {
            active,
            ramp: Backoff::exact(active, idle.max(active)),
            last_record: now,
        }
    }

    /// Records arrived: back to the active pace.
    pub(crate) fn records(&mut self, now: Instant) {
        self.last_record = now;
        self.ramp.reset();
    }

    /// The sleep before the next poll after an empty one.
    pub(crate) fn after_empty(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.last_record) < IDLE_AFTER {
            self.active
        } else {
            self.ramp.next_delay()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: Duration = Duration::from_millis(250);
    const IDLE: Duration = Duration::from_secs(3);

    /// Simulates `span` of empty polls from `start`; the number of polls.
    fn polls_over(pacing: &mut Pacing, start: Instant, span: Duration) -> u32 {
        let mut now = start;
        let mut polls = 0;
        while now < start + span {
            now += pacing.after_empty(now);
            polls += 1;
        }
        polls
    }

    #[test]
    fn a_shard_with_recent_records_keeps_the_active_pace() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(ACTIVE, IDLE, t0);
        for step in 0..100 {
            assert_eq!(pacing.after_empty(t0 + ACTIVE * step), ACTIVE);
        }
    }

    #[test]
    fn an_idle_shard_slows_down_to_the_idle_pace_and_a_record_brings_it_back() {
        let t0 = Instant::now();
        let mut pacing = Pacing::new(ACTIVE, IDLE, t0);
        let idle = t0 + IDLE_AFTER;
        let ramp: Vec<Duration> = (0..6).map(|_| pacing.after_empty(idle)).collect();
        assert_eq!(
            ramp,
            [250, 500, 1000, 2000, 3000, 3000].map(Duration::from_millis)
        );
        pacing.records(idle);
        assert_eq!(pacing.after_empty(idle + ACTIVE), ACTIVE);
    }

    #[test]
    fn an_idle_hour_costs_under_a_tenth_of_the_fixed_pace() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let fixed = polls_over(&mut Pacing::new(ACTIVE, ACTIVE, t0), t0, hour);
        let paced = polls_over(&mut Pacing::new(ACTIVE, IDLE, t0), t0, hour);
        assert_eq!(fixed, 14_400);
        assert!(paced * 10 <= fixed, "{paced} polls vs {fixed}");
    }
}
