//! Rollouts: listing the workloads that opted in (with where their last
//! rollout stands), restarting them, and recording what they rolled out.
//!
//! A restart is a JSON merge patch of two pod template annotations, the way
//! `kubectl rollout restart` does it: the workload's controller then rolls
//! its pods at the pace its update strategy allows. The patch names the
//! Secrets and their fingerprints (key names and item versions), never a
//! value. What a workload rolled out to the end is written on the workload
//! itself (`rolled-out-for`), which restarts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::events::EventType;
use super::{Cluster, ClusterError, describe_kube_error, rollout_status};
use crate::backoff::Backoff;
use crate::manifest::{SecretRef, Skip};
use crate::rollout_rules::{
    Progress, RESTARTED_AT_ANNOTATION, RESTARTED_FOR_ANNOTATION, ROLLED_OUT_FOR_ANNOTATION,
    Restart, Wave, Workload, WorkloadKind, WorkloadRef, fingerprints, reload_rule, wave,
};
use crate::rotation::Settled;

/// What a restart patch found.
enum Patched {
    Yes,
    /// Deleted since it was listed: nothing left to restart.
    Gone,
}

/// Tries per workload patch before the restart is reported as failed.
const RESTART_ATTEMPTS: u32 = 3;

/// Workload patches in flight at once: a wave of 50 Deployments is
/// patched in a few round trips, not 50 one after another.
const PATCH_CONCURRENCY: usize = 16;

/// Where to look for workloads.
#[derive(Debug, Clone, Copy)]
pub enum WorkloadScope<'a> {
    /// Every namespace credsync reads Secrets in (one list per kind).
    Everywhere,
    /// These namespaces only (one list per kind and namespace).
    Namespaces(&'a BTreeSet<String>),
}

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
    fn progress(&self, timeout: Duration, now: Timestamp) -> Progress;
}

impl PodTemplated for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn progress(&self, timeout: Duration, now: Timestamp) -> Progress {
        rollout_status::deployment(self, timeout, now)
    }
}

impl PodTemplated for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn progress(&self, timeout: Duration, now: Timestamp) -> Progress {
        rollout_status::stateful_set(self, timeout, now)
    }
}

impl PodTemplated for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> &PodTemplateSpec {
        &self.spec.template
    }
    fn progress(&self, timeout: Duration, now: Timestamp) -> Progress {
        rollout_status::daemon_set(self, timeout, now)
    }
}

impl Cluster {
    /// The Deployments, StatefulSets and DaemonSets in `scope` that opted
    /// in to restarts, each with its wave, what it was last restarted for,
    /// what it rolled out and where its current rollout stands (a rollout
    /// older than `timeout` that is not done has failed).
    pub async fn workloads(
        &self,
        scope: WorkloadScope<'_>,
        timeout: Duration,
    ) -> Result<Workloads, ClusterError> {
        let namespaces: Vec<Option<&str>> = match (scope, &self.only_namespaces) {
            (WorkloadScope::Namespaces(wanted), _) => {
                wanted.iter().map(|n| Some(n.as_str())).collect()
            }
            (WorkloadScope::Everywhere, Some(included)) => {
                included.iter().map(|n| Some(n.as_str())).collect()
            }
            (WorkloadScope::Everywhere, None) => vec![None],
        };
        let mut found = Workloads::default();
        let now = Timestamp::now();
        for namespace in namespaces {
            self.collect::<Deployment>(namespace, timeout, now, &mut found)
                .await?;
            self.collect::<StatefulSet>(namespace, timeout, now, &mut found)
                .await?;
            self.collect::<DaemonSet>(namespace, timeout, now, &mut found)
                .await?;
        }
        Ok(found)
    }

