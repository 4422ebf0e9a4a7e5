//! One reconcile, top to bottom: table -> manifest -> live state -> plan -> apply.
//!
//! Every trigger (the CLI, and later streams, schedules and HTTP) goes
//! through [`Reconciler`], so they all share the KMS cache and the counters.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::cluster::apply::{ApplyOptions, ApplyOutcome, EarlyWrites};
use crate::cluster::{Cluster, ClusterError};
use crate::credstash::{CredstashSource, RawItem, SourceError};
use crate::manifest::{KeyMapping, Manifest, NamespaceFilter, SecretRef, Selection};
use crate::metrics::Metrics;
use crate::plan::{self, LiveState, Plan, RequestView};
use crate::progress::{Progress, Silent, Step};
use crate::secretsmanager::{SecretsManagerSource, SmError, SmRead};
use crate::snapshot::store::{CommitInfo, SnapshotError, SnapshotStore};
use crate::source::ItemFailure;

mod authors;
use authors::Authored;
mod early;
mod rollback;
mod rollouts;
mod table_index;
mod targeted;
use table_index::TableIndex;
pub use targeted::Changed;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    SecretsManager(#[from] SmError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    #[error("snapshot not written, so nothing was applied")]
    SnapshotNotWritten(#[source] SnapshotError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// What was asked for is not allowed (a rollback outside the namespaces
    /// credsync writes); the message says why.
    #[error("{0}")]
    Refused(String),
    /// A bug in credsync, not a Kubernetes, AWS or git problem.
    #[error("internal error: {0}; this is a bug in credsync, please report it")]
    Internal(String),
}

/// What a reconcile reads and decides before it writes anything.
pub struct Planned {
    pub manifest: Manifest,
    pub live: LiveState,
    pub plan: Plan,
    /// Secrets written while the plan was still being read (no snapshot
    /// had to be committed first): the apply leaves them out.
    pub early: EarlyWrites,
}

/// The table names a `/sync` scope covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeNames {
    /// No full reconcile has built the table index yet.
    NotIndexed,
    /// No table name maps into the scope.
    Nothing,
    Names(BTreeSet<String>),
}

/// A finished `sync` or `rollback`.
pub struct SyncReport {
    pub plan: Plan,
    pub outcome: ApplyOutcome,
    /// The snapshot commit written before applying, if the desired state changed.
    pub snapshot: Option<CommitInfo>,
}

impl SyncReport {
    /// Items failed or writes failed: the exit code is 1.
    pub fn has_errors(&self) -> bool {
        !self.plan.failures.is_empty()
            || !self.outcome.failed.is_empty()
            || !self.outcome.restart_failures.is_empty()
    }
}

pub struct Reconciler {
    source: Arc<CredstashSource>,
    /// False with `--source secretsmanager` alone: the table is not read.
    read_table: bool,
    secrets_manager: Option<SecretsManagerSource>,
    cluster: Cluster,
    filter: NamespaceFilter,
    apply: ApplyOptions,
    metrics: Arc<Metrics>,
    snapshot: Option<Arc<SnapshotStore>>,
    /// What the last full read saw, so a stream event can reconcile a few
    /// Secrets from Queries alone.
    index: Mutex<Option<TableIndex>>,
    /// Only `run` has targeted reconciles; a one-shot sync keeps no index
    /// (a copy of every stored item: 6 MiB at 10000 items).
    keep_index: bool,
    /// Self-service writes waiting for the snapshot commit that carries them.
    authors: Mutex<Vec<Authored>>,
    /// The snapshot commit a warm start read its values from.
    warm_commit: std::sync::OnceLock<String>,
    /// How table names become Secrets and keys.
    mapping: KeyMapping,
    /// Where the steps of a long reconcile are shown (a terminal's bar).
    progress: Arc<dyn Progress>,
    /// Held by each reconcile of `run` and by the request follower's
    /// writes, so a rollback's pins are never raced by a reconcile that
    /// read the Secrets before they were pinned.
    writing: tokio::sync::Mutex<()>,
    /// The rollback requests the follower last saw, for every plan.
    requests: Mutex<Vec<RequestView>>,
    /// Rotations being followed (`run`), and failures already handled.
    rotations: Mutex<rollouts::Rotations>,
}

