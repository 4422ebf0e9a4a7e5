//! What a source of secrets hands the mapping: named, versioned items,
//! decrypted or failed. Credstash is today's source; the manifest and the
//! plan only see these types, so they do not depend on how a source reads.

use std::fmt;

use crate::secret::SecretValue;

/// An item a source found, before decryption: the mapping needs only its id.
pub trait SourceItem {
    fn id(&self) -> &ItemId;
}

/// One version of one source name (a Credstash name): what a reviewer audits as `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ItemId {
    pub name: String,
    pub version: String,
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A decrypted item.
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: ItemId,
    pub value: SecretValue,
}

/// An item that could not be decrypted; its key keeps its live value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    pub id: ItemId,
    /// Why, in words that never include the value.
    pub reason: String,
}
