//! The `sops` metadata block and the rule it sets for which values are encrypted.

use serde_yaml::Value;

use crate::{ENCRYPTED_REGEX, SopsError};

/// The default rule of a file that names none (`sops.DefaultUnencryptedSuffix`).
pub(crate) const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// One age recipient entry of the metadata.
#[derive(Clone)]
pub(crate) struct AgeEntry {
    pub(crate) recipient: String,
    pub(crate) enc: String,
}

/// The `sops` metadata block (`stores/stores.go`, `Metadata`).
pub(crate) struct Meta {
    /// Age keys of the only key group (top-level `age`, or `key_groups[0].age`).
    pub(crate) age: Vec<AgeEntry>,
    /// More than one key group: the data key is split (Shamir).
    pub(crate) groups: usize,
    pub(crate) other_key_types: Vec<&'static str>,
    pub(crate) lastmodified: String,
    pub(crate) mac: String,
    pub(crate) unencrypted_suffix: String,
    pub(crate) encrypted_suffix: String,
    pub(crate) unencrypted_regex: String,
    pub(crate) encrypted_regex: String,
    pub(crate) comment_regex: bool,
    pub(crate) mac_only_encrypted: bool,
}

pub(crate) const OTHER_KEY_TYPES: [&str; 5] = ["kms", "gcp_kms", "azure_kv", "hc_vault", "pgp"];

impl Meta {
    pub(crate) fn from_value(sops: &Value) -> Result<Self, SopsError> {
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

    pub(crate) fn all_recipients(&self) -> Vec<String> {
        self.age.iter().map(|a| a.recipient.clone()).collect()
    }

    /// The one rule deciding which values are encrypted (`stores/stores.go`,
    /// `ToInternal`: at most one; none means `unencrypted_suffix: _unencrypted`).
    pub(crate) fn rule(&self) -> Result<Rule, SopsError> {
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
        // Go's regexp is RE2, as is the regex crate: same syntax, same
        // search semantics (an unanchored pattern matches anywhere).
        let regex = |re: &str| {
            regex::Regex::new(re).map_err(|_| {
                SopsError::Malformed(format!(
                    "the file's regex '{re}' is not a valid RE2 regular expression"
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
    pub(crate) fn is_credsync_layout(&self) -> bool {
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

pub(crate) fn age_entries(value: Option<&Value>) -> Result<Vec<AgeEntry>, SopsError> {
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
pub(crate) enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
}

impl Rule {
    pub(crate) fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::UnencryptedRegex(re) => !path.iter().any(|p| re.is_match(p)),
            Rule::EncryptedRegex(re) => path.iter().any(|p| re.is_match(p)),
        }
    }
}
