//! The manifest built as decrypted items arrive, one at a time: each
//! Secret is known to be whole the moment its last item is in, so a
//! reconcile can write it while other Secrets' items are still with KMS.

use std::collections::{BTreeMap, HashMap};

use super::{Conflict, DesiredKey, DesiredSecret, Hold, KeyMapping, Manifest, SecretRef, Target};
use crate::secret::KeyMap;
use crate::source::{Credential, ItemFailure, ItemId};

/// A [`Manifest`] in the making: what needs no decryption is in from the
/// start; each decrypted (or failed) item goes in with [`Assembly::add`].
#[derive(Debug)]
pub struct Assembly {
    manifest: Manifest,
    targets: BTreeMap<ItemId, Target>,
    mapping: KeyMapping,
    /// Items each Secret still waits for; a Secret absent here is whole.
    pending: HashMap<SecretRef, usize>,
}

impl Assembly {
    /// Every item `targets` maps is awaited; `held` keys (failures that
    /// name no item of their own) and conflicted keys keep their live values.
    pub(super) fn new(
        mut manifest: Manifest,
        targets: BTreeMap<ItemId, Target>,
        mapping: KeyMapping,
        held: Vec<Target>,
        conflicts: Vec<Conflict>,
    ) -> Self {
        let mut pending: HashMap<SecretRef, usize> = HashMap::new();
        for target in targets.values() {
            *pending.entry(target.secret.clone()).or_default() += 1;
        }
        for target in held {
            let secret = manifest.secrets.entry(target.secret).or_default();
            secret.held.insert(target.key, Hold::Failed);
        }
        for conflict in &conflicts {
            let secret = manifest.secrets.entry(conflict.secret.clone()).or_default();
            secret.held.insert(conflict.key.clone(), Hold::Conflict);
        }
        manifest.conflicts = conflicts;
        Self {
            manifest,
            targets,
            mapping,
            pending,
        }
    }

    /// Secrets that are whole before anything is decrypted (every key from
    /// another source, held, or in conflict).
    pub fn whole(&self) -> Vec<SecretRef> {
        self.manifest
            .secrets
            .keys()
            .filter(|secret| !self.pending.contains_key(*secret))
            .cloned()
            .collect()
    }

    /// What `secret` holds so far: all it will hold once it is whole.
    pub fn secret(&self, secret: &SecretRef) -> Option<&DesiredSecret> {
        self.manifest.secrets.get(secret)
    }

    /// Puts one decrypted or failed item in (a failed one holds its key, so
    /// the live value stays); returns its Secret if that made it whole.
    ///
    /// A failure of an item that was never selected (malformed) holds a key
    /// without counting towards any Secret: such failures must all be in
    /// before decryption starts ([`Selection::into_assembly`] puts them in),
    /// or a Secret already reported whole could still change.
    ///
    /// [`Selection::into_assembly`]: super::Selection::into_assembly
    pub fn add(&mut self, item: Result<Credential, ItemFailure>) -> Option<SecretRef> {
        // Each item arrives once: its target leaves the map with it (no
        // copy per item, and the map shrinks as decryption goes on).
        let target = match item {
            Ok(credential) => {
                let target = self.targets.remove(&credential.id)?;
                // Room for every item the Secret awaits, no more: a Vec
                // grown by pushes holds four slots for two keys.
                let awaited = self.pending.get(&target.secret).copied().unwrap_or(1);
                let keys = &mut self
                    .manifest
                    .secrets
                    .entry(target.secret.clone())
                    .or_default()
                    .keys;
                if keys.is_empty() {
                    *keys = KeyMap::with_capacity(awaited);
                }
                keys.insert(
                    target.key,
                    DesiredKey {
                        value: credential.value,
                        source: credential.id,
                    },
                );
                target.secret
            }
            Err(failure) => {
                let selected = self.targets.remove(&failure.id);
                let counted = selected.as_ref().map(|t| t.secret.clone());
                // A malformed item was never selected; hold its key all the same.
                let target = selected.or_else(|| self.mapping.map(&failure.id.name).ok());
                if let Some(target) = target {
                    let secret = self.manifest.secrets.entry(target.secret).or_default();
                    secret.held.insert(target.key, Hold::Failed);
                }
                self.manifest.failures.push(failure);
                counted?
            }
        };
        self.arrived(target)
    }

    fn arrived(&mut self, secret: SecretRef) -> Option<SecretRef> {
        let left = self.pending.get_mut(&secret)?;
        *left -= 1;
        if *left > 0 {
            return None;
        }
        self.pending.remove(&secret);
        Some(secret)
    }

    /// The manifest, in the order a plan reads it.
    pub fn finish(mut self) -> Manifest {
        self.manifest
            .skipped
            .sort_by(|a, b| a.subject.cmp(&b.subject));
        self.manifest.failures.sort_by(|a, b| a.id.cmp(&b.id));
        self.manifest
    }
}
