//! Writing the table in credstash's own format: `put` and `delete`.
//!
//! An item is what `credstash put` writes, byte for byte in layout: a
//! 64-byte KMS data key (GenerateDataKey under the encryption context),
//! AES-256-CTR with the first half, HMAC-SHA256 (hex) with the second, the
//! version as 19 zero-padded digits. The put is conditional on the item not
//! existing, so two writers of one version never overwrite each other: the
//! second one gets [`WriteItemError::VersionExists`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kms::primitives::Blob;
use base64::Engine;

use super::CredstashSource;
use super::crypto::{self, DataKey};
use crate::aws_error::{AwsError, FailureClass};
use crate::secret::SecretValue;
use crate::source::ItemId;

/// credstash's version width: `str(n).zfill(19)`.
const VERSION_DIGITS: usize = 19;
/// The KMS key credstash uses unless told otherwise.
pub const DEFAULT_KEY_ID: &str = "alias/credstash";

/// Which version a put writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutVersion {
    /// This version (`-v`; credstash's default is 1).
    Exact(u64),
    /// One past the latest (`-a`), 1 for a new name.
    Next,
}

/// One item to write.
pub struct NewItem<'a> {
    pub name: &'a str,
    pub value: &'a SecretValue,
    pub version: PutVersion,
    /// KMS key for the data key: an alias, key id or ARN.
    pub key_id: &'a str,
}

/// Why a write to the table did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum WriteItemError {
    #[error(
        "{name} version {version} is already in the table (another writer, or an earlier put): \
         nothing written; use -a for the next version or -v with a higher one"
    )]
    VersionExists { name: String, version: String },
    #[error(
        "the latest version of {name} is '{version}', not a number: cannot count past it; \
         pass -v with a version"
    )]
    VersionNotNumeric { name: String, version: String },
    #[error("the value is not UTF-8 text: credstash stores text; nothing written")]
    NotText,
    #[error("KMS refused a data key from {key_id} (nothing written): {hint}")]
    DataKey {
        key_id: String,
        hint: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("no item named {0} in the table")]
    NoSuchName(String),
    #[error("table '{table}': {hint}")]
    Table {
        table: String,
        hint: String,
        #[source]
        aws: AwsError,
    },
}

impl WriteItemError {
    /// A concurrent writer got there first (HTTP 409 in the self-service API).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::VersionExists { .. })
    }
}

/// `n` as credstash writes versions.
pub fn padded_version(n: u64) -> String {
    format!("{n:0width$}", width = VERSION_DIGITS)
}

impl CredstashSource {
    /// Writes one item as `credstash put` does; returns its name and version.
    pub async fn put(&self, item: NewItem<'_>) -> Result<ItemId, WriteItemError> {
        if std::str::from_utf8(item.value.expose()).is_err() {
            return Err(WriteItemError::NotText);
        }
        let version = match item.version {
            PutVersion::Exact(n) => padded_version(n),
            PutVersion::Next => {
                let latest = self.latest_version(item.name).await?;
                match latest {
                    None => padded_version(1),
                    Some(v) => match v.trim().parse::<u64>() {
                        Ok(n) => padded_version(n.saturating_add(1)),
                        Err(_) => {
                            return Err(WriteItemError::VersionNotNumeric {
                                name: item.name.to_owned(),
                                version: v,
                            });
                        }
                    },
                }
            }
        };
        let (wrapped, data_key) = self.generate_data_key(item.key_id).await?;
        let (ciphertext, hmac) =
            crypto::seal(&data_key, item.value.expose()).map_err(|e| WriteItemError::DataKey {
                key_id: item.key_id.to_owned(),
                hint: "sealing the value with it failed".to_owned(),
                source: Some(Box::new(e)),
            })?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let attributes = HashMap::from([
            ("name".to_owned(), AttributeValue::S(item.name.to_owned())),
            ("version".to_owned(), AttributeValue::S(version.clone())),
            ("key".to_owned(), AttributeValue::S(b64.encode(wrapped))),
            (
                "contents".to_owned(),
                AttributeValue::S(b64.encode(ciphertext)),
            ),
            // credstash 1.17 stores the hex HMAC as bytes.
            (
                "hmac".to_owned(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(hmac.into_bytes())),
            ),
            ("digest".to_owned(), AttributeValue::S("SHA256".to_owned())),
        ]);
        self.metrics
            .dynamodb_requests
            .with_label_values(&["PutItem"])
            .inc();
        let put = self
            .dynamodb
            .put_item()
            .table_name(&self.config.table)
            .set_item(Some(attributes))
            .condition_expression("attribute_not_exists(#n)")
            .expression_attribute_names("#n", "name")
            .send()
            .await;
        match put {
            Ok(_) => Ok(ItemId {
                name: item.name.to_owned(),
                version,
            }),
            Err(err) => {
                let aws = AwsError::from_sdk(&err);
                if aws.is("ConditionalCheckFailedException") {
                    return Err(WriteItemError::VersionExists {
                        name: item.name.to_owned(),
                        version,
                    });
                }
                Err(self.table_error(
                    aws,
                    "access denied (writes need dynamodb:PutItem on the table)",
                ))
            }
        }
    }

