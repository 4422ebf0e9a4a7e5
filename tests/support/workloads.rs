//! Workloads for the rotation tests: Deployments, StatefulSets and
//! DaemonSets that read a Secret, in waves, on a control plane whose
//! controllers roll them (see `StandIns::start_with_workloads`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::{StandIns, eventually};

/// A workload kind as the tests name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// What a test reads back from a workload.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Bumped by spec changes, and for a Deployment by annotation changes too.
    pub generation: i64,
    /// A Deployment's `deployment.kubernetes.io/revision`: one more for each
    /// pod template it rolled out (its controller's count of restarts).
    pub revision: i64,
    /// The pod template's `credsync.io/restarted-for`.
    pub restarted_for: Option<String>,
    /// The workload's `credsync.io/rolled-out-for`.
    pub rolled_out_for: Option<String>,
    /// Every replica runs the current template and is available.
    pub available: bool,
    /// A Deployment's Progressing reason, if any.
    pub progressing: Option<String>,
}

impl StandIns {
    /// Creates `kind`/`name` in `namespace` that reloads for `secret` (env
    /// `PASSWORD` from its key `PASSWORD`), in `wave` (None: the last), one
    /// replica, a Deployment's progress deadline `deadline_s` seconds.
    pub async fn create_workload(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        secret: &str,
        wave: Option<u32>,
        deadline_s: i64,
    ) {
        let mut annotations = json!({ "credsync.io/reload": "true" });
        if let Some(wave) = wave {
            annotations["credsync.io/rollout-wave"] = json!(wave.to_string());
        }
        let template = json!({
            "metadata": { "labels": { "app": name } },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "main",
                    "image": "registry.invalid/app:1",
                    "env": [{ "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": secret, "key": "PASSWORD" } } }]
                }]
            }
        });
        let metadata = json!({ "name": name, "annotations": annotations });
        let selector = json!({ "matchLabels": { "app": name } });
        let client = self.admin().await;
        let post = PostParams::default();
        match kind {
            Kind::Deployment => {
                let body: Deployment = serde_json::from_value(json!({
                    "metadata": metadata,
                    "spec": { "replicas": 1, "progressDeadlineSeconds": deadline_s, "selector": selector, "template": template }
                }))
                .unwrap();
                Api::<Deployment>::namespaced(client, namespace)
                    .create(&post, &body)
                    .await
                    .unwrap();
            }
            Kind::StatefulSet => {
                let body: StatefulSet = serde_json::from_value(json!({
                    "metadata": metadata,
                    "spec": { "replicas": 1, "serviceName": name, "selector": selector, "template": template }
                }))
                .unwrap();
                Api::<StatefulSet>::namespaced(client, namespace)
                    .create(&post, &body)
                    .await
                    .unwrap();
            }
            Kind::DaemonSet => {
                let body: DaemonSet = serde_json::from_value(json!({
                    "metadata": metadata,
                    "spec": { "selector": selector, "template": template }
                }))
                .unwrap();
                Api::<DaemonSet>::namespaced(client, namespace)
                    .create(&post, &body)
                    .await
                    .unwrap();
            }
        }
    }

    /// Reads a workload back.
    pub async fn workload(&self, kind: Kind, namespace: &str, name: &str) -> Seen {
        let client = self.admin().await;
        let object: Value = match kind {
            Kind::Deployment => serde_json::to_value(
                Api::<Deployment>::namespaced(client, namespace)
                    .get(name)
                    .await
                    .unwrap(),
            ),
            Kind::StatefulSet => serde_json::to_value(
                Api::<StatefulSet>::namespaced(client, namespace)
                    .get(name)
                    .await
                    .unwrap(),
            ),
            Kind::DaemonSet => serde_json::to_value(
                Api::<DaemonSet>::namespaced(client, namespace)
                    .get(name)
                    .await
                    .unwrap(),
            ),
        }
        .unwrap();
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let int = |v: &Value| v.as_i64().unwrap_or(0);
        let status = &object["status"];
        let observed = int(&status["observedGeneration"]) >= int(&object["metadata"]["generation"]);
        let available = observed
            && match kind {
                Kind::Deployment => {
                    let want = int(&object["spec"]["replicas"]);
                    int(&status["updatedReplicas"]) == want
                        && int(&status["replicas"]) == want
                        && int(&status["availableReplicas"]) == want
                }
                Kind::StatefulSet => {
                    let want = int(&object["spec"]["replicas"]);
                    int(&status["readyReplicas"]) == want
                        && int(&status["updatedReplicas"]) == want
                        && status["currentRevision"] == status["updateRevision"]
                }
                Kind::DaemonSet => {
                    let want = int(&status["desiredNumberScheduled"]);
                    want > 0
                        && int(&status["updatedNumberScheduled"]) == want
                        && int(&status["numberAvailable"]) == want
                }
            };
        let progressing = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Progressing")
            .and_then(|c| text(&c["reason"]));
        Seen {
            generation: int(&object["metadata"]["generation"]),
            revision: object["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            restarted_for: text(
                &object["spec"]["template"]["metadata"]["annotations"]["credsync.io/restarted-for"],
            ),
            rolled_out_for: text(&object["metadata"]["annotations"]["credsync.io/rolled-out-for"]),
            available,
            progressing,
        }
    }

    /// Waits (at most `within`) until the workload is rolled out and available.
    pub async fn eventually_available(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        within: Duration,
    ) -> bool {
        eventually(within, || async {
            self.workload(kind, namespace, name).await.available
        })
        .await
    }

    /// The Events about `kind/name` in `namespace`: (type, reason, note).
    pub async fn events_about(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Vec<(String, String, String)> {
        use k8s_openapi::api::events::v1::Event;
        let events: Api<Event> = Api::namespaced(self.admin().await, namespace);
        let mut found: Vec<(String, String, String)> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect();
        found.sort();
        found
    }

    /// A managed Secret's annotations.
    pub async fn secret_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> BTreeMap<String, String> {
        self.secret(namespace, name)
            .await
            .and_then(|s| s.metadata.annotations)
            .unwrap_or_default()
    }
}
