//! Rollback pins: lifting them (`unpin`, a removed request) and reading
//! them from metadata alone. The request follower reads them whenever the
//! requests change; a list without data stays cheap with thousands of
//! managed Secrets.

use std::collections::{BTreeMap, HashSet};

use kube::api::ListParams;

use super::apply::written_version;
use super::{Cluster, ClusterError, OwnWrite, api_error};
use crate::labels::{
    HELD_OUT_ANNOTATION, MANAGED_SELECTOR, PINNED_ANNOTATION, PINNED_BY_ANNOTATION,
    PINNED_BY_REQUEST_ANNOTATION,
};
use crate::manifest::SecretRef;

/// The pinned Secrets, as one list of their metadata said.
pub struct Pins(Vec<LivePin>);

impl Pins {
    /// Pinned Secret -> the request (`path@commit`) that pinned it, or
    /// None for a pin set by hand.
    pub fn by_secret(&self) -> BTreeMap<SecretRef, Option<String>> {
        self.0
            .iter()
            .map(|pin| (pin.secret.clone(), pin.request.clone()))
            .collect()
    }
}

/// A pinned Secret, as its metadata says.
struct LivePin {
    secret: SecretRef,
    /// The rollback request (`path@commit`) that set it; None: set by hand.
    request: Option<String>,
    resource_version: Option<String>,
}

impl Cluster {
    /// Removes the pins `credsync rollback` set: from `only`, or from every
    /// such Secret when `only` is empty. A pin a reviewed request set is
    /// its file's to lift and stays. Returns the Secrets unpinned.
    pub async fn unpin(&self, only: &[SecretRef]) -> Result<Vec<SecretRef>, ClusterError> {
        let mut unpinned = Vec::new();
        for pin in self.pins().await?.0 {
            if pin.request.is_some() || (!only.is_empty() && !only.contains(&pin.secret)) {
                continue;
            }
            self.remove_pin(&pin).await?;
            unpinned.push(pin.secret);
        }
        Ok(unpinned)
    }

    /// Removes the pins (as `pins` read them) of requests no longer in
    /// `active` (keys `path@commit`): the request was removed, so the
    /// Secret goes back to the table. Pins set by `credsync rollback` are
    /// left alone. A pin changed since it was read fails its
    /// resourceVersion guard rather than being lifted blind.
    pub async fn unpin_released(
        &self,
        pins: Pins,
        active: &HashSet<String>,
    ) -> Result<Vec<(SecretRef, String)>, ClusterError> {
        let mut released = Vec::new();
        for pin in pins.0 {
            let Some(request) = pin.request.clone() else {
                continue;
            };
            if active.contains(&request) {
                continue;
            }
            self.remove_pin(&pin).await?;
            released.push((pin.secret, request));
        }
        Ok(released)
    }

    /// Takes the pin (and the request that set it) off one Secret, guarded
    /// by the resourceVersion it was read at; the drift watch knows the
    /// write for credsync's own.
    async fn remove_pin(&self, pin: &LivePin) -> Result<(), ClusterError> {
        let secret = &pin.secret;
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": pin.resource_version,
                "annotations": {
                    PINNED_ANNOTATION: null,
                    PINNED_BY_REQUEST_ANNOTATION: null,
                    PINNED_BY_ANNOTATION: null,
                    HELD_OUT_ANNOTATION: null,
                },
            }
        });
        self.count("patch");
        self.own_writes.note(secret, Some(OwnWrite::InFlight));
        let result = self
            .secrets(&secret.namespace)
            .patch(
                &secret.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
        match result {
            Ok(written) => {
                self.own_writes.note(secret, Some(written_version(written)));
                Ok(())
            }
            Err(e) => {
                self.own_writes.note(secret, None);
                Err(api_error(&format!("unpinning Secret {secret}"), e))
            }
        }
    }

    /// Every pinned Secret (one paged list of metadata).
    pub async fn pins(&self) -> Result<Pins, ClusterError> {
        let mut pins = Vec::new();
        let managed = ListParams::default().labels(MANAGED_SELECTOR);
        self.each_secret_metadata("listing managed Secrets", managed, |meta| {
            let annotations = meta.annotations.unwrap_or_default();
            if !annotations.contains_key(PINNED_ANNOTATION) {
                return;
            }
            if let (Some(namespace), Some(name)) = (meta.namespace, meta.name) {
                pins.push(LivePin {
                    secret: SecretRef::new(namespace, name),
                    request: annotations.get(PINNED_BY_REQUEST_ANNOTATION).cloned(),
                    resource_version: meta.resource_version,
                });
            }
        })
        .await?;
        Ok(Pins(pins))
    }
}
