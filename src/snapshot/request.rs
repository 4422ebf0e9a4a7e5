//! Rollback requests: a small YAML file, reviewed in a pull request, that
//! asks the loop to restore Secrets from a snapshot revision.
//!
//! A request lives at `<cluster>/.requests/<name>.yaml` in the snapshot
//! repository. The leading dot keeps it out of the Secrets' namespaces (no
//! namespace can start with one), so a reader of the snapshot never takes
//! a request for a Secret. The file holds names and a revision only: it is
//! safe to show in a pull request as it is.

use std::collections::BTreeSet;

use crate::manifest::SecretRef;

/// The directory, inside a cluster's directory, that holds its requests.
pub const REQUESTS_DIR: &str = ".requests";

const KIND: &str = "RollbackRequest";

/// A reason longer than this is refused: it goes into commit messages and Events.
const REASON_LIMIT: usize = 500;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRequest {
    /// The snapshot commit to restore, as a full commit id.
    pub revision: String,
    pub secrets: Vec<SecretRef>,
    /// Why, in the proposer's words (one line).
    pub reason: String,
}

/// Why a request file cannot be read as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed rollback request: {0} (see docs/pull-requests.md for the format)")]
pub struct MalformedRequest(String);

impl MalformedRequest {
    /// The reason may quote the file: it is kept to one escaped line.
    pub fn new(why: impl Into<String>) -> Self {
        Self(crate::text::one_line(&why.into(), 500))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    kind: String,
    revision: String,
    secrets: Vec<String>,
    #[serde(default)]
    reason: String,
}

impl RollbackRequest {
    /// Reads a request file, refusing anything it does not expect: an
    /// unknown field may be a typo that would change what gets restored.
    pub fn parse(text: &str) -> Result<Self, MalformedRequest> {
        let bad = MalformedRequest::new;
        let file: RequestFile = serde_yaml::from_str(text).map_err(|e| {
            // The messages may quote the file: it holds no value.
            bad(e.to_string())
        })?;
        if file.kind != KIND {
            return Err(bad(format!("kind must be {KIND}, not {:?}", file.kind)));
        }
        let revision = file.revision.trim().to_owned();
        if revision.len() != 40 || !revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "revision {revision:?} is not a full commit id (40 hex digits)"
            )));
        }
        if file.secrets.is_empty() {
            return Err(bad("it names no Secret".to_owned()));
        }
        let mut seen = BTreeSet::new();
        let mut secrets = Vec::new();
        for name in &file.secrets {
            let secret: SecretRef = name
                .parse()
                .ok()
                .filter(|s: &SecretRef| {
                    crate::manifest::is_dns1123_label(&s.namespace)
                        && crate::manifest::is_dns1123_subdomain(&s.name)
                })
                .ok_or_else(|| bad(format!("{name:?} is not namespace/name of a Secret")))?;
            if !seen.insert(secret.clone()) {
                return Err(bad(format!("{secret} is named twice")));
            }
            secrets.push(secret);
        }
        let reason = file.reason.trim().to_owned();
        if reason.len() > REASON_LIMIT || reason.chars().any(char::is_control) {
            return Err(bad(format!(
                "the reason must be one line of at most {REASON_LIMIT} bytes"
            )));
        }
        Ok(Self {
            revision: revision.to_ascii_lowercase(),
            secrets,
            reason,
        })
    }

    /// The Secrets a file that cannot be read as a request still names, if
    /// any: a refusal is then reported on them too.
    pub fn named_in(text: &str) -> Vec<SecretRef> {
        let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
            return Vec::new();
        };
        let Some(secrets) = value.get("secrets").and_then(|s| s.as_sequence()) else {
            return Vec::new();
        };
        let mut named: Vec<SecretRef> = secrets
            .iter()
            .filter_map(|s| s.as_str()?.parse().ok())
            .collect();
        named.sort();
        named.dedup();
        named
    }

    /// The file's text: a comment saying what merging it does, then the fields.
    pub fn render(&self) -> String {
        let secrets: Vec<String> = self.secrets.iter().map(|s| s.to_string()).collect();
        let body = serde_json::json!({
            "kind": KIND,
            "revision": self.revision,
            "secrets": secrets,
            "reason": self.reason,
        });
        // Serializing a JSON value to YAML cannot fail.
        let yaml = serde_yaml::to_string(&body).unwrap_or_default();
        format!(
            "# A credsync rollback request. Once merged into the branch credsync follows,\n\
             # the loop restores these Secrets from the snapshot revision and pins them.\n\
             # Removing this file (or reverting the merge) hands them back to the table.\n{yaml}"
        )
    }

    /// A file name for a new request: what it restores, and when.
    pub fn file_name(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        format!(
            "rollback-{}-{}.yaml",
            &self.revision[..12],
            now.format("%Y%m%d-%H%M%S")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef0123456789abcdef01234567";

    fn request() -> RollbackRequest {
        RollbackRequest {
            revision: REV.to_owned(),
            secrets: vec![
                SecretRef::new("team-a", "db"),
                SecretRef::new("team-b", "api"),
            ],
            reason: "the new password broke the app".to_owned(),
        }
    }

    #[test]
    fn a_rendered_request_reads_back_the_same() {
        let text = request().render();
        assert!(text.starts_with("# A credsync rollback request."), "{text}");
        assert_eq!(RollbackRequest::parse(&text).unwrap(), request());
    }

    #[test]
    fn every_kind_of_bad_file_is_refused_with_its_reason() {
        let cases = [
            (
                "kind: Other\nrevision: {REV}\nsecrets: [a/b]\n",
                "kind must be",
            ),
            (
                "kind: RollbackRequest\nrevision: main\nsecrets: [a/b]\n",
                "not a full commit id",
            ),
            (
                "kind: RollbackRequest\nrevision: {REV}\nsecrets: []\n",
                "names no Secret",
            ),
            (
                "kind: RollbackRequest\nrevision: {REV}\nsecrets: [nope]\n",
                "not namespace/name",
            ),
            (
                "kind: RollbackRequest\nrevision: {REV}\nsecrets: [a/b, a/b]\n",
                "named twice",
            ),
            (
                "kind: RollbackRequest\nrevision: {REV}\nsecrets: [a/b]\nsecret: [c/d]\n",
                "unknown field",
            ),
            (
                "kind: RollbackRequest\nrevision: {REV}\nsecrets: [a/b]\nreason: \"a\\nb\"\n",
                "one line",
            ),
            ("[not, a, map]", "malformed"),
        ];
        for (text, expected) in cases {
            let text = text.replace("{REV}", REV);
            let err = RollbackRequest::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("malformed rollback request"), "{err}");
        }
    }

    #[test]
    fn a_malformed_file_still_says_which_secrets_it_names() {
        let text = "kind: RollbackRequest\nrevision: main\nsecrets: [a/b, nope, a/b, c/d]\n";
        assert!(RollbackRequest::parse(text).is_err());
        assert_eq!(
            RollbackRequest::named_in(text),
            vec![SecretRef::new("a", "b"), SecretRef::new("c", "d")]
        );
        assert!(RollbackRequest::named_in("[").is_empty());
        assert!(RollbackRequest::named_in("secrets: 3").is_empty());
    }

    #[test]
    fn file_names_say_what_and_when() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            request().file_name(now),
            "rollback-0123456789ab-20270115-080000.yaml"
        );
        assert!(crate::snapshot::store::is_request_file_name(
            &request().file_name(now)
        ));
    }
}
