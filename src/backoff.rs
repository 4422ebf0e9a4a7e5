//! The one retry delay of credsync: capped exponential backoff, with jitter
//! where many callers may fail together (stream readers throttled at once)
//! and exact where a log line or a test reads the delay (the worker's
//! retries). The stream, the worker, the drift watcher and the Lease loop
//! all retry through it, so "how long until the next try" has one answer.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Capped exponential backoff with "equal jitter" (half fixed, half random),
/// so many readers throttled together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    /// None: no jitter, every delay is exactly `min(cap, base * 2^attempt)`.
    rng: Option<u64>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        // Seeded from the std hasher's per-process random keys: no rand crate needed.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        {
            hasher.write_u128(since_epoch.as_nanos());
        }
        Self {
            base,
            cap,
            attempt: 0,
            rng: Some(hasher.finish() | 1),
        }
    }

    /// Doubling from `base` up to `cap`, without jitter. `base == cap` is a
    /// constant delay.
    pub fn exact(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng: None,
        }
    }

    /// The delay before the next retry; each call doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let unit = match &mut self.rng {
            Some(rng) => {
                // xorshift64: plenty for jitter.
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                (*rng >> 11) as f64 / (1u64 << 53) as f64
            }
            None => 1.0,
        };
        let delay = backoff_delay(self.base, self.cap, self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset: failures in a row.
    pub fn failures(&self) -> u32 {
        self.attempt
    }
}

/// `min(cap, base * 2^attempt)`, of which the upper half is scaled by
/// `unit` (in `[0, 1]`; 1 is the ceiling itself).
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(20);
        assert_eq!(backoff_delay(base, cap, 0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(base, cap, 0, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(base, cap, 3, 0.0), Duration::from_millis(800));
        assert_eq!(
            backoff_delay(base, cap, 3, 0.5),
            Duration::from_millis(1200)
        );
        assert_eq!(backoff_delay(base, cap, 10, 1.0), cap);
        assert_eq!(backoff_delay(base, cap, u32::MAX, 0.0), cap / 2);

        let mut b = Backoff::new(base, cap);
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 0..12 {
            let delay = b.next_delay();
            let ceiling = backoff_delay(base, cap, attempt, 1.0);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert!(b.next_delay() <= cap);
        b.reset();
        assert!(b.next_delay() <= base);
    }

    #[test]
    fn exact_backoff_doubles_without_jitter() {
        let mut b = Backoff::exact(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(b.failures(), 5);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        let mut constant = Backoff::exact(Duration::from_millis(250), Duration::from_millis(250));
        assert_eq!(constant.next_delay(), constant.next_delay());
    }
}
