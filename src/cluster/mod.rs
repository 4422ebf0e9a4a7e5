//! The cluster side: live Secrets, the diff against the manifest, and apply.
//!
//! Reads are kept to what the diff needs: one labelled list of the Secrets
//! credsync manages (across namespaces), one list of namespaces, and a get
//! for each desired Secret that is not managed yet (an adoption candidate or
//! a Secret to create). In steady state that is two list calls.

pub mod apply;
pub mod events;
pub mod lease;
mod pins;
pub mod review;
pub mod rollout;
mod rollout_status;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};

use crate::labels::{
    CREATED_ANNOTATION, FINGERPRINT_ANNOTATION, HELD_OUT_ANNOTATION, KUBESTASH_V2_ANNOTATION,
    KUBESTASH_V2_VALUE, MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGED_KEYS_ANNOTATION,
    MANAGED_SELECTOR, PINNED_ANNOTATION, PINNED_BY_REQUEST_ANNOTATION,
};
use crate::manifest::SecretRef;
use crate::metrics::Metrics;
use crate::secret::{KeySet, SecretValue};

use crate::plan::{LiveSecret, LiveState};

/// Reads of adoption candidates in flight at once.
const READ_CONCURRENCY: usize = 16;
/// Past this many Secrets to look up, one list of names beats a GET each.
const LIST_INSTEAD_OF_GETS: usize = 64;
pub use crate::secret::MAX_SECRET_BYTES;

impl LiveSecret {
    /// The Secret's name and what the diff needs of it; None without a name.
    fn from_k8s(secret: Secret) -> Option<(SecretRef, Self)> {
        let meta = secret.metadata;
        let namespace = meta.namespace?;
        let name = meta.name?;
        let labels = meta.labels.unwrap_or_default();
        let annotations = meta.annotations.unwrap_or_default();
        let managed = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
        let owned_keys = annotations
            .get(MANAGED_KEYS_ANNOTATION)
            .map(|keys| {
                // Sized to fit: a set grown by inserts holds four for two.
                let keys = || keys.split(',').filter(|k| !k.is_empty());
                let mut owned = KeySet::with_capacity(keys().count());
                for key in keys() {
                    owned.insert(key.to_owned(), ());
                }
                owned
            })
            .unwrap_or_default();
        let live = Self {
            type_: secret.type_.unwrap_or_else(|| "Opaque".to_owned()),
            data: secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, SecretValue::new(v.0)))
                .collect(),
            managed,
            owned_keys: if managed { owned_keys } else { KeySet::new() },
            created_by_credsync: managed && annotations.contains_key(CREATED_ANNOTATION),
            pinned: annotations
                .get(PINNED_ANNOTATION)
                .filter(|_| managed)
                .cloned(),
            pinned_by_request: annotations
                .get(PINNED_BY_REQUEST_ANNOTATION)
                .filter(|_| managed)
                .cloned(),
            resource_version: meta.resource_version,
            kubestash_v2: annotations.get(KUBESTASH_V2_ANNOTATION).map(String::as_str)
                == Some(KUBESTASH_V2_VALUE),
            fingerprint: annotations
                .get(FINGERPRINT_ANNOTATION)
                .filter(|_| managed)
                .cloned(),
            held_out: annotations
                .get(HELD_OUT_ANNOTATION)
                .filter(|_| managed && annotations.contains_key(PINNED_ANNOTATION))
                .cloned(),
        };
        Some((SecretRef::new(namespace, name), live))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot configure the Kubernetes client (set KUBECONFIG or run in a pod with a service account)"
    )]
    Config(#[source] kube::Error),
    /// The API server's answer is said in the message, since the client's
    /// own error prints a debug dump ([`crate::errors::chain`] ends there).
    #[error("Kubernetes API call failed while {doing}: {cause}")]
    Api {
        doing: String,
        /// The API server's words.
        cause: String,
        /// The error itself, for callers that must tell a 409 from a 404.
        #[source]
        error: kube::Error,
    },
}

/// The Kubernetes client plus call counting.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    /// For watches; None: `client` serves them too.
    watch_client: Option<kube::Client>,
    metrics: Arc<Metrics>,
    field_manager: String,
    /// With `--namespace-include`: list and watch Secrets in these namespaces
    /// only (one request each), so Roles in them are all the RBAC it needs.
    only_namespaces: Option<Vec<String>>,
    /// `reportingInstance` of the Events credsync leaves on the Secrets it
    /// writes: the pod name in a cluster, so two replicas tell apart.
    reporting_instance: String,
    /// Shared by every clone, so the drift watch sees the reconciler's writes.
    own_writes: Arc<OwnWrites>,
}

