//! Rollbacks: what a snapshot's content would change, checked against the
//! sources, then applied and pinned, and recorded in a rollback commit.

use std::collections::BTreeMap;

use super::rollouts::namespaces_of;
use super::{Planned, ReconcileError, Reconciler, SyncReport};
use crate::cluster::apply::{ApplyOptions, EarlyWrites, Pin};
use crate::manifest::{DesiredSecret, Manifest, SecretRef};
use crate::plan;
use crate::progress::Step;
use crate::restore::Verified;
use crate::snapshot::store::{CommitInfo, RequestOrigin, RollbackCause};

impl Reconciler {
    /// Checks snapshot content against the sources before a rollback may
    /// write it (`signed`: credsync signed the commit it comes from).
    pub async fn verify_restore(
        &self,
        restored: BTreeMap<SecretRef, DesiredSecret>,
        signed: bool,
    ) -> Result<Verified, crate::restore::RestoreError> {
        crate::restore::verify(&self.restore_sources(), restored, signed).await
    }

    /// Reads `items` (key -> `name@version`) of `secret` from the sources:
    /// content to restore that no snapshot file vouches for a value of.
    pub async fn fetch_restore(
        &self,
        secret: &SecretRef,
        items: BTreeMap<String, crate::source::ItemId>,
    ) -> Result<Verified, crate::restore::RestoreError> {
        crate::restore::fetch(&self.restore_sources(), secret, items).await
    }

    /// Where restored content is checked or read.
    fn restore_sources(&self) -> crate::restore::Sources<'_> {
        crate::restore::Sources {
            table: self.read_table.then_some(&self.source),
            secrets_manager: self.secrets_manager.as_ref(),
            mapping: self.mapping,
            cluster: self.snapshot.as_ref().map_or("", |s| s.cluster()),
        }
    }

    /// What the desired state in `docs` (a snapshot) would change in the cluster.
    /// Pins are ignored: this is what a rollback would do.
    pub async fn plan_snapshot(
        &self,
        secrets: BTreeMap<SecretRef, DesiredSecret>,
    ) -> Result<Planned, ReconcileError> {
        let manifest = Manifest::of_secrets(secrets);
        self.progress.step(Step::ReadingCluster);
        let desired = manifest.secrets.keys().cloned().collect();
        let mut live = self.cluster.live_state(&desired).await?;
        for secret in live.secrets.values_mut() {
            secret.pinned = None;
        }
        let mut plan = plan::plan(&manifest, &live, self.apply.diff);
        let namespaces = Some(namespaces_of(manifest.secrets.keys()));
        self.plan_restarts(&mut plan, &manifest, &live, namespaces)
            .await;
        Ok(Planned {
            manifest,
            live,
            plan,
            early: EarlyWrites::default(),
        })
    }

    /// What restoring `restored` writes: the snapshot's plan, plus an
    /// update of every restored Secret already in step (it gets pinned).
    pub async fn plan_rollback(
        &self,
        restored: BTreeMap<SecretRef, DesiredSecret>,
    ) -> Result<Planned, ReconcileError> {
        let secrets: Vec<SecretRef> = restored.keys().cloned().collect();
        let mut planned = self.plan_snapshot(restored).await?;
        // Every rolled-back Secret is pinned, even one already in step.
        for secret in &secrets {
            let in_plan = planned.plan.changes.iter().any(|c| &c.secret == secret);
            let live = planned.live.secrets.get(secret);
            if !in_plan && let Some(live) = live {
                planned.plan.changes.push(crate::plan::SecretChange {
                    secret: secret.clone(),
                    action: crate::plan::Action::Update,
                    adopt: !live.managed,
                    added: vec![],
                    changed: vec![],
                    removed: vec![],
                    merge_only: false,
                });
                planned.plan.unchanged = planned.plan.unchanged.saturating_sub(1);
            }
        }
        Ok(planned)
    }

    /// Applies the Secrets of snapshot `commit` and pins them to it, then
    /// records a rollback commit (unless `dry_run`). The pins and the
    /// commit say why (`cause`): the reviewed request that asked for it, or
    /// the rotation it reverts.
    pub async fn rollback(
        &self,
        restored: Verified,
        commit: &CommitInfo,
        dry_run: bool,
        cause: RollbackCause,
    ) -> Result<SyncReport, ReconcileError> {
        let request = cause.request();
        // The namespace filter again, on what is about to be written.
        if let Some((secret, why)) = restored
            .secrets()
            .keys()
            .find_map(|s| Some((s, self.filter.reason_to_skip(&s.namespace)?)))
        {
            return Err(ReconcileError::Refused(format!(
                "{secret} is outside the namespaces credsync writes ({why}): nothing was restored"
            )));
        }
        let mut planned = self.plan_rollback(restored.into_secrets()).await?;
        let options = ApplyOptions {
            dry_run,
            pin: Some(Pin {
                commit: commit.id.clone(),
                request: request.map(RequestOrigin::key),
                held_out: match &cause {
                    RollbackCause::Revert { held_out, .. } => Some(held_out.clone()),
                    _ => None,
                },
            }),
            ..self.apply.clone()
        };
        let outcome = self.apply_and_log(&mut planned, &options).await;
        if !dry_run {
            self.note_rollouts(&planned.plan, &outcome, false).await;
        }
        let mut snapshot = None;
        if !dry_run && let Some(store) = &self.snapshot {
            let id = commit.id.clone();
            let cause = cause.clone();
            // The checked content of what was written, for the commit.
            let restored: BTreeMap<SecretRef, DesiredSecret> = outcome
                .written
                .iter()
                .filter_map(|c| {
                    let desired = planned.manifest.secrets.get(&c.secret)?;
                    Some((c.secret.clone(), desired.clone()))
                })
                .collect();
            // A request's rollback is recorded once all of it is written:
            // its commit marks the request applied.
            let partial = request.is_some() && !outcome.failed.is_empty();
            if !restored.is_empty() && !partial {
                let metrics = self.metrics.clone();
                snapshot = store
                    .blocking(move |store| {
                        let commit = store.record_rollback(&id, &restored, &cause)?;
                        store.share_or_report(&metrics);
                        Ok(commit)
                    })
                    .await?;
            }
        }
        Ok(SyncReport {
            plan: planned.plan,
            outcome,
            snapshot,
        })
    }
}
