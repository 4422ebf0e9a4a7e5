//! The labels and annotations credsync writes on Secrets and reads back:
//! how a Secret says it is managed, which keys credsync owns, where each key
//! came from. One module, so the cluster writer, the snapshot files and the
//! drift watcher agree on every name and on the `sources` codec.

use std::collections::BTreeMap;

/// Marks the Secrets credsync manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "credsync";
/// The label selector of the Secrets credsync manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=credsync";
/// Comma-separated data keys credsync owns in the Secret.
pub const MANAGED_KEYS_ANNOTATION: &str = "credsync.io/managed-keys";
/// When credsync last wrote the Secret (RFC 3339, UTC).
pub const LAST_SYNC_ANNOTATION: &str = "credsync.io/last-sync";
/// Hash of the owned keys' sources (name@version), never of values.
pub const FINGERPRINT_ANNOTATION: &str = "credsync.io/fingerprint";
/// Set by `rollback` to the snapshot commit restored; sync leaves the Secret alone until `unpin`.
pub const PINNED_ANNOTATION: &str = "credsync.io/pinned";
/// Beside the pin when a reviewed rollback request set it: the request's
/// `path@commit`. Removing that request unpins the Secret.
pub const PINNED_BY_REQUEST_ANNOTATION: &str = "credsync.io/pinned-by-request";
/// Beside the pin when credsync set it itself: why (`rollout-failure`: a
/// rotation failed its rollout and was reverted).
pub const PINNED_BY_ANNOTATION: &str = "credsync.io/pinned-by";
/// The [`PINNED_BY_ANNOTATION`] value of a reverted rotation.
pub const PINNED_BY_ROLLOUT_FAILURE: &str = "rollout-failure";
/// Beside a `rollout-failure` pin: the item versions (`name@version`,
/// space-separated) whose rollout failed. The pin holds until the source
/// offers anything else for the Secret (a newer version), or `unpin`.
pub const HELD_OUT_ANNOTATION: &str = "credsync.io/held-out";
/// Present when credsync created the Secret, so it may delete it when empty.
pub const CREATED_ANNOTATION: &str = "credsync.io/created";
/// Annotation listing where every key came from: `KEY=name@version` lines.
pub const SOURCES_ANNOTATION: &str = "credsync.io/sources";
/// Kubestash-V2 marks the Secrets it writes with this annotation...
pub const KUBESTASH_V2_ANNOTATION: &str = "managedBy";
/// ...set to this value, beside `changedAt` (its last write, in IST).
pub const KUBESTASH_V2_VALUE: &str = "kubestashV2";
pub const KUBESTASH_V2_CHANGED_AT: &str = "changedAt";

/// Builds the `credsync.io/sources` annotation value.
pub fn sources_annotation<'a>(sources: impl Iterator<Item = (&'a String, String)>) -> String {
    sources
        .map(|(key, source)| format!("{key}={source}\n"))
        .collect()
}

/// Reads the `credsync.io/sources` annotation: key -> `name@version`.
pub fn parse_sources(value: Option<&String>) -> BTreeMap<String, String> {
    value
        .map(|v| {
            v.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, s)| (k.to_owned(), s.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The [`HELD_OUT_ANNOTATION`] value for a Secret whose keys come from
/// `items` (`name@version` each, in key order).
pub fn held_out_items<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_managed_selector_is_the_managed_label() {
        assert_eq!(
            super::MANAGED_SELECTOR,
            format!("{}={}", super::MANAGED_BY_LABEL, super::MANAGED_BY_VALUE)
        );
    }
}
