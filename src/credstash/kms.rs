//! KMS Decrypt with bounded concurrency and a cache of decrypted values.
//!
//! The cache key is the item's name, version and a SHA-256 of its stored
//! key, contents, hmac and digest: if any stored byte changes, the item is
//! decrypted (and verified) again; if none does, the next reconcile in this
//! process costs no KMS call for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::primitives::Blob;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use super::crypto::{CryptoError, DataKey, Envelope};
use super::table::RawItem;
use crate::aws_error::{AwsError, FailureClass};
use crate::metrics::Metrics;
use crate::secret::SecretValue;
use crate::source::{Credential, ItemFailure, ItemId};

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    id: ItemId,
    stored: [u8; 32],
}

impl CacheKey {
    fn of(item: &RawItem) -> Self {
        let mut h = Sha256::new();
        for part in [
            item.key.as_bytes(),
            item.contents.as_bytes(),
            &item.hmac,
            item.digest().as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Self {
            id: item.id.clone(),
            stored: h.finalize().into(),
        }
    }
}

pub(super) struct Decryptor {
    client: aws_sdk_kms::Client,
    context: BTreeMap<String, String>,
    concurrency: usize,
    /// By name: the stored-bytes key of the version we hold, and its value.
    cache: Mutex<HashMap<String, (CacheKey, SecretValue)>>,
    /// Values a previous process decrypted, by name@version, read back from
    /// the last snapshot (warm start): an item whose version is here needs
    /// no KMS call.
    known: Mutex<HashMap<ItemId, SecretValue>>,
    /// Whether `cache` is filled: only a long-lived process reads the table
    /// again (a copy of every value, 25 MiB at 100,000 items, for nothing in
    /// a one-shot `sync`).
    keep: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Decryptor {
    pub fn new(
        client: aws_sdk_kms::Client,
        context: BTreeMap<String, String>,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            context,
            concurrency: concurrency.max(1),
            cache: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            keep: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Keeps every value decrypted, so a later read of an unchanged item
    /// makes no KMS call.
    pub fn keep_values(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn remember_read(&self, name: &str, key: CacheKey, value: &SecretValue) {
        if self.keep.load(std::sync::atomic::Ordering::Relaxed)
            && let Ok(mut cache) = self.cache.lock()
        {
            cache.insert(name.to_owned(), (key, value.clone()));
        }
    }

    /// Adds values known from a verified snapshot, by the item they came from.
    pub fn remember(&self, values: impl IntoIterator<Item = (ItemId, SecretValue)>) -> usize {
        let Ok(mut known) = self.known.lock() else {
            return 0;
        };
        let before = known.len();
        known.extend(values);
        known.len() - before
    }

    /// Drops cached values of names no longer in the table.
    pub fn forget_all_but<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = names.collect();
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|name, _| keep.contains(name.as_str()));
        }
    }

    /// Decrypts every item, at most `concurrency` KMS calls at once, each
    /// handed on as soon as it is done.
    pub fn open_each(
        &self,
        items: Vec<RawItem>,
    ) -> impl futures::Stream<Item = Result<Credential, ItemFailure>> + Send + '_ {
        futures::stream::iter(Draining::new(items))
            .map(|item| self.open(item))
            .buffer_unordered(self.concurrency)
    }

    /// Decrypts one item with KMS and checks its HMAC, whatever a snapshot
    /// said of it: what a rollback compares a snapshot's value with must
    /// come from the table itself. Only a value this process decrypted from
    /// these very stored bytes is reused.
    pub async fn open_from_table(&self, item: RawItem) -> Result<Credential, ItemFailure> {
        self.open_with(item, false).await
    }

    async fn open(&self, item: RawItem) -> Result<Credential, ItemFailure> {
        self.open_with(item, true).await
    }

    async fn open_with(
        &self,
        item: RawItem,
        from_snapshot: bool,
    ) -> Result<Credential, ItemFailure> {
        let key = CacheKey::of(&item);
        let cached = self.cache.lock().ok().and_then(|cache| {
            cache
                .get(&item.id.name)
                .filter(|(held, _)| *held == key)
                .map(|(_, value)| value.clone())
        });
        if let Some(value) = cached {
            tracing::debug!(item = %item.id, "unchanged since last read; no KMS call");
            return Ok(Credential { id: item.id, value });
        }
        // A version the last snapshot holds: credstash never rewrites a
        // version in place, so its value is the one we decrypted then.
        let known = from_snapshot
            .then(|| {
                self.known
                    .lock()
                    .ok()
                    .and_then(|mut k| take_known(&mut k, &item.id))
            })
            .flatten();
        if let Some(value) = known {
            tracing::debug!(item = %item.id, "value from the last snapshot; no KMS call");
            self.remember_read(&item.id.name, key, &value);
            return Ok(Credential { id: item.id, value });
        }
        tracing::debug!(item = %item.id, digest = item.digest(), "decrypting");
        let fail = |reason: String| ItemFailure {
            id: item.id.clone(),
            reason,
        };
        let envelope = Envelope::decode(&item.key, &item.contents, &item.hmac, item.digest())
            .map_err(|e| fail(e.to_string()))?;
        let data_key = self
            .decrypt_data_key(envelope.wrapped_key.clone())
            .await
            .map_err(|e| fail(crate::errors::chain(&e)))?;
        let value = envelope.open(&data_key).map_err(|e| fail(e.to_string()))?;
        self.remember_read(&item.id.name, key, &value);
        Ok(Credential { id: item.id, value })
    }

