//! The plan: per Secret, what must change, in key names only (SPEC 3).
//!
//! A [`Plan`] never holds a value, a value's hash or its length, so it can be
//! printed into a pull request. Apply looks values up in the manifest.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::{Conflict, DesiredSecret, Manifest, SecretRef, Skip};
use crate::rollout_rules::Restart;
use crate::rotation::{FailedWave, Rolling, Settled};
use crate::secret::{KeyMap, KeySet, SecretValue};
use crate::source::ItemFailure;

/// A Secret as it lives in the cluster, reduced to what the diff needs.
#[derive(Debug, Clone)]
/// Its name is its key in [`LiveState::secrets`] (not kept twice: a sync
/// holds one of these for every Secret).
pub struct LiveSecret {
    pub type_: String,
    pub data: KeyMap<SecretValue>,
    /// Labelled as managed by credsync.
    pub managed: bool,
    /// Keys the managed-keys annotation says credsync owns.
    pub owned_keys: KeySet,
    pub created_by_credsync: bool,
    /// The snapshot commit a rollback pinned this Secret to.
    pub pinned: Option<String>,
    /// The rollback request (`path@commit`) that pinned it, if one did.
    pub pinned_by_request: Option<String>,
    pub resource_version: Option<String>,
    /// Annotated `managedBy: kubestashV2`: written by Kubestash-V2.
    pub kubestash_v2: bool,
    /// What it holds, as its `fingerprint` annotation says (managed only).
    pub fingerprint: Option<String>,
    /// The item versions a reverted rotation holds out (`rollout-failure`
    /// pins only): the pin lifts once the table offers anything else.
    pub held_out: Option<String>,
}

/// The live Secrets relevant to a manifest.
#[derive(Debug, Default)]
pub struct LiveState {
    pub secrets: BTreeMap<SecretRef, LiveSecret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// What one Secret needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretChange {
    pub secret: SecretRef,
    pub action: Action,
    /// The Secret exists but credsync did not create or manage it yet.
    pub adopt: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// A Kubestash-V2 Secret not taken over: only its data keys are
    /// written (as Kubestash-V2 did), its labels and annotations stay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub merge_only: bool,
}

/// A Secret Kubestash-V2 wrote, and what credsync does with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KubestashV2Secret {
    pub secret: SecretRef,
    /// Taken over now (`--adopt-kubestash-v2`); otherwise what the flag would do.
    pub taken_over: bool,
    /// The keys that become (or would become) credsync's.
    pub keys: Vec<String>,
}

/// A key the table adds beside a live key of another spelling of the same
/// name (`DB_PASSWORD` beside `DB.PASSWORD`): the application may keep
/// reading the old one while rotations go to the new one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Respelled {
    pub secret: SecretRef,
    pub key: String,
    pub existing: String,
}

/// What a reconcile would do.
#[derive(Debug, Default, serde::Serialize)]
pub struct Plan {
    pub changes: Vec<SecretChange>,
    pub unchanged: usize,
    pub skipped: Vec<Skip>,
    pub conflicts: Vec<Conflict>,
    pub failures: Vec<FailedItem>,
    pub pinned: Vec<Pinned>,
    /// Workloads that restart once the changed Secrets they use are written
    /// (and those that owe a restart, or whose wave is next).
    pub restarts: Vec<Restart>,
    /// Rotations whose restarted wave is still rolling.
    pub rolling: Vec<Rolling>,
    /// Rotations whose wave failed to roll out: reverted when it can be.
    pub failed_waves: Vec<FailedWave>,
    /// What workloads now run, to record on them (`rolled-out-for`).
    #[serde(skip)]
    pub settled: Vec<Settled>,
    /// Secrets Kubestash-V2 wrote: merged into, or taken over.
    pub kubestash_v2: Vec<KubestashV2Secret>,
    /// Keys added beside another spelling of themselves: warnings.
    pub respelled: Vec<Respelled>,
    /// Reviewed rollback requests in the snapshot repository.
    pub requests: Vec<RequestView>,
}

/// A rollback request file, and what it does, did, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestView {
    /// Its path in the snapshot repository.
    pub file: String,
    /// The commit that wrote it, and that commit's author.
    pub commit: String,
    pub author: String,
    /// The snapshot revision it restores (None when the file is unreadable).
    pub revision: Option<String>,
    pub secrets: Vec<SecretRef>,
    pub reason: String,
    pub state: RequestState,
    /// Why it is refused, for a refused request.
    pub refusal: Option<String>,
    /// What applying it writes, for a pending one (every Secret it names is pinned).
    pub changes: Vec<SecretChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Not applied yet: merged, the loop restores and pins its Secrets.
    Pending,
    /// Applied by the loop: its Secrets stay pinned while the file is there.
    Applied,
    /// Cannot be honoured: nothing of it is applied.
    Refused,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Refused => "refused",
        }
    }
}

