//! Builds what commands need from the resolved settings: the snapshot
//! store, the table source, and the [`Context`] (cluster client, sources,
//! reconciler).

use std::sync::Arc;

use anyhow::{Context as _, Result};

use super::config::env_var;
use super::settings::Settings;
use crate::cluster::Cluster;
use crate::context::Context;
use crate::credstash::CredstashSource;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::secretsmanager::SecretsManagerSource;
use crate::snapshot::store::{SnapshotStore, StoreConfig};

/// Opens the snapshot repository (cloning the remote into an empty
/// directory), if there is one.
pub(super) fn snapshot_store(settings: &Settings) -> Result<Option<Arc<SnapshotStore>>> {
    let Some(snapshots) = &settings.snapshots else {
        return Ok(None);
    };
    let store = SnapshotStore::open(StoreConfig {
        path: snapshots.path.clone(),
        cluster: settings.cluster_name.clone(),
        recipients: snapshots.recipients.clone(),
        identities: settings.identities.clone(),
        remote: snapshots.remote.clone(),
        signing: snapshots.signing.clone(),
    })?;
    Ok(Some(Arc::new(store)))
}

/// The snapshot repository, for a command that cannot work without it.
pub(super) fn required_store(settings: &Settings) -> Result<Arc<SnapshotStore>> {
    snapshot_store(settings)?
        .context("this command needs --snapshot-repo (or CREDSYNC_SNAPSHOT_REPO)")
}

/// The table, from the settings and the AWS configuration chain.
pub(super) async fn source(settings: &Settings, metrics: Arc<Metrics>) -> CredstashSource {
    CredstashSource::connect(settings.table.clone(), settings.request_timeout, metrics).await
}

/// Everything a command works with, built once: the adapters, and the
/// reconciler over them (for `run`, one that keeps a table index and every
/// decrypted value between reconciles). `progress`: show a progress line.
pub(super) async fn build(
    settings: &Settings,
    snapshots: Option<Arc<SnapshotStore>>,
    progress: bool,
) -> Result<Context> {
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let table = Arc::new(source(settings, metrics.clone()).await);
    let cluster = Cluster::connect(settings.request_timeout, metrics.clone())
        .await?
        .with_namespaces(settings.filter.included())
        .with_reporting_instance(env_var("POD_NAME").unwrap_or_else(|| "credsync".to_owned()));
    let shown: Arc<dyn crate::progress::Progress> = if progress {
        super::progress::TerminalProgress::start(metrics.clone())
    } else {
        Arc::new(crate::progress::Silent)
    };
    let mut reconciler = Reconciler::new(
        table.clone(),
        cluster.clone(),
        settings.filter.clone(),
        settings.apply.clone(),
        metrics.clone(),
    )
    .with_key_mapping(settings.mapping)
    .with_progress(shown.clone());
    if let Some(sm) = &settings.secrets_manager {
        let source = SecretsManagerSource::new(table.sdk_config(), sm.clone(), metrics.clone());
        reconciler = reconciler.with_secrets_manager(source, settings.reads_table);
    }
    if let Some(store) = &snapshots {
        reconciler = reconciler.with_snapshots(store.clone());
    }
    if settings.needs.daemon {
        reconciler = reconciler.with_table_index();
    }
    Ok(Context {
        reconciler: Arc::new(reconciler),
        cluster,
        aws: table.sdk_config().clone(),
        table,
        metrics,
        snapshots,
        mapping: settings.mapping,
        progress: shown,
    })
}
