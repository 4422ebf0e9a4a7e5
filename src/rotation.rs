//! Where each rotation stands, and what moves it on: which workloads
//! restart next, which are still rolling, which wave failed, and what each
//! workload has rolled out.
//!
//! Everything is read from the cluster's own record (each workload's
//! `restarted-for`, `rolled-out-for` and rollout status) against the
//! Secrets' current fingerprints, never from memory: a restart of credsync
//! or a new leader picks up where the last one stopped, a restart that was
//! refused is owed until it happens, and nothing restarts twice.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::SecretRef;
use crate::rollout_rules::{Progress, Restart, Wave, Workload, WorkloadRef, restarted_for};

/// What to do next for every rotation in view.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Steps {
    /// Workloads to restart now: the first wave of each Secret that has
    /// workloads behind it, once every earlier wave rolled out.
    pub restarts: Vec<Restart>,
    /// Waves restarted and still rolling: the rotation waits for them.
    pub rolling: Vec<Rolling>,
    /// Waves whose rollout failed: the later waves wait, and the Secret is
    /// reverted if it can be.
    pub failed: Vec<FailedWave>,
    /// Workloads whose `rolled-out-for` is to be written (what they now run).
    pub settled: Vec<Settled>,
}

/// A wave still rolling for a Secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rolling {
    pub secret: SecretRef,
    pub wave: Wave,
    pub workloads: Vec<WorkloadRef>,
}

/// A wave that failed to roll a Secret's content out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedWave {
    pub secret: SecretRef,
    pub wave: Wave,
    /// The fingerprint whose rollout failed.
    pub fingerprint: String,
    /// Each failed workload and why, in its controller's words.
    pub workloads: Vec<(WorkloadRef, String)>,
    /// What the failed workloads last rolled out to the end: the content to
    /// go back to (None: credsync never saw them finish a rollout).
    pub last_good: Option<String>,
}

/// The `rolled-out-for` a workload should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub workload: WorkloadRef,
    pub rolled_out: BTreeMap<String, String>,
    /// A rollout credsync started has finished (not only a first record).
    pub finished: bool,
}

/// Where one workload stands for one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    /// Runs the current content.
    Current,
    /// Restarted for the current content, still rolling.
    Rolling,
    /// Restarted for the current content, and that rollout failed.
    Failed(String),
    /// Runs older content: owes a restart.
    Behind,
}

/// `targets`: each Secret's current fingerprint (what it holds, or is about
/// to hold, in the cluster). `changed_now`: the Secrets this reconcile
/// changes; a workload with no record of a Secret it uses is behind on
/// those, and taken to run the current content of the others (credsync
/// writes that record then, so a later refused restart is still owed).
pub fn steps(
    targets: &BTreeMap<SecretRef, String>,
    changed_now: &BTreeSet<SecretRef>,
    workloads: &[Workload],
) -> Steps {
    let mut steps = Steps::default();
    let mut restarts: BTreeMap<&WorkloadRef, (Wave, BTreeSet<SecretRef>)> = BTreeMap::new();
    let mut current: BTreeMap<&WorkloadRef, BTreeSet<&str>> = BTreeMap::new();
    for (secret, target) in targets {
        let mut waves: BTreeMap<Wave, Vec<(&Workload, Standing)>> = BTreeMap::new();
        for workload in workloads.iter().filter(|w| uses(w, secret)) {
            let standing = standing(workload, &secret.name, target, changed_now.contains(secret));
            if standing == Standing::Current {
                current
                    .entry(&workload.reference)
                    .or_default()
                    .insert(&secret.name);
            }
            waves
                .entry(workload.wave)
                .or_default()
                .push((workload, standing));
        }
        for (wave, members) in waves {
            let failed: Vec<(WorkloadRef, String)> = members
                .iter()
                .filter_map(|(w, s)| match s {
                    Standing::Failed(why) => Some((w.reference.clone(), why.clone())),
                    _ => None,
                })
                .collect();
            if !failed.is_empty() {
                let last_good = members
                    .iter()
                    .filter(|(_, s)| matches!(s, Standing::Failed(_)))
                    .find_map(|(w, _)| w.rolled_out.get(&secret.name))
                    .filter(|fingerprint| *fingerprint != target)
                    .cloned();
                steps.failed.push(FailedWave {
                    secret: secret.clone(),
                    wave,
                    fingerprint: target.clone(),
                    workloads: failed,
                    last_good,
                });
                break;
            }
            let behind: Vec<&Workload> = members
                .iter()
                .filter(|(_, s)| *s == Standing::Behind)
                .map(|(w, _)| *w)
                .collect();
            for workload in &behind {
                let entry = restarts
                    .entry(&workload.reference)
                    .or_insert((wave, BTreeSet::new()));
                entry.0 = entry.0.min(wave);
                entry.1.insert(secret.clone());
            }
            let rolling: Vec<WorkloadRef> = members
                .iter()
                .filter(|(_, s)| *s == Standing::Rolling)
                .map(|(w, _)| w.reference.clone())
                .collect();
            let waits = !behind.is_empty() || !rolling.is_empty();
            if !rolling.is_empty() {
                steps.rolling.push(Rolling {
                    secret: secret.clone(),
                    wave,
                    workloads: rolling,
                });
            }
            // A later wave moves only once this one runs the content.
            if waits {
                break;
            }
        }
    }
    let by_reference: BTreeMap<&WorkloadRef, &Workload> =
        workloads.iter().map(|w| (&w.reference, w)).collect();
    steps.restarts = restarts
        .into_iter()
        .map(|(reference, (wave, secrets))| {
            let mut restart = Restart {
                workload: reference.clone(),
                secrets: secrets.into_iter().collect(),
                wave,
                restarted_for: String::new(),
            };
            if let Some(workload) = by_reference.get(reference) {
                let asked = asked_after(workload, &restart, targets);
                restart.restarted_for = restarted_for(asked.iter().map(|(s, fp)| (s, fp.as_str())));
            }
            restart
        })
        .collect();
    for workload in workloads {
        let Some(names) = current.get(&workload.reference) else {
            continue;
        };
        let mut rolled_out = workload.rolled_out.clone();
        let mut finished = false;
        for name in names {
            let secret = SecretRef::new(&workload.reference.namespace, *name);
            if let Some(target) = targets.get(&secret) {
                let before = rolled_out.insert((*name).to_owned(), target.clone());
                finished |=
                    before.as_ref() != Some(target) && workload.asked.get(*name) == Some(target);
            }
        }
        if rolled_out != workload.rolled_out {
            steps.settled.push(Settled {
                workload: workload.reference.clone(),
                rolled_out,
                finished,
            });
        }
    }
    steps
}

