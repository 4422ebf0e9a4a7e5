//! Rollouts: listing the workloads that opted in, and restarting them.
//!
//! A restart is a JSON merge patch of two pod template annotations, the way
//! `kubectl rollout restart` does it: the workload's controller then rolls
//! its pods at the pace its update strategy allows. The patch names the
//! Secrets and their fingerprints (key names and item versions), never a
//! value.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Cluster, ClusterError, describe_kube_error};
use crate::backoff::Backoff;
use crate::manifest::{Manifest, SecretRef, Skip};
use crate::rollout_rules::{
    RESTARTED_AT_ANNOTATION, RESTARTED_FOR_ANNOTATION, Restart, Workload, WorkloadKind,
    WorkloadRef, reload_rule, restarted_for,
};

/// What a restart patch found.
enum Patched {
    Yes,
    /// Deleted since it was listed: nothing left to restart.
    Gone,
}

/// Tries per workload patch before the restart is reported as failed.
const RESTART_ATTEMPTS: u32 = 3;

/// Workloads that opted in, and those whose opt-in could not be read.
#[derive(Debug, Default)]
pub struct Workloads {
    pub opted_in: Vec<Workload>,
    pub unreadable: Vec<Skip>,
}

/// A restart that did not happen, and why (the API server's words).
#[derive(Debug, serde::Serialize)]
pub struct RestartFailure {
    pub workload: WorkloadRef,
    pub reason: String,
}

