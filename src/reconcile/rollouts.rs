//! Rotations around the writes: which workloads restart (the next wave,
//! restarts owed from before), what they rolled out, following rollouts
//! still in flight, and the revert of a wave that failed.
//!
//! Nothing here is remembered across processes but what the cluster says:
//! [`crate::rotation::steps`] reads each workload's record and status, so a
//! new process or a new leader continues any rotation where it stood.

use std::collections::{BTreeMap, BTreeSet};

use super::{ReconcileError, Reconciler};
use crate::cluster::apply::ApplyOutcome;
use crate::cluster::events::EventType;
use crate::cluster::rollout::{WorkloadScope, listing_failure};
use crate::labels::held_out_items;
use crate::manifest::{Manifest, SecretRef};
use crate::plan::{LiveState, Plan};
use crate::rollout_rules::Wave;
use crate::rotation::{self, FailedWave};
use crate::snapshot::store::{GoodContent, RollbackCause};

/// Commits walked back to find a Secret's last good content.
const HISTORY_DEPTH: usize = 2000;

/// Rotations being followed, and failures already reported.
#[derive(Default)]
pub(super) struct Rotations {
    /// Secrets with a wave restarted and not rolled out yet.
    watching: BTreeSet<SecretRef>,
    /// `(Secret, fingerprint)` of failed rotations handled: counted and
    /// reverted (or reported) once, not at every look.
    handled: BTreeSet<(SecretRef, String)>,
}

/// The namespaces `secrets` are in: where their workloads are.
pub(super) fn namespaces_of<'a>(secrets: impl Iterator<Item = &'a SecretRef>) -> BTreeSet<String> {
    secrets.map(|s| s.namespace.clone()).collect()
}

/// Each Secret's fingerprint once `plan` is written: the new content's for
/// the Secrets it changes, what the cluster holds for the others.
fn targets(plan: &Plan, manifest: &Manifest, live: &LiveState) -> BTreeMap<SecretRef, String> {
    let mut targets: BTreeMap<SecretRef, String> = live
        .secrets
        .iter()
        .filter_map(|(secret, live)| Some((secret.clone(), live.fingerprint.clone()?)))
        .collect();
    for secret in plan.content_changes() {
        match manifest.secrets.get(&secret) {
            Some(desired) if !desired.keys.is_empty() => {
                targets.insert(secret, desired.fingerprint());
            }
            _ => {
                targets.remove(&secret);
            }
        }
    }
    targets
}

impl Reconciler {
    /// Adds to `plan` what the rotations in `scope` call for (with
    /// `--rollouts`): restarts of the next wave and restarts owed, waves
    /// still rolling, waves that failed, and what workloads now run.
    /// Workloads that cannot be listed do not stop the Secret writes: the
    /// plan shows it as a skip.
    /// `in_namespaces`: the namespaces of the Secrets in question (None:
    /// everywhere, for a full reconcile).
    pub(super) async fn plan_restarts(
        &self,
        plan: &mut Plan,
        manifest: &Manifest,
        live: &LiveState,
        in_namespaces: Option<BTreeSet<String>>,
    ) {
        if !self.apply.rollouts {
            return;
        }
        let targets = targets(plan, manifest, live);
        if targets.is_empty() {
            return;
        }
        let scope = match &in_namespaces {
            Some(namespaces) => WorkloadScope::Namespaces(namespaces),
            None => WorkloadScope::Everywhere,
        };
        match self
            .cluster
            .workloads(scope, self.apply.rollout_timeout)
            .await
        {
            Ok(found) => {
                let steps = rotation::steps(&targets, &plan.content_changes(), &found.opted_in);
                plan.restarts = steps.restarts;
                plan.rolling = steps.rolling;
                plan.failed_waves = steps.failed;
                plan.settled = steps.settled;
                plan.skipped.extend(found.unreadable);
            }
            Err(err) => plan.skipped.push(listing_failure(&err)),
        }
    }

