//! Drift repair: watch the Secrets credsync manages and reconcile one as
//! soon as someone edits or deletes it, so a hand edit of a managed key is
//! reverted within seconds.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::backoff::Backoff;
use crate::cluster::Author;
use crate::context::Context;
use crate::daemon::trigger::{ReconcileRequest, Trigger};
use crate::labels::MANAGED_SELECTOR;
use crate::manifest::SecretRef;
use crate::reconcile::ScopeNames;

/// Watches managed Secrets until `shutdown`; restarts the watch on errors.
pub async fn run(
    context: Arc<Context>,
    requests: mpsc::Sender<ReconcileRequest>,
    shutdown: CancellationToken,
) {
    let config = watcher::Config::default().labels(MANAGED_SELECTOR);
    let own_writes = context.cluster.track_own_writes();
    // One watch per included namespace, or one across the cluster
    // (Cluster::watch_apis); events count once every watch has listed.
    let apis = context.cluster.watch_apis();
    let watch_count = apis.len();
    let watches = apis
        .into_iter()
        .map(|api| watcher::watcher(api, config.clone()).boxed());
    let mut events = futures::stream::select_all(watches);
    let mut initialized_watches = 0;
    let mut initialized = false;
    // A watch that keeps failing (API down, RBAC removed) backs off to 30 s.
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        if matches!(event, Some(Ok(_))) {
            retry.reset();
        }
        let (secret, deleted) = match event {
            None => return,
            Some(Err(err)) => {
                let delay = retry.next_delay();
                tracing::warn!(error = %crate::errors::Chain(&err), retry_in = ?delay, "watching managed Secrets failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }

            Some(Ok(Event::InitDone)) => {
                initialized_watches += 1;
                if !initialized && initialized_watches >= watch_count {
                    initialized = true;
                    tracing::info!(
                        "drift watch ready: changes to managed Secrets from now on are repaired"
                    );
                }
                continue;
            }
            Some(Ok(Event::Init | Event::InitApply(_))) => continue,
            Some(Ok(Event::Apply(secret))) if initialized => (secret, false),
            Some(Ok(Event::Delete(secret))) if initialized => (secret, true),
            Some(Ok(_)) => continue,
        };
        let version = secret.metadata.resource_version;
        let (Some(namespace), Some(name)) = (secret.metadata.namespace, secret.metadata.name)
        else {
            continue;
        };
        let secret = SecretRef::new(namespace, name);
        let version = if deleted { None } else { version };
        match own_writes.author(&secret, version.as_deref()) {
            Author::Credsync => continue,
            Author::Someone => {
                if !request_check(&context.reconciler, &requests, secret).await {
                    return;
                }
            }
            // Our write's answer is still on its way: look again once it
            // has arrived, without holding up other events.
            Author::Pending => {
                let (reconciler, requests) = (context.reconciler.clone(), requests.clone());
                let own_writes = own_writes.clone();
                tokio::spawn(async move {
                    let mut author = Author::Pending;
                    for _ in 0..PENDING_CHECKS {
                        tokio::time::sleep(PENDING_RECHECK).await;
                        author = own_writes.author(&secret, version.as_deref());
                        if author != Author::Pending {
                            break;
                        }
                    }
                    if author != Author::Credsync {
                        request_check(&reconciler, &requests, secret).await;
                    }
                });
            }
        }
    }
}

/// How often, and how many times, an event for a Secret credsync is writing
/// looks again for the write's answer (10 s in all, then it counts as drift).
const PENDING_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);
const PENDING_CHECKS: u32 = 40;

/// Asks the worker to reconcile the Secret; false once the worker is gone.
async fn request_check(
    reconciler: &crate::reconcile::Reconciler,
    requests: &mpsc::Sender<ReconcileRequest>,
    secret: SecretRef,
) -> bool {
    let ScopeNames::Names(names) = reconciler.names_in(&secret.namespace, Some(&secret)) else {
        return true;
    };
    tracing::debug!(secret = %secret, "managed Secret changed; checking it");
    let request = ReconcileRequest::names(Trigger::Drift, Some(names));
    requests.send(request).await.is_ok()
}
