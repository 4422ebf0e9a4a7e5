//! The YAML tree of a SOPS file, typed as sops' YAML store types it.

use zeroize::Zeroizing;

use crate::SopsError;

/// A leaf or branch of a parsed file, typed as sops' YAML store types it
/// (yaml.v3 scalars into Go values). Strings are bytes, as Go strings are;
/// decrypted ones live in zeroizing buffers. No Debug: it may hold values.
#[derive(Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(String),
    Float(f64),
    Str(Zeroizing<Vec<u8>>),
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

pub(crate) type Entries = Vec<(String, Node)>;

pub(crate) fn str_node(s: &str) -> Node {
    Node::Str(Zeroizing::new(s.as_bytes().to_vec()))
}

pub(crate) fn find<'a>(entries: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

pub(crate) fn find_map(node: &Node) -> Option<&[(String, Node)]> {
    match node {
        Node::Map(entries) => Some(entries),
        _ => None,
    }
}

pub(crate) fn utf8(bytes: &[u8], what: &str) -> Result<String, SopsError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| SopsError::Malformed(format!("{what} is not valid UTF-8")))
}
