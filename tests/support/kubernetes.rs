//! The Kubernetes side of the stand-ins: clients as credsync and as the
//! admin, Secrets read and written directly, the audit log's record of what
//! credsync sent, and the fault proxy in front of the API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use control_plane::{AuditEvent, ControlPlane, FaultProxy};
use credsync::cluster::Cluster;
use credsync::cluster::apply::ApplyOptions;
use credsync::credstash::{CredstashSource, SourceConfig};
use credsync::manifest::{DEFAULT_NAMESPACE_EXCLUDE, NamespaceFilter};
use credsync::metrics::Metrics;
use credsync::reconcile::Reconciler;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;

use super::{CREDSYNC_USER, REGION, StandIns, eventually};

impl StandIns {
    /// A client as credsync (through the fault proxy once it runs): for
    /// code under test run in this process.
    pub async fn kube(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.active_kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A client as the test itself (another user than credsync, straight to
    /// the server): to read and arrange what a test checks.
    pub async fn admin(&self) -> kube::Client {
        self.admin.clone()
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// A reconciler in this process, and the metrics it counts calls in.
    pub async fn reconciler(&self) -> (Reconciler, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let source = CredstashSource::from_sdk_config(
            &self.sdk_config(REGION).await,
            SourceConfig {
                table: self.table.clone(),
                region: Some(REGION.to_owned()),
                context: BTreeMap::new(),
                kms_concurrency: 32,
                scan_segments: 4,
            },
            metrics.clone(),
        );
        let cluster = Cluster::from_client(self.kube().await, metrics.clone());
        let filter = NamespaceFilter::parse(DEFAULT_NAMESPACE_EXCLUDE, None);
        let reconciler = Reconciler::new(
            Arc::new(source),
            cluster,
            filter,
            ApplyOptions::default(),
            metrics.clone(),
        );
        (reconciler, metrics)
    }

    /// Waits (at most `within`) until Secret `namespace/name` holds `want`
    /// under `key`: the one wait for a value to arrive.
    pub async fn eventually_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        want: impl AsRef<[u8]>,
        within: Duration,
    ) -> bool {
        let want = want.as_ref();
        eventually(within, || async {
            self.secret_data(namespace, name)
                .await
                .is_some_and(|d| d.get(key).is_some_and(|v| v.as_slice() == want))
        })
        .await
    }

    /// The Secret's data as bytes, or None if it does not exist.
    pub async fn secret_data(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secret(namespace, name).await.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    }

    pub async fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.admin().await, namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Creates a Secret by hand, as another tool would.
    pub async fn create_secret(
        &self,
        namespace: &str,
        name: &str,
        type_: &str,
        data: &[(&str, &str)],
    ) {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "type": type_,
            "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.admin().await, namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    pub async fn patch_secret(&self, namespace: &str, name: &str, patch: Value) {
        Api::<Secret>::namespaced(self.admin().await, namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// From now on, [`StandIns::credsync_requests`] reports only later requests.
    pub fn mark_requests(&self) {
        *self.mark.lock().unwrap() = self.plane.audit().mark();
    }

    /// Every request credsync made since the last mark, as the API server's
    /// audit log recorded it.
    pub fn credsync_requests(&self) -> Vec<AuditEvent> {
        let mark = *self.mark.lock().unwrap();
        self.plane
            .audit()
            .since(mark)
            .into_iter()
            .filter(|e| e.user.username == CREDSYNC_USER)
            .collect()
    }

    /// Secret writes (create/update/patch/delete, not dry runs) credsync
    /// sent since the last mark, whatever the server answered.
    pub fn secret_writes(&self) -> Vec<AuditEvent> {
        self.credsync_requests()
            .into_iter()
            .filter(|e| e.resource() == "secrets" && e.is_write() && !e.dry_run())
            .collect()
    }

    /// The fault-injecting proxy in front of the API server, started on
    /// first use. Every credsync started after this call talks through it.
    pub async fn faults(&self) -> Arc<FaultProxy> {
        if let Some(proxy) = self.proxy.lock().unwrap().as_ref() {
            return proxy.clone();
        }
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let proxy = Arc::new(FaultProxy::start(config).unwrap());
        std::fs::write(
            self.dir.path().join("fault-proxy.kubeconfig"),
            proxy.kubeconfig_yaml(),
        )
        .unwrap();
        *self.proxy.lock().unwrap() = Some(proxy.clone());
        proxy
    }
}
