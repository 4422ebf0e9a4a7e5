//! The pins reviewed rollback requests set, read from metadata alone: the
//! request follower looks at them whenever the requests change, and a
//! list without data stays cheap with thousands of managed Secrets.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;

use super::{Cluster, ClusterError, api_error};
use crate::labels::{MANAGED_SELECTOR, PINNED_ANNOTATION, PINNED_BY_REQUEST_ANNOTATION};
use crate::manifest::SecretRef;

/// A Secret a request pinned, as its metadata says.
struct RequestPin {
    secret: SecretRef,
    request: String,
    resource_version: Option<String>,
}

impl Cluster {
    /// The Secrets rollback requests pin: Secret -> request `path@commit`.
    pub async fn request_pins(&self) -> Result<BTreeMap<SecretRef, String>, ClusterError> {
        Ok(self
            .list_request_pins()
            .await?
            .into_iter()
            .map(|pin| (pin.secret, pin.request))
            .collect())
    }

    /// Removes the pins of requests no longer in `active` (keys
    /// `path@commit`): the request was removed, so the Secret goes back to
    /// the table. Pins set by `credsync rollback` are left alone.
    pub async fn unpin_released(
        &self,
        active: &HashSet<String>,
    ) -> Result<Vec<(SecretRef, String)>, ClusterError> {
        let mut released = Vec::new();
        for pin in self.list_request_pins().await? {
            if active.contains(&pin.request) {
                continue;
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": pin.resource_version,
                    "annotations": { PINNED_ANNOTATION: null, PINNED_BY_REQUEST_ANNOTATION: null },
                }
            });
            self.count("patch");
            self.secrets(&pin.secret.namespace)
                .patch(
                    &pin.secret.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .map_err(|e| api_error(&format!("unpinning Secret {}", pin.secret), e))?;
            released.push((pin.secret, pin.request));
        }
        Ok(released)
    }

    async fn list_request_pins(&self) -> Result<Vec<RequestPin>, ClusterError> {
        let mut pins = Vec::new();
        for api in self.secret_apis() {
            self.list_paged(
                "listing managed Secrets",
                ListParams::default().labels(MANAGED_SELECTOR),
                |params| {
                    let api = &api;
                    async move { api.list_metadata(&params).await }
                },
                |meta: kube::core::PartialObjectMeta<Secret>| {
                    let meta = meta.metadata;
                    let request = meta
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(PINNED_BY_REQUEST_ANNOTATION))
                        .cloned();
                    if let (Some(namespace), Some(name), Some(request)) =
                        (meta.namespace, meta.name, request)
                    {
                        pins.push(RequestPin {
                            secret: SecretRef::new(namespace, name),
                            request,
                            resource_version: meta.resource_version,
                        });
                    }
                },
            )
            .await?;
        }
        Ok(pins)
    }
}