/// One name's latest version from a Query: absent, unreadable, or an item.
type QueryResult = Result<Option<Result<RawItem, ItemFailure>>, SourceError>;

fn poisoned() -> ReconcileError {
    ReconcileError::Internal(
        "the table index is unusable: a previous reconcile panicked".to_owned(),
    )
}

impl Reconciler {
    pub fn new(
        source: Arc<CredstashSource>,
        cluster: Cluster,
        filter: NamespaceFilter,
        apply: ApplyOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            source,
            read_table: true,
            secrets_manager: None,
            cluster,
            filter,
            apply,
            metrics,
            snapshot: None,
            index: Mutex::new(None),
            keep_index: false,
            authors: Mutex::new(Vec::new()),
            warm_commit: std::sync::OnceLock::new(),
            mapping: KeyMapping::Credsync,
            progress: Arc::new(Silent),
            writing: tokio::sync::Mutex::new(()),
            requests: Mutex::new(Vec::new()),
            rotations: Mutex::default(),
        }
    }

    /// Waits until no other writer (reconcile or request follower) runs.
    pub async fn exclusive(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writing.lock().await
    }

    /// What the request follower found on its last read: every later
    /// plan shows it (refusals too).
    pub fn set_requests(&self, views: Vec<RequestView>) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests = views;
        }
    }

    /// Shows the steps of full reconciles on `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Clears whatever progress was shown: the command's work is over.
    pub fn finish_progress(&self) {
        self.progress.finish();
    }

    /// Maps table names with `mapping` (`--key-mapping`).
    pub fn with_key_mapping(mut self, mapping: KeyMapping) -> Self {
        self.mapping = mapping;
        self
    }

    pub fn key_mapping(&self) -> KeyMapping {
        self.mapping
    }

    /// For a long-lived process (`run`): keeps an index of the table from
    /// each full read, for targeted reconciles from Queries alone, and
    /// every decrypted value, so a later reconcile of unchanged items makes
    /// no KMS call. A one-shot command keeps neither (memory for nothing).
    pub fn with_table_index(self) -> Self {
        self.source.keep_values();
        Self {
            keep_index: true,
            ..self
        }
    }

    /// Reads AWS Secrets Manager too; `and_table` false leaves the Credstash table out.
    pub fn with_secrets_manager(mut self, source: SecretsManagerSource, and_table: bool) -> Self {
        self.secrets_manager = Some(source);
        self.read_table = and_table;
        self
    }

    /// Records every change of the desired state in `store` before applying it.
    pub fn with_snapshots(mut self, store: Arc<SnapshotStore>) -> Self {
        self.snapshot = Some(store);
        self
    }

    /// Warm start: reads the last snapshot with `identities` and remembers
    /// every value by the `name@version` it came from, so the first
    /// reconcile of a new process makes no KMS call for unchanged items.
    /// A snapshot that cannot be read only means a cold start.
    pub async fn warm_start(&self, identities: sops_age::Identities) -> usize {
        let Some(store) = self.snapshot.clone() else {
            return 0;
        };
        let read = store
            .blocking(move |store| store.warm_values(&identities))
            .await;
        let warm = match read {
            Ok(warm) => warm,
            Err(err) => {
                tracing::warn!(error = %crate::errors::Chain(&err), "warm start skipped: the last snapshot could not be read");
                return 0;
            }
        };
        if let Some(commit) = &warm.commit {
            let _ = self.warm_commit.set(commit.clone());
        }
        let (managed, table): (Vec<_>, Vec<_>) = warm
            .values
            .into_iter()
            .partition(|(id, _)| SecretsManagerSource::owns(id));
        let mut remembered = self.source.remember(table);
        if let Some(sm) = &self.secrets_manager {
            remembered += sm.remember(managed);
        }
        tracing::info!(
            values = remembered,
            files = warm.files,
            from_cache = warm.from_cache,
            untrusted = warm.untrusted,
            commit = warm.commit.as_deref().unwrap_or("none"),
            "warm start from the last snapshot"
        );
        remembered
    }

    /// The snapshot commit the warm start read, if it read one: the desired
    /// state this process starts from before its first table read.
    pub fn warm_commit(&self) -> Option<&str> {
        self.warm_commit.get().map(String::as_str)
    }

    /// Why credsync never writes Secrets in `namespace` (excluded, not
    /// included), if it does not.
    pub fn namespace_refusal(&self, namespace: &str) -> Option<&'static str> {
        self.filter.reason_to_skip(namespace)
    }

    pub fn namespace_filter(&self) -> &NamespaceFilter {
        &self.filter
    }

    /// Reads the table and the cluster and computes the plan; writes nothing.
    pub async fn plan(&self) -> Result<Planned, ReconcileError> {
        self.plan_writing_early(None).await
    }

    /// Reads and plans; with `write`, writes each Secret whose change its
    /// own content decides as soon as its items are decrypted (see `early`).
    async fn plan_writing_early(
        &self,
        write: Option<&ApplyOptions>,
    ) -> Result<Planned, ReconcileError> {
        let started = std::time::Instant::now();
        self.progress.step(Step::Scanning);
        let (scanned, namespaces, managed) = tokio::join!(
            self.scan_table(),
            self.cluster.namespaces(),
            self.read_secrets_manager()
        );
        self.metrics
            .table_fetch_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .table_fetch_failing
            .set(i64::from(scanned.is_err() || managed.is_err()));
        let (scanned, namespaces, managed) = (scanned?, namespaces?, managed?);
        tracing::debug!(
            items = scanned.latest.len(),
            malformed = scanned.malformed.len(),
            namespaces = namespaces.len(),
            "read table and namespaces"
        );
        if self.keep_index
            && let Ok(mut index) = self.index.lock()
        {
            *index = Some(TableIndex::new(
                &scanned.latest,
                namespaces.clone(),
                self.mapping,
            ));
        }
        let mut selection = Selection::of(
            scanned.latest,
            scanned.malformed,
            &self.filter,
            &namespaces,
            self.mapping,
        );
        if let Some(read) = managed {
            selection.add_source(read.ready, read.failed, read.skipped);
        }
        let to_decrypt = std::mem::take(&mut selection.to_decrypt);
        self.progress.step(Step::Decrypting {
            items: to_decrypt.len() as u64,
        });
        // The live Secrets are read while the values are decrypted: the
        // reads need only the Secrets' names, which the selection knows.
        let desired = selection.secrets();
        let read = early::decrypt_and_write(
            &self.cluster,
            selection.into_assembly(),
            self.source.decrypt_each(to_decrypt),
            self.cluster.live_state(&desired),
            write,
        )
        .await;
        let manifest = read.manifest;
        let live = read.live?;
        tracing::debug!(
            desired = manifest.secrets.len(),
            live = live.secrets.len(),
            "read live Secrets"
        );
        let mut plan = plan::plan(&manifest, &live, self.apply.diff);
        self.plan_restarts(&mut plan, &manifest, &live, None).await;
        if let Ok(requests) = self.requests.lock() {
            plan.requests = requests.clone();
        }
        self.record(&manifest, &plan);
        log_findings(&plan);
        Ok(Planned {
            manifest,
            live,
            plan,
            early: read.early,
        })
    }

    /// Plans, then applies (server-side dry-run if `dry_run`). Without a
    /// snapshot to commit first, Secrets are written while others decrypt;
    /// not with `--rollouts`: a reconcile cut short (its timeout, a
    /// shutdown) between an early write and the apply would leave the
    /// Secret written and its workloads' restart never made.
    pub async fn sync(&self, dry_run: bool) -> Result<SyncReport, ReconcileError> {
        let nothing_first = dry_run || self.snapshot.is_none();
        let early = (nothing_first && !self.apply.rollouts).then(|| ApplyOptions {
            dry_run,
            ..self.apply.clone()
        });
        let planned = self.plan_writing_early(early.as_ref()).await?;
        self.commit_and_apply(planned, dry_run, None).await
    }

    /// Commits the snapshot (if any), then applies.
    async fn commit_and_apply(
        &self,
        mut planned: Planned,
        dry_run: bool,
        scope: Option<BTreeSet<SecretRef>>,
    ) -> Result<SyncReport, ReconcileError> {
        // A full reconcile sees every rotation; a scoped one only its own.
        let complete = scope.is_none();
        // The snapshot is committed before anything is applied; if it
        // cannot be written, nothing is applied.
        let snapshot = match (&self.snapshot, dry_run) {
            (Some(store), false) => {
                let pinned: BTreeSet<SecretRef> = planned
                    .plan
                    .pinned
                    .iter()
                    .map(|p| p.secret.clone())
                    .collect();
                let mut heading = self.commit_heading();
                let authors = self.authors_in(&planned.manifest, scope.as_ref());
                if !authors.is_empty() {
                    heading = format!("{authors}\n{heading}");
                }
                let metrics = self.metrics.clone();
                self.progress.step(Step::Committing {
                    secrets: planned.plan.changes.len() as u64,
                });
                // The manifest goes to the git thread and comes back, so each
                // file is built from it as it is written instead of holding
                // a copy of every document at once.
                let manifest = std::mem::take(&mut planned.manifest);
                let recorded = store.blocking(move |store| {
                    // Pull in other writers' commits first, so ours goes on top.
                    store.share_or_report(&metrics);
                    let commit = store.record(&manifest.secrets, &pinned, &heading, scope.as_ref());
                    store.share_or_report(&metrics);
                    Ok((commit, manifest))
                });
                let (commit, manifest) = match recorded.await {
                    Ok(recorded) => recorded,
                    Err(err) => (Err(err), Manifest::default()),
                };
                planned.manifest = manifest;
                match commit {
                    Ok(commit) => commit,
                    Err(err) => {
                        self.metrics.snapshot_failures.inc();
                        return Err(ReconcileError::SnapshotNotWritten(err));
                    }
                }
            }
            _ => None,
        };
        if let Some(commit) = &snapshot {
            self.metrics.snapshot_commits.inc();
            tracing::info!(commit = %commit.id, summary = %commit.summary, "snapshot committed");
        }
        let options = ApplyOptions {
            dry_run,
            ..self.apply.clone()
        };
        let outcome = self.apply_and_log(&mut planned, &options).await;
        if !dry_run {
            self.note_rollouts(&planned.plan, &outcome, complete).await;
            self.handle_failed_waves(&planned.plan).await;
        }
        let report = SyncReport {
            plan: planned.plan,
            outcome,
            snapshot,
        };
        Ok(report)
    }

    /// Writes what `planned` says (as `options` say: dry run, pins) and logs
    /// each Secret written or not: the one write of syncs and rollbacks.
    async fn apply_and_log(&self, planned: &mut Planned, options: &ApplyOptions) -> ApplyOutcome {
        self.progress.step(Step::Writing {
            secrets: planned.plan.changes.len() as u64,
        });
        let outcome = self
            .cluster
            .apply(
                &planned.plan,
                &planned.manifest,
                &planned.live,
                options,
                std::mem::take(&mut planned.early),
            )
            .await;
        for change in &outcome.written {
            tracing::info!(
                secret = %change.secret,
                action = change.action.as_str(),
                added = ?change.added,
                changed = ?change.changed,
                removed = ?change.removed,
                dry_run = options.dry_run,
                "wrote Secret"
            );
        }
        for failure in &outcome.failed {
            tracing::error!(secret = %failure.secret, reason = %crate::errors::Chain(&failure.reason), "Secret not written");
        }
        outcome
    }

    /// The table's latest items, or nothing when only Secrets Manager is read.
    async fn scan_table(&self) -> Result<crate::credstash::Scanned, SourceError> {
        if self.read_table {
            self.source.scan().await
        } else {
            Ok(Default::default())
        }
    }

    async fn read_secrets_manager(&self) -> Result<Option<SmRead>, SmError> {
        match &self.secrets_manager {
            Some(sm) => sm.read().await.map(Some),
            None => Ok(None),
        }
    }

    fn commit_heading(&self) -> String {
        format!(
            "table: {} ({})\ncluster: {}",
            self.source.table(),
            self.source.region(),
            self.snapshot
                .as_ref()
                .map(|s| s.cluster())
                .unwrap_or_default()
        )
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
