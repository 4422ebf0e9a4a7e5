//! One secret read again after an event named it: DescribeSecret, and
//! GetSecretValue only when its current version is not the one held. Two
//! calls whatever the number of secrets, where a full read lists them all.
//!
//! The id comes from a queue message, which anyone who may send to the
//! queue can write: it only says which secret to look at. What is read then
//! passes the full read's rules (prefix, tags, not marked for deletion) and
//! must be in the account and region ListSecrets lists, so a message cannot
//! make credsync read a secret it would not list.

use std::collections::BTreeSet;

use super::names::shape;
use super::{ARN_PREFIX, Found, Held, SecretsManagerSource, account_prefix};
use crate::aws_error::{AwsError, FailureClass};
use crate::manifest::SecretRef;

impl SecretsManagerSource {
    /// Reads the secret `id` (a name or an ARN, as the event gave it) again
    /// and updates what is held. Some: the Secrets its keys mapped to before
    /// and map to now, all a targeted reconcile needs to cover. None: one
    /// secret cannot tell (a failed call, a secret gone for good that is
    /// named by name, nothing listed yet to know the account by); a full
    /// read then covers it.
    pub async fn refresh(&self, id: &str) -> Option<BTreeSet<SecretRef>> {
        let own = self.own_arns.lock().ok()?.clone()?;
        if id.starts_with(ARN_PREFIX) && !id.starts_with(&own) {
            tracing::warn!(
                "an event names a Secrets Manager secret outside this account and region; ignored"
            );
            return Some(BTreeSet::new());
        }
        self.count("DescribeSecret");
        let described = match self.client.describe_secret().secret_id(id).send().await {
            Ok(out) => out,
            Err(err) => {
                let aws = AwsError::from_sdk(&err);
                if aws.class == FailureClass::NotFound && id.starts_with(ARN_PREFIX) {
                    // Deleted without recovery: its keys go.
                    return Some(self.forget(id));
                }
                tracing::warn!(error = %aws.line("DescribeSecret failed"), "cannot read a changed Secrets Manager secret alone; a full read covers it");
                return None;
            }
        };
        let (Some(arn), Some(name)) = (described.arn, described.name) else {
            return None;
        };
        if account_prefix(&arn) != Some(own.as_str()) {
            tracing::warn!(
                "an event names a Secrets Manager secret outside this account and region; ignored"
            );
            return Some(BTreeSet::new());
        }
        let found = Found {
            arn,
            name,
            deleted: described.deleted_date.is_some(),
            tags: described.tags.unwrap_or_default(),
            stages: described.version_ids_to_stages.unwrap_or_default(),
        };
        let arn = found.arn.clone();
        let mut affected = self.forget_unless_current(&arn, &found);
        let Some(listed) = self.admit(found) else {
            return Some(affected);
        };
        let Ok(shape) = shape(self.config.names, &self.config.prefix, &listed.name) else {
            return Some(affected);
        };
        let held_current = self.held.lock().ok()?.contains_key(&arn);
        if !held_current {
            let got = match self.get_value(&arn, None).await {
                Ok(Some(got)) if got.arn == arn => got,
                Ok(_) => return Some(affected),
                Err(aws) => {
                    tracing::warn!(error = %aws.line("GetSecretValue failed"), "cannot read a changed Secrets Manager secret alone; a full read covers it");
                    return None;
                }
            };
            let entry = Held::new(got.version, &shape, got.stored);
            self.held.lock().ok()?.insert(arn.clone(), entry);
        }
        let mut held = self.held.lock().ok()?;
        let entry = held.get_mut(&arn)?;
        entry.shape = Some(shape.clone());
        affected.extend(entry.secrets());
        Some(affected)
    }

    /// The Secrets `arn`'s held keys map to; forgets them unless `found` is
    /// still read at the version held (then they stay, and so do their
    /// Secrets in the answer: a reconcile of an unchanged secret writes nothing).
    fn forget_unless_current(&self, arn: &str, found: &Found) -> BTreeSet<SecretRef> {
        let Ok(mut held) = self.held.lock() else {
            return BTreeSet::new();
        };
        let Some(entry) = held.get(arn) else {
            return BTreeSet::new();
        };
        let secrets = entry.secrets();
        let still_read = !found.deleted
            && found
                .stages
                .get(&entry.version)
                .is_some_and(|stages| stages.iter().any(|s| s == "AWSCURRENT"));
        if !still_read {
            held.remove(arn);
        }
        secrets
    }

    /// Forgets a secret that no longer exists; the Secrets its keys mapped to.
    fn forget(&self, arn: &str) -> BTreeSet<SecretRef> {
        let Ok(mut held) = self.held.lock() else {
            return BTreeSet::new();
        };
        held.remove(arn)
            .map(|entry| entry.secrets())
            .unwrap_or_default()
    }
}
