//! From Secrets Manager names and values to Secret keys, without I/O.
//!
//! Two conventions of the tools our users come from:
//! - `path` (EDSM and most hand-made setups): `[prefix]namespace/secret`
//!   holds a JSON object whose members become keys, and
//!   `[prefix]namespace/secret/KEY` holds one key's whole value;
//! - `kiss`: `k8s-secret_<namespace>_<name>` holds a JSON object.
//!
//! Both end in the Credstash name rules (`namespace/secret/KEY` through
//! [`map_name`]), so a key is spelt, checked and skipped the same way
//! whichever source it came from.

use crate::manifest::{MappingError, Target, map_name};
use crate::secret::{MAX_SECRET_BYTES, SecretValue};

/// The kiss naming's fixed prefix.
pub const KISS_PREFIX: &str = "k8s-secret_";

/// How secret names map to Secrets (`--sm-names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NameScheme {
    Path,
    Kiss,
}

/// Where a secret's value goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A JSON object: each member is a key of `namespace/secret` (this string).
    Members(String),
    /// The whole value is the one key `namespace/secret/KEY` (this string).
    Whole(String),
}

/// Why a secret's name, or one of its parts, maps to no key; the words
/// plans print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name does not start with the prefix '{0}'")]
    Prefix(String),
    #[error(
        "name has {0} segment(s) after the prefix, expected namespace/secret (a JSON object) \
         or namespace/secret/KEY"
    )]
    Segments(usize),
    #[error("name does not start with '{KISS_PREFIX}'")]
    KissPrefix,
    #[error("name is not {KISS_PREFIX}<namespace>_<name>")]
    KissName,
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("the value is over Kubernetes' {MAX_SECRET_BYTES}-byte Secret limit")]
    TooLarge,
}

/// The shape a secret's name asks for, or why it maps to nothing.
pub fn shape(scheme: NameScheme, prefix: &str, name: &str) -> Result<Shape, NameError> {
    match scheme {
        NameScheme::Path => {
            let Some(rest) = name.strip_prefix(prefix) else {
                return Err(NameError::Prefix(prefix.to_owned()));
            };
            match rest.split('/').count() {
                2 => Ok(Shape::Members(rest.to_owned())),
                3 => Ok(Shape::Whole(rest.to_owned())),
                n => Err(NameError::Segments(n)),
            }
        }
        NameScheme::Kiss => {
            let rest = name
                .strip_prefix(KISS_PREFIX)
                .ok_or(NameError::KissPrefix)?;
            match rest.split_once('_') {
                Some((namespace, secret)) if !namespace.is_empty() && !secret.is_empty() => {
                    Ok(Shape::Members(format!("{namespace}/{secret}")))
                }
                _ => Err(NameError::KissName),
            }
        }
    }
}

/// A secret's current value as Secrets Manager returns it.
pub enum Stored {
    Text(SecretValue),
    Binary(SecretValue),
}

/// One key a secret yields: the JSON member it came from (None: the whole
/// value), where it lands and its bytes.
pub struct Part {
    pub member: Option<String>,
    pub target: Target,
    pub value: SecretValue,
}

/// What a secret yields: its keys, and why parts of it (or all of it) are skipped.
#[derive(Default)]
pub struct Expanded {
    pub parts: Vec<Part>,
    pub skipped: Vec<String>,
}

/// Splits a secret's value into keys as its shape says.
pub fn expand(shape: &Shape, stored: Stored) -> Expanded {
    let mut out = Expanded::default();
    match shape {
        Shape::Whole(name) => {
            let value = match stored {
                Stored::Text(v) | Stored::Binary(v) => v,
            };
            match whole(name, value) {
                Ok(part) => out.parts.push(part),
                Err(reason) => out.skipped.push(reason.to_string()),
            }
        }
        Shape::Members(base) => {
            let Stored::Text(text) = stored else {
                out.skipped.push(format!(
                    "a binary secret cannot be split into keys: name it {base}/KEY to hold one key"
                ));
                return out;
            };
            let parsed: Result<serde_json::Map<String, serde_json::Value>, _> =
                serde_json::from_slice(text.expose());
            let Ok(members) = parsed else {
                // Never the parser's message: it can quote the value.
                out.skipped.push(format!(
                    "the value is not a JSON object: {base} maps its members to keys \
                     (name it {base}/KEY to hold the whole value)"
                ));
                return out;
            };
            for (member, value) in members {
                let serde_json::Value::String(text) = value else {
                    out.skipped
                        .push(format!("member '{member}' is not a string"));
                    continue;
                };
                match whole(
                    &format!("{base}/{member}"),
                    SecretValue::new(text.into_bytes()),
                ) {
                    Ok(mut part) => {
                        part.member = Some(member);
                        out.parts.push(part);
                    }
                    Err(reason) => out.skipped.push(format!("member '{member}': {reason}")),
                }
            }
        }
    }
    out
}

