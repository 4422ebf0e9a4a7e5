//! Label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
//! `k notin (a,b)`, comma = AND) and field selectors on list and watch.

use serde_json::Value;

use crate::store::{ApiError, ResourceType, meta_str};

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed labelSelector plus fieldSelector; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: Vec<Req>,
    /// (field path, wanted value, true for `=`/`==`, false for `!=`)
    fields: Vec<(String, String, bool)>,
}

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut parts = vec![];
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_label_req(part: &str) -> Result<Req, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "unable to parse requirement: invalid label selector: {part:?}"
        ))
    };
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Req::NotExists(k.trim().to_string()));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Req::NotEq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().ok_or_else(bad)?.to_string();
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(Req::Exists(key));
    };
    let (op, set) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(o, s)| (o, s.trim()));
    let (op, set) = if set.is_empty() {
        rest.split_once('(')
            .map_or((rest, ""), |(o, s)| (o.trim(), s))
    } else {
        (op, set)
    };
    let values: Vec<String> = set
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    match op {
        "in" => Ok(Req::In(key, values)),
        "notin" => Ok(Req::NotIn(key, values)),
        _ => Err(bad()),
    }
}

impl Selector {
    pub fn parse(
        res: &ResourceType,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Selector, ApiError> {
        let mut sel = Selector::default();
        for part in split_top(label_selector) {
            sel.labels.push(parse_label_req(&part)?);
        }
        for part in split_top(field_selector) {
            let (field, value, eq) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || (res.is("", "secrets") && field == "type")
                || (res.is("", "namespaces") && field == "status.phase");
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            sel.fields
                .push((field.to_string(), value.trim().to_string(), eq));
        }
        Ok(sel)
    }

    /// Adds `metadata.name=name` (a watch on a single object's URL).
    pub fn with_name(mut self, name: &str) -> Selector {
        self.fields
            .push(("metadata.name".into(), name.into(), true));
        self
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        let labels_ok = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v.as_str()),
            Req::NotEq(k, v) => label(k) != Some(v.as_str()),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(f, want, eq)| {
            let have = match f.as_str() {
                "metadata.name" => meta_str(obj, "name"),
                "metadata.namespace" => meta_str(obj, "namespace"),
                "type" => obj.get("type").and_then(Value::as_str).unwrap_or(""),
                "status.phase" => obj
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                _ => "",
            };
            (have == want) == *eq
        });
        labels_ok && fields_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::find_resource;
    use serde_json::json;

    fn sel(s: &str) -> Selector {
        let res = find_resource("", "v1", "secrets").expect("secrets served");
        Selector::parse(res, s, "").expect("selector parses")
    }

    #[test]
    fn label_operators() {
        let obj = json!({"metadata": {"name": "s", "labels": {"app": "x", "tier": "db"}}});
        for (s, want) in [
            ("app=x", true),
            ("app==x", true),
            ("app!=x", false),
            ("app!=y", true),
            ("app", true),
            ("!app", false),
            ("!other", true),
            ("app in (x,y)", true),
            ("app in (y, z)", false),
            ("app notin (y,z)", true),
            ("other notin (y)", true),
            ("app=x,tier in (db)", true),
            ("app=x,tier=web", false),
            ("", true),
        ] {
            assert_eq!(sel(s).matches(&obj), want, "{s}");
        }
    }
}
