//! Builds what commands need from the flags: the snapshot store, the age
//! identities, the reconciler (table source, cluster client, filters).

use std::sync::Arc;

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};

use super::args::{Common, SourceKind};
use super::config::env_var;
use crate::cluster::Cluster;
use crate::cluster::apply::ApplyOptions;
use crate::context::Context;
use crate::credstash::{CredstashSource, SourceConfig};
use crate::manifest::NamespaceFilter;
use crate::metrics::Metrics;
use crate::plan::DiffOptions;
use crate::reconcile::Reconciler;
use crate::secretsmanager::{SecretsManagerSource, SmConfig};
use crate::snapshot::remote::{RemoteConfig, RemoteUrl};
use crate::snapshot::signing::{CommitSigner, Signing, TrustedKeys};
use crate::snapshot::store::{SnapshotStore, StoreConfig};
use sops_age::{Identities, Recipients};

pub(super) fn identities(common: &Common) -> Result<Option<Identities>> {
    common
        .age_identity
        .as_deref()
        .map(|path| {
            Identities::from_file(path)
                .with_context(|| format!("reading age identity {}", path.display()))
        })
        .transpose()
}

/// The snapshot signing key and the trusted keys; a key that cannot be
/// read stops the command here, before any work.
fn signing(common: &Common) -> Result<Signing> {
    let signer = common
        .snapshot_signing_key
        .as_deref()
        .map(CommitSigner::from_file)
        .transpose()?;
    let mut trusted = Vec::new();
    for path in &common.snapshot_trusted_keys {
        trusted.extend(TrustedKeys::from_file(path)?);
    }
    Ok(Signing::new(signer, trusted))
}

/// Opens the snapshot repository; recipients are checked here, before any work.
pub(super) fn snapshot_store(
    common: &Common,
    need_recipients: bool,
) -> Result<Option<Arc<SnapshotStore>>> {
    let Some(path) = &common.snapshot_repo else {
        return Ok(None);
    };
    if need_recipients && common.age_recipients.is_empty() {
        bail!(
            "--age-recipient is required with --snapshot-repo: snapshots are encrypted for their readers"
        );
    }
    let recipients = match common.age_recipients.is_empty() {
        true => None,
        false => Some(Recipients::parse(&common.age_recipients).context("--age-recipient")?),
    };
    let token = match &common.snapshot_token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --snapshot-token-file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        None => env_var("CREDSYNC_SNAPSHOT_TOKEN"),
    };
    let remote = common.snapshot_remote.as_ref().map(|url| RemoteConfig {
        url: RemoteUrl::parse(url),
        ssh_key: common.snapshot_ssh_key.clone(),
        token,
    });
    let store = SnapshotStore::open(StoreConfig {
        path: path.clone(),
        cluster: common.cluster_name.clone(),
        recipients,
        identities: identities(common)?,
        remote,
        signing: signing(common)?,
    })?;
    Ok(Some(Arc::new(store)))
}

pub(super) fn required_store(common: &Common) -> Result<Arc<SnapshotStore>> {
    snapshot_store(common, false)?
        .context("this command needs --snapshot-repo (or CREDSYNC_SNAPSHOT_REPO)")
}

pub(super) fn required_identities(common: &Common) -> Result<Identities> {
    identities(common)?.context(
        "this command needs --age-identity (or CREDSYNC_AGE_IDENTITY) to decrypt the snapshot",
    )
}

/// The table, from the flags and the AWS configuration chain.
pub(super) async fn source(common: &Common, metrics: Arc<Metrics>) -> CredstashSource {
    CredstashSource::connect(
        SourceConfig {
            table: common.table.clone(),
            region: common.region.clone(),
            context: common.context.iter().cloned().collect::<BTreeMap<_, _>>(),
            kms_concurrency: common.kms_concurrency,
            scan_segments: common.scan_segments,
        },
        common.request_timeout,
        metrics,
    )
    .await
}

/// Everything a command works with, built once: the adapters, and the
/// reconciler over them. `daemon`: for `run` (keeps a table index and every
/// decrypted value between reconciles); `progress`: show a progress line.
pub(super) async fn build(
    common: &Common,
    snapshots: Option<Arc<SnapshotStore>>,
    daemon: bool,
    progress: bool,
) -> Result<Context> {
    if common.kms_concurrency == 0 {
        bail!("--kms-concurrency must be at least 1");
    }
    if !(1..=1_000_000).contains(&common.scan_segments) {
        bail!("--scan-segments must be between 1 and 1000000");
    }
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let table = Arc::new(source(common, metrics.clone()).await);
    let filter = NamespaceFilter::parse(
        &common.namespace_exclude,
        common.namespace_include.as_deref(),
    );
    let cluster = Cluster::connect(common.request_timeout, metrics.clone())
        .await?
        .with_namespaces(filter.included())
        .with_reporting_instance(env_var("POD_NAME").unwrap_or_else(|| "credsync".to_owned()));
    let apply = ApplyOptions {
        diff: DiffOptions {
            prune_keys: !common.no_prune,
            delete_empty: !common.keep_empty,
            adopt_kubestash_v2: common.adopt_kubestash_v2,
        },
        rollouts: common.rollouts,
        ..ApplyOptions::default()
    };
    let sm = common
        .sources
        .contains(&SourceKind::Secretsmanager)
        .then(|| {
            SecretsManagerSource::new(
                table.sdk_config(),
                SmConfig {
                    names: common.sm_names,
                    prefix: common.sm_prefix.clone(),
                    tags: common.sm_tags.clone(),
                },
                metrics.clone(),
            )
        });
    let reads_table = common.sources.contains(&SourceKind::Credstash);
    let shown: Arc<dyn crate::progress::Progress> = if progress {
        super::progress::TerminalProgress::start(metrics.clone())
    } else {
        Arc::new(crate::progress::Silent)
    };
    let mut reconciler = Reconciler::new(
        table.clone(),
        cluster.clone(),
        filter,
        apply,
        metrics.clone(),
    )
    .with_key_mapping(common.key_mapping)
    .with_progress(shown.clone());
    if let Some(sm) = sm {
        reconciler = reconciler.with_secrets_manager(sm, reads_table);
    }
    if let Some(store) = &snapshots {
        reconciler = reconciler.with_snapshots(store.clone());
    }
    if daemon {
        reconciler = reconciler.with_table_index();
    }
    Ok(Context {
        reconciler: Arc::new(reconciler),
        cluster,
        aws: table.sdk_config().clone(),
        table,
        metrics,
        snapshots,
        mapping: common.key_mapping,
        progress: shown,
    })
}