/// The last write credsync made to each Secret, kept while the drift watch
/// runs so it can tell its own writes from someone else's: without this,
/// every Secret credsync writes comes back as a watch event and costs a
/// second, targeted reconcile (1000 of them after a first sync of 1000).
#[derive(Default)]
pub struct OwnWrites {
    /// None until [`Cluster::track_own_writes`]: a one-shot sync keeps nothing.
    last: std::sync::Mutex<Option<std::collections::HashMap<SecretRef, OwnWrite>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnWrite {
    /// Sent, no answer yet: its watch event may arrive before the answer.
    InFlight,
    /// Created or patched: the resourceVersion the API server answered with.
    Version(String),
    Deleted,
}

/// Whose change a watch event shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    Credsync,
    /// credsync is writing this Secret right now: ask again shortly.
    Pending,
    Someone,
}

impl OwnWrites {
    /// Records a write (`None`: the write failed, forget it).
    fn note(&self, secret: &SecretRef, write: Option<OwnWrite>) {
        if let Ok(mut last) = self.last.lock()
            && let Some(last) = last.as_mut()
        {
            match write {
                Some(write) => last.insert(secret.clone(), write),
                None => last.remove(secret),
            };
        }
    }

    /// Who made the change a watch event shows (`resource_version` None: a
    /// deletion). Each of credsync's writes is recognized once.
    pub fn author(&self, secret: &SecretRef, resource_version: Option<&str>) -> Author {
        let Ok(mut last) = self.last.lock() else {
            return Author::Someone;
        };
        let Some(last) = last.as_mut() else {
            return Author::Someone;
        };
        let own = match (last.get(secret), resource_version) {
            (Some(OwnWrite::InFlight), _) => return Author::Pending,
            (Some(OwnWrite::Version(ours)), Some(seen)) => ours == seen,
            (Some(OwnWrite::Deleted), None) => true,
            _ => false,
        };
        if own {
            last.remove(secret);
            return Author::Credsync;
        }
        Author::Someone
    }
}

/// kube's default retry of 429, 503 and 504 waits up to 1000 s between 15
/// attempts: against an API server that keeps answering 429, one write of
/// a one-shot sync took six and a half minutes. A reconciler has its own
/// retry (the next reconcile, with backoff), so a few quick retries that
/// honour `Retry-After` are enough here.
fn client_with_bounded_retries(mut config: kube::Config) -> Result<kube::Client, ClusterError> {
    use kube::client::retry::RetryPolicy;
    config.default_retry = false;
    let policy = RetryPolicy::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
        4,
        true,
    )
    .map_err(|e| ClusterError::Config(kube::Error::Service(e.into())))?;
    // Retry needs a service it can clone; Buffer makes kube's boxed one so.
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ClusterError::Config)?
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(policy))
        .build())
}