    /// After `plan` was applied (`outcome`): records what workloads rolled
    /// out, counts the rollouts that finished, and follows the ones in
    /// flight. `complete`: the plan saw every rotation (a full reconcile),
    /// so what it does not list as in flight is not.
    pub(super) async fn note_rollouts(&self, plan: &Plan, outcome: &ApplyOutcome, complete: bool) {
        if !self.apply.rollouts {
            return;
        }
        self.cluster.settle(&plan.settled).await;
        for settled in plan.settled.iter().filter(|s| s.finished) {
            self.metrics.rollouts.with_label_values(&["done"]).inc();
            tracing::info!(workload = %settled.workload, "rollout done");
        }
        let in_flight = outcome
            .restarted
            .iter()
            .flat_map(|r| r.secrets.iter())
            .chain(plan.rolling.iter().map(|r| &r.secret))
            .cloned();
        if let Ok(mut rotations) = self.rotations.lock() {
            if complete {
                rotations.watching.clear();
            }
            rotations.watching.extend(in_flight);
        }
    }

    /// Whether rollouts are being followed: `run` looks again soon.
    pub fn following_rollouts(&self) -> bool {
        self.rotations.lock().is_ok_and(|r| !r.watching.is_empty())
    }

    /// Looks at the rotations in flight again, without reading the table:
    /// restarts the next wave of those whose wave rolled out, records what
    /// rolled out, and reverts those whose wave failed. `run` calls it
    /// while [`Reconciler::following_rollouts`].
    pub async fn advance_rollouts(&self) -> Result<(), ReconcileError> {
        let watching: BTreeSet<SecretRef> = match self.rotations.lock() {
            Ok(r) => r.watching.clone(),
            Err(_) => return Ok(()),
        };
        if watching.is_empty() {
            return Ok(());
        }
        let _writing = self.exclusive().await;
        let mut live = LiveState::default();
        for secret in &watching {
            if let Some(found) = self.cluster.get(secret).await? {
                live.secrets.insert(secret.clone(), found);
            }
        }
        let mut plan = Plan::default();
        let namespaces = Some(namespaces_of(watching.iter()));
        self.plan_restarts(&mut plan, &Manifest::default(), &live, namespaces)
            .await;
        let why: BTreeMap<SecretRef, String> = plan
            .restarts
            .iter()
            .flat_map(|r| r.secrets.iter().map(move |s| (s.clone(), r.wave)))
            .map(|(secret, wave)| (secret, next_wave_reason(wave)))
            .collect();
        let (restarted, restart_failures) = self.cluster.restart(plan.restarts.clone(), &why).await;
        let outcome = ApplyOutcome {
            restarted,
            restart_failures,
            ..ApplyOutcome::default()
        };
        if let Ok(mut rotations) = self.rotations.lock() {
            rotations.watching.retain(|s| !watching.contains(s));
        }
        self.note_rollouts(&plan, &outcome, false).await;
        self.handle_failed_waves(&plan).await;
        Ok(())
    }

    /// Each failed wave, once: counted, told in Events, and its Secret put
    /// back to the content its workloads last rolled out (unless
    /// `--rollout-revert=false`, or a person pinned the Secret).
    pub(super) async fn handle_failed_waves(&self, plan: &Plan) {
        for failed in &plan.failed_waves {
            let first = self.rotations.lock().is_ok_and(|mut r| {
                r.handled
                    .insert((failed.secret.clone(), failed.fingerprint.clone()))
            });
            if first {
                self.revert(failed).await;
            }
        }
    }

    async fn revert(&self, failed: &FailedWave) {
        self.metrics
            .rollouts
            .with_label_values(&["failed"])
            .inc_by(failed.workloads.len() as u64);
        let workloads: Vec<String> = failed
            .workloads
            .iter()
            .map(|(w, why)| format!("{w}: {}", crate::text::one_line(why, 300)))
            .collect();
        let why = format!(
            "the rollout of {} ({}) failed in {}: {}",
            failed.secret,
            failed.fingerprint,
            failed.wave,
            workloads.join("; ")
        );
        tracing::error!(secret = %failed.secret, wave = %failed.wave, reason = %why, "rotation failed; later waves wait");
        let result = self.put_back(failed, &why).await;
        let (outcome, note) = match &result {
            Ok(to) => (
                "reverted",
                format!(
                    "{why}; reverted to the content of snapshot {to}, pinned (credsync.io/pinned-by: rollout-failure) until a newer version arrives"
                ),
            ),
            Err(not) => ("not_reverted", format!("{why}; not reverted: {not}")),
        };
        self.metrics
            .rotation_reverts
            .with_label_values(&[outcome])
            .inc();
        match &result {
            Ok(_) => tracing::warn!(secret = %failed.secret, "rotation reverted"),
            Err(not) => {
                tracing::error!(secret = %failed.secret, reason = %not, "rotation not reverted")
            }
        }
        for (workload, _) in &failed.workloads {
            self.cluster.note_event(
                self.cluster
                    .event_on_workload(
                        workload,
                        EventType::Warning,
                        "RolloutFailed",
                        "Revert",
                        note.clone(),
                    )
                    .await,
            );
        }
        let secret_event = self
            .cluster
            .event_on_secret(
                &failed.secret,
                EventType::Warning,
                "RolloutFailed",
                "Revert",
                note,
            )
            .await;
        self.cluster.note_event(secret_event);
    }

