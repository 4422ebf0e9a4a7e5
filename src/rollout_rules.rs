//! Which workloads restart when a Secret's content changes.
//!
//! Pods that read a Secret through environment variables keep the old
//! value until they restart, so a rotated password is synced and still not
//! used. A workload opts in with an annotation; when a reconcile changes
//! the content of a Secret it uses, credsync patches the workload's pod
//! template annotation once, which rolls it as `kubectl rollout restart`
//! does. This module is the pure part: reading the opt-in annotations and
//! matching changed Secrets to workloads. The cluster adapter lists the
//! workloads and patches them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::manifest::SecretRef;

/// `"true"`: restart when any Secret the pod template references changes.
pub const RELOAD_ANNOTATION: &str = "credsync.io/reload";
/// `"a,b"`: restart when one of these Secrets (same namespace) changes.
pub const RELOAD_SECRETS_ANNOTATION: &str = "credsync.io/reload-secrets";
/// EDSM's opt-in, a JSON list of Secret names: read as `reload-secrets`.
pub const EDSM_ANNOTATION: &str = "eventdrivensecretsmanaged";
/// Written on the pod template: `<secret>@<fingerprint>` of the Secrets the
/// restart was for (the fingerprint covers key names and item versions,
/// never a value or a value's hash).
pub const RESTARTED_FOR_ANNOTATION: &str = "credsync.io/restarted-for";
/// Written on the pod template beside `restarted-for`: when (RFC 3339), so
/// that a rollback to an earlier fingerprint still changes the template.
pub const RESTARTED_AT_ANNOTATION: &str = "credsync.io/restarted-at";
/// `"N"` on a workload (N >= 1): wave N restarts only once every workload
/// of the waves before it that uses the Secret is Available again. No
/// annotation: the last wave.
pub const WAVE_ANNOTATION: &str = "credsync.io/rollout-wave";
/// Written on the workload (not its pod template, so it restarts nothing):
/// `<secret>@<fingerprint>` of the Secrets its pods last rolled out with to
/// the end. What a failed rotation is reverted to.
pub const ROLLED_OUT_FOR_ANNOTATION: &str = "credsync.io/rolled-out-for";

/// The highest wave a workload may name: more would be a typo, not a plan.
pub const MAX_WAVE: u32 = 1000;

/// When a workload restarts in a rotation: numbered waves first, in order,
/// then the workloads that name none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Wave {
    Numbered(u32),
    #[default]
    Last,
}

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Numbered(n) => write!(f, "wave {n}"),
            Self::Last => f.write_str("the last wave"),
        }
    }
}

impl serde::Serialize for Wave {
    /// A number, or null for the last wave.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Numbered(n) => serializer.serialize_u32(*n),
            Self::Last => serializer.serialize_none(),
        }
    }
}

/// Reads [`WAVE_ANNOTATION`].
pub fn wave(annotations: &BTreeMap<String, String>) -> Result<Wave, RuleError> {
    let Some(text) = annotations.get(WAVE_ANNOTATION) else {
        return Ok(Wave::Last);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_WAVE).contains(&n) => Ok(Wave::Numbered(n)),
        _ => Err(RuleError::Wave(text.clone())),
    }
}

/// Reads a `restarted-for` or `rolled-out-for` value: Secret name ->
/// fingerprint, for the Secrets of `namespace` (others are not this
/// workload's). Unreadable entries are left out: they match nothing, so
/// at worst the workload restarts once more.
pub fn fingerprints(text: &str, namespace: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|entry| {
            let (secret, fingerprint) = entry.trim().rsplit_once('@')?;
            let (ns, name) = secret.split_once('/')?;
            (ns == namespace && !name.is_empty() && !fingerprint.is_empty())
                .then(|| (name.to_owned(), fingerprint.to_owned()))
        })
        .collect()
}

/// The workload kinds that roll on a pod template change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [Self::Deployment, Self::StatefulSet, Self::DaemonSet];

    /// As kubectl names it (`deployment/web`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::StatefulSet => "statefulset",
            Self::DaemonSet => "daemonset",
        }
    }
}

/// One workload in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind.as_str(), self.name)
    }
}

/// What a workload's annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadRule {
    /// Every Secret its pod template references.
    Referenced,
    /// These Secrets of its namespace only.
    Only(BTreeSet<String>),
}

/// An opt-in annotation credsync cannot read; the workload is left alone
/// and the plan says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{EDSM_ANNOTATION} is not a JSON list of Secret names: {0}")]
    Edsm(String),
    #[error("{RELOAD_ANNOTATION} is '{0}'; use \"true\" or \"false\"")]
    Reload(String),
    #[error("{WAVE_ANNOTATION} is '{0}'; use a whole number from 1 to {MAX_WAVE}")]
    Wave(String),
}

