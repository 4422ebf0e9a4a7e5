//! Kubernetes Secret manifests as SOPS files for age recipients: metadata
//! readable, values encrypted, byte-compatible with sops 3.11.
//!
//! A file is what `sops -e --age R --encrypted-regex '^(data|stringData)$'`
//! would write for the manifest, so the real `sops -d FILE` (and therefore
//! Flux, or `sops -d FILE | kubectl apply -f -`) can use it as is, and files
//! written by `sops -e` open here. The format facts follow getsops/sops 3.11:
//!
//! - every value whose path has a component matching `encrypted_regex` is
//!   AES-256-GCM encrypted with the file's 32-byte data key, a random 32-byte
//!   IV, the path joined as `data:KEY:` as additional data, and written as
//!   `ENC[AES256_GCM,data:..,iv:..,tag:..,type:str]`; an empty value stays
//!   `""` (sops never encrypts empty strings) (`aes/cipher.go`, `sops.go`):
//!   [`cipher`];
//! - the MAC is SHA-512 over every leaf value of the tree in document order
//!   (all values, not only encrypted ones, unless `mac_only_encrypted`),
//!   written as upper-case hex and encrypted like a value with the
//!   `lastmodified` RFC 3339 string as additional data (`sops.go`,
//!   `cmd/sops/common/common.go`): [`mac`], [`decrypt`], [`encrypt`];
//! - the data key is wrapped for each age recipient as an ASCII-armored age
//!   file (`age/keysource.go`): [`keys`]; the `sops` metadata block
//!   ([`metadata`]) is written in the field order of `stores/stores.go` with
//!   the 4-space indentation of `stores/yaml/store.go`: [`emit`].
//!
//! Re-sealing with the previous file reuses its data key and the ciphertext of
//! every unchanged value, so a git diff shows exactly the keys that changed.
//!
//! No error, Debug or Display of this crate ever carries a value or key
//! material: only key names, paths and public recipients.

mod age_file;
mod cipher;
mod decrypt;
mod document;
mod emit;
mod encrypt;
mod error;
mod go;
mod keys;
mod mac;
mod metadata;
mod parse;
mod plaintext;
mod tree;

#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};

pub use age_file::{open_bytes, seal_bytes};
pub use document::{Outline, SecretDocument};
pub use encrypt::SharedKey;
pub use error::SopsError;
pub use keys::{Identities, Recipients};
pub use plaintext::Plaintext;

/// Which paths are encrypted: the values of a Secret, nothing else.
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// The sops version whose format this crate writes (and says it writes).
pub const SOPS_VERSION: &str = "3.11.0";

/// Writes `doc` as a SOPS file for `recipients`.
///
/// With `previous` (the last file for this Secret and identities that can
/// open it) and unchanged recipients, the data key, the wrapped keys and the
/// ciphertext of every unchanged value are kept byte for byte; only changed
/// values, `lastmodified` and `mac` are new. If nothing changed at all, the
/// old `lastmodified` and `mac` are kept too, so the output equals the old
/// file. A previous file that cannot be opened (wrong identity, tampered,
/// other format) only means a fresh data key.
pub fn seal(
    doc: &SecretDocument,
    recipients: &Recipients,
    previous: Option<(&str, &Identities)>,
    lastmodified: DateTime<Utc>,
) -> Result<String, SopsError> {
    seal_document(doc, recipients, previous, lastmodified, None)
}

/// [`seal`], but a file without a usable `previous` takes `shared`'s data
/// key (if wrapped for the same recipients) instead of a key of its own.
///
/// Wrapping a key for a recipient is two X25519 operations, a third of the
/// CPU of sealing a new file; files sealed in one go (a first snapshot of
/// 50,000 Secrets) can share one. Each file stays a complete SOPS file, its
/// MAC its own. What sharing gives away: whoever can open one of these
/// files can open the others, which holds for every recipient anyway.
pub fn seal_sharing(
    doc: &SecretDocument,
    recipients: &Recipients,
    previous: Option<(&str, &Identities)>,
    lastmodified: DateTime<Utc>,
    shared: &SharedKey,
) -> Result<String, SopsError> {
    seal_document(doc, recipients, previous, lastmodified, Some(shared))
}

fn seal_document(
    doc: &SecretDocument,
    recipients: &Recipients,
    previous: Option<(&str, &Identities)>,
    lastmodified: DateTime<Utc>,
    shared: Option<&SharedKey>,
) -> Result<String, SopsError> {
    let tree = document::manifest_tree(doc);
    encrypt::seal_tree(&tree, recipients, previous, lastmodified, shared)
}

/// Decrypts a SOPS file (written by this crate or by `sops -e`) and checks
/// its MAC. `stringData` is merged into `data` as the API server would.
pub fn open(text: &str, identities: &Identities) -> Result<SecretDocument, SopsError> {
    let decrypted = decrypt::decrypt_file(text, identities)?;
    document::document_from_tree(&decrypted.tree)
}

/// The readable part of a SOPS Secret file, without any identity.
pub fn outline(text: &str) -> Result<Outline, SopsError> {
    let (tree, sops) = parse::parse_file(text)?;
    let meta = metadata::Meta::from_value(&sops)?;
    document::outline_of(&tree, meta.all_recipients(), meta.lastmodified)
}