/// A Secret a rollback pinned: left alone until `unpin`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pinned {
    pub secret: SecretRef,
    /// The snapshot commit it was rolled back to.
    pub commit: String,
    /// Whether the table now wants something else for it.
    pub differs_from_table: bool,
    /// The rollback request (`path@commit`) that pinned it: removing that
    /// file, not `credsync unpin`, hands it back.
    pub request: Option<String>,
    /// For a reverted rotation: the item versions held out; a newer
    /// version in the source, or `credsync unpin`, hands it back.
    pub held_out: Option<String>,
}

/// A failed item as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedItem {
    pub item: String,
    pub version: String,
    pub reason: String,
}

impl From<&ItemFailure> for FailedItem {
    fn from(f: &ItemFailure) -> Self {
        Self {
            item: f.id.name.clone(),
            version: f.id.version.clone(),
            reason: f.reason.clone(),
        }
    }
}

impl SecretChange {
    /// Keys were added, changed or removed: pods reading the Secret see
    /// something new (an ownership-only update or a pin does not count).
    pub fn content_changed(&self) -> bool {
        self.action == Action::Update
            && !(self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty())
    }
}

impl Plan {
    /// The Secrets whose content this plan changes.
    pub fn content_changes(&self) -> BTreeSet<SecretRef> {
        self.changes
            .iter()
            .filter(|c| c.content_changed())
            .map(|c| c.secret.clone())
            .collect()
    }

    /// Changes to the table's Secrets, or a rollback request to apply.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty() || self.requests_in(RequestState::Pending) > 0
    }

    pub fn requests_in(&self, state: RequestState) -> usize {
        self.requests.iter().filter(|r| r.state == state).count()
    }

    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }
}

/// Switches for the destructive parts of a plan.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    /// Remove owned keys the table no longer names.
    pub prune_keys: bool,
    /// Delete a Secret credsync created once it has no keys left.
    pub delete_empty: bool,
    /// Take over Secrets Kubestash-V2 wrote (`--adopt-kubestash-v2`).
    pub adopt_kubestash_v2: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        Self {
            prune_keys: true,
            delete_empty: true,
            adopt_kubestash_v2: false,
        }
    }
}

/// Diffs every Secret the manifest names, and every managed Secret in scope.
pub fn plan(manifest: &Manifest, live: &LiveState, options: DiffOptions) -> Plan {
    let mut plan = Plan {
        skipped: manifest.skipped.clone(),
        conflicts: manifest.conflicts.clone(),
        failures: manifest.failures.iter().map(FailedItem::from).collect(),
        ..Plan::default()
    };
    let mut subjects: BTreeSet<&SecretRef> = manifest.secrets.keys().collect();
    subjects.extend(
        live.secrets
            .iter()
            .filter(|(name, s)| s.managed && manifest.in_scope(&name.namespace))
            .map(|(name, _)| name),
    );
    for secret in subjects {
        let live_secret = live.secrets.get(secret);
        let released = released_hold(live_secret, manifest.secrets.get(secret));
        if let Some(commit) = live_secret
            .and_then(|l| l.pinned.clone())
            .filter(|_| !released)
        {
            let differs = !matches!(
                diff_secret(secret, manifest.secrets.get(secret), live_secret, options),
                Ok(None)
            );
            plan.pinned.push(Pinned {
                secret: secret.clone(),
                commit,
                differs_from_table: differs,
                request: live_secret.and_then(|l| l.pinned_by_request.clone()),
                held_out: live_secret.and_then(|l| l.held_out.clone()),
            });
            continue;
        }
        let desired = manifest.secrets.get(secret);
        if let (Some(live), Some(desired)) = (live_secret, desired) {
            note_kubestash_v2(&mut plan, secret, live, desired, options);
        }
        match diff_secret(secret, desired, live_secret, options) {
            Ok(Some(change)) => {
                if let Some(live) = live_secret {
                    plan.respelled.extend(respellings(&change, live));
                }
                plan.changes.push(change);
            }
            // The held-out pin lifts even when the content stays (the table
            // went back to the reverted versions).
            Ok(None) if released => plan.changes.push(SecretChange {
                secret: secret.clone(),
                action: Action::Update,
                adopt: false,
                added: vec![],
                changed: vec![],
                removed: vec![],
                merge_only: false,
            }),
            // A Secret that neither exists nor gets keys (all held) is not "unchanged".
            Ok(None) if live.secrets.contains_key(secret) => plan.unchanged += 1,
            Ok(None) => {}
            Err(skip) => plan.skipped.push(skip),
        }
    }
    plan
}

/// The change [`plan`] makes for `secret` when nothing but its own desired
/// and live content decides it: `None` for a pinned or held-out Secret
/// (whether a pin lifts is the whole plan's call) and for one that needs
/// no write. What a reconcile may write before the rest of its plan is known.
pub fn plain_change(
    secret: &SecretRef,
    desired: Option<&DesiredSecret>,
    live: Option<&LiveSecret>,
    options: DiffOptions,
) -> Option<SecretChange> {
    if live.is_some_and(|l| l.pinned.is_some() || l.held_out.is_some()) {
        return None;
    }
    diff_secret(secret, desired, live, options).ok().flatten()
}