    async fn decrypt_data_key(&self, wrapped: Vec<u8>) -> Result<DataKey, KmsError> {
        self.metrics
            .kms_requests
            .with_label_values(&["Decrypt"])
            .inc();
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .set_encryption_context((!self.context.is_empty()).then(|| {
                self.context
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }))
            .send()
            .await
            .map_err(describe_kms_error)?;
        let plaintext = out.plaintext.ok_or(KmsError::NoPlaintext)?;
        DataKey::new(plaintext.into_inner()).map_err(KmsError::Key)
    }
}

/// Takes a snapshot's value out of `known`, giving back the table's memory
/// as it empties: a warm start's values are each used once.
fn take_known(known: &mut HashMap<ItemId, SecretValue>, id: &ItemId) -> Option<SecretValue> {
    let value = known.remove(id)?;
    if known.len() < known.capacity() / 4 {
        known.shrink_to(known.len() * 2);
    }
    Some(value)
}

/// Hands out a Vec's items in order while giving its buffer back as it
/// empties: a `vec::IntoIter` keeps the whole buffer (3.6 MiB at 10,000
/// items) until the last item is decrypted.
struct Draining<T> {
    /// The items not yet handed out, last first.
    rest: Vec<T>,
}

impl<T> Draining<T> {
    fn new(mut items: Vec<T>) -> Self {
        items.reverse();
        Self { rest: items }
    }
}

impl<T> Iterator for Draining<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.rest.pop()?;
        if self.rest.len() < self.rest.capacity() / 4 {
            self.rest.shrink_to(self.rest.len() * 2);
        }
        Some(item)
    }
}

/// Why KMS gave no usable data key; the item fails with these words.
#[derive(Debug, thiserror::Error)]
enum KmsError {
    #[error("{hint}")]
    Refused {
        hint: &'static str,
        #[source]
        aws: AwsError,
    },
    #[error("KMS Decrypt returned no plaintext")]
    NoPlaintext,
    #[error("KMS returned an unusable data key")]
    Key(#[source] CryptoError),
}

fn describe_kms_error(err: SdkError<DecryptError, HttpResponse>) -> KmsError {
    let aws = AwsError::from_sdk(&err);
    let hint = if aws.is("InvalidCiphertextException") {
        "KMS refused the data key: wrong encryption context (--context) or not a KMS blob"
    } else if aws.is("DisabledException") || aws.is("KMSInvalidStateException") {
        "KMS refused the data key: the key is disabled or pending deletion"
    } else {
        match aws.class {
            FailureClass::NotFound => "KMS refused the data key: its key does not exist",
            FailureClass::Denied => {
                "KMS refused the data key: no kms:Decrypt on its key, or the key is in another account or region"
            }
            _ => "KMS Decrypt failed",
        }
    };
    KmsError::Refused { hint, aws }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_hands_out_every_item_in_order_and_gives_the_buffer_back() {
        let mut items = Draining::new((0..1000).collect::<Vec<u32>>());
        let first: Vec<u32> = items.by_ref().take(900).collect();
        assert_eq!(first, (0..900).collect::<Vec<_>>());
        // At most four times what is left, not the thousand it started with.
        assert!(items.rest.capacity() <= 400, "{}", items.rest.capacity());
        assert_eq!(items.collect::<Vec<_>>(), (900..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_known_value_is_taken_once_and_the_table_shrinks() {
        let id = |n: u32| ItemId {
            name: format!("ns/app/k{n}"),
            version: "1".into(),
        };
        let mut known: HashMap<ItemId, SecretValue> = (0..1000)
            .map(|n| (id(n), SecretValue::new(vec![1])))
            .collect();
        let capacity = known.capacity();
        for n in 0..990 {
            assert!(take_known(&mut known, &id(n)).is_some());
        }
        assert!(take_known(&mut known, &id(0)).is_none());
        assert_eq!(known.len(), 10);
        assert!(known.capacity() < capacity / 10, "{}", known.capacity());
    }
}
