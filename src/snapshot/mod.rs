//! The snapshot repository: the desired state as SOPS files in git.
//!
//! The `sops-age` crate writes and reads one Secret as a SOPS file (values
//! encrypted for age recipients, metadata readable); [`store`] keeps one such file per
//! Secret in a git repository, one commit per change of the desired state,
//! and reads old commits back for `history`, `show`, `diff` and `rollback`.

/// The branch snapshots are committed to.
pub const BRANCH: &str = "main";

pub mod remote;
pub mod request;
pub mod signing;
pub mod store;
mod worktree;

use std::collections::BTreeMap;

use crate::labels::SOURCES_ANNOTATION;
use crate::labels::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGED_KEYS_ANNOTATION};
use crate::manifest::{DesiredKey, DesiredSecret, SecretRef};
use crate::secret::SecretValue;
use crate::source::ItemId;
use sops_age::{Plaintext, SecretDocument};

/// The snapshot file of a desired Secret: applying it with kubectl gives a
/// Secret credsync recognizes as its own, and its annotations say where
/// every key came from.
pub fn document(secret: &SecretRef, desired: &DesiredSecret) -> SecretDocument {
    let keys: Vec<&str> = desired.keys.keys().map(String::as_str).collect();
    let sources = crate::labels::sources_annotation(
        desired.keys.iter().map(|(k, v)| (k, v.source.to_string())),
    );
    SecretDocument {
        namespace: secret.namespace.clone(),
        name: secret.name.clone(),
        labels: BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())]),
        annotations: BTreeMap::from([
            (MANAGED_KEYS_ANNOTATION.to_owned(), keys.join(",")),
            (SOURCES_ANNOTATION.to_owned(), sources),
        ]),
        data: desired
            .keys
            .iter()
            .map(|(k, v)| (k.clone(), Plaintext::new(v.value.expose().to_vec())))
            .collect(),
    }
}

/// A snapshot file back as a desired Secret (for rollback and plans).
pub fn desired(doc: SecretDocument) -> (SecretRef, DesiredSecret) {
    let sources = crate::labels::parse_sources(doc.annotations.get(SOURCES_ANNOTATION));
    let mut secret = DesiredSecret::default();
    for (key, value) in doc.data {
        // Files written by hand with sops have no sources: say so.
        let source = sources
            .get(&key)
            .map(String::as_str)
            .unwrap_or("snapshot@unknown");
        let (name, version) = source.rsplit_once('@').unwrap_or((source, ""));
        let source = ItemId {
            name: name.to_owned(),
            version: version.to_owned(),
        };
        let value = SecretValue::new(value.into_bytes());
        secret.keys.insert(key, DesiredKey { value, source });
    }
    (SecretRef::new(doc.namespace, doc.name), secret)
}
