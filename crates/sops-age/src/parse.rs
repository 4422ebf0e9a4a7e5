//! Reading a file into its tree and its `sops` metadata.

use serde_yaml::Value;
use zeroize::Zeroizing;

use crate::SopsError;
use crate::tree::{Entries, Node};

/// Splits a file into its tree (document order, `sops` removed, as
/// `stores/yaml/store.go` does) and its `sops` metadata.
pub(crate) fn parse_file(text: &str) -> Result<(Entries, Value), SopsError> {
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

pub(crate) fn map_key(key: Value, parent: &str) -> Result<String, SopsError> {
    match key {
        Value::String(s) => Ok(s),
        // sops refuses non-string keys too (`sops.go`, walkBranch).
        _ => Err(SopsError::Malformed(format!(
            "a key under '{}' is not a string",
            if parent.is_empty() { "<top>" } else { parent }
        ))),
    }
}

pub(crate) fn node_from_yaml(value: Value, path: &str) -> Result<Node, SopsError> {
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
