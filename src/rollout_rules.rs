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

/// The workload kinds that roll on a pod template change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
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

/// A workload that opted in, with the Secrets (of its namespace) it reloads for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub reference: WorkloadRef,
    pub reloads_for: BTreeSet<String>,
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
        }
    }
}

/// One workload to restart, and the changed Secrets it restarts for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restart {
    pub workload: WorkloadRef,
    pub secrets: Vec<SecretRef>,
}

/// Each workload that reloads for one of the `changed` Secrets, once, with
/// every changed Secret it uses; ordered by workload.
pub fn restarts(changed: &BTreeSet<SecretRef>, workloads: &[Workload]) -> Vec<Restart> {
    let mut out: BTreeMap<WorkloadRef, BTreeSet<SecretRef>> = BTreeMap::new();
    for workload in workloads {
        let hits = workload
            .reloads_for
            .iter()
            .map(|name| SecretRef::new(&workload.reference.namespace, name))
            .filter(|secret| changed.contains(secret));
        for secret in hits {
            out.entry(workload.reference.clone())
                .or_default()
                .insert(secret);
        }
    }
    out.into_iter()
        .map(|(workload, secrets)| Restart {
            workload,
            secrets: secrets.into_iter().collect(),
        })
        .collect()
}

/// The `restarted-for` value: `ns/name@fingerprint` for each Secret, comma-separated.
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

    fn workload(kind: WorkloadKind, name: &str, reloads_for: &[&str]) -> Workload {
        Workload {
            reference: WorkloadRef {
                kind,
                namespace: "app".into(),
                name: name.into(),
            },
            reloads_for: names(reloads_for),
        }
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
    fn each_workload_restarts_once_for_every_changed_secret_it_uses() {
        let changed: BTreeSet<SecretRef> =
            [SecretRef::new("app", "db"), SecretRef::new("app", "api")].into();
        let workloads = [
            workload(WorkloadKind::Deployment, "web", &["db", "api", "other"]),
            workload(WorkloadKind::StatefulSet, "queue", &["other"]),
            workload(WorkloadKind::DaemonSet, "agent", &["api"]),
        ];
        let planned = restarts(&changed, &workloads);
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].workload.to_string(), "app/deployment/web");
        assert_eq!(
            planned[0].secrets,
            [SecretRef::new("app", "api"), SecretRef::new("app", "db")]
        );
        assert_eq!(planned[1].workload.kind, WorkloadKind::DaemonSet);
        // A Secret of the same name in another namespace is another Secret.
        let elsewhere: BTreeSet<SecretRef> = [SecretRef::new("other", "db")].into();
        assert!(restarts(&elsewhere, &workloads).is_empty());
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
