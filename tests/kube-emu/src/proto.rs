//! Just enough Kubernetes protobuf decoding for request bodies.
//!
//! kubectl's typed commands (`kubectl create secret generic`, `create
//! configmap`, `create namespace`) send `application/vnd.kubernetes.protobuf`
//! and do not fall back to JSON on 415. A real server accepts that, so we
//! decode those bodies into the JSON form the store works with. Responses
//! are always JSON, which the client also accepts.
//!
//! Wire format: the magic bytes `k8s\0`, then a `runtime.Unknown` message
//! { typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2 }, where `raw` is the
//! object's own message as defined in k8s.io/api's generated.proto.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// All (field number, value) pairs of one message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    fn varint(buf: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    let mut out = vec![];
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                buf = buf.get(n..).ok_or("truncated fixed field")?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length overflow")?;
                let (bytes, rest) = (buf.get(..len).ok_or("truncated field")?, &buf[len..]);
                buf = rest;
                Field::Bytes(bytes)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A map entry { key = 1; value = 2 }; `bytes_value` base64-encodes the value.
fn map_entry(b: &[u8], bytes_value: bool, into: &mut Map<String, Value>) -> Result<(), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => k = text(x),
            (2, Field::Bytes(x)) => {
                v = if bytes_value {
                    STANDARD.encode(x)
                } else {
                    text(x)
                }
            }
            _ => {}
        }
    }
    into.insert(k, json!(v));
    Ok(())
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers, mut owners) =
        (Map::new(), Map::new(), vec![], vec![]);
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => _ = m.insert("name".into(), json!(text(x))),
            (2, Field::Bytes(x)) => _ = m.insert("generateName".into(), json!(text(x))),
            (3, Field::Bytes(x)) => _ = m.insert("namespace".into(), json!(text(x))),
            (5, Field::Bytes(x)) => _ = m.insert("uid".into(), json!(text(x))),
            (6, Field::Bytes(x)) => _ = m.insert("resourceVersion".into(), json!(text(x))),
            (11, Field::Bytes(x)) => map_entry(x, false, &mut labels)?,
            (12, Field::Bytes(x)) => map_entry(x, false, &mut annotations)?,
            (13, Field::Bytes(x)) => owners.push(owner_reference(x)?),
            (14, Field::Bytes(x)) => finalizers.push(json!(text(x))),
            _ => {}
        }
    }
    // Empty strings are how protobuf says "unset"; drop them like JSON omitempty.
    m.retain(|_, v| v != "");
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    Ok(Value::Object(m))
}

fn owner_reference(b: &[u8]) -> Result<Value, String> {
    let mut o = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => _ = o.insert("kind".into(), json!(text(x))),
            (3, Field::Bytes(x)) => _ = o.insert("name".into(), json!(text(x))),
            (4, Field::Bytes(x)) => _ = o.insert("uid".into(), json!(text(x))),
            (5, Field::Bytes(x)) => _ = o.insert("apiVersion".into(), json!(text(x))),
            (6, Field::Varint(v)) => _ = o.insert("controller".into(), json!(v != 0)),
            (7, Field::Varint(v)) => _ = o.insert("blockOwnerDeletion".into(), json!(v != 0)),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn secret(b: &[u8]) -> Result<Value, String> {
    let mut obj = json!({});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => map_entry(x, true, &mut data)?,
            (3, Field::Bytes(x)) => obj["type"] = json!(text(x)),
            (4, Field::Bytes(x)) => map_entry(x, false, &mut string_data)?,
            (5, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        obj["stringData"] = Value::Object(string_data);
    }
    Ok(obj)
}

fn config_map(b: &[u8]) -> Result<Value, String> {
    let mut obj = json!({});
    let (mut data, mut binary) = (Map::new(), Map::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) => map_entry(x, false, &mut data)?,
            (3, Field::Bytes(x)) => map_entry(x, true, &mut binary)?,
            (4, Field::Varint(v)) => obj["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        obj["binaryData"] = Value::Object(binary);
    }
    Ok(obj)
}

fn namespace(b: &[u8]) -> Result<Value, String> {
    let mut obj = json!({});
    for (n, f) in fields(b)? {
        if let (1, Field::Bytes(x)) = (n, f) {
            obj["metadata"] = object_meta(x)?;
        }
    }
    Ok(obj)
}

/// Decodes a protobuf request body of a Secret, ConfigMap or Namespace.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing k8s protobuf magic prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(unknown)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Field::Bytes(x)) => api_version = text(x),
                        (2, Field::Bytes(x)) => kind = text(x),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let mut obj = match kind.as_str() {
        "Secret" => secret(raw)?,
        "ConfigMap" => config_map(raw)?,
        "Namespace" => namespace(raw)?,
        other => {
            return Err(format!(
                "protobuf bodies of kind {other:?} are not emulated; send JSON"
            ));
        }
    };
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [ld(1, b"s"), ld(3, b"team-a")].concat();
        let entry = [ld(1, b"a"), ld(2, b"b")].concat();
        let secret = [ld(1, &meta), ld(2, &entry), ld(3, b"Opaque")].concat();
        let type_meta = [ld(1, b"v1"), ld(2, b"Secret")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &type_meta), ld(2, &secret)].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "s", "namespace": "team-a"}, "data": {"a": "Yg=="}})
        );
    }
}
