//! Liveness and readiness: set by the worker, read by the HTTP server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

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

    /// A failed reconcile; the failures in a row now.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A reconcile that wrote everything: ready, and no failure in a row.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.set_ready();
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_after_the_limit() {
        let h = Health::new(2);
        assert!(h.is_live() && !h.is_ready());
        h.consecutive_failures.store(2, Ordering::Relaxed);
        assert!(!h.is_live());
    }
}
