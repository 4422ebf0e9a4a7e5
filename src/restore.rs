//! What a rollback may write: snapshot content checked against the sources.
//!
//! A snapshot file is sealed for public age recipients, so anyone who can
//! push to the snapshot repository can write one that opens cleanly and
//! names real item versions. Before a rollback writes anything, every key it
//! restores is checked:
//! - the item it names maps to this very Secret and key today (a file cannot
//!   pull another namespace's item into a Secret its author can read);
//! - the source still holds that version (Credstash keeps every version,
//!   Secrets Manager keeps versions by VersionId) and its value is the
//!   file's; the source's value was decrypted and authenticated (KMS, HMAC)
//!   on the way;
//! - a version the source no longer holds is restored only from a commit
//!   credsync signed, whose files are its own writes.
//!
//! Only [`Verified`] content reaches a rollback's writes.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use futures::future::BoxFuture;
use subtle::ConstantTimeEq;

use crate::credstash::{CredstashSource, SourceError};
use crate::manifest::{DesiredKey, DesiredSecret, KeyMapping, SecretRef};
use crate::secret::SecretValue;
use crate::secretsmanager::{SecretsManagerSource, SmError};
use crate::source::ItemId;

/// Checks in flight at once (each a table read and a KMS call, or one
/// Secrets Manager call).
const CONCURRENCY: usize = 16;

/// Where restored values are checked, and how names map.
pub struct Sources<'a> {
    /// The Credstash table, when it is a source.
    pub table: Option<&'a CredstashSource>,
    pub secrets_manager: Option<&'a SecretsManagerSource>,
    pub mapping: KeyMapping,
    /// The cluster's directory in the repository, for messages.
    pub cluster: &'a str,
}

impl Sources<'_> {
    fn path(&self, secret: &SecretRef) -> String {
        format!("{}/{}/{}.yaml", self.cluster, secret.namespace, secret.name)
    }
}

/// Snapshot content every key of which was checked against its source.
pub struct Verified {
    secrets: BTreeMap<SecretRef, DesiredSecret>,
}

impl Verified {
    pub fn secrets(&self) -> &BTreeMap<SecretRef, DesiredSecret> {
        &self.secrets
    }

    pub fn into_secrets(self) -> BTreeMap<SecretRef, DesiredSecret> {
        self.secrets
    }
}

/// Why a snapshot's content is not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Something is wrong with the file: it is not restored, ever.
    #[error("{file}: key {key}: {reason}; nothing was restored")]
    Refused {
        file: String,
        key: String,
        reason: String,
    },
    /// The source could not be read: try again.
    #[error("checking the snapshot against the table: {0}")]
    Table(#[source] SourceError),
    #[error("checking the snapshot against Secrets Manager: {0}")]
    SecretsManager(#[source] SmError),
}

impl RestoreError {
    /// A source that could not be read (may pass), not a refused file.
    pub fn is_transient(&self) -> bool {
        !matches!(self, RestoreError::Refused { .. })
    }
}

/// What the source says of one key's item version.
enum Found {
    /// The source holds that version (mapped to this very key): its value.
    Value(SecretValue),
    /// The version is gone from the source.
    Gone,
    /// The source refuses the item (tampered, undecryptable, unmapped).
    Refused(String),
}

/// One key to check.
struct Check<'a> {
    secret: &'a SecretRef,
    key: &'a str,
    item: &'a ItemId,
    /// The value the file holds (None: the key is read, not checked).
    value: Option<&'a SecretValue>,
}

/// Checks `restored` (the files of `revision`; `signed`: credsync signed
/// that commit) key by key against the sources; the first refusal stops it.
pub async fn verify(
    sources: &Sources<'_>,
    restored: BTreeMap<SecretRef, DesiredSecret>,
    signed: bool,
) -> Result<Verified, RestoreError> {
    // A file with no key passes every per-key check, and restoring it would
    // strip the Secret of the keys credsync owns.
    if let Some(secret) = restored
        .iter()
        .find_map(|(secret, desired)| desired.keys.is_empty().then_some(secret))
    {
        return Err(RestoreError::Refused {
            file: sources.path(secret),
            key: "(none)".to_owned(),
            reason: "the file holds no key: restoring it would only empty the Secret".to_owned(),
        });
    }
    // Secrets Manager is asked by ARN: an ARN outside what credsync reads
    // (another account, another region, a secret out of its prefix or tags)
    // counts as gone, so only a signed commit can vouch for it.
    let listed = match sources.secrets_manager {
        Some(sm)
            if restored
                .values()
                .flat_map(|d| d.keys.values())
                .any(|k| SecretsManagerSource::owns(&k.source)) =>
        {
            sm.listed_arns()
                .await
                .map_err(RestoreError::SecretsManager)?
        }
        _ => Default::default(),
    };
    let listed = &listed;
    let checks: Vec<Check<'_>> = restored
        .iter()
        .flat_map(|(secret, desired)| {
            desired.keys.iter().map(move |(key, k)| Check {
                secret,
                key,
                item: &k.source,
                value: Some(&k.value),
            })
        })
        .collect();
    // Boxed: a plain `async` closure here is not provably Send for every
    // lifetime, which the daemon's tasks need.
    let lookups: Vec<BoxFuture<'_, (Check<'_>, Result<Found, RestoreError>)>> = checks
        .into_iter()
        .map(|check| {
            Box::pin(async move {
                let found = find(sources, listed, &check).await;
                (check, found)
            }) as BoxFuture<'_, _>
        })
        .collect();
    let mut results = futures::stream::iter(lookups).buffer_unordered(CONCURRENCY);
    while let Some((check, found)) = results.next().await {
        let refuse = |reason: String| RestoreError::Refused {
            file: sources.path(check.secret),
            key: check.key.to_owned(),
            // It may quote an item name from the file.
            reason: crate::text::one_line(&reason, 1000),
        };
        match found? {
            Found::Value(value) => {
                let matches = check
                    .value
                    .is_some_and(|expected| bool::from(value.expose().ct_eq(expected.expose())));
                if !matches {
                    return Err(refuse(format!(
                        "its value is not the one {} holds in the source: the file was not written from the source",
                        check.item
                    )));
                }
            }
            Found::Gone if signed => {}
            Found::Gone => {
                return Err(refuse(format!(
                    "the source no longer holds {}, and this revision is not a commit credsync signed, so nothing vouches for the file's value",
                    check.item
                )));
            }
            Found::Refused(reason) => return Err(refuse(reason)),
        }
    }
    drop(results);
    Ok(Verified { secrets: restored })
}