/// Secret names a pod template references through env, envFrom and volumes.
pub fn referenced_secrets(template: &PodTemplateSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(spec) = &template.spec else {
        return names;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        for env in container.env.iter().flatten() {
            if let Some(key_ref) = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                names.insert(key_ref.name.clone());
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                names.insert(secret.name.clone());
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            names.insert(name);
        }
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in projected.into_iter().flatten() {
            if let Some(secret) = &source.secret {
                names.insert(secret.name.clone());
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The parts of a workload object a rollout needs.
trait PodTemplated: kube::Resource<Scope = kube::core::NamespaceResourceScope>
where
    Self: Clone + DeserializeOwned + std::fmt::Debug,
{
    const KIND: WorkloadKind;
    fn template(&self) -> &PodTemplateSpec;
}

impl PodTemplated for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
}

impl PodTemplated for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
}

impl PodTemplated for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
}

impl Cluster {
    /// The Deployments, StatefulSets and DaemonSets in `namespaces` that
    /// opted in to restarts (one list per kind and namespace).
    pub async fn workloads(
        &self,
        namespaces: &BTreeSet<String>,
    ) -> Result<Workloads, ClusterError> {
        let mut found = Workloads::default();
        for namespace in namespaces {
            self.collect::<Deployment>(namespace, &mut found).await?;
            self.collect::<StatefulSet>(namespace, &mut found).await?;
            self.collect::<DaemonSet>(namespace, &mut found).await?;
        }
        Ok(found)
    }

    async fn collect<K: PodTemplated>(
        &self,
        namespace: &str,
        found: &mut Workloads,
    ) -> Result<(), ClusterError>
    where
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let doing = format!("listing {}s in {namespace}", K::KIND.as_str());
        self.list_paged(
            &doing,
            ListParams::default(),
            |params| {
                let api = &api;
                async move { api.list(&params).await }
            },
            |object: K| {
                let meta = object.meta();
                let Some(name) = meta.name.clone() else {
                    return;
                };
                let reference = WorkloadRef {
                    kind: K::KIND,
                    namespace: namespace.to_owned(),
                    name,
                };
                let annotations = meta.annotations.clone().unwrap_or_default();
                match reload_rule(&annotations) {
                    Ok(Some(rule)) => {
                        let referenced = referenced_secrets(object.template());
                        found
                            .opted_in
                            .push(Workload::new(reference, rule, referenced));
                    }
                    Ok(None) => {}
                    Err(err) => found.unreadable.push(Skip {
                        subject: reference.to_string(),
                        reason: format!("not restarted: {}", crate::errors::chain(&err)),
                    }),
                }
            },
        )
        .await
    }

    /// Restarts each planned workload for the Secrets of its restart that
    /// were written (`written`); a workload none of whose Secrets was
    /// written is left alone. Each patch is tried a few times; one
    /// workload's failure does not stop the others.
    pub async fn restart(
        &self,
        planned: &[Restart],
        written: &BTreeSet<SecretRef>,
        manifest: &Manifest,
    ) -> (Vec<Restart>, Vec<RestartFailure>) {
        let mut restarted = Vec::new();
        let mut failed = Vec::new();
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        for restart in planned {
            let secrets: Vec<SecretRef> = restart
                .secrets
                .iter()
                .filter(|s| written.contains(*s))
                .cloned()
                .collect();
            if secrets.is_empty() {
                continue;
            }
            let fingerprints: BTreeMap<&SecretRef, String> = secrets
                .iter()
                .map(|s| {
                    let fingerprint = manifest
                        .secrets
                        .get(s)
                        .map(|d| d.fingerprint())
                        .unwrap_or_default();
                    (s, fingerprint)
                })
                .collect();
            let reason = restarted_for(fingerprints.iter().map(|(s, f)| (*s, f.as_str())));
            let patch = json!({
                "spec": { "template": { "metadata": { "annotations": {
                    RESTARTED_FOR_ANNOTATION: reason,
                    RESTARTED_AT_ANNOTATION: now,
                }}}}
            });
            let kind = restart.workload.kind.as_str();
            match self.patch_workload(&restart.workload, &patch).await {
                Ok(Patched::Gone) => {
                    tracing::info!(workload = %restart.workload, "workload deleted since it was listed; nothing to restart");
                }
                Ok(Patched::Yes) => {
                    tracing::info!(workload = %restart.workload, for_secrets = %reason, "restarted workload");
                    self.metrics
                        .workload_restarts
                        .with_label_values(&[kind])
                        .inc();
                    restarted.push(Restart {
                        workload: restart.workload.clone(),
                        secrets,
                    });
                }
                Err(error) => {
                    let reason = describe_kube_error(&error);
                    tracing::error!(workload = %restart.workload, error = %reason, "workload not restarted");
                    self.metrics
                        .workload_restart_failures
                        .with_label_values(&[kind])
                        .inc();
                    failed.push(RestartFailure {
                        workload: restart.workload.clone(),
                        reason,
                    });
                }
            }
        }
        (restarted, failed)
    }

    /// One merge patch of a workload, tried [`RESTART_ATTEMPTS`] times.
    async fn patch_workload(
        &self,
        workload: &WorkloadRef,
        patch: &serde_json::Value,
    ) -> Result<Patched, kube::Error> {
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        };
        let mut backoff = Backoff::exact(Duration::from_millis(200), Duration::from_secs(2));
        let mut attempt = 1;
        loop {
            self.count("patch");
            let result = match workload.kind {
                WorkloadKind::Deployment => {
                    self.patch_as::<Deployment>(workload, &params, patch).await
                }
                WorkloadKind::StatefulSet => {
                    self.patch_as::<StatefulSet>(workload, &params, patch).await
                }
                WorkloadKind::DaemonSet => {
                    self.patch_as::<DaemonSet>(workload, &params, patch).await
                }
            };
            match result {
                Ok(()) => return Ok(Patched::Yes),
                Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(Patched::Gone),
                Err(error) if attempt >= RESTART_ATTEMPTS => return Err(error),
                Err(error) => {
                    tracing::warn!(workload = %workload, error = %describe_kube_error(&error), attempt, "restart patch refused; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn patch_as<K: PodTemplated>(
        &self,
        workload: &WorkloadRef,
        params: &PatchParams,
        patch: &serde_json::Value,
    ) -> Result<(), kube::Error>
    where
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &workload.namespace);
        api.patch(&workload.name, params, &Patch::Merge(patch))
            .await
            .map(|_| ())
    }
}

/// Why listing workloads failed, in the words a plan prints.
pub fn listing_failure(error: &ClusterError) -> Skip {
    Skip {
        subject: "rollouts".to_owned(),
        reason: format!("no workload restarted: {}", crate::errors::chain(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_come_from_env_env_from_and_volumes_of_every_container() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "spec": {
                "initContainers": [{"name": "init", "envFrom": [{"secretRef": {"name": "init-creds"}}]}],
                "containers": [{
                    "name": "app",
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "PASSWORD"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "not-a-secret", "key": "X"}}},
                        {"name": "C", "value": "literal"}
                    ]
                }],
                "volumes": [
                    {"name": "tls", "secret": {"secretName": "tls"}},
                    {"name": "all", "projected": {"sources": [
                        {"secret": {"name": "projected"}},
                        {"configMap": {"name": "cm"}}
                    ]}},
                    {"name": "scratch", "emptyDir": {}}
                ]
            }
        }))
        .unwrap();
        let names: Vec<String> = referenced_secrets(&template).into_iter().collect();
        assert_eq!(names, ["db", "init-creds", "projected", "tls"]);
        assert!(referenced_secrets(&PodTemplateSpec::default()).is_empty());
    }
}