fn whole(name: &str, value: SecretValue) -> Result<Part, NameError> {
    let target = map_name(name)?;
    if value.expose().len() > MAX_SECRET_BYTES {
        return Err(NameError::TooLarge);
    }
    Ok(Part {
        member: None,
        target,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Stored {
        Stored::Text(SecretValue::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn path_names_are_objects_or_single_keys() {
        assert_eq!(
            shape(NameScheme::Path, "", "team-a/db"),
            Ok(Shape::Members("team-a/db".into()))
        );
        assert_eq!(
            shape(NameScheme::Path, "prod/", "prod/team-a/db/PASSWORD"),
            Ok(Shape::Whole("team-a/db/PASSWORD".into()))
        );
        assert!(
            shape(NameScheme::Path, "", "loose")
                .unwrap_err()
                .to_string()
                .contains("1 segment")
        );
        assert!(
            shape(NameScheme::Path, "prod/", "dev/a/b")
                .unwrap_err()
                .to_string()
                .contains("prefix")
        );
    }

    #[test]
    fn kiss_names_carry_namespace_and_secret() {
        assert_eq!(
            shape(NameScheme::Kiss, "", "k8s-secret_team-a_db"),
            Ok(Shape::Members("team-a/db".into()))
        );
        assert!(shape(NameScheme::Kiss, "", "k8s-secret_nounderscore").is_err());
        assert!(shape(NameScheme::Kiss, "", "other_team-a_db").is_err());
    }

    #[test]
    fn json_members_become_keys_and_bad_members_are_skipped_by_name() {
        let out = expand(
            &Shape::Members("team-a/db".into()),
            text(r#"{"password":"p-1","db.user":"u","port":5432,"bad/key":"x"}"#),
        );
        let keys: Vec<(&str, &str)> = out
            .parts
            .iter()
            .map(|p| (p.member.as_deref().unwrap(), p.target.key.as_str()))
            .collect();
        assert_eq!(keys, [("db.user", "DB_USER"), ("password", "PASSWORD")]);
        assert_eq!(out.parts[1].value.expose(), b"p-1");
        assert_eq!(out.skipped.len(), 2, "{:?}", out.skipped);
        assert!(
            out.skipped
                .iter()
                .any(|s| s == "member 'port' is not a string")
        );
        assert!(
            out.skipped
                .iter()
                .any(|s| s.starts_with("member 'bad/key'"))
        );
    }

    #[test]
    fn values_that_cannot_be_split_say_why_without_quoting_them() {
        let out = expand(
            &Shape::Members("team-a/db".into()),
            text("[\"secret-in-array\"]"),
        );
        assert!(out.parts.is_empty());
        assert!(out.skipped[0].contains("not a JSON object"));
        assert!(!out.skipped[0].contains("secret-in-array"));
        let binary = Stored::Binary(SecretValue::new(vec![0, 159, 146, 150]));
        let out = expand(&Shape::Members("team-a/db".into()), binary);
        assert!(out.skipped[0].contains("binary"));
    }

    #[test]
    fn a_whole_value_keeps_its_bytes_and_an_oversized_one_is_skipped() {
        let bytes = vec![0u8, 255, 10, 13];
        let out = expand(
            &Shape::Whole("team-a/tls/KEY".into()),
            Stored::Binary(SecretValue::new(bytes.clone())),
        );
        assert_eq!(out.parts[0].value.expose(), bytes.as_slice());
        assert_eq!(out.parts[0].target.key, "KEY");
        let big = Stored::Binary(SecretValue::new(vec![1; MAX_SECRET_BYTES + 1]));
        let out = expand(&Shape::Whole("team-a/tls/KEY".into()), big);
        assert!(out.parts.is_empty() && out.skipped[0].contains("limit"));
    }
}
