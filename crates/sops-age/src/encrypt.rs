//! Sealing a tree: encrypt `data`/`stringData` values, reuse what the
//! previous file already holds, sign the MAC, and print.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha512};

use crate::SopsError;
use crate::cipher::{Ciphertexts, DataKey, encrypt_value, fresh_data_key, parse_enc};
use crate::decrypt::{Decrypted, decrypt_file};
use crate::emit::{Out, emit};
use crate::keys::{Identities, Recipients, wrap_data_key};
use crate::mac::upper_hex;
use crate::metadata::AgeEntry;
use crate::tree::Node;

/// What a readable previous file lends to the next one.
pub(crate) struct Previous {
    pub(crate) decrypted: Decrypted,
}

impl Previous {
    /// Opens `text` if it can lend its key: it opens, its recipients are the
    /// new ones in the same order, and it is laid out as credsync writes.
    pub(crate) fn load(
        text: &str,
        identities: &Identities,
        recipients: &Recipients,
    ) -> Option<Self> {
        let decrypted = decrypt_file(text, identities).ok()?;
        let meta = &decrypted.meta;
        let same_recipients = wrapped_for(&meta.age, recipients);
        let emittable =
            meta.age.iter().all(|entry| is_armor(&entry.enc)) && parse_enc(&meta.mac).is_some();
        (same_recipients && emittable && meta.is_credsync_layout()).then_some(Self { decrypted })
    }
}

/// An age armor we can write back as a YAML literal block unchanged.
pub(crate) fn is_armor(enc: &str) -> bool {
    enc.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n")
        && enc.ends_with("-----END AGE ENCRYPTED FILE-----\n")
        && enc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | ' ' | '\n'))
        && !enc.contains(" \n")
}

/// A fresh data key wrapped for the recipients once, for the files sealed
/// afresh together (see [`crate::seal_sharing`]).
pub struct SharedKey {
    key: DataKey,
    age: Vec<AgeEntry>,
}

impl SharedKey {
    pub fn new(recipients: &Recipients) -> Result<Self, SopsError> {
        let key = fresh_data_key()?;
        let age = wrap_for(&key, recipients)?;
        Ok(Self { key, age })
    }

    /// Its key and wrapped keys, if wrapped for exactly `recipients`.
    fn for_recipients(&self, recipients: &Recipients) -> Option<(DataKey, Vec<AgeEntry>)> {
        wrapped_for(&self.age, recipients).then(|| (self.key.clone(), self.age.clone()))
    }
}

/// Whether `age` wraps a key for exactly `recipients`, in their order.
fn wrapped_for(age: &[AgeEntry], recipients: &Recipients) -> bool {
    age.len() == recipients.strings.len()
        && age
            .iter()
            .zip(&recipients.strings)
            .all(|(entry, r)| &entry.recipient == r)
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

fn wrap_for(key: &DataKey, recipients: &Recipients) -> Result<Vec<AgeEntry>, SopsError> {
    recipients
        .strings
        .iter()
        .zip(&recipients.parsed)
        .map(|(text, parsed)| {
            Ok(AgeEntry {
                recipient: text.clone(),
                enc: wrap_data_key(key, parsed)?,
            })
        })
        .collect()
}

pub(crate) fn seal_tree(
    plain: &[(String, Node)],
    recipients: &Recipients,
    previous: Option<(&str, &Identities)>,
    lastmodified: DateTime<Utc>,
    shared: Option<&SharedKey>,
) -> Result<String, SopsError> {
    let previous = previous.and_then(|(text, ids)| Previous::load(text, ids, recipients));
    let shared = shared.and_then(|shared| shared.for_recipients(recipients));
    let (data_key, age) = match (&previous, shared) {
        (Some(p), _) => (p.decrypted.data_key.clone(), p.decrypted.meta.age.clone()),
        (None, Some(shared)) => shared,
        (None, None) => {
            let key = fresh_data_key()?;
            let age = wrap_for(&key, recipients)?;
            (key, age)
        }
    };

    let mut walk = EncryptWalk {
        key: &data_key,
        previous: previous.as_ref().map(|p| &p.decrypted.ciphertexts),
        hasher: Sha512::new(),
        all_reused: true,
    };
    let mut path = Vec::new();
    let encrypted = walk.entries(plain, &mut path)?;
    let mac_hex = upper_hex(&walk.hasher.finalize());

    // Nothing changed at all: keep the old stamp and MAC, so the file is
    // byte for byte the previous one.
    let unchanged = previous.as_ref().filter(|p| {
        walk.all_reused && p.decrypted.mac_hex == mac_hex && p.decrypted.tree.as_slice() == plain
    });
    let (stamp, mac) = match unchanged {
        Some(p) => (
            p.decrypted.meta.lastmodified.clone(),
            p.decrypted.meta.mac.clone(),
        ),
        None => {
            // Go's time.RFC3339: whole seconds, `Z`; it is also the MAC's AAD.
            let stamp = lastmodified.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mac = encrypt_value(&data_key, mac_hex.as_bytes(), &stamp)?;
            (stamp, mac)
        }
    };
    Ok(emit(&encrypted, &age, &stamp, &mac))
}

pub(crate) struct EncryptWalk<'a> {
    pub(crate) key: &'a DataKey,
    pub(crate) previous: Option<&'a Ciphertexts>,
    pub(crate) hasher: Sha512,
    pub(crate) all_reused: bool,
}

impl EncryptWalk<'_> {
    /// Mirrors `Tree.Encrypt` (`sops.go`) for the string-only trees credsync
    /// writes: hash every leaf, encrypt those under `data`/`stringData`.
    pub(crate) fn entries(
        &mut self,
        entries: &[(String, Node)],
        path: &mut Vec<String>,
    ) -> Result<Vec<(String, Out)>, SopsError> {
        let mut out = Vec::with_capacity(entries.len());
        for (key, node) in entries {
            path.push(key.clone());
            let converted = self.node(node, path);
            path.pop();
            out.push((key.clone(), converted?));
        }
        Ok(out)
    }

    pub(crate) fn node(&mut self, node: &Node, path: &mut Vec<String>) -> Result<Out, SopsError> {
        let plain = match node {
            Node::Map(entries) => return Ok(Out::Map(self.entries(entries, path)?)),
            Node::Str(plain) => plain,
            _ => {
                return Err(SopsError::Malformed(format!(
                    "credsync writes string values only (at {}:)",
                    path.join(":")
                )));
            }
        };
        self.hasher.update(plain.as_slice());
        if !path.iter().any(|p| p == "data" || p == "stringData") {
            return String::from_utf8(plain.to_vec())
                .map(Out::Leaf)
                .map_err(|_| SopsError::Malformed("a metadata string is not UTF-8".to_owned()));
        }
        let aad = format!("{}:", path.join(":"));
        let reused = self
            .previous
            .and_then(|prev| prev.get(&aad))
            .filter(|(old, _)| old.as_slice() == plain.as_slice())
            .map(|(_, enc)| enc.clone());
        Ok(Out::Leaf(match reused {
            Some(enc) => enc,
            None => {
                if !plain.is_empty() {
                    self.all_reused = false;
                }
                encrypt_value(self.key, plain, &aad)?
            }
        }))
    }
}