    /// Writes the Secret's last good content back, as a rollback to the
    /// snapshot commit that holds it: values read from the sources at the
    /// item versions that commit names (so no identity is needed and no
    /// file is trusted for a value). Returns that commit.
    async fn put_back(&self, failed: &FailedWave, why: &str) -> Result<String, NotReverted> {
        if !self.apply.rollout_revert {
            return Err(NotReverted::Disabled);
        }
        let live = self
            .cluster
            .get(&failed.secret)
            .await
            .map_err(|e| NotReverted::Failed(crate::errors::chain(&e)))?;
        if let Some(live) = &live {
            if live.held_out.is_some() {
                // The content that failed is itself a revert's: going back
                // again could only loop. A person decides.
                return Err(NotReverted::AlreadyReverted);
            }
            if live.pinned.is_some() {
                return Err(NotReverted::PinnedByPerson);
            }
        }
        let Some(store) = self.snapshot.clone() else {
            return Err(NotReverted::NoHistory);
        };
        let secret = failed.secret.clone();
        let (bad, good) = (failed.fingerprint.clone(), failed.last_good.clone());
        let found = store
            .blocking(move |store| store.last_good(&secret, &bad, good.as_deref(), HISTORY_DEPTH))
            .await
            .map_err(|e| NotReverted::Failed(crate::errors::chain(&e)))?;
        let Some(GoodContent {
            commit,
            items,
            held_out,
        }) = found
        else {
            return Err(NotReverted::NotFound);
        };
        let verified = self
            .fetch_restore(&failed.secret, items)
            .await
            .map_err(|e| NotReverted::Failed(crate::errors::chain(&e)))?;
        let cause = RollbackCause::Revert {
            why: why.to_owned(),
            held_out: held_out_items(held_out.iter().map(String::as_str)),
        };
        let report = self
            .rollback(verified, &commit, false, cause)
            .await
            .map_err(|e| NotReverted::Failed(crate::errors::chain(&e)))?;
        if let Some(failure) = report.outcome.failed.first() {
            return Err(NotReverted::Failed(crate::errors::chain(&failure.reason)));
        }
        for (workload, _) in &failed.workloads {
            match self.cluster.unstick(workload).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%workload, pods = n, "replaced the Pods that were not Ready, so the reverted template takes their place")
                }
                Err(e) => {
                    tracing::warn!(%workload, error = %crate::errors::Chain(&e), "could not replace the Pods that are not Ready; the StatefulSet may wait on them")
                }
            }
        }
        Ok(commit.id[..12.min(commit.id.len())].to_owned())
    }
}

/// Why a wave restarts without a write of its own.
fn next_wave_reason(wave: Wave) -> String {
    match wave {
        Wave::Numbered(1) => "its restart was owed".to_owned(),
        wave => format!("{wave} follows the waves before it, which rolled out"),
    }
}

/// Why a failed rotation was not put back.
#[derive(Debug, thiserror::Error)]
enum NotReverted {
    #[error("--rollout-revert=false")]
    Disabled,
    #[error("the Secret is pinned by a rollback or a request, which a revert never overrides")]
    PinnedByPerson,
    #[error(
        "the content that failed is what an earlier revert put back; reverting again could only loop: fix the workloads, or roll back by hand"
    )]
    AlreadyReverted,
    #[error("there is no snapshot repository to find the last good content in (--snapshot-repo)")]
    NoHistory,
    #[error("no snapshot commit holds content the workloads rolled out before")]
    NotFound,
    #[error("{0}")]
    Failed(String),
}