impl Cluster {
    /// Connects from KUBECONFIG or the in-cluster service account. Requests
    /// get connect and read timeouts of `request_timeout`, so a frozen API
    /// server ends in an error; watches get their own client without a read
    /// timeout (kube's watcher has an idle timeout of its own, and a quiet
    /// watch is not a frozen one).
    pub async fn connect(
        request_timeout: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClusterError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| ClusterError::Config(kube::Error::InferConfig(e)))?;
        let mut requests = config.clone();
        requests.connect_timeout = Some(request_timeout);
        requests.read_timeout = Some(request_timeout);
        requests.write_timeout = Some(request_timeout);
        // Count the read timeout from the request, not from when a pooled
        // connection went idle.
        requests.reset_reader_on_write = true;
        let mut watches = config;
        watches.connect_timeout = Some(request_timeout);
        watches.write_timeout = Some(request_timeout);
        let client = client_with_bounded_retries(requests)?;
        let watch_client = client_with_bounded_retries(watches)?;
        Ok(Self::from_client(client, metrics).with_watch_client(watch_client))
    }

    /// A separate client for long-lived watches (see [`Cluster::connect`]).
    /// The replica named in the Events it records (`reportingInstance`).
    pub fn with_reporting_instance(mut self, instance: String) -> Self {
        self.reporting_instance = instance;
        self
    }

    pub fn with_watch_client(mut self, client: kube::Client) -> Self {
        self.watch_client = Some(client);
        self
    }

    pub fn from_client(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            reporting_instance: "credsync".to_owned(),
            own_writes: Arc::default(),
            client,
            watch_client: None,
            metrics,
            field_manager: "credsync".to_owned(),
            only_namespaces: None,
        }
    }

    /// Reads Secrets only in `namespaces` (None: across the cluster).
    pub fn with_namespaces(mut self, namespaces: Option<Vec<String>>) -> Self {
        self.only_namespaces = namespaces;
        self
    }

    /// One Secrets API per namespace credsync may read, or one cluster-wide.
    pub fn secret_apis(&self) -> Vec<Api<Secret>> {
        self.secret_apis_of(&self.client)
    }

    /// [`Cluster::secret_apis`] on the client meant for watches.
    pub fn watch_apis(&self) -> Vec<Api<Secret>> {
        self.secret_apis_of(self.watch_client.as_ref().unwrap_or(&self.client))
    }

    fn secret_apis_of(&self, client: &kube::Client) -> Vec<Api<Secret>> {
        match &self.only_namespaces {
            Some(namespaces) => namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
            None => {
                let api: Api<Secret> = Api::all(client.clone());
                vec![api]
            }
        }
    }

    /// Starts remembering credsync's own writes (for the drift watch).
    pub fn track_own_writes(&self) -> Arc<OwnWrites> {
        if let Ok(mut last) = self.own_writes.last.lock() {
            last.get_or_insert_with(Default::default);
        }
        self.own_writes.clone()
    }

    /// The Kubernetes client, for the watchers and the leader Lease.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn count(&self, verb: &str) {
        self.metrics
            .kubernetes_requests
            .with_label_values(&[verb])
            .inc();
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Names of the namespaces that exist (credsync never creates one).
    pub async fn namespaces(&self) -> Result<BTreeSet<String>, ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut names = BTreeSet::new();
        self.list_paged(
            "listing namespaces",
            ListParams::default(),
            |params| {
                let api = &api;
                async move { api.list_metadata(&params).await }
            },
            |ns| names.extend(ns.metadata.name),
        )
        .await?;
        Ok(names)
    }

    /// Whether `namespace` exists (a list by name: the same right as
    /// [`Cluster::namespaces`], no `get` needed).
    pub async fn namespace_exists(&self, namespace: &str) -> Result<bool, ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        self.count("list");
        let params = ListParams::default().fields(&format!("metadata.name={namespace}"));
        let found = api
            .list_metadata(&params)
            .await
            .map_err(|e| api_error(&format!("looking up namespace {namespace}"), e))?;
        Ok(!found.items.is_empty())
    }

    /// Hands every item of a list to `each`, page by page (500 per page,
    /// each page counted as a `list` call), so only one page is held at once.
    async fn list_paged<T: Clone, Page>(
        &self,
        doing: &str,
        params: ListParams,
        mut fetch: impl FnMut(ListParams) -> Page,
        mut each: impl FnMut(T),
    ) -> Result<(), ClusterError>
    where
        Page: Future<Output = Result<kube::core::ObjectList<T>, kube::Error>>,
    {
        let mut params = params.limit(500);
        loop {
            self.count("list");
            let page = fetch(params.clone())
                .await
                .map_err(|e| api_error(doing, e))?;
            page.items.into_iter().for_each(&mut each);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(()),
            }
        }
    }

    /// The metadata of every Secret credsync may read that `params`
    /// selects, page by page, without their data.
    pub(super) async fn each_secret_metadata(
        &self,
        doing: &str,
        params: ListParams,
        mut each: impl FnMut(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta),
    ) -> Result<(), ClusterError> {
        for api in self.secret_apis() {
            self.list_paged(
                doing,
                params.clone(),
                |params| {
                    let api = &api;
                    async move { api.list_metadata(&params).await }
                },
                |meta: kube::core::PartialObjectMeta<Secret>| each(meta.metadata),
            )
            .await?;
        }
        Ok(())
    }

    /// The names of every Secret credsync may read (metadata only, page by page).
    async fn existing_secrets(&self) -> Result<std::collections::HashSet<SecretRef>, ClusterError> {
        let mut names = std::collections::HashSet::new();
        self.each_secret_metadata("listing Secrets", ListParams::default(), |meta| {
            if let (Some(namespace), Some(name)) = (meta.namespace, meta.name) {
                names.insert(SecretRef::new(namespace, name));
            }
        })
        .await?;
        Ok(names)
    }

    /// Whether credsync can list the Secrets it manages (one small list
    /// per API it reads), which is what readiness from a snapshot needs.
    pub async fn can_list_secrets(&self) -> Result<(), ClusterError> {
        for api in self.secret_apis() {
            self.count("list");
            api.list_metadata(&ListParams::default().labels(MANAGED_SELECTOR).limit(1))
                .await
                .map_err(|e| api_error("listing managed Secrets", e))?;
        }
        Ok(())
    }

    /// The managed Secrets, plus every Secret the manifest names that is
    /// not managed yet (to create or adopt).
    pub async fn live_state(
        &self,
        desired: &BTreeSet<SecretRef>,
    ) -> Result<LiveState, ClusterError> {
        let mut state = LiveState::default();
        for api in self.secret_apis() {
            self.list_paged(
                "listing managed Secrets",
                ListParams::default().labels(MANAGED_SELECTOR),
                |params| {
                    let api = &api;
                    async move { api.list(&params).await }
                },
                |secret| {
                    if let Some((name, secret)) = LiveSecret::from_k8s(secret) {
                        state.secrets.insert(name, secret);
                    }
                },
            )
            .await?;
        }
        // Desired Secrets not managed yet: to create (404) or to adopt.
        // Bounded, so a first sync of thousands of Secrets does not flood the API.
        let mut unmanaged: Vec<SecretRef> = desired
            .iter()
            .filter(|secret| !state.secrets.contains_key(*secret))
            .cloned()
            .collect();
        // Many of them (a first sync): one paged list of names says which
        // exist at all, instead of a GET each (50,000 GETs took 21 s).
        if unmanaged.len() > LIST_INSTEAD_OF_GETS {
            let existing = self.existing_secrets().await?;
            unmanaged.retain(|secret| existing.contains(secret));
        }
        let fetched: Vec<(SecretRef, Result<Option<LiveSecret>, ClusterError>)> =
            futures::stream::iter(unmanaged)
                .map(|secret| async move {
                    let found = self.get(&secret).await;
                    (secret, found)
                })
                .buffer_unordered(READ_CONCURRENCY)
                .collect()
                .await;
        for (name, secret) in fetched {
            if let Some(secret) = secret? {
                state.secrets.insert(name, secret);
            }
        }
        Ok(state)
    }

    /// One Secret, or `None` if it does not exist.
    pub async fn get(&self, secret: &SecretRef) -> Result<Option<LiveSecret>, ClusterError> {
        self.count("get");
        let found = self
            .secrets(&secret.namespace)
            .get_opt(&secret.name)
            .await
            .map_err(|e| api_error(&format!("reading Secret {secret}"), e))?;
        Ok(found
            .and_then(LiveSecret::from_k8s)
            .map(|(_, secret)| secret))
    }
}

