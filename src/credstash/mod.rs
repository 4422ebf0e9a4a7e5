//! The source of truth: a Credstash table in DynamoDB, decrypted through KMS.
//!
//! [`CredstashSource::scan`] reads the latest version of every name and
//! [`CredstashSource::decrypt`] opens the ones the mapping selected. Item-level problems (tampering, KMS refusals) become
//! [`ItemFailure`]s so the rest of the table still syncs; table-level problems
//! (missing table, no permission, no endpoint) are a [`SourceError`] and stop
//! the reconcile before anything is written.

pub mod crypto;
mod kms;
mod table;
mod write;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use crate::metrics::Metrics;
use crate::secret::SecretValue;

pub use table::{RawItem, Scanned};
pub use write::{DEFAULT_KEY_ID, NewItem, PutVersion, WriteItemError, padded_version};

use crate::aws_error::AwsError;
use crate::source::{Credential, ItemFailure, ItemId, SourceItem};

impl SourceItem for RawItem {
    fn id(&self) -> &ItemId {
        &self.id
    }
}

/// What decrypting a set of items produced.
#[derive(Debug, Default)]
pub struct Decrypted {
    pub credentials: Vec<Credential>,
    pub failures: Vec<ItemFailure>,
}

/// Where and how to read the table.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub table: String,
    /// Region override; `None` takes the AWS configuration chain's.
    pub region: Option<String>,
    /// KMS encryption context the items were written with.
    pub context: BTreeMap<String, String>,
    /// KMS Decrypt calls in flight at once.
    pub kms_concurrency: usize,
    /// Parallel Scan segments.
    pub scan_segments: i32,
}

/// A table-level failure: nothing can be synced.
#[derive(Debug, thiserror::Error)]
#[error("cannot read Credstash table '{table}' in region {region}: {hint}")]
pub struct SourceError {
    pub table: String,
    pub region: String,
    /// What to check.
    pub hint: String,
    /// The AWS error read into its class and code (a missing table, no
    /// rights, throttling, no endpoint), for callers that act on which.
    #[source]
    pub aws: AwsError,
}

/// Reads and decrypts the table, remembering what it decrypted so an
/// unchanged item costs no KMS call the next time.
pub struct CredstashSource {
    config: SourceConfig,
    sdk: aws_config::SdkConfig,
    region: String,
    dynamodb: aws_sdk_dynamodb::Client,
    kms: kms::Decryptor,
    metrics: Arc<Metrics>,
}

impl CredstashSource {
    /// Builds clients from the standard AWS configuration chain. Every call
    /// gets a connect timeout and `request_timeout` per attempt, so a frozen
    /// endpoint ends in an error (after the SDK's retries), never a hang.
    pub async fn connect(
        config: SourceConfig,
        request_timeout: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(request_timeout.min(std::time::Duration::from_secs(10)))
            .read_timeout(request_timeout)
            .operation_attempt_timeout(request_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(crate::aws_http::aws_http_client(Some(metrics.clone())))
            .timeout_config(timeouts);
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        Self::from_sdk_config(&loader.load().await, config, metrics)
    }

    /// Builds clients from an explicit AWS configuration (embedding, tests).
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        config: SourceConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "<unset: give --region or AWS_REGION>".to_owned());
        let kms = kms::Decryptor::new(
            aws_sdk_kms::Client::new(sdk),
            config.context.clone(),
            config.kms_concurrency,
            metrics.clone(),
        );
        Self {
            sdk: sdk.clone(),
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            kms,
            region,
            config,
            metrics,
        }
    }

    /// The AWS configuration in use, for the stream follower's client.
    pub fn sdk_config(&self) -> &aws_config::SdkConfig {
        &self.sdk
    }

    pub fn table(&self) -> &str {
        &self.config.table
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Reads the latest version of every name, still encrypted, so the
    /// caller can choose what is worth a KMS call.
    pub async fn scan(&self) -> Result<Scanned, SourceError> {
        let scanned = table::scan_latest(
            &self.dynamodb,
            &self.config.table,
            self.config.scan_segments,
            &self.metrics,
        )
        .await
        .map_err(|cause| self.source_error(cause))?;
        self.kms
            .forget_all_but(scanned.latest.iter().map(|item| item.id.name.as_str()));
        Ok(scanned)
    }

    /// The latest version of `name` (None if the table no longer has it).
    pub async fn query_latest(
        &self,
        name: &str,
    ) -> Result<Option<Result<RawItem, ItemFailure>>, SourceError> {
        table::query_latest(&self.dynamodb, &self.config.table, name, &self.metrics)
            .await
            .map_err(|cause| self.source_error(cause))
    }

    /// One stored version of an item, decrypted (HMAC checked): what a
    /// rollback compares a snapshot's value with. None: the table no longer
    /// holds that version.
    pub async fn read_version(
        &self,
        id: &ItemId,
    ) -> Result<Option<Result<Credential, ItemFailure>>, SourceError> {
        let stored = table::get_version(&self.dynamodb, &self.config.table, id, &self.metrics)
            .await
            .map_err(|cause| self.source_error(cause))?;
        Ok(match stored {
            None => None,
            Some(Err(failure)) => Some(Err(failure)),
            Some(Ok(item)) => Some(self.kms.open_from_table(item).await),
        })
    }

    /// Keeps every decrypted value for later reads (a long-lived process).
    pub fn keep_values(&self) {
        self.kms.keep_values();
    }

    /// Seeds the values of items a previous process decrypted (warm start).
    pub fn remember(&self, values: impl IntoIterator<Item = (ItemId, SecretValue)>) -> usize {
        self.kms.remember(values)
    }

    /// Decrypts `items` (cached ones cost no KMS call), handing each on as
    /// soon as it is done: a reconcile writes a Secret once its items are.
    pub fn decrypt_each(
        &self,
        items: Vec<RawItem>,
    ) -> impl futures::Stream<Item = Result<Credential, ItemFailure>> + Send + '_ {
        self.kms.open_each(items)
    }

    /// Decrypts `items` (cached ones cost no KMS call).
    pub async fn decrypt(&self, items: Vec<RawItem>) -> Decrypted {
        let mut out = Decrypted::default();
        let mut results = self.decrypt_each(items);
        while let Some(result) = results.next().await {
            match result {
                Ok(credential) => out.credentials.push(credential),
                Err(failure) => out.failures.push(failure),
            }
        }
        out.credentials.sort_by(|a, b| a.id.cmp(&b.id));
        out.failures.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn source_error(&self, error: table::TableReadError) -> SourceError {
        SourceError {
            table: self.config.table.clone(),
            region: self.region.clone(),
            hint: error.hint,
            aws: error.aws,
        }
    }
}
