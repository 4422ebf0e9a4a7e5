//! From table names to desired Secrets (SPEC 2): the types a plan is made
//! of, and, one concern each, `mapping` (names to Secret keys), `filter`
//! (which namespaces credsync writes) and `selection` (what is worth a KMS
//! call) and `assembly` (the [`Manifest`] built as items are decrypted).

mod assembly;
mod filter;
mod mapping;
mod selection;

pub use assembly::Assembly;
pub use filter::{DEFAULT_NAMESPACE_EXCLUDE, NamespaceFilter};
pub use mapping::{
    KeyMapping, MappingError, is_dns1123_label, is_dns1123_subdomain, map_name, normalize_key,
};
pub use selection::Selection;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::secret::{KeyMap, SecretValue};
use crate::source::{Credential, ItemFailure, ItemId};

/// A Secret by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl SecretRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;

    /// Parses `namespace/name`, as users name Secrets on the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(format!("'{s}' is not namespace/name")),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a table name lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub secret: SecretRef,
    pub key: String,
}

/// Key names marked `+added ~changed -removed`, the one notation of plans,
/// commit messages, Events and listings.
pub fn marked_keys(added: &[String], changed: &[String], removed: &[String]) -> String {
    key_marks(added, changed, removed)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The marks of [`marked_keys`] one by one, for texts that must be cut.
pub fn key_marks<'a>(
    added: &'a [String],
    changed: &'a [String],
    removed: &'a [String],
) -> impl Iterator<Item = String> + 'a {
    added
        .iter()
        .map(|k| format!("+{k}"))
        .chain(changed.iter().map(|k| format!("~{k}")))
        .chain(removed.iter().map(|k| format!("-{k}")))
}

/// A table name that does not sync, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skip {
    /// A table name, or a Secret as `namespace/name`.
    pub subject: String,
    pub reason: String,
}

/// Two or more table names claiming one Secret key: none of them is applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub secret: SecretRef,
    pub key: String,
    pub sources: Vec<ItemId>,
}

/// A key's desired value and where it came from.
#[derive(Debug, Clone)]
pub struct DesiredKey {
    pub value: SecretValue,
    pub source: ItemId,
}

/// Why a key's live value must be left as it is this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Its item failed to decrypt.
    Failed,
    /// Several table names claim it.
    Conflict,
}

/// The keys one Secret should hold.
#[derive(Debug, Clone, Default)]
pub struct DesiredSecret {
    pub keys: KeyMap<DesiredKey>,
    /// Keys named by the table whose live value stays untouched.
    pub held: BTreeMap<String, Hold>,
}

impl DesiredSecret {
    /// `sha256:` and 32 hex digits over the key names and the item versions
    /// they come from, never the values: it changes when any key's source
    /// does, and can be shown anywhere (annotations, restarts, logs).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(
            self.keys
                .iter()
                .map(|(key, want)| (key.as_str(), want.source.to_string())),
        )
    }

    /// Where each key comes from (`name@version`), in key order.
    pub fn items(&self) -> impl Iterator<Item = String> + '_ {
        self.keys.values().map(|want| want.source.to_string())
    }
}

/// [`DesiredSecret::fingerprint`] of keys and their items (`name@version`),
/// given in key order: what a snapshot file's `sources` annotation yields.
pub fn fingerprint_of<'a>(sources: impl Iterator<Item = (&'a str, String)>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for (key, source) in sources {
        hash.update(format!("{key}={source}\n").as_bytes());
    }
    format!("sha256:{}", &hex::encode(hash.finalize())[..32])
}

/// The desired state built from the table.
#[derive(Debug, Default)]
pub struct Manifest {
    pub secrets: BTreeMap<SecretRef, DesiredSecret>,
    pub skipped: Vec<Skip>,
    pub conflicts: Vec<Conflict>,
    pub failures: Vec<ItemFailure>,
    filter: NamespaceFilter,
    existing: BTreeSet<String>,
}

impl Manifest {
    /// Exactly these Secrets and nothing else in scope: what a rollback or
    /// `plan --from-snapshot` compares with the cluster.
    pub fn of_secrets(secrets: BTreeMap<SecretRef, DesiredSecret>) -> Self {
        Self {
            secrets,
            ..Self::default()
        }
    }

    /// Whether credsync may act in `namespace`: managed Secrets elsewhere
    /// are left alone even if the table no longer names them.
    pub fn in_scope(&self, namespace: &str) -> bool {
        self.filter.reason_to_skip(namespace).is_none() && self.existing.contains(namespace)
    }
}

/// A value another source already read and mapped (Secrets Manager): it
/// joins the selection under the same namespace and conflict rules.
#[derive(Debug, Clone)]
pub struct Ready {
    pub target: Target,
    pub credential: Credential,
}

/// A source's failure whose keys keep their live values (the keys a failed
/// Secrets Manager secret held the last time it was read).
#[derive(Debug, Clone)]
pub struct Failed {
    pub failure: ItemFailure,
    pub keys: Vec<Target>,
}
