//! Follows the rollouts credsync started, between reconciles: while a
//! rotation has a wave in flight, looks at it every [`LOOK_EVERY`], so the
//! next wave starts, or a failed wave is reverted, within moments of the
//! controller saying so, not at the next reconcile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::lease::Leadership;
use crate::reconcile::Reconciler;

/// How often rotations in flight are looked at (a GET of each Secret and a
/// list of workloads per kind and namespace involved).
pub const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Runs until `shutdown`; only the leader moves rotations on.
pub async fn follow(
    reconciler: Arc<Reconciler>,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(LOOK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if *leadership.borrow() != Leadership::Leading || !reconciler.following_rollouts() {
            continue;
        }
        if let Err(err) = reconciler.advance_rollouts().await {
            tracing::warn!(error = %crate::errors::Chain(&err), "rollouts in flight not looked at; trying again");
        }
    }
}