fn uses(workload: &Workload, secret: &SecretRef) -> bool {
    workload.reference.namespace == secret.namespace && workload.reloads_for.contains(&secret.name)
}

fn standing(workload: &Workload, name: &str, target: &str, changed_now: bool) -> Standing {
    match workload.asked.get(name) {
        Some(asked) if asked == target => match &workload.progress {
            Progress::Done => Standing::Current,
            Progress::Rolling => Standing::Rolling,
            Progress::Failed(why) => Standing::Failed(why.clone()),
        },
        Some(_) => Standing::Behind,
        None => match workload.rolled_out.get(name) {
            Some(rolled_out) if rolled_out == target => Standing::Current,
            Some(_) => Standing::Behind,
            None if changed_now => Standing::Behind,
            None => Standing::Current,
        },
    }
}

/// The `restarted-for` a restart writes: what the workload asked for
/// before, with `restart`'s Secrets at their current fingerprints.
pub fn asked_after(
    workload: &Workload,
    restart: &Restart,
    targets: &BTreeMap<SecretRef, String>,
) -> BTreeMap<SecretRef, String> {
    let namespace = &workload.reference.namespace;
    let mut asked: BTreeMap<SecretRef, String> = workload
        .asked
        .iter()
        .map(|(name, fp)| (SecretRef::new(namespace, name), fp.clone()))
        .collect();
    for secret in &restart.secrets {
        if let Some(target) = targets.get(secret) {
            asked.insert(secret.clone(), target.clone());
        }
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout_rules::WorkloadKind;

    fn db() -> SecretRef {
        SecretRef::new("app", "db")
    }

    fn workload(name: &str, wave: Wave) -> Workload {
        Workload {
            reference: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "app".into(),
                name: name.into(),
            },
            reloads_for: ["db".to_owned()].into(),
            wave,
            ..Workload::default()
        }
    }

    fn at(mut w: Workload, asked: &str, rolled_out: &str, progress: Progress) -> Workload {
        if !asked.is_empty() {
            w.asked.insert("db".into(), asked.into());
        }
        if !rolled_out.is_empty() {
            w.rolled_out.insert("db".into(), rolled_out.into());
        }
        w.progress = progress;
        w
    }

    /// A workload in `wave` (0: the last) that asked for `asked`, rolled
    /// out `rolled_out` (empty: no record) and stands at `progress`.
    fn w(name: &str, wave: u32, asked: &str, rolled_out: &str, progress: Progress) -> Workload {
        let wave = if wave == 0 {
            Wave::Last
        } else {
            Wave::Numbered(wave)
        };
        at(workload(name, wave), asked, rolled_out, progress)
    }

    fn targets(fp: &str) -> BTreeMap<SecretRef, String> {
        [(db(), fp.to_owned())].into()
    }

    fn names(restarts: &[Restart]) -> Vec<String> {
        restarts.iter().map(|r| r.workload.name.clone()).collect()
    }

    #[test]
    fn a_change_restarts_the_first_wave_only() {
        let w1 = w("one", 1, "old", "old", Progress::Done);
        let w1b = w("one-b", 1, "", "old", Progress::Done);
        let w2 = w("two", 2, "old", "old", Progress::Done);
        let last = workload("last", Wave::Last);
        let steps = steps(&targets("new"), &[db()].into(), &[w1, w1b, w2, last]);
        assert_eq!(names(&steps.restarts), ["one", "one-b"]);
        assert!(steps.restarts.iter().all(|r| r.wave == Wave::Numbered(1)));
        assert!(steps.failed.is_empty() && steps.rolling.is_empty());
    }

    #[test]
    fn the_next_wave_waits_for_the_one_rolling_then_follows_it() {
        let w2 = w("two", 2, "old", "old", Progress::Done);
        let rolling = w("one", 1, "new", "old", Progress::Rolling);
        let waiting = steps(&targets("new"), &BTreeSet::new(), &[rolling, w2.clone()]);
        assert!(waiting.restarts.is_empty());
        assert_eq!(waiting.rolling.len(), 1);
        assert_eq!(waiting.rolling[0].wave, Wave::Numbered(1));

        let done = w("one", 1, "new", "old", Progress::Done);
        let next = steps(&targets("new"), &BTreeSet::new(), &[done, w2]);
        assert_eq!(names(&next.restarts), ["two"]);
        assert_eq!(next.restarts[0].wave, Wave::Numbered(2));
        // Wave 1 rolled out: its record says so now.
        assert_eq!(next.settled.len(), 1);
        assert_eq!(next.settled[0].rolled_out["db"], "new");
        assert!(next.settled[0].finished, "a rollout credsync started");
    }

    /// Wave 1 failed on the "new" content (it last rolled out "good"); wave
    /// 2 still runs on "good".
    fn failed_wave_one() -> [Workload; 2] {
        [
            w(
                "one",
                1,
                "new",
                "good",
                Progress::Failed("ProgressDeadlineExceeded".into()),
            ),
            w("two", 2, "good", "good", Progress::Done),
        ]
    }

    #[test]
    fn a_failed_wave_stops_the_later_ones_and_names_the_last_good_content() {
        let [failed, w2] = failed_wave_one();
        let steps = steps(&targets("new"), &BTreeSet::new(), &[failed, w2]);
        assert!(steps.restarts.is_empty(), "wave 2 is never restarted");
        assert_eq!(steps.failed.len(), 1);
        assert_eq!(steps.failed[0].last_good.as_deref(), Some("good"));
        assert_eq!(steps.failed[0].fingerprint, "new");
        assert_eq!(steps.failed[0].workloads[0].1, "ProgressDeadlineExceeded");
    }

    #[test]
    fn after_a_revert_the_failed_wave_restarts_once_and_the_rest_stays() {
        // The Secret holds the good content again.
        let [failed, w2] = failed_wave_one();
        let steps = steps(&targets("good"), &[db()].into(), &[failed, w2]);
        assert_eq!(names(&steps.restarts), ["one"]);
        assert!(steps.failed.is_empty());
    }

    #[test]
    fn a_restart_owed_is_found_again_and_an_unknown_workload_is_taken_as_current() {
        // Restarted for the old content, and the restart for the new one never landed.
        let owed = w("owed", 0, "old", "", Progress::Done);
        // Never restarted, never recorded: current unless the Secret changes now.
        let unknown = workload("unknown", Wave::Last);
        let later = steps(&targets("new"), &BTreeSet::new(), &[owed, unknown.clone()]);
        assert_eq!(names(&later.restarts), ["owed"]);
        // ... and its record is written, so a refused restart later is owed too.
        assert_eq!(later.settled.len(), 1);
        assert_eq!(later.settled[0].workload.name, "unknown");
        assert!(!later.settled[0].finished, "a first record, no rollout");
        let now = steps(&targets("new"), &[db()].into(), &[unknown]);
        assert_eq!(names(&now.restarts), ["unknown"]);
    }

    #[test]
    fn a_workload_using_two_changed_secrets_restarts_once_for_both() {
        let mut w = w("web", 0, "old", "old", Progress::Done);
        w.reloads_for.insert("api".into());
        w.asked.insert("api".into(), "api-old".into());
        let api = SecretRef::new("app", "api");
        let mut targets = targets("new");
        targets.insert(api.clone(), "api-new".into());
        let steps = steps(&targets, &[db(), api.clone()].into(), &[w]);
        assert_eq!(steps.restarts.len(), 1);
        assert_eq!(steps.restarts[0].secrets, [api, db()]);
        assert_eq!(
            steps.restarts[0].restarted_for,
            "app/api@api-new,app/db@new"
        );
    }

    #[test]
    fn in_step_nothing_moves() {
        let current = w("one", 1, "fp", "fp", Progress::Done);
        let steps = steps(&targets("fp"), &BTreeSet::new(), &[current]);
        assert_eq!(steps, Steps::default());
    }

    #[test]
    fn a_restart_keeps_what_the_workload_asked_for_other_secrets() {
        let mut w = w("one", 0, "old", "", Progress::Done);
        w.reloads_for.insert("api".into());
        w.asked.insert("api".into(), "api-fp".into());
        let restart = Restart {
            workload: w.reference.clone(),
            secrets: vec![db()],
            wave: Wave::Last,
            restarted_for: String::new(),
        };
        let asked = asked_after(&w, &restart, &targets("new"));
        assert_eq!(asked[&db()], "new");
        assert_eq!(asked[&SecretRef::new("app", "api")], "api-fp");
    }
}
