//! What a real API server normalizes and rejects, with its messages, so that
//! client error handling is tested against realistic 400/422 answers.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::store::{ApiError, ResourceType, meta_str};

/// Secrets and ConfigMaps are limited to 1 MiB of data.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

/// One entry of Status.details.causes.
#[derive(Debug, Clone)]
pub struct FieldErr {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldErr {
    FieldErr {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: format!("Invalid value: {value:?}: {detail}"),
    }
}

fn required(field: impl Into<String>) -> FieldErr {
    FieldErr {
        reason: "FieldValueRequired",
        field: field.into(),
        message: "Required value".into(),
    }
}

fn too_long(field: impl Into<String>, max: usize) -> FieldErr {
    FieldErr {
        reason: "FieldValueTooLong",
        field: field.into(),
        message: format!("Too long: must have at most {max} bytes"),
    }
}

fn immutable(field: impl Into<String>, value: &str, detail: &str) -> FieldErr {
    invalid(field, value, detail)
}

const LABEL_FMT: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_FMT: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const KEY_FMT: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
const QNAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_FMT: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns_label_errors(s: &str) -> Vec<&'static str> {
    let mut errs = vec![];
    if s.len() > 63 {
        errs.push("must be no more than 63 characters");
    }
    let ok = !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum);
    if !ok {
        errs.push(LABEL_FMT);
    }
    errs
}

/// Dot-separated DNS labels, at most 253 characters.
pub fn dns_subdomain_errors(s: &str) -> Vec<&'static str> {
    let mut errs = vec![];
    if s.len() > 253 {
        errs.push("must be no more than 253 characters");
    }
    let ok = !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_lower_alnum(c) || c == '-')
                && part.starts_with(is_lower_alnum)
                && part.ends_with(is_lower_alnum)
        });
    if !ok {
        errs.push(SUBDOMAIN_FMT);
    }
    errs
}

/// Secret and ConfigMap data keys: `[-._a-zA-Z0-9]+`, not `.`, `..`, `..x`.
pub fn config_key_errors(k: &str) -> Vec<&'static str> {
    let mut errs = vec![];
    if k.len() > 253 {
        errs.push("must be no more than 253 characters");
    }
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(KEY_FMT);
    }
    if k == "." {
        errs.push("must not be '.'");
    } else if k == ".." {
        errs.push("must not be '..'");
    } else if k.starts_with("..") {
        errs.push("must not start with '..'");
    }
    errs
}

fn qname_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label and annotation keys: `[prefix/]name`.
fn qualified_name_errors(k: &str) -> Vec<&'static str> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let mut errs = vec![];
    if let Some(p) = prefix
        && !dns_subdomain_errors(p).is_empty()
    {
        errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
    }
    if !qname_part_ok(name) {
        errs.push(QNAME_FMT);
    }
    errs
}

fn check_metadata(res: &ResourceType, obj: &Value, errs: &mut Vec<FieldErr>) {
    let name = meta_str(obj, "name");
    if name.is_empty() {
        errs.push(required("metadata.name"));
    } else {
        let problems = if res.is("", "namespaces") {
            dns_label_errors(name)
        } else {
            dns_subdomain_errors(name)
        };
        errs.extend(
            problems
                .into_iter()
                .map(|p| invalid("metadata.name", name, p)),
        );
    }
    if res.namespaced {
        let ns = meta_str(obj, "namespace");
        errs.extend(
            dns_label_errors(ns)
                .into_iter()
                .map(|p| invalid("metadata.namespace", ns, p)),
        );
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            errs.extend(
                qualified_name_errors(k)
                    .into_iter()
                    .map(|p| invalid("metadata.labels", k, p)),
            );
            let v = v.as_str().unwrap_or("");
            if v.len() > 63 {
                errs.push(invalid(
                    "metadata.labels",
                    v,
                    "must be no more than 63 characters",
                ));
            }
            if !v.is_empty() && !qname_part_ok(v) {
                errs.push(invalid("metadata.labels", v, LABEL_VALUE_FMT));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            errs.extend(
                qualified_name_errors(&k.to_lowercase())
                    .into_iter()
                    .map(|p| invalid("metadata.annotations", k, p)),
            );
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_SIZE {
            errs.push(too_long("metadata.annotations", MAX_ANNOTATIONS_SIZE));
        }
    }
}

/// Go's encoding/base64 wording, which is what a real server reports.
fn go_base64_error(e: &base64::DecodeError) -> String {
    let at = match e {
        base64::DecodeError::InvalidByte(i, _) | base64::DecodeError::InvalidLastSymbol(i, _) => *i,
        base64::DecodeError::InvalidLength(n) => *n,
        base64::DecodeError::InvalidPadding => 0,
    };
    format!("illegal base64 data at input byte {at}")
}

/// Conversions a real server does while decoding: Secret `stringData` folded
/// into `data` (and dropped), `type` defaulted; Namespace status/label filled.
/// Bodies a real server cannot decode are a 400, not a 422.
pub fn normalize(res: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            res.kind, res.version, res.kind
        ))
    };
    if res.is("", "secrets") {
        let mut data = match obj.get("data") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(cannot("json: cannot unmarshal into Go struct field Secret.data of type map[string][]uint8".into())),
        };
        for (k, v) in data.iter_mut() {
            match v {
                Value::Null => *v = json!(""),
                Value::String(s) => {
                    STANDARD
                        .decode(s.as_bytes())
                        .map_err(|e| cannot(go_base64_error(&e)))?;
                }
                _ => {
                    return Err(cannot(format!(
                        "json: cannot unmarshal into Go struct field Secret.data of type []uint8 (key {k:?})"
                    )));
                }
            }
        }
        if let Some(sd) = obj.get("stringData") {
            let sd = sd
                .as_object()
                .ok_or_else(|| cannot("stringData must be an object".into()))?;
            for (k, v) in sd {
                let s = v
                    .as_str()
                    .ok_or_else(|| cannot(format!("stringData[{k}] must be a string")))?;
                data.insert(k.clone(), json!(STANDARD.encode(s.as_bytes())));
            }
        }
        let m = obj
            .as_object_mut()
            .ok_or_else(|| cannot("not an object".into()))?;
        m.remove("stringData");
        if data.is_empty() {
            m.remove("data");
        } else {
            m.insert("data".into(), Value::Object(data));
        }
        if m.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            m.insert("type".into(), json!("Opaque"));
        }
    }
    if res.is("", "configmaps")
        && let Some(bd) = obj.get("binaryData").and_then(Value::as_object)
    {
        for v in bd.values() {
            let s = v.as_str().unwrap_or("");
            STANDARD
                .decode(s.as_bytes())
                .map_err(|e| cannot(go_base64_error(&e)))?;
        }
    }
    if res.is("", "namespaces") {
        let name = meta_str(obj, "name").to_string();
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        obj["status"] = json!({"phase": "Active"});
        if !obj
            .pointer("/metadata/labels")
            .is_some_and(Value::is_object)
        {
            obj["metadata"]["labels"] = json!({});
        }
        obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    Ok(())
}

