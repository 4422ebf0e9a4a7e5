//! AWS Secrets Manager as a second source, beside the Credstash table.
//!
//! A read lists the secrets (ListSecrets, filtered by name prefix and tags,
//! secrets marked for deletion left out, so they count as absent) and
//! fetches only the values whose current version (AWSCURRENT) it does not
//! hold yet, 20 per BatchGetSecretValue. Values are kept by the secret's
//! ARN and VersionId, filled from the last snapshot at start-up, so an
//! unchanged secret costs no fetch in this process or the next. Each key
//! records `ARN#member@VersionId` (or `ARN@VersionId` for a whole value) as
//! its source, in plans and snapshots.

mod event;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
use futures::StreamExt;

use crate::aws_error::{AwsError, FailureClass};
use crate::manifest::{Failed, Ready, SecretRef, Skip, Target};
use crate::metrics::Metrics;
use crate::secret::SecretValue;
use crate::source::{Credential, ItemFailure, ItemId};
use names::{NameScheme, Shape, Stored, expand, shape};

/// The most ids one BatchGetSecretValue takes.
const BATCH: usize = 20;
/// Batches in flight at once.
const BATCH_CONCURRENCY: usize = 4;
/// What marks a key's source as a Secrets Manager secret (its ARN).
const ARN_PREFIX: &str = "arn:";

/// Which secrets to read and how to name them.
#[derive(Debug, Clone)]
pub struct SmConfig {
    pub names: NameScheme,
    /// Only names that start with this (path naming; kiss has its own).
    pub prefix: String,
    /// Only secrets carrying every one of these tags.
    pub tags: Vec<(String, String)>,
}

/// A failed read of the whole source: nothing can be synced from it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read AWS Secrets Manager in {region}: {hint}")]
pub struct SmError {
    pub region: String,
    /// What failed and what to check.
    pub hint: String,
    #[source]
    pub aws: Option<AwsError>,
}

/// What one read found: values, failures (keys held) and skips.
#[derive(Default)]
pub struct SmRead {
    pub ready: Vec<Ready>,
    pub failed: Vec<Failed>,
    pub skipped: Vec<Skip>,
}

/// One secret as listed.
struct Listed {
    arn: String,
    name: String,
    /// The AWSCURRENT version, if the listing says.
    current: Option<String>,
}

/// One version of a secret, as GetSecretValue returned it.
struct Got {
    name: String,
    arn: String,
    version: String,
    stored: Stored,
}

/// A secret's description, from ListSecrets or DescribeSecret.
struct Found {
    arn: String,
    name: String,
    deleted: bool,
    tags: Vec<aws_sdk_secretsmanager::types::Tag>,
    stages: HashMap<String, Vec<String>>,
}

/// A secret's keys at one version.
struct Held {
    version: String,
    /// (JSON member or None for the whole value, value).
    parts: Vec<(Option<String>, SecretValue)>,
    /// Why parts of it map to nothing, shown on every read.
    skipped: Vec<String>,
    /// How its name maps, once a listing in this process saw it (None:
    /// remembered from a snapshot, not listed yet).
    shape: Option<Shape>,
}

impl Held {
    /// A fetched value, split into keys as `shape` says.
    fn new(version: String, shape: &Shape, stored: Stored) -> Self {
        let expanded = expand(shape, stored);
        Self {
            version,
            parts: expanded
                .parts
                .into_iter()
                .map(|p| (p.member, p.value))
                .collect(),
            skipped: expanded.skipped,
            shape: None,
        }
    }

    /// The keys it yields under `shape` (kept while the secret fails).
    fn targets(&self, shape: &Shape) -> Vec<Target> {
        self.parts
            .iter()
            .filter_map(|(member, _)| target_of(shape, member.as_deref()))
            .collect()
    }

    /// The Secrets its keys map to, once a listing saw how its name maps.
    fn secrets(&self) -> std::collections::BTreeSet<SecretRef> {
        self.shape
            .as_ref()
            .map(|shape| self.targets(shape).into_iter().map(|t| t.secret).collect())
            .unwrap_or_default()
    }

    /// Its values as keys under `shape`, each recorded as `ARN[#member]@VersionId`.
    fn ready<'a>(&'a self, arn: &'a str, shape: &'a Shape) -> impl Iterator<Item = Ready> + 'a {
        self.parts.iter().filter_map(move |(member, value)| {
            let target = target_of(shape, member.as_deref())?;
            let name = match member {
                Some(member) => format!("{arn}#{member}"),
                None => arn.to_owned(),
            };
            Some(Ready {
                target,
                credential: Credential {
                    id: ItemId {
                        name,
                        version: self.version.clone(),
                    },
                    value: value.clone(),
                },
            })
        })
    }
}

pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    config: SmConfig,
    region: String,
    /// By ARN: the version held and its keys.
    held: Mutex<HashMap<String, Held>>,
    /// `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:` of the secrets
    /// listed: an event may name only a secret under it (a secret another
    /// account shares by resource policy is never read).
    own_arns: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

impl SecretsManagerSource {
    pub fn new(sdk: &aws_config::SdkConfig, config: SmConfig, metrics: Arc<Metrics>) -> Self {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "<unset region>".to_owned());
        Self {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            config,
            region,
            held: Mutex::new(HashMap::new()),
            own_arns: Mutex::new(None),
            metrics,
        }
    }

    fn count(&self, operation: &str) {
        self.metrics
            .secretsmanager_requests
            .with_label_values(&[operation])
            .inc();
    }

    /// Whether a key's recorded source is one of this source's (an ARN).
    pub fn owns(id: &ItemId) -> bool {
        id.name.starts_with(ARN_PREFIX)
    }

    /// Seeds values from a verified snapshot (warm start): keys recorded
    /// as `ARN[#member]@VersionId`, grouped back into secrets.
    pub fn remember(&self, values: impl IntoIterator<Item = (ItemId, SecretValue)>) -> usize {
        let Ok(mut held) = self.held.lock() else {
            return 0;
        };
        let mut count = 0;
        for (id, value) in values {
            let (arn, member) = match id.name.split_once('#') {
                Some((arn, member)) => (arn.to_owned(), Some(member.to_owned())),
                None => (id.name.clone(), None),
            };
            let entry = held.entry(arn).or_insert_with(|| Held {
                version: id.version.clone(),
                parts: Vec::new(),
                skipped: Vec::new(),
                shape: None,
            });
            if entry.version == id.version {
                entry.parts.push((member, value));
                count += 1;
            }
        }
        count
    }

    /// The last read's values for these Secrets (a targeted reconcile reads
    /// only the table; Secrets Manager's keys stay as last read).
    pub fn last_read_for(&self, secrets: &std::collections::BTreeSet<SecretRef>) -> Vec<Ready> {
        let Ok(held) = self.held.lock() else {
            return Vec::new();
        };
        held.iter()
            .filter_map(|(arn, entry)| Some(entry.ready(arn, entry.shape.as_ref()?)))
            .flatten()
            .filter(|r| secrets.contains(&r.target.secret))
            .collect()
    }

    /// Lists, fetches what changed, and maps every secret to keys.
    pub async fn read(&self) -> Result<SmRead, SmError> {
        let listed = self.list().await?;
        let mut read = SmRead::default();
        let mut shaped: Vec<(Listed, Shape)> = Vec::new();
        for secret in listed {
            match shape(self.config.names, &self.config.prefix, &secret.name) {
                Ok(s) => shaped.push((secret, s)),
                Err(reason) => read.skipped.push(Skip {
                    subject: secret.name,
                    reason: reason.to_string(),
                }),
            }
        }
        let stale: Vec<String> = match self.held.lock() {
            Ok(held) => shaped
                .iter()
                .filter(|(s, _)| {
                    held.get(&s.arn)
                        .is_none_or(|h| s.current.as_deref() != Some(h.version.as_str()))
                })
                .map(|(s, _)| s.arn.clone())
                .collect(),
            Err(_) => shaped.iter().map(|(s, _)| s.arn.clone()).collect(),
        };
        let (mut fetched, errors) = self.fetch(stale).await;
        let Ok(mut held) = self.held.lock() else {
            return Err(self.internal("the value cache is unusable: a previous read panicked"));
        };
        // Secrets no longer listed (deleted, out of the prefix, untagged) are forgotten.
        let listed: std::collections::HashSet<&str> =
            shaped.iter().map(|(s, _)| s.arn.as_str()).collect();
        held.retain(|arn, _| listed.contains(arn.as_str()));
        for (secret, shape) in &shaped {
            if let Some(reason) = errors.get(&secret.arn) {
                let keys = held
                    .get(&secret.arn)
                    .map(|h| h.targets(shape))
                    .unwrap_or_default();
                read.failed.push(Failed {
                    failure: ItemFailure {
                        id: ItemId {
                            name: secret.name.clone(),
                            version: secret.current.clone().unwrap_or_default(),
                        },
                        reason: reason.clone(),
                    },
                    keys,
                });
                continue;
            }
            if let Some((version, stored)) = fetched.remove(&secret.arn) {
                held.insert(secret.arn.clone(), Held::new(version, shape, stored));
            }
            let Some(entry) = held.get_mut(&secret.arn) else {
                continue;
            };
            entry.shape = Some(shape.clone());
            read.skipped.extend(entry.skipped.iter().map(|reason| Skip {
                subject: secret.name.clone(),
                reason: reason.clone(),
            }));
            read.ready.extend(entry.ready(&secret.arn, shape));
        }
        Ok(read)
    }

    /// The ARNs of the secrets credsync reads (its prefix and tags, in its
    /// account and region): the only ones a rollback may ask by ARN.
    pub async fn listed_arns(&self) -> Result<std::collections::HashSet<String>, SmError> {
        Ok(self.list().await?.into_iter().map(|s| s.arn).collect())
    }

    /// The keys one version of a secret yields today (its name mapped as
    /// the configuration says), each recorded as `ARN[#member]@VersionId`:
    /// what a rollback compares a snapshot's values with. None: Secrets
    /// Manager no longer holds that version (or the secret).
    pub async fn read_version(
        &self,
        arn: &str,
        version: &str,
    ) -> Result<Option<Vec<Ready>>, SmError> {
        let got = match self.get_value(arn, Some(version)).await {
            Ok(got) => got,
            Err(aws) => {
                return Err(SmError {
                    region: self.region.clone(),
                    hint: fetch_hint(&aws).to_owned(),
                    aws: Some(aws),
                });
            }
        };
        let Some(got) = got.filter(|got| got.arn == arn && got.version == version) else {
            return Ok(None);
        };
        let Ok(shape) = shape(self.config.names, &self.config.prefix, &got.name) else {
            return Ok(Some(Vec::new()));
        };
        let held = Held::new(version.to_owned(), &shape, got.stored);
        Ok(Some(held.ready(arn, &shape).collect()))
    }

    /// One GetSecretValue: the version asked for, or AWSCURRENT. None when
    /// Secrets Manager does not hold it (or the secret).
    async fn get_value(&self, id: &str, version: Option<&str>) -> Result<Option<Got>, AwsError> {
        self.count("GetSecretValue");
        let answer = self
            .client
            .get_secret_value()
            .secret_id(id)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await;
        let out = match answer {
            Ok(out) => out,
            Err(err) => {
                let aws = AwsError::from_sdk(&err);
                if aws.class == FailureClass::NotFound || aws.is("InvalidRequestException") {
                    return Ok(None);
                }
                return Err(aws);
            }
        };
        let (Some(name), Some(arn), Some(version)) = (out.name, out.arn, out.version_id) else {
            return Ok(None);
        };
        let stored = match (out.secret_string, out.secret_binary) {
            (Some(text), _) => Stored::Text(SecretValue::new(text.into_bytes())),
            (None, Some(blob)) => Stored::Binary(SecretValue::new(blob.into_inner())),
            (None, None) => return Ok(None),
        };
        Ok(Some(Got {
            name,
            arn,
            version,
            stored,
        }))
    }

    async fn list(&self) -> Result<Vec<Listed>, SmError> {
        let prefix = self.name_prefix();
        let mut filters = Vec::new();
        if !prefix.is_empty() {
            filters.push(filter(FilterNameStringType::Name, &prefix));
        }
        for (key, _) in &self.config.tags {
            filters.push(filter(FilterNameStringType::TagKey, key));
        }
        let mut out = Vec::new();
        let mut token = None;
        loop {
            self.count("ListSecrets");
            let page = self
                .client
                .list_secrets()
                .set_filters((!filters.is_empty()).then(|| filters.clone()))
                .include_planned_deletion(false)
                .max_results(100)
                .set_next_token(token)
                .send()
                .await
                .map_err(|err| self.error(AwsError::from_sdk(&err)))?;
            // Every listed ARN is the caller's own: one per page is enough.
            if let Some(arn) = page
                .secret_list
                .iter()
                .flatten()
                .find_map(|e| e.arn.as_deref())
            {
                self.learn_account(arn);
            }
            for entry in page.secret_list.unwrap_or_default() {
                let (Some(arn), Some(name)) = (entry.arn, entry.name) else {
                    continue;
                };
                let found = Found {
                    arn,
                    name,
                    deleted: entry.deleted_date.is_some(),
                    tags: entry.tags.unwrap_or_default(),
                    stages: entry.secret_versions_to_stages.unwrap_or_default(),
                };
                out.extend(self.admit(found));
            }
            match page.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(out),
            }
        }
    }

    /// The name prefix every secret credsync reads starts with.
    fn name_prefix(&self) -> String {
        match self.config.names {
            NameScheme::Path => self.config.prefix.clone(),
            NameScheme::Kiss => names::KISS_PREFIX.to_owned(),
        }
    }

    /// A secret as ListSecrets or DescribeSecret found it, if credsync reads
    /// it: its name under the prefix (exact; the API's name filter is a
    /// case-insensitive match), not marked for deletion, every tag asked
    /// for. The one rule of both the full read and an event's refresh.
    fn admit(&self, found: Found) -> Option<Listed> {
        if !found.name.starts_with(&self.name_prefix()) || found.deleted {
            return None;
        }
        let tags: BTreeMap<&str, &str> = found
            .tags
            .iter()
            .filter_map(|t| Some((t.key.as_deref()?, t.value.as_deref()?)))
            .collect();
        if !self
            .config
            .tags
            .iter()
            .all(|(k, v)| tags.get(k.as_str()) == Some(&v.as_str()))
        {
            return None;
        }
        let current = found
            .stages
            .into_iter()
            .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
            .map(|(version, _)| version);
        Some(Listed {
            arn: found.arn,
            name: found.name,
            current,
        })
    }

    /// Notes the account and region ARNs of this source start with, from an
    /// ARN ListSecrets returned (only the caller's own secrets are listed).
    fn learn_account(&self, arn: &str) {
        if let (Some(prefix), Ok(mut own)) = (account_prefix(arn), self.own_arns.lock())
            && own.is_none()
        {
            *own = Some(prefix.to_owned());
        }
    }

    /// Current values of `arns`, 20 per call; per-secret errors by ARN.
    async fn fetch(
        &self,
        arns: Vec<String>,
    ) -> (HashMap<String, (String, Stored)>, HashMap<String, String>) {
        let chunks: Vec<Vec<String>> = arns.chunks(BATCH).map(<[String]>::to_vec).collect();
        let results: Vec<_> = futures::stream::iter(chunks)
            .map(|ids| async move {
                self.count("BatchGetSecretValue");
                let answer = self
                    .client
                    .batch_get_secret_value()
                    .set_secret_id_list(Some(ids.clone()))
                    .send()
                    .await;
                (ids, answer)
            })
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        let mut values = HashMap::new();
        let mut errors = HashMap::new();
        for (ids, answer) in results {
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    let err = AwsError::from_sdk(&err);
                    let reason = err.line(fetch_hint(&err));
                    for id in ids {
                        errors.insert(id, reason.clone());
                    }
                    continue;
                }
            };
            for entry in answer.secret_values.unwrap_or_default() {
                let (Some(arn), Some(version)) = (entry.arn, entry.version_id) else {
                    continue;
                };
                let stored = match (entry.secret_string, entry.secret_binary) {
                    (Some(text), _) => Stored::Text(SecretValue::new(text.into_bytes())),
                    (None, Some(blob)) => Stored::Binary(SecretValue::new(blob.into_inner())),
                    (None, None) => continue,
                };
                values.insert(arn, (version, stored));
            }
            for error in answer.errors.unwrap_or_default() {
                if let Some(id) = error.secret_id {
                    let code = error.error_code.unwrap_or_default();
                    let message = error.message.unwrap_or_default();
                    errors.insert(id, format!("GetSecretValue refused: {code}: {message}"));
                }
            }
        }
        (values, errors)
    }

    fn internal(&self, what: &str) -> SmError {
        SmError {
            region: self.region.clone(),
            hint: format!("internal error: {what}; this is a bug in credsync, please report it"),
            aws: None,
        }
    }

    fn error(&self, aws: AwsError) -> SmError {
        let hint = match aws.class {
            FailureClass::Denied => "access denied (needs secretsmanager:ListSecrets)",
            _ => "ListSecrets failed",
        };
        SmError {
            region: self.region.clone(),
            hint: hint.to_owned(),
            aws: Some(aws),
        }
    }
}

fn fetch_hint(err: &AwsError) -> &'static str {
    match err.class {
        FailureClass::Denied => {
            "access denied (needs secretsmanager:BatchGetSecretValue and GetSecretValue, and kms:Decrypt on the secret's key)"
        }
        FailureClass::Throttled => {
            "throttled after the SDK's retries; the next reconcile tries again"
        }
        _ => "BatchGetSecretValue failed",
    }
}

/// `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:` of a secret's ARN.
fn account_prefix(arn: &str) -> Option<&str> {
    let mut end = 0;
    for (fields, part) in arn.split(':').enumerate() {
        end += part.len() + 1;
        if fields == 5 {
            return (part == "secret" && arn.len() >= end).then(|| &arn[..end]);
        }
    }
    None
}

fn filter(key: FilterNameStringType, value: &str) -> Filter {
    Filter::builder().key(key).values(value).build()
}

/// Where one held part lands under a secret's shape.
fn target_of(shape: &Shape, member: Option<&str>) -> Option<Target> {
    let name = match (shape, member) {
        (Shape::Members(base), Some(member)) => format!("{base}/{member}"),
        (Shape::Whole(name), None) => name.clone(),
        _ => return None,
    };
    crate::manifest::map_name(&name).ok()
}