/// A `rollout-failure` pin holds out the item versions whose rollout
/// failed; once the table offers anything else for the Secret, the pin
/// lifts and that content is tried (from the first wave).
fn released_hold(live: Option<&LiveSecret>, desired: Option<&DesiredSecret>) -> bool {
    match (live.and_then(|l| l.held_out.as_deref()), desired) {
        (Some(held), Some(desired)) => {
            let items: Vec<String> = desired.items().collect();
            crate::labels::held_out_items(items.iter().map(String::as_str)) != held
        }
        _ => false,
    }
}

/// Lists a Secret Kubestash-V2 wrote, with the keys a take-over makes credsync's.
fn note_kubestash_v2(
    plan: &mut Plan,
    secret: &SecretRef,
    live: &LiveSecret,
    desired: &DesiredSecret,
    options: DiffOptions,
) {
    if live.kubestash_v2 && !live.managed && !desired.keys.is_empty() {
        plan.kubestash_v2.push(KubestashV2Secret {
            secret: secret.clone(),
            taken_over: options.adopt_kubestash_v2,
            keys: desired.keys.keys().cloned().collect(),
        });
    }
}

/// The keys `change` adds beside a live key that spells the same name
/// another way (equal once `.` and `-` are `_` and letters upper-case).
fn respellings<'a>(
    change: &'a SecretChange,
    live: &'a LiveSecret,
) -> impl Iterator<Item = Respelled> + 'a {
    change.added.iter().flat_map(move |key| {
        let folded = crate::manifest::normalize_key(key);
        live.data
            .keys()
            .filter(move |existing| {
                *existing != key && crate::manifest::normalize_key(existing) == folded
            })
            .map(move |existing| Respelled {
                secret: change.secret.clone(),
                key: key.clone(),
                existing: existing.clone(),
            })
    })
}

/// The change one Secret needs, `None` if it is in step, or a reason to leave it alone.
pub fn diff_secret(
    secret: &SecretRef,
    desired: Option<&DesiredSecret>,
    live: Option<&LiveSecret>,
    options: DiffOptions,
) -> Result<Option<SecretChange>, Skip> {
    let empty = DesiredSecret::default();
    let desired = desired.unwrap_or(&empty);
    let change = |action, adopt, added, changed, removed| SecretChange {
        secret: secret.clone(),
        action,
        adopt,
        added,
        changed,
        removed,
        merge_only: false,
    };
    let Some(live) = live else {
        let added: Vec<String> = desired.keys.keys().cloned().collect();
        return Ok(
            (!added.is_empty()).then(|| change(Action::Create, false, added, vec![], vec![]))
        );
    };
    if live.type_ != "Opaque" {
        return Err(Skip {
            subject: secret.to_string(),
            reason: format!(
                "Secret has type {}; credsync only writes Opaque Secrets",
                live.type_
            ),
        });
    }
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (key, want) in &desired.keys {
        match live.data.get(key) {
            None => added.push(key.clone()),
            Some(have) if !want.value.ct_eq(have.expose()) => changed.push(key.clone()),
            Some(_) => {}
        }
    }
    let removed: Vec<String> = if options.prune_keys {
        live.owned_keys
            .keys()
            .filter(|k| !desired.keys.contains_key(*k) && !desired.held.contains_key(*k))
            .filter(|k| live.data.contains_key(*k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    // Kubestash-V2's Secrets, unless taken over, get what Kubestash-V2 gave
    // them: the table's keys merged in, nothing removed, metadata untouched.
    if live.kubestash_v2 && !live.managed && !options.adopt_kubestash_v2 {
        if added.is_empty() && changed.is_empty() {
            return Ok(None);
        }
        let mut merge = change(Action::Update, false, added, changed, vec![]);
        merge.merge_only = true;
        return Ok(Some(merge));
    }
    let remaining = live.data.len() + added.len() - removed.len();
    if live.created_by_credsync && options.delete_empty && remaining == 0 && desired.held.is_empty()
    {
        return Ok(Some(change(Action::Delete, false, vec![], vec![], removed)));
    }
    // Ownership must also follow the table: a key the table stopped naming
    // (pruning off) or a newly adopted Secret needs its annotation rewritten.
    let owned_now = owned_after(desired, live, &removed);
    let ownership_changed =
        !live.managed && !desired.keys.is_empty() || owned_now != live.owned_keys;
    if added.is_empty() && changed.is_empty() && removed.is_empty() && !ownership_changed {
        return Ok(None);
    }
    Ok(Some(change(
        Action::Update,
        !live.managed,
        added,
        changed,
        removed,
    )))
}

/// The keys credsync owns once a change is applied: the table's keys, the
/// held keys it already owned, and owned keys kept because pruning is off.
pub fn owned_after(desired: &DesiredSecret, live: &LiveSecret, removed: &[String]) -> KeySet {
    let mut owned: KeySet = desired.keys.keys().map(|k| (k.clone(), ())).collect();
    owned.extend(
        live.owned_keys
            .keys()
            .filter(|k| !removed.contains(k) && live.data.contains_key(*k))
            .map(|k| (k.clone(), ())),
    );
    owned
}

#[cfg(test)]
mod tests;
