//! PATCH bodies: JSON merge patch (RFC 7386), strategic merge patch (which
//! for Secrets, ConfigMaps, Leases, Events and Namespaces behaves like a merge
//! patch once its `$` directives are dropped) and JSON patch (RFC 6902).

use serde_json::{Value, json};

use crate::store::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
}

impl PatchKind {
    /// From the request's Content-Type; None means 415.
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            _ => None,
        }
    }
}

pub fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal a non-object merge patch into an object",
                ));
            }
            merge(&mut doc, patch);
        }
        PatchKind::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            merge(&mut doc, &strip_directives(patch));
        }
        PatchKind::Json => {
            let ops = patch.as_array().ok_or_else(|| {
                ApiError::bad_request(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                )
            })?;
            for op in ops {
                // A failing operation is answered 422, as a real server does.
                json_patch_op(&mut doc, op).map_err(|m| ApiError::new(422, "Invalid", m))?;
            }
        }
    }
    Ok(doc)
}

/// RFC 7386: null deletes a key, objects merge recursively, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Drop `$patch`, `$retainKeys`, `$setElementOrder/...` and similar keys.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    if !path.starts_with('/') {
        return Err(format!("invalid JSON pointer {path:?}"));
    }
    Ok(path[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The container that holds the last token of `path`, and that token.
fn parent_mut<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut tokens = pointer_tokens(path)?;
    let last = tokens
        .pop()
        .ok_or_else(|| "cannot operate on the document root".to_string())?;
    let mut cur = doc;
    for t in &tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {path}"))?;
    }
    Ok((cur, last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid index in path: {path}"))?
            };
            if i > a.len() {
                return Err(format!(
                    "add operation does not apply: index out of bounds: {path}"
                ));
            }
            a.insert(i, value);
        }
        _ => {
            return Err(format!(
                "add operation does not apply: doc is missing path: {path}"
            ));
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent_mut(doc, path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: \"{path}\"");
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        Some(doc)
    } else {
        doc.pointer(path)
    }
}

fn json_patch_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let name = op
        .get("op")
        .and_then(Value::as_str)
        .ok_or("Unexpected kind: missing op")?;
    let path = op
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{name} operation: missing path"))?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| format!("{name} operation: missing value"))
    };
    let from = || {
        op.get("from")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{name} operation: missing from"))
    };
    match name {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(|_| ()),
        "replace" => {
            if get(doc, path).is_none() {
                return Err(format!(
                    "replace operation does not apply: doc is missing key: {path}"
                ));
            }
            if path.is_empty() {
                *doc = value()?;
                return Ok(());
            }
            remove(doc, path)?;
            add(doc, path, value()?)
        }
        "test" => {
            if get(doc, path) == Some(&value()?) {
                Ok(())
            } else {
                Err(format!("testing value {path} failed: test failed"))
            }
        }
        "move" => {
            let v = remove(doc, from()?)?;
            add(doc, path, v)
        }
        "copy" => {
            let v = get(doc, from()?).cloned().ok_or_else(|| {
                format!("copy operation does not apply: doc is missing from path: {path}")
            })?;
            add(doc, path, v)
        }
        other => Err(format!("Unexpected kind: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_deletes_with_null() {
        let mut doc = json!({"data": {"a": "1", "b": "2"}});
        merge(&mut doc, &json!({"data": {"a": null, "c": "3"}}));
        assert_eq!(doc, json!({"data": {"b": "2", "c": "3"}}));
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"data": {"a": "1"}, "list": [1, 2]});
        let p = json!([
            {"op": "test", "path": "/data/a", "value": "1"},
            {"op": "add", "path": "/data/b~1c", "value": "2"},
            {"op": "replace", "path": "/data/a", "value": "9"},
            {"op": "remove", "path": "/list/0"},
            {"op": "add", "path": "/list/-", "value": 3},
        ]);
        let out = apply(PatchKind::Json, &doc, &p).expect("patch applies");
        assert_eq!(out, json!({"data": {"a": "9", "b/c": "2"}, "list": [2, 3]}));
        let bad = apply(
            PatchKind::Json,
            &doc,
            &json!([{"op": "test", "path": "/data/a", "value": "x"}]),
        );
        assert_eq!(bad.map_err(|e| e.code).err(), Some(422));
    }
}