    /// Deletes every version of `name`, as `credstash delete` does; returns
    /// the versions deleted.
    pub async fn delete(&self, name: &str) -> Result<Vec<ItemId>, WriteItemError> {
        let versions = self.versions_of(name, false).await?;
        if versions.is_empty() {
            return Err(WriteItemError::NoSuchName(name.to_owned()));
        }
        for id in &versions {
            self.metrics
                .dynamodb_requests
                .with_label_values(&["DeleteItem"])
                .inc();
            self.dynamodb
                .delete_item()
                .table_name(&self.config.table)
                .key("name", AttributeValue::S(id.name.clone()))
                .key("version", AttributeValue::S(id.version.clone()))
                .send()
                .await
                .map_err(|err| {
                    self.table_error(
                        AwsError::from_sdk(&err),
                        "access denied (deletes need dynamodb:Query and dynamodb:DeleteItem on the table)",
                    )
                })?;
        }
        Ok(versions)
    }

    /// The latest version of every name that starts with `prefix` (names
    /// and versions only: a Scan that reads no value).
    pub async fn latest_versions(&self, prefix: &str) -> Result<Vec<ItemId>, WriteItemError> {
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        let mut start = None;
        loop {
            self.metrics
                .dynamodb_requests
                .with_label_values(&["Scan"])
                .inc();
            let page = self
                .dynamodb
                .scan()
                .table_name(&self.config.table)
                .filter_expression("begins_with(#n, :prefix)")
                .projection_expression("#n, version")
                .expression_attribute_names("#n", "name")
                .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|err| {
                    self.table_error(
                        AwsError::from_sdk(&err),
                        "access denied (listing needs dynamodb:Scan on the table)",
                    )
                })?;
            for item in page.items.unwrap_or_default() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                if let (Some(name), Some(version)) = (text("name"), text("version")) {
                    let newer = latest.get(&name).is_none_or(|seen| *seen < version);
                    if newer {
                        latest.insert(name, version);
                    }
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(latest
            .into_iter()
            .map(|(name, version)| ItemId { name, version })
            .collect())
    }

    /// The greatest stored version of `name` (string order, as credstash),
    /// None for a name not in the table.
    pub async fn latest_version(&self, name: &str) -> Result<Option<String>, WriteItemError> {
        Ok(self
            .versions_of(name, true)
            .await?
            .pop()
            .map(|id| id.version))
    }

    /// The stored versions of `name`: every one, paged, or (`latest_only`)
    /// one Query of the newest. Consistent reads: a write just made counts.
    async fn versions_of(
        &self,
        name: &str,
        latest_only: bool,
    ) -> Result<Vec<ItemId>, WriteItemError> {
        let mut versions = Vec::new();
        let mut start = None;
        loop {
            self.metrics
                .dynamodb_requests
                .with_label_values(&["Query"])
                .inc();
            let page = self
                .dynamodb
                .query()
                .table_name(&self.config.table)
                .key_condition_expression("#n = :name")
                .expression_attribute_names("#n", "name")
                .expression_attribute_values(":name", AttributeValue::S(name.to_owned()))
                .projection_expression("version")
                .consistent_read(true)
                .scan_index_forward(!latest_only)
                .set_limit(latest_only.then_some(1))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|err| {
                    self.table_error(
                        AwsError::from_sdk(&err),
                        "access denied (writes need dynamodb:Query on the table)",
                    )
                })?;
            versions.extend(
                page.items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|item| item.get("version").and_then(|v| v.as_s().ok()))
                    .map(|version| ItemId {
                        name: name.to_owned(),
                        version: version.clone(),
                    }),
            );
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() && !latest_only => start = Some(key),
                _ => return Ok(versions),
            }
        }
    }

    /// A fresh 64-byte data key: the KMS-wrapped blob to store, and the key.
    async fn generate_data_key(&self, key_id: &str) -> Result<(Vec<u8>, DataKey), WriteItemError> {
        self.metrics
            .kms_requests
            .with_label_values(&["GenerateDataKey"])
            .inc();
        let context = &self.config.context;
        let refused = |hint: &str, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            WriteItemError::DataKey {
                key_id: key_id.to_owned(),
                hint: hint.to_owned(),
                source,
            }
        };
        let out = aws_sdk_kms::Client::new(&self.sdk)
            .generate_data_key()
            .key_id(key_id)
            .number_of_bytes(64)
            .set_encryption_context((!context.is_empty()).then(|| {
                context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
            .send()
            .await
            .map_err(|err| {
                let aws = AwsError::from_sdk(&err);
                let hint = match aws.class {
                    FailureClass::NotFound => "no such key (check --key-id and --region)",
                    FailureClass::Denied => "no kms:GenerateDataKey on the key",
                    _ => "GenerateDataKey failed",
                };
                refused(hint, Some(Box::new(aws)))
            })?;
        let wrapped = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| refused("KMS returned no wrapped key", None))?;
        let plaintext = out
            .plaintext
            .map(Blob::into_inner)
            .ok_or_else(|| refused("KMS returned no plaintext key", None))?;
        let key = DataKey::new(plaintext)
            .map_err(|e| refused("KMS returned an unusable key", Some(Box::new(e))))?;
        Ok((wrapped, key))
    }

    fn table_error(&self, aws: AwsError, denied: &str) -> WriteItemError {
        let hint = match aws.class {
            FailureClass::NotFound => "table not found (check --table and --region)",
            FailureClass::Denied => denied,
            _ => "DynamoDB call failed",
        };
        WriteItemError::Table {
            table: self.config.table.clone(),
            hint: hint.to_owned(),
            aws,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_padded_to_nineteen_digits_as_credstash_writes_them() {
        assert_eq!(padded_version(1), "0000000000000000001");
        assert_eq!(padded_version(12345), "0000000000000012345");
        assert_eq!(padded_version(u64::MAX).len(), 20);
        assert!(padded_version(9) < padded_version(10));
    }
}
