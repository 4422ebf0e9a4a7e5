//! Rollback pins: lifting them (`unpin`, a removed request), and the pins
//! reviewed rollback requests set, read from metadata alone: the request
//! follower looks at them whenever the requests change, and a list without
//! data stays cheap with thousands of managed Secrets.

use std::collections::{BTreeMap, HashSet};

use kube::api::ListParams;

use super::{Cluster, ClusterError, api_error};
use crate::labels::{MANAGED_SELECTOR, PINNED_ANNOTATION, PINNED_BY_REQUEST_ANNOTATION};
use crate::manifest::{Manifest, SecretRef};

/// A Secret a request pinned, as its metadata says.
struct RequestPin {
    secret: SecretRef,
    request: String,
    resource_version: Option<String>,
}

impl Cluster {
    /// Removes rollback pins: from `only`, or from every pinned Secret when
    /// `only` is empty. Returns the Secrets unpinned.
    pub async fn unpin(&self, only: &[SecretRef]) -> Result<Vec<SecretRef>, ClusterError> {
        let managed = self.live_state(&Manifest::default()).await?;
        let mut unpinned = Vec::new();
        for live in managed.secrets.values().filter(|l| l.pinned.is_some()) {
            if !only.is_empty() && !only.contains(&live.secret) {
                continue;
            }
            self.remove_pin(&live.secret, live.resource_version.as_deref())
                .await?;
            unpinned.push(live.secret.clone());
        }
        Ok(unpinned)
    }

    /// Takes the pin (and the request that set it) off one Secret, guarded
    /// by the resourceVersion it was read at.
    async fn remove_pin(
        &self,
        secret: &SecretRef,
        resource_version: Option<&str>,
    ) -> Result<(), ClusterError> {
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { PINNED_ANNOTATION: null, PINNED_BY_REQUEST_ANNOTATION: null },
            }
        });
        self.count("patch");
        self.secrets(&secret.namespace)
            .patch(
                &secret.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|e| api_error(&format!("unpinning Secret {secret}"), e))?;
        Ok(())
    }

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
            self.remove_pin(&pin.secret, pin.resource_version.as_deref())
                .await?;
            released.push((pin.secret, pin.request));
        }
        Ok(released)
    }

    async fn list_request_pins(&self) -> Result<Vec<RequestPin>, ClusterError> {
        let mut pins = Vec::new();
        let managed = ListParams::default().labels(MANAGED_SELECTOR);
        self.each_secret_metadata("listing managed Secrets", managed, |meta| {
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
        })
        .await?;
        Ok(pins)
    }
}
