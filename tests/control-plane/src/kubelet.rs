//! A played kubelet: the control plane runs no kubelet, so Pods would stay
//! Pending for ever. This marks each new Pod Running, and Ready unless a
//! Secret it reads holds a value the test called bad (a wrong password, as
//! a real container would fail its readiness probe with), which is what the
//! workload controllers need to roll a Deployment, StatefulSet or DaemonSet
//! to its end or to a stall.
//!
//! A Pod is judged once, when first seen, from the Secrets as they are
//! then: a container reads its environment when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// How often Pods are looked for (a real kubelet starts a container in
/// about this time on an idle node).
const POLL: Duration = Duration::from_millis(100);

/// Runs until dropped.
pub struct Kubelet {
    bad: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    held: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// Plays the kubelet for every Pod in `namespaces`, as `client` (an admin).
    pub fn start(client: kube::Client, namespaces: Vec<String>) -> Self {
        let bad = Arc::new(Mutex::new(BTreeSet::new()));
        let held = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(client, namespaces, bad.clone(), held.clone()));
        Self { bad, held, task }
    }

    /// While held, new Pods are left Pending (a slow node): a rollout stays
    /// in flight until [`Kubelet::release`].
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// A Pod that starts while a Secret it reads holds `value` never turns Ready.
    pub fn mark_bad(&self, value: &[u8]) {
        if let Ok(mut bad) = self.bad.lock() {
            bad.insert(value.to_vec());
        }
    }
}

async fn run(
    client: kube::Client,
    namespaces: Vec<String>,
    bad: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    held: Arc<AtomicBool>,
) {
    loop {
        for namespace in namespaces.iter().filter(|_| !held.load(Ordering::SeqCst)) {
            // A failed round (the API server frozen by a fault test) is
            // simply tried again.
            let _ = start_new_pods(&client, namespace, &bad).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn start_new_pods(
    client: &kube::Client,
    namespace: &str,
    bad: &Mutex<BTreeSet<Vec<u8>>>,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for pod in pods.list(&ListParams::default()).await? {
        let judged = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready"));
        if judged || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let ready = starts_healthy(&pod, &secrets, bad).await?;
        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"status": {
            "phase": "Running",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                {"type": "Ready", "status": status, "lastTransitionTime": now},
            ],
        }});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// False if a Secret the Pod reads is missing or holds a bad value.
async fn starts_healthy(
    pod: &Pod,
    secrets: &Api<Secret>,
    bad: &Mutex<BTreeSet<Vec<u8>>>,
) -> Result<bool, kube::Error> {
    let bad = bad.lock().map(|b| b.clone()).unwrap_or_default();
    for (name, keys) in secrets_read(pod) {
        let Some(secret) = secrets.get_opt(&name).await? else {
            return Ok(false);
        };
        let data = secret.data.unwrap_or_default();
        let read = data
            .iter()
            .filter(|(key, _)| keys.as_ref().is_none_or(|k| k.contains(*key)));
        if read.into_iter().any(|(_, value)| bad.contains(&value.0)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Secret name -> the keys read (None: every key).
fn secrets_read(pod: &Pod) -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut read: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let Some(spec) = &pod.spec else {
        return read;
    };
    let mut all = |name: &str| {
        read.insert(name.to_owned(), None);
    };
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for from in container.env_from.iter().flatten() {
            if let Some(secret) = &from.secret_ref {
                all(&secret.name);
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
        {
            all(name);
        }
    }
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for env in container.env.iter().flatten() {
            let key_ref = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            if let Some(key_ref) = key_ref
                && let Some(keys) = read
                    .entry(key_ref.name.clone())
                    .or_insert_with(|| Some(BTreeSet::new()))
            {
                keys.insert(key_ref.key.clone());
            }
        }
    }
    read
}