    /// One kind in one namespace (None: all namespaces).
    async fn collect<K: PodTemplated>(
        &self,
        namespace: Option<&str>,
        timeout: Duration,
        now: Timestamp,
        found: &mut Workloads,
    ) -> Result<(), ClusterError>
    where
        <K as kube::Resource>::DynamicType: Default,
    {
        let api: Api<K> = match namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        };
        let doing = format!(
            "listing {}s in {}",
            K::KIND.as_str(),
            namespace.unwrap_or("every namespace")
        );
        self.list_paged(
            &doing,
            ListParams::default(),
            |params| {
                let api = &api;
                async move { api.list(&params).await }
            },
            |object: K| {
                let meta = object.meta();
                let (Some(name), Some(namespace)) = (meta.name.clone(), meta.namespace.clone())
                else {
                    return;
                };
                let reference = WorkloadRef {
                    kind: K::KIND,
                    namespace,
                    name,
                };
                let annotations = meta.annotations.clone().unwrap_or_default();
                let rule =
                    reload_rule(&annotations).and_then(|rule| Ok((rule, wave(&annotations)?)));
                match rule {
                    Ok((Some(rule), wave)) => {
                        let template = object.template();
                        let referenced = referenced_secrets(template);
                        let mut workload = Workload::new(reference, rule, referenced);
                        let template_annotations = template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.annotations.as_ref());
                        let ns = &workload.reference.namespace;
                        workload.asked = template_annotations
                            .and_then(|a| a.get(RESTARTED_FOR_ANNOTATION))
                            .map(|text| fingerprints(text, ns))
                            .unwrap_or_default();
                        workload.rolled_out = annotations
                            .get(ROLLED_OUT_FOR_ANNOTATION)
                            .map(|text| fingerprints(text, ns))
                            .unwrap_or_default();
                        workload.wave = wave;
                        workload.progress = object.progress(timeout, now);
                        found.opted_in.push(workload);
                    }
                    Ok((None, _)) => {}
                    Err(err) => found.unreadable.push(Skip {
                        subject: reference.to_string(),
                        reason: format!("not restarted: {}", crate::errors::chain(&err)),
                    }),
                }
            },
        )
        .await
    }

    /// Makes `planned` restarts, many at once: each writes its
    /// `restarted_for`, is tried a few times, and leaves an Event on the
    /// workload saying why (`why`: per Secret, the keys and items that
    /// changed). One workload's failure does not stop the others.
    pub async fn restart(
        &self,
        planned: Vec<Restart>,
        why: &BTreeMap<SecretRef, String>,
    ) -> (Vec<Restart>, Vec<RestartFailure>) {
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let patches: Vec<(Restart, serde_json::Value)> = planned
            .into_iter()
            .map(|restart| {
                let patch = json!({
                    "spec": { "template": { "metadata": { "annotations": {
                        RESTARTED_FOR_ANNOTATION: restart.restarted_for,
                        RESTARTED_AT_ANNOTATION: now,
                    }}}}
                });
                (restart, patch)
            })
            .collect();
        let results: Vec<(Restart, Result<Patched, kube::Error>)> = futures::stream::iter(patches)
            .map(|(restart, patch)| async move {
                let result = self.patch_workload(&restart.workload, &patch).await;
                (restart, result)
            })
            .buffer_unordered(PATCH_CONCURRENCY)
            .collect()
            .await;
        let mut restarted = Vec::new();
        let mut failed = Vec::new();
        for (restart, result) in results {
            let kind = restart.workload.kind.as_str();
            match result {
                Ok(Patched::Gone) => {
                    tracing::info!(workload = %restart.workload, "workload deleted since it was listed; nothing to restart");
                }
                Ok(Patched::Yes) => {
                    tracing::info!(workload = %restart.workload, wave = %restart.wave, for_secrets = %restart.restarted_for, "restarted workload");
                    self.metrics
                        .workload_restarts
                        .with_label_values(&[kind])
                        .inc();
                    restarted.push(restart);
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
        restarted.sort_by(|a, b| a.workload.cmp(&b.workload));
        failed.sort_by(|a, b| a.workload.cmp(&b.workload));
        self.restart_events(&restarted, why).await;
        (restarted, failed)
    }

    /// One Event on each restarted workload, and one on each Secret per
    /// wave naming the workloads restarted for it.
    async fn restart_events(&self, restarted: &[Restart], why: &BTreeMap<SecretRef, String>) {
        let because = |secret: &SecretRef| match why.get(secret) {
            Some(why) => format!("{secret}: {why}"),
            None => secret.to_string(),
        };
        let mut per_secret: BTreeMap<(&SecretRef, Wave), Vec<String>> = BTreeMap::new();
        for restart in restarted {
            let reasons: Vec<String> = restart.secrets.iter().map(because).collect();
            let note = format!(
                "restarted by credsync ({}) for {}",
                restart.wave,
                reasons.join("; ")
            );
            self.note_event(
                self.event_on_workload(
                    &restart.workload,
                    EventType::Normal,
                    "Restarted",
                    "Restart",
                    note,
                )
                .await,
            );
            for secret in &restart.secrets {
                per_secret
                    .entry((secret, restart.wave))
                    .or_default()
                    .push(restart.workload.to_string());
            }
        }
        for ((secret, wave), workloads) in per_secret {
            let note = format!(
                "restarted by credsync ({wave}) for {}: {}",
                because(secret),
                workloads.join(", ")
            );
            self.note_event(
                self.event_on_secret(secret, EventType::Normal, "Restarted", "Restart", note)
                    .await,
            );
        }
    }

    /// Writes what each workload rolled out (`rolled-out-for`, on the
    /// workload's own metadata: no restart). A failure is logged; the next
    /// reconcile writes it again.
    pub async fn settle(&self, settled: &[Settled]) {
        // (Owned items: a closure taking a reference would make the
        // reconcile future !Send for tokio::spawn, rust-lang/rust#102211.)
        let patches: Vec<(WorkloadRef, serde_json::Value)> = settled
            .iter()
            .map(|entry| {
                let value: Vec<String> = entry
                    .rolled_out
                    .iter()
                    .map(|(name, fp)| format!("{}/{name}@{fp}", entry.workload.namespace))
                    .collect();
                let patch = json!({"metadata": {"annotations": {ROLLED_OUT_FOR_ANNOTATION: value.join(",")}}});
                (entry.workload.clone(), patch)
            })
            .collect();
        let results: Vec<(WorkloadRef, Result<Patched, kube::Error>)> =
            futures::stream::iter(patches)
                .map(|(workload, patch)| async move {
                    let result = self.patch_workload(&workload, &patch).await;
                    (workload, result)
                })
                .buffer_unordered(PATCH_CONCURRENCY)
                .collect()
                .await;
        for (workload, result) in results {
            if let Err(error) = result {
                tracing::warn!(workload = %workload, error = %describe_kube_error(&error), "could not record what the workload rolled out; the next reconcile tries again");
            }
        }
    }

    /// After a revert: deletes the Pods of StatefulSet `workload` that are
    /// not Ready, so they come back from the reverted template. An
    /// OrderedReady StatefulSet waits on a broken Pod for ever and never
    /// rolls back by itself (what the Kubernetes docs tell a person to do
    /// by hand). Other kinds replace their Pods themselves. Returns how many.
    pub async fn unstick(&self, workload: &WorkloadRef) -> Result<usize, ClusterError> {
        if workload.kind != WorkloadKind::StatefulSet {
            return Ok(0);
        }
        let doing = format!("replacing the Pods of {workload} that are not Ready");
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &workload.namespace);
        self.count("list");
        let by_name = ListParams::default().fields(&format!("metadata.name={}", workload.name));
        let found = sets
            .list(&by_name)
            .await
            .map_err(|e| super::api_error(&doing, e))?;
        let Some(set) = found.items.into_iter().next() else {
            return Ok(0);
        };
        let selector: Vec<String> = set
            .spec
            .selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if selector.is_empty() {
            return Ok(0);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &workload.namespace);
        self.count("list");
        let listed = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .map_err(|e| super::api_error(&doing, e))?;
        let mut deleted = 0;
        for pod in listed.items {
            let owned = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == set.metadata.uid.as_ref());
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let (Some(name), true, false, None) = (
                pod.metadata.name.clone(),
                owned,
                ready,
                pod.metadata.deletion_timestamp,
            ) else {
                continue;
            };
            self.count("delete");
            match pods.delete(&name, &Default::default()).await {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => return Err(super::api_error(&doing, e)),
            }
        }
        Ok(deleted)
    }

    /// Logs an Event the API server refused (the work it describes was done).
    pub fn note_event(&self, result: Result<(), ClusterError>) {
        if let Err(error) = result {
            tracing::warn!(error = %crate::errors::Chain(&error), "the API server refused an Event (the work it describes was done); check RBAC for events.k8s.io create");
        }
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
