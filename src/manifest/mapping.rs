//! How a table name becomes a Secret and a key: `namespace/secret-name/KEY`
//! names Secret `secret-name` in `namespace`, data key `KEY` upper-cased with
//! `.` and `-` turned into `_` (or as Kubestash-V2's code does), and the
//! Kubernetes naming rules every part must follow.

use super::{SecretRef, Target};

/// Why a table name maps to no Secret key; the words plans print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("name has {0} segment(s), expected namespace/secret-name/KEY")]
    Segments(usize),
    #[error(
        "namespace '{0}' is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
    )]
    Namespace(String),
    #[error(
        "secret name '{0}' is not a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most 253)"
    )]
    SecretName(String),
    #[error(
        "secret name '{0}' is skipped by the kubestash-v2 mapping (lower-case alphanumerics and '-' only, no '.', at most 63)"
    )]
    DottedSecretName(String),
    #[error("key '{0}' is not a valid Secret data key (only A-Z a-z 0-9 . _ - allowed)")]
    Key(String),
}

/// How a table name becomes a Secret and a key (`--key-mapping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMapping {
    /// Upper-case, `.` and `-` become `_` (what Kubestash-V2's README says).
    #[default]
    Credsync,
    /// What Kubestash-V2's code does: upper-case, `-` becomes `_`, `.` is
    /// kept; Secret names with a dot are skipped. A cluster it fed keeps
    /// every key under this mapping.
    KubestashV2,
}

impl KeyMapping {
    /// Maps a table name, or says why it cannot be mapped.
    pub fn map(self, name: &str) -> Result<Target, MappingError> {
        let parts: Vec<&str> = name.split('/').collect();
        let [namespace, secret, key] = parts.as_slice() else {
            return Err(MappingError::Segments(parts.len()));
        };
        if !is_dns1123_label(namespace) {
            return Err(MappingError::Namespace((*namespace).to_owned()));
        }
        match self {
            KeyMapping::Credsync if !is_dns1123_subdomain(secret) => {
                return Err(MappingError::SecretName((*secret).to_owned()));
            }
            KeyMapping::KubestashV2 if !is_dns1123_label(secret) => {
                return Err(MappingError::DottedSecretName((*secret).to_owned()));
            }
            _ => {}
        }
        let key = match self {
            KeyMapping::Credsync => normalize_key(key),
            KeyMapping::KubestashV2 => key.replace('-', "_").to_ascii_uppercase(),
        };
        if !is_secret_key(&key) {
            return Err(MappingError::Key(key));
        }
        Ok(Target {
            secret: SecretRef::new(*namespace, *secret),
            key,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyMapping::Credsync => "credsync",
            KeyMapping::KubestashV2 => "kubestash-v2",
        }
    }
}

/// Maps a table name with credsync's own mapping, or says why it cannot be
/// mapped. Code that follows `--key-mapping` uses [`KeyMapping::map`].
pub fn map_name(name: &str) -> Result<Target, MappingError> {
    KeyMapping::Credsync.map(name)
}

/// Upper-cases and turns `.` and `-` into `_`, so keys work as env names.
pub fn normalize_key(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// A namespace name: lower-case alphanumerics and `-`, at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_normalizes_keys() {
        let t = map_name("team-a/db-creds/db.pass-word").unwrap();
        assert_eq!(t.secret, SecretRef::new("team-a", "db-creds"));
        assert_eq!(t.key, "DB_PASS_WORD");
        assert_eq!(map_name("a/b.c/Key_1").unwrap().key, "KEY_1");
    }

    #[test]
    fn rejects_bad_names_with_reasons() {
        for (name, needle) in [
            ("a/b", "2 segment"),
            ("a/b/c/d", "4 segment"),
            ("Team/app/k", "namespace 'Team'"),
            ("-ns/app/k", "namespace"),
            ("ns/App_1/k", "secret name 'App_1'"),
            ("ns/app/pass word", "key 'PASS WORD'"),
            ("ns/app/k$y", "key 'K$Y'"),
            ("ns/app/", "key ''"),
        ] {
            let err = map_name(name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    mod properties {
        use super::super::*;
        use crate::manifest::SecretRef;
        use proptest::prelude::*;

        proptest! {
            /// Any text: never a panic, and whatever maps is a name the
            /// API server accepts, keyed as an environment variable would be.
            #[test]
            fn whatever_maps_is_a_valid_secret_and_key(name in "\\PC{0,80}") {
                if let Ok(target) = map_name(&name) {
                    prop_assert!(is_dns1123_label(&target.secret.namespace));
                    prop_assert!(is_dns1123_subdomain(&target.secret.name));
                    prop_assert!(is_secret_key(&target.key));
                    prop_assert!(!target.key.contains(['.', '-']));
                    prop_assert_eq!(target.key.to_ascii_uppercase(), target.key.clone());
                    prop_assert_eq!(map_name(&name).ok(), Some(target));
                }
            }

            /// Well-formed names map to their parts, the key normalized.
            #[test]
            fn well_formed_names_map_to_their_parts(
                namespace in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
                secret in "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?",
                key in "[A-Za-z0-9_.-]{1,40}",
            ) {
                prop_assume!(secret.split('.').all(is_dns1123_label));
                prop_assume!(key != "." && key != "..");
                let target = map_name(&format!("{namespace}/{secret}/{key}")).unwrap();
                prop_assert_eq!(target.secret, SecretRef::new(&namespace, &secret));
                prop_assert_eq!(target.key, normalize_key(&key));
            }
        }
    }
}