/// Content for `secret` read from the sources at `items` (key -> item
/// version), each checked to map to this very Secret and key: what a
/// revert writes back, with no file to vouch for a value. A version the
/// source no longer holds cannot be read back: refused.
pub async fn fetch(
    sources: &Sources<'_>,
    secret: &SecretRef,
    items: BTreeMap<String, ItemId>,
) -> Result<Verified, RestoreError> {
    if items.is_empty() {
        return Err(RestoreError::Refused {
            file: sources.path(secret),
            key: "(none)".to_owned(),
            reason: "the snapshot holds no key for it".to_owned(),
        });
    }
    let listed = match sources.secrets_manager {
        Some(sm) if items.values().any(SecretsManagerSource::owns) => sm
            .listed_arns()
            .await
            .map_err(RestoreError::SecretsManager)?,
        _ => Default::default(),
    };
    let mut desired = DesiredSecret::default();
    for (key, item) in &items {
        let check = Check {
            secret,
            key,
            item,
            value: None,
        };
        let refuse = |reason: String| RestoreError::Refused {
            file: sources.path(secret),
            key: key.clone(),
            reason: crate::text::one_line(&reason, 1000),
        };
        match find(sources, &listed, &check).await? {
            Found::Value(value) => {
                desired.keys.insert(
                    key.clone(),
                    DesiredKey {
                        value,
                        source: item.clone(),
                    },
                );
            }
            Found::Gone => {
                return Err(refuse(format!("the source no longer holds {item}")));
            }
            Found::Refused(reason) => return Err(refuse(reason)),
        }
    }
    Ok(Verified {
        secrets: BTreeMap::from([(secret.clone(), desired)]),
    })
}

/// Reads one key's item version from its source.
async fn find(
    sources: &Sources<'_>,
    listed: &HashSet<String>,
    check: &Check<'_>,
) -> Result<Found, RestoreError> {
    if SecretsManagerSource::owns(check.item) {
        let Some(sm) = sources.secrets_manager else {
            return Ok(Found::Refused(format!(
                "it comes from Secrets Manager ({}), which is not a source here",
                check.item
            )));
        };
        let arn = check
            .item
            .name
            .split_once('#')
            .map_or(check.item.name.as_str(), |(arn, _)| arn);
        if !listed.contains(arn) {
            return Ok(Found::Gone);
        }
        let Some(parts) = sm
            .read_version(arn, &check.item.version)
            .await
            .map_err(RestoreError::SecretsManager)?
        else {
            return Ok(Found::Gone);
        };
        let Some(part) = parts.into_iter().find(|p| p.credential.id == *check.item) else {
            return Ok(Found::Refused(format!(
                "{} yields no such key under today's naming",
                check.item
            )));
        };
        if part.target.secret != *check.secret || part.target.key != check.key {
            return Ok(Found::Refused(mapped_elsewhere(check, &part.target)));
        }
        return Ok(Found::Value(part.credential.value));
    }
    let Some(table) = sources.table else {
        return Ok(Found::Refused(format!(
            "it comes from the Credstash table ({}), which is not a source here",
            check.item
        )));
    };
    match sources.mapping.map(&check.item.name) {
        Ok(target) if target.secret == *check.secret && target.key == check.key => {}
        Ok(target) => return Ok(Found::Refused(mapped_elsewhere(check, &target))),
        Err(why) => {
            return Ok(Found::Refused(format!(
                "{} maps to no key today ({why})",
                check.item
            )));
        }
    }
    match table
        .read_version(check.item)
        .await
        .map_err(RestoreError::Table)?
    {
        Some(Ok(credential)) => Ok(Found::Value(credential.value)),
        Some(Err(failure)) => Ok(Found::Refused(format!(
            "{} cannot be read from the table: {}",
            check.item, failure.reason
        ))),
        None => Ok(Found::Gone),
    }
}

fn mapped_elsewhere(check: &Check<'_>, target: &crate::manifest::Target) -> String {
    format!(
        "it names {}, which maps to {} key {}, not to this Secret's key: a file may only restore a Secret's own items",
        check.item, target.secret, target.key
    )
}