/// Validation of a normalized object; `old` is the stored object on update.
const MAX_EVENT_NOTE: usize = 1024;

pub fn validate(res: &ResourceType, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut errs = vec![];
    check_metadata(res, obj, &mut errs);
    if res.is("", "secrets") {
        check_secret(obj, old, &mut errs);
    }
    if res.is("", "configmaps") {
        check_configmap(obj, &mut errs);
    }
    // As the real server: events.k8s.io/v1 notes of at most 1 KiB.
    if res.is("events.k8s.io", "events")
        && obj
            .get("note")
            .and_then(Value::as_str)
            .is_some_and(|note| note.len() > MAX_EVENT_NOTE)
    {
        errs.push(FieldErr {
            reason: "FieldValueInvalid",
            field: "note".into(),
            message: format!("Invalid value: \"\": can have at most {MAX_EVENT_NOTE} characters"),
        });
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res, meta_str(obj, "name"), errs))
    }
}

fn check_secret(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldErr>) {
    let empty = Map::new();
    let data = obj.get("data").and_then(Value::as_object).unwrap_or(&empty);
    let mut total = 0;
    for (k, v) in data {
        errs.extend(
            config_key_errors(k)
                .into_iter()
                .map(|p| invalid(format!("data[{k}]"), k, p)),
        );
        total += v
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .map_or(0, |b| b.len());
    }
    if total > MAX_DATA_SIZE {
        errs.push(too_long("data", MAX_DATA_SIZE));
    }
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    let required_keys: &[&str] = match ty {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for k in required_keys {
        if !data.contains_key(*k) {
            errs.push(required(format!("data[{k}]")));
        }
    }
    if ty == "kubernetes.io/service-account-token"
        && obj
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .is_none()
    {
        errs.push(required(
            "metadata.annotations[kubernetes.io/service-account.name]",
        ));
    }
    if let Some(old) = old {
        let old_ty = old.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        if old_ty != ty {
            errs.push(immutable("type", ty, "field is immutable"));
        }
        if old.get("immutable") == Some(&json!(true)) {
            if obj.get("data") != old.get("data") {
                errs.push(FieldErr {
                    reason: "FieldValueForbidden",
                    field: "data".into(),
                    message: "Forbidden: field is immutable when `immutable` is set".into(),
                });
            }
            if obj.get("immutable") != Some(&json!(true)) {
                errs.push(FieldErr {
                    reason: "FieldValueForbidden",
                    field: "immutable".into(),
                    message: "Forbidden: field is immutable when `immutable` is set".into(),
                });
            }
        }
    }
}

fn check_configmap(obj: &Value, errs: &mut Vec<FieldErr>) {
    let mut total = 0;
    for field in ["data", "binaryData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for (k, v) in m {
                errs.extend(
                    config_key_errors(k)
                        .into_iter()
                        .map(|p| invalid(format!("{field}[{k}]"), k, p)),
                );
                total += k.len() + v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > MAX_DATA_SIZE {
        errs.push(FieldErr {
            reason: "FieldValueTooLong",
            field: String::new(),
            message: format!("Too long: must have at most {MAX_DATA_SIZE} bytes"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(dns_label_errors("team-a").is_empty());
        assert!(!dns_label_errors("Team").is_empty());
        assert!(!dns_label_errors("a.b").is_empty());
        assert!(dns_subdomain_errors("db.creds-1").is_empty());
        assert!(!dns_subdomain_errors("db..x").is_empty());
        assert!(config_key_errors("DB_PASSWORD").is_empty());
        assert!(config_key_errors(".env").is_empty());
        assert!(!config_key_errors("a b").is_empty());
        assert!(!config_key_errors("..").is_empty());
        assert!(!config_key_errors("..x").is_empty());
    }
}
