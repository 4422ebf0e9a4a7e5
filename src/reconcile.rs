//! One reconcile, top to bottom: table -> manifest -> live state -> plan -> apply.
//!
//! Every trigger (the CLI, and later streams, schedules and HTTP) goes
//! through [`Reconciler`], so they all share the KMS cache and the counters.

use std::sync::Arc;

use crate::cluster::{ApplyOptions, ApplyOutcome, Cluster, ClusterError, LiveState, Plan, diff};
use crate::credstash::{CredstashSource, SourceError};
use crate::manifest::{Manifest, NamespaceFilter, Selection};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What a reconcile reads and decides before it writes anything.
pub struct Planned {
    pub manifest: Manifest,
    pub live: LiveState,
    pub plan: Plan,
}

/// A finished `sync`.
pub struct SyncReport {
    pub plan: Plan,
    pub outcome: ApplyOutcome,
}

impl SyncReport {
    /// Items failed or writes failed: the exit code is 1.
    pub fn has_errors(&self) -> bool {
        !self.plan.failures.is_empty() || !self.outcome.failed.is_empty()
    }
}

pub struct Reconciler {
    source: CredstashSource,
    cluster: Cluster,
    filter: NamespaceFilter,
    apply: ApplyOptions,
    metrics: Arc<Metrics>,
}

impl Reconciler {
    pub fn new(
        source: CredstashSource,
        cluster: Cluster,
        filter: NamespaceFilter,
        apply: ApplyOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            cluster,
            filter,
            apply,
            metrics,
        }
    }

    pub fn source(&self) -> &CredstashSource {
        &self.source
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads the table and the cluster and computes the plan; writes nothing.
    pub async fn plan(&self) -> Result<Planned, ReconcileError> {
        let (scanned, namespaces) = tokio::join!(self.source.scan(), self.cluster.namespaces());
        let (scanned, namespaces) = (scanned?, namespaces?);
        tracing::debug!(
            items = scanned.latest.len(),
            malformed = scanned.malformed.len(),
            namespaces = namespaces.len(),
            "read table and namespaces"
        );
        let mut selection =
            Selection::of(scanned.latest, scanned.malformed, &self.filter, &namespaces);
        let to_decrypt = std::mem::take(&mut selection.to_decrypt);
        let decrypted = self.source.decrypt(to_decrypt).await;
        let manifest = selection.assemble(decrypted.credentials, decrypted.failures);
        let live = self.cluster.live_state(&manifest).await?;
        tracing::debug!(
            desired = manifest.secrets.len(),
            live = live.secrets.len(),
            "read live Secrets"
        );
        let plan = diff::plan(&manifest, &live, self.apply.diff);
        self.record(&manifest, &plan);
        log_findings(&plan);
        Ok(Planned {
            manifest,
            live,
            plan,
        })
    }

    /// Plans, then applies (server-side dry-run if `dry_run`).
    pub async fn sync(&self, dry_run: bool) -> Result<SyncReport, ReconcileError> {
        let planned = match self.plan().await {
            Ok(planned) => planned,
            Err(err) => {
                self.metrics.reconciles.with_label_values(&["error"]).inc();
                return Err(err);
            }
        };
        // Seam for the snapshot store: the desired state is committed here,
        // before anything is applied, and a failure stops the reconcile.
        let options = ApplyOptions {
            dry_run,
            ..self.apply
        };
        let outcome = self
            .cluster
            .apply(&planned.plan, &planned.manifest, &planned.live, options)
            .await;
        for change in &outcome.written {
            tracing::info!(
                secret = %change.secret,
                action = change.action.as_str(),
                added = ?change.added,
                changed = ?change.changed,
                removed = ?change.removed,
                dry_run,
                "wrote Secret"
            );
        }
        for failure in &outcome.failed {
            tracing::error!(secret = %failure.secret, reason = %failure.reason, "Secret not written");
        }
        let report = SyncReport {
            plan: planned.plan,
            outcome,
        };
        let result = if report.has_errors() {
            "partial"
        } else {
            "success"
        };
        self.metrics.reconciles.with_label_values(&[result]).inc();
        Ok(report)
    }

    fn record(&self, manifest: &Manifest, plan: &Plan) {
        let m = &self.metrics;
        m.keys_failed.set(plan.failures.len() as i64);
        m.names_skipped.set(manifest.skipped.len() as i64);
        m.key_conflicts.set(plan.conflicts.len() as i64);
        m.secrets_managed.set(manifest.secrets.len() as i64);
        m.keys_managed.set(
            manifest
                .secrets
                .values()
                .map(|s| s.keys.len())
                .sum::<usize>() as i64,
        );
    }
}

/// Warnings and errors a user must see whatever the output format.
fn log_findings(plan: &Plan) {
    for skip in &plan.skipped {
        tracing::warn!(subject = %skip.subject, reason = %skip.reason, "skipped");
    }
    for conflict in &plan.conflicts {
        let sources: Vec<String> = conflict.sources.iter().map(ToString::to_string).collect();
        tracing::warn!(secret = %conflict.secret, key = %conflict.key, ?sources, "conflicting table names; live value kept");
    }
    for failure in &plan.failures {
        tracing::error!(item = %failure.item, version = %failure.version, reason = %failure.reason, "item not decrypted; live value kept");
    }
    tracing::debug!(
        changes = plan.changes.len(),
        unchanged = plan.unchanged,
        "planned"
    );
}