/// Reads the opt-in annotations: None if the workload did not opt in.
/// `reload-secrets` and EDSM's list add up; `reload: "true"` wins over both.
pub fn reload_rule(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<ReloadRule>, RuleError> {
    match annotations.get(RELOAD_ANNOTATION).map(|v| v.trim()) {
        Some(v) if v.eq_ignore_ascii_case("true") => return Ok(Some(ReloadRule::Referenced)),
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => {}
        Some(other) => return Err(RuleError::Reload(other.to_owned())),
        None => {}
    }
    let mut names = BTreeSet::new();
    if let Some(list) = annotations.get(RELOAD_SECRETS_ANNOTATION) {
        names.extend(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(json) = annotations.get(EDSM_ANNOTATION) {
        let listed: Vec<String> =
            serde_json::from_str(json).map_err(|e| RuleError::Edsm(e.to_string()))?;
        names.extend(listed.into_iter().filter(|n| !n.trim().is_empty()));
    }
    Ok((!names.is_empty()).then_some(ReloadRule::Only(names)))
}

/// A workload that opted in, with the Secrets (of its namespace) it
/// reloads for and where its last restart stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    pub reference: WorkloadRef,
    pub reloads_for: BTreeSet<String>,
    pub wave: Wave,
    /// The template's `restarted-for`: Secret name -> fingerprint asked for.
    pub asked: BTreeMap<String, String>,
    /// The workload's `rolled-out-for`: Secret name -> fingerprint rolled out.
    pub rolled_out: BTreeMap<String, String>,
    /// Where the rollout of its current pod template stands.
    pub progress: Progress,
}

impl Workload {
    /// `referenced` is what the pod template names through env, envFrom and volumes.
    pub fn new(reference: WorkloadRef, rule: ReloadRule, referenced: BTreeSet<String>) -> Self {
        let reloads_for = match rule {
            ReloadRule::Referenced => referenced,
            ReloadRule::Only(names) => names,
        };
        Self {
            reference,
            reloads_for,
            ..Self::default()
        }
    }
}

/// Where a workload's rollout stands, as its controller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum Progress {
    /// Every replica runs the current template and is available.
    #[default]
    Done,
    /// Still rolling, within its deadline.
    Rolling,
    /// Past its progress deadline (or `--rollout-timeout`): why, in the
    /// controller's words.
    Failed(String),
}

/// One workload to restart, and the changed Secrets it restarts for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restart {
    pub workload: WorkloadRef,
    pub secrets: Vec<SecretRef>,
    pub wave: Wave,
    /// The `restarted-for` the restart writes: every Secret the workload
    /// asked for before, these at their new fingerprints.
    #[serde(skip)]
    pub restarted_for: String,
}

/// The `restarted-for` (or `rolled-out-for`) value: `ns/name@fingerprint`
/// for each Secret, comma-separated.
pub fn restarted_for<'a>(secrets: impl Iterator<Item = (&'a SecretRef, &'a str)>) -> String {
    secrets
        .map(|(secret, fingerprint)| format!("{secret}@{fingerprint}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn waves_are_whole_numbers_and_none_is_the_last() {
        assert_eq!(wave(&annotations(&[])), Ok(Wave::Last));
        assert_eq!(
            wave(&annotations(&[(WAVE_ANNOTATION, " 2 ")])),
            Ok(Wave::Numbered(2))
        );
        for bad in ["0", "-1", "1.5", "first", "1001", ""] {
            let err = wave(&annotations(&[(WAVE_ANNOTATION, bad)])).unwrap_err();
            assert!(err.to_string().contains(WAVE_ANNOTATION), "{err}");
        }
        assert!(Wave::Numbered(1) < Wave::Numbered(2));
        assert!(Wave::Numbered(MAX_WAVE) < Wave::Last);
    }

    #[test]
    fn fingerprints_are_read_for_the_workloads_namespace_only() {
        let read = fingerprints(
            "app/db@sha256:aa, other/db@sha256:bb,app/api@sha256:cc,junk,app/@x",
            "app",
        );
        assert_eq!(read.len(), 2);
        assert_eq!(read["db"], "sha256:aa");
        assert_eq!(read["api"], "sha256:cc");
        assert!(fingerprints("", "app").is_empty());
    }

    #[test]
    fn the_three_opt_ins_are_read() {
        assert_eq!(reload_rule(&annotations(&[])), Ok(None));
        assert_eq!(
            reload_rule(&annotations(&[(RELOAD_ANNOTATION, "true")])),
            Ok(Some(ReloadRule::Referenced))
        );
        assert_eq!(
            reload_rule(&annotations(&[(RELOAD_ANNOTATION, "false")])),
            Ok(None)
        );
        assert_eq!(
            reload_rule(&annotations(&[(RELOAD_SECRETS_ANNOTATION, " db, ,api ")])),
            Ok(Some(ReloadRule::Only(names(&["api", "db"]))))
        );
        assert_eq!(
            reload_rule(&annotations(&[(EDSM_ANNOTATION, r#"["db","cache"]"#)])),
            Ok(Some(ReloadRule::Only(names(&["cache", "db"]))))
        );
        // Both lists add up; reload=true wins over them.
        assert_eq!(
            reload_rule(&annotations(&[
                (EDSM_ANNOTATION, r#"["db"]"#),
                (RELOAD_SECRETS_ANNOTATION, "api")
            ])),
            Ok(Some(ReloadRule::Only(names(&["api", "db"]))))
        );
        assert_eq!(
            reload_rule(&annotations(&[
                (EDSM_ANNOTATION, r#"["db"]"#),
                (RELOAD_ANNOTATION, "TRUE")
            ])),
            Ok(Some(ReloadRule::Referenced))
        );
    }

    #[test]
    fn unreadable_opt_ins_name_the_annotation() {
        let err = reload_rule(&annotations(&[(EDSM_ANNOTATION, "db,cache")])).unwrap_err();
        assert!(err.to_string().starts_with(EDSM_ANNOTATION), "{err}");
        let err = reload_rule(&annotations(&[(RELOAD_ANNOTATION, "yes")])).unwrap_err();
        assert_eq!(err, RuleError::Reload("yes".into()));
    }

    #[test]
    fn a_rule_of_referenced_secrets_takes_the_templates_references() {
        let reference = WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: "app".into(),
            name: "web".into(),
        };
        let referenced = names(&["db", "tls"]);
        let all = Workload::new(
            reference.clone(),
            ReloadRule::Referenced,
            referenced.clone(),
        );
        assert_eq!(all.reloads_for, referenced);
        let only = Workload::new(reference, ReloadRule::Only(names(&["db"])), referenced);
        assert_eq!(only.reloads_for, names(&["db"]));
    }
}