pub(super) fn api_error(doing: &str, err: kube::Error) -> ClusterError {
    ClusterError::Api {
        doing: doing.to_owned(),
        cause: describe_kube_error(&err),
        error: err,
    }
}

/// The API server's own words for a failed call (never a request body).
pub(crate) fn describe_kube_error(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> SecretRef {
        SecretRef::new("app", "svc")
    }

    #[test]
    fn without_tracking_every_change_is_someone_elses() {
        let own = OwnWrites::default();
        own.note(&svc(), Some(OwnWrite::Version("7".into())));
        assert_eq!(own.author(&svc(), Some("7")), Author::Someone);
    }

    #[test]
    fn a_write_is_recognized_once_by_its_resource_version() {
        let own = OwnWrites::default();
        *own.last.lock().unwrap() = Some(Default::default());
        own.note(&svc(), Some(OwnWrite::InFlight));
        assert_eq!(own.author(&svc(), Some("7")), Author::Pending);
        own.note(&svc(), Some(OwnWrite::Version("7".into())));
        // Someone else's later version, or the same event twice, is drift.
        assert_eq!(own.author(&svc(), Some("8")), Author::Someone);
        assert_eq!(own.author(&svc(), Some("7")), Author::Credsync);
        assert_eq!(own.author(&svc(), Some("7")), Author::Someone);
        // A deletion is ours only if we deleted.
        assert_eq!(own.author(&svc(), None), Author::Someone);
        own.note(&svc(), Some(OwnWrite::Deleted));
        assert_eq!(own.author(&svc(), Some("9")), Author::Someone);
        assert_eq!(own.author(&svc(), None), Author::Credsync);
        // A failed write leaves nothing to recognize.
        own.note(&svc(), Some(OwnWrite::InFlight));
        own.note(&svc(), None);
        assert_eq!(own.author(&svc(), Some("10")), Author::Someone);
    }
}
