//! Targeted reconciles: only the Secrets some table names map to, from a
//! Query of each name (no Scan), against the index of the last full read,
//! and the Secrets some Secrets Manager secrets map to, from a
//! DescribeSecret of each (no listing).

use std::collections::BTreeSet;

use futures::StreamExt;

use super::{
    Planned, QueryResult, ReconcileError, Reconciler, ScopeNames, SyncReport, log_findings,
    poisoned,
};
use crate::cluster::apply::EarlyWrites;
use crate::credstash::RawItem;
use crate::manifest::{SecretRef, Selection};
use crate::plan::{self, LiveState};

/// What changed, as events and callers name it: what a targeted reconcile
/// reads again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Credstash names.
    pub names: BTreeSet<String>,
    /// Secrets Manager secrets, by name or ARN.
    pub secrets: BTreeSet<String>,
}

impl Changed {
    pub fn names(names: BTreeSet<String>) -> Self {
        Self {
            names,
            secrets: BTreeSet::new(),
        }
    }

    pub fn merge(&mut self, other: Changed) {
        self.names.extend(other.names);
        self.secrets.extend(other.secrets);
    }
}

impl Reconciler {
    /// Reconciles only the Secrets that `changed` maps to, from a Query of
    /// each name's latest version and a DescribeSecret of each secret: no
    /// Scan, no listing, and KMS or GetSecretValue only for what changed.
    /// Falls back to a full sync before the first full reconcile, or when a
    /// secret cannot be read alone.
    pub async fn sync_changed(
        &self,
        changed: &Changed,
        dry_run: bool,
    ) -> Result<SyncReport, ReconcileError> {
        let Some((planned, scope)) = self.plan_changed(changed).await? else {
            return self.sync(dry_run).await;
        };
        self.commit_and_apply(planned, dry_run, Some(scope)).await
    }

    async fn plan_changed(
        &self,
        changed: &Changed,
    ) -> Result<Option<(Planned, BTreeSet<SecretRef>)>, ReconcileError> {
        let names = &changed.names;
        let Some(namespaces) = self
            .index
            .lock()
            .ok()
            .and_then(|i| i.as_ref().map(|i| i.namespaces.clone()))
        else {
            return Ok(None);
        };
        let queried: Vec<(String, QueryResult)> = futures::stream::iter(
            names
                .iter()
                .map(|name| async move { (name.clone(), self.source.query_latest(name).await) })
                .collect::<Vec<_>>(),
        )
        .buffer_unordered(8)
        .collect()
        .await;
        let mut malformed = Vec::new();
        let mut affected: BTreeSet<SecretRef> = names
            .iter()
            .filter_map(|n| self.mapping.map(n).ok())
            .map(|t| t.secret)
            .collect();
        if let Some(sm) = &self.secrets_manager {
            for id in &changed.secrets {
                let Some(secrets) = sm.refresh(id).await else {
                    return Ok(None);
                };
                affected.extend(secrets);
            }
        }
        let items: Vec<RawItem> = {
            let mut guard = self.index.lock().map_err(|_| poisoned())?;
            let Some(index) = guard.as_mut() else {
                return Ok(None);
            };
            for (name, found) in queried {
                match found? {
                    Some(Ok(item)) => index.insert(name, item, self.mapping),
                    Some(Err(failure)) => malformed.push(failure),
                    None => index.remove(&name, self.mapping),
                }
            }
            index.items_of(&affected)
        };
        let mut selection =
            Selection::of(items, malformed, &self.filter, &namespaces, self.mapping);
        // Secrets Manager's keys of these Secrets as last read: a targeted
        // reconcile must not take them for deleted.
        if let Some(sm) = &self.secrets_manager {
            selection.add_source(sm.last_read_for(&affected), Vec::new(), Vec::new());
        }
        let to_decrypt = std::mem::take(&mut selection.to_decrypt);
        let decrypted = self.source.decrypt(to_decrypt).await;
        let manifest = selection.assemble(decrypted.credentials, decrypted.failures);
        let mut live = LiveState::default();
        for secret in &affected {
            if let Some(found) = self.cluster.get(secret).await? {
                live.secrets.insert(secret.clone(), found);
            }
        }
        let mut plan = plan::plan(&manifest, &live, self.apply.diff);
        let namespaces = Some(super::rollouts::namespaces_of(affected.iter()));
        self.plan_restarts(&mut plan, &manifest, &live, namespaces)
            .await;
        log_findings(&plan);
        Ok(Some((
            Planned {
                manifest,
                live,
                plan,
                early: EarlyWrites::default(),
            },
            affected,
        )))
    }

    /// The table names that map into `namespace` (or into `secret`), from the
    /// last full read; None before it, or when no name maps there (then only
    /// a full reconcile can tell what to remove).
    pub fn names_in(&self, namespace: &str, secret: Option<&SecretRef>) -> ScopeNames {
        let Ok(guard) = self.index.lock() else {
            return ScopeNames::NotIndexed;
        };
        let Some(index) = guard.as_ref() else {
            return ScopeNames::NotIndexed;
        };
        let names = index.names_in(namespace, secret);
        if names.is_empty() {
            ScopeNames::Nothing
        } else {
            ScopeNames::Names(names)
        }
    }
}
