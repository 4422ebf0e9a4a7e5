//! Drift repair: watch the Secrets credsync manages and reconcile one as
//! soon as someone edits or deletes it, so a hand edit of a managed key is
//! reverted within seconds.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::manifest::SecretRef;
use crate::reconcile::Reconciler;
use crate::worker::{Request, Trigger};

/// Watches managed Secrets until `shutdown`; restarts the watch on errors.
pub async fn run(
    reconciler: Arc<Reconciler>,
    requests: mpsc::Sender<Request>,
    shutdown: CancellationToken,
) {
    let config =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // One watch per included namespace, or one across the cluster
    // (Cluster::secret_apis); events count once every watch has listed.
    let apis = reconciler.cluster().secret_apis();
    let watch_count = apis.len();
    let watches = apis
        .into_iter()
        .map(|api| watcher::watcher(api, config.clone()).boxed());
    let mut events = futures::stream::select_all(watches);
    let mut initialized_watches = 0;
    let mut initialized = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let secret = match event {
            None => return,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "watching managed Secrets failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Some(Ok(Event::InitDone)) => {
                initialized_watches += 1;
                initialized = initialized_watches >= watch_count;
                continue;
            }
            Some(Ok(Event::Init | Event::InitApply(_))) => continue,
            Some(Ok(Event::Apply(secret) | Event::Delete(secret))) if initialized => secret,
            Some(Ok(_)) => continue,
        };
        let (Some(namespace), Some(name)) = (secret.metadata.namespace, secret.metadata.name)
        else {
            continue;
        };
        let secret = SecretRef::new(namespace, name);
        let Some(names) = reconciler.names_in(&secret.namespace, Some(&secret)) else {
            continue;
        };
        tracing::debug!(secret = %secret, "managed Secret changed; checking it");
        let request = Request {
            trigger: Trigger::Drift,
            names: Some(names),
            oldest_event: None,
        };
        if requests.send(request).await.is_err() {
            return;
        }
    }
}
