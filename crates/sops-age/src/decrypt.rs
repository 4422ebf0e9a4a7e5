//! Opening a file: unwrap the data key, decrypt the values its rule
//! encrypts, and check the MAC over the whole tree.

use std::collections::BTreeMap;

use sha2::{Digest, Sha512};

use crate::SopsError;
use crate::cipher::{Ciphertexts, DataKey, ValueError, decrypt_value};
use crate::go::{go_parse_bool, go_rfc3339};
use crate::keys::{Identities, unwrap_data_key};
use crate::mac::{MAC_ONLY_ENCRYPTED_INIT, mac_bytes, upper_hex};
use crate::metadata::{Meta, Rule};
use crate::parse::parse_file;
use crate::tree::{Entries, Node};

/// An opened file: its data key, decrypted tree and what can be carried over.
pub(crate) struct Decrypted {
    pub(crate) data_key: DataKey,
    pub(crate) tree: Entries,
    pub(crate) meta: Meta,
    /// Additional data (`data:KEY:`) -> (plaintext, ENC string), `type:str` only.
    pub(crate) ciphertexts: Ciphertexts,
    pub(crate) mac_hex: String,
}

pub(crate) fn decrypt_file(text: &str, identities: &Identities) -> Result<Decrypted, SopsError> {
    let (tree, sops) = parse_file(text)?;
    let meta = Meta::from_value(&sops)?;
    let rule = meta.rule()?;
    if meta.groups > 1 {
        return Err(SopsError::Unsupported(
            "several key groups (Shamir secret sharing)".to_owned(),
        ));
    }
    if meta.age.is_empty() {
        return Err(SopsError::Unsupported(format!(
            "the data key is wrapped for no age recipient (only {}); credsync reads age only",
            if meta.other_key_types.is_empty() {
                "nothing".to_owned()
            } else {
                meta.other_key_types.join(", ")
            }
        )));
    }
    let mut data_key = None;
    for entry in &meta.age {
        if let Some(key) = unwrap_data_key(&entry.enc, identities)? {
            data_key = Some(key);
            break;
        }
    }
    let data_key = data_key.ok_or_else(|| SopsError::NoMatchingIdentity {
        recipients: meta.all_recipients(),
    })?;

    let mut walk = DecryptWalk {
        key: &data_key,
        rule: &rule,
        mac_only_encrypted: meta.mac_only_encrypted,
        hasher: Sha512::new(),
        ciphertexts: BTreeMap::new(),
    };
    if meta.mac_only_encrypted {
        walk.hasher.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut path = Vec::new();
    let tree = tree
        .into_iter()
        .map(|(key, node)| {
            path.push(key);
            let node = walk.node(node, &mut path);
            let key = path.pop().unwrap_or_default();
            node.map(|node| (key, node))
        })
        .collect::<Result<Entries, _>>()?;
    let mac_hex = upper_hex(&walk.hasher.finalize());
    let ciphertexts = walk.ciphertexts;

    // An edited or missing MAC and a MAC that does not match are the same to
    // sops: codes.MacMismatch (`cmd/sops/common/common.go`).
    let aad = go_rfc3339(&meta.lastmodified)?;
    let stored = match decrypt_value(&data_key, &meta.mac, &aad) {
        Ok((plain, _)) if !plain.is_empty() => plain,
        _ => return Err(SopsError::MacMismatch),
    };
    if stored.as_slice() != mac_hex.as_bytes() {
        return Err(SopsError::MacMismatch);
    }
    Ok(Decrypted {
        data_key,
        tree,
        meta,
        ciphertexts,
        mac_hex,
    })
}

pub(crate) struct DecryptWalk<'a> {
    pub(crate) key: &'a DataKey,
    pub(crate) rule: &'a Rule,
    pub(crate) mac_only_encrypted: bool,
    pub(crate) hasher: Sha512,
    pub(crate) ciphertexts: Ciphertexts,
}

impl DecryptWalk<'_> {
    /// Mirrors `Tree.Decrypt` (`sops.go`): leaves in document order, sequence
    /// items under their parent's path, nulls neither decrypted nor hashed.
    pub(crate) fn node(&mut self, node: Node, path: &mut Vec<String>) -> Result<Node, SopsError> {
        match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (key, child) in entries {
                    path.push(key);
                    let child = self.node(child, path);
                    let key = path.pop().unwrap_or_default();
                    out.push((key, child?));
                }
                Ok(Node::Map(out))
            }
            Node::Seq(items) => Ok(Node::Seq(
                items
                    .into_iter()
                    .map(|item| self.node(item, path))
                    .collect::<Result<_, _>>()?,
            )),
            Node::Null => Ok(Node::Null),
            leaf => {
                let encrypted = self.rule.encrypts(path);
                let leaf = if encrypted {
                    self.decrypt_leaf(leaf, path)?
                } else {
                    leaf
                };
                if encrypted || !self.mac_only_encrypted {
                    self.hasher.update(mac_bytes(&leaf).as_slice());
                }
                Ok(leaf)
            }
        }
    }

    pub(crate) fn decrypt_leaf(&mut self, leaf: Node, path: &[String]) -> Result<Node, SopsError> {
        let aad = format!("{}:", path.join(":"));
        let shown = aad.clone();
        let Node::Str(enc) = leaf else {
            return Err(SopsError::Malformed(format!(
                "the value at {shown} should be encrypted but is not a string"
            )));
        };
        let enc = std::str::from_utf8(&enc).map_err(|_| {
            SopsError::Malformed(format!("the value at {shown} is not a sops ENC[...] value"))
        })?;
        let (plain, kind) = match decrypt_value(self.key, enc, &aad) {
            Ok(decrypted) => decrypted,
            Err(ValueError::NotEnc) => {
                return Err(SopsError::Malformed(format!(
                    "the value at {shown} should be encrypted but is not a sops ENC[...] value"
                )));
            }
            Err(ValueError::Unsupported(what)) => {
                return Err(SopsError::Unsupported(format!(
                    "the value at {shown}: {what}"
                )));
            }
            Err(ValueError::Auth) => return Err(SopsError::BadCiphertext { path: shown }),
        };
        let text = || {
            std::str::from_utf8(&plain).map_err(|_| {
                SopsError::Malformed(format!("the value at {shown} is not valid UTF-8"))
            })
        };
        let typed = |what: &str| {
            SopsError::Malformed(format!("the value at {shown} is not a valid {what}"))
        };
        Ok(match kind.as_str() {
            "str" => {
                if !plain.is_empty() {
                    self.ciphertexts
                        .entry(aad)
                        .or_insert_with(|| (plain.clone(), enc.to_owned()));
                }
                Node::Str(plain)
            }
            "bytes" | "time" => Node::Str(plain),
            "int" => Node::Int(
                text()?
                    .parse::<i64>()
                    .map_err(|_| typed("integer"))?
                    .to_string(),
            ),
            "float" => Node::Float(text()?.parse::<f64>().map_err(|_| typed("float"))?),
            "bool" => Node::Bool(go_parse_bool(text()?).ok_or_else(|| typed("boolean"))?),
            other => {
                return Err(SopsError::Unsupported(format!(
                    "the value at {shown} has type '{other}'"
                )));
            }
        })
    }
}
