//! A Kubernetes Secret manifest as the plaintext tree of a SOPS file, and
//! back: what is encrypted (`data`, `stringData`), what stays readable
//! (`metadata`), and how `stringData` merges into `data` as the API server
//! merges it.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::SopsError;
use crate::go::go_float;
use crate::plaintext::Plaintext;
use crate::tree::{Entries, Node, find, find_map, str_node, utf8};

/// A Secret manifest with plaintext values, as a caller builds it or reads it back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretDocument {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Raw bytes of each value (not base64).
    pub data: BTreeMap<String, Plaintext>,
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

/// The manifest credsync writes, in a fixed order (data keys sorted).
pub(crate) fn manifest_tree(doc: &SecretDocument) -> Entries {
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
pub(crate) fn document_from_tree(tree: &[(String, Node)]) -> Result<SecretDocument, SopsError> {
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
            doc.data.insert(key.clone(), Plaintext::new(bytes));
        }
    }
    Ok(doc)
}

/// `metadata.name` or `metadata.namespace`: required strings.
pub(crate) fn metadata_text(metadata: &[(String, Node)], name: &str) -> Result<String, SopsError> {
    match find(metadata, name) {
        Some(Node::Str(s)) => utf8(s, &format!("metadata.{name}")),
        _ => Err(SopsError::Malformed(format!(
            "metadata.{name} is missing or not a string"
        ))),
    }
}

/// Labels or annotations: string to string, or absent.
pub(crate) fn readable_string_map(
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

/// The readable part of a file's tree: metadata, key names, recipients.
pub(crate) fn outline_of(
    tree: &[(String, Node)],
    recipients: Vec<String>,
    lastmodified: String,
) -> Result<Outline, SopsError> {
    let metadata = find(tree, "metadata")
        .and_then(find_map)
        .unwrap_or_default();
    let mut keys: Vec<String> = ["data", "stringData"]
        .iter()
        .filter_map(|field| find(tree, field).and_then(find_map))
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
        recipients,
        lastmodified,
    })
}
