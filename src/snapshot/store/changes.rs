//! What changed between two snapshots, key by key (never a value), and the
//! commit message that says it.

use std::collections::{BTreeMap, BTreeSet};

use super::trust;
use crate::manifest::SecretRef;

/// Key-level change of one Secret between two snapshots (no values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretDelta {
    pub secret: SecretRef,
    /// "create", "update" or "delete".
    pub action: &'static str,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

pub(super) fn compare(
    before: &BTreeMap<SecretRef, BTreeMap<String, String>>,
    after: &BTreeMap<SecretRef, BTreeMap<String, String>>,
) -> Vec<SecretDelta> {
    let secrets: BTreeSet<&SecretRef> = before.keys().chain(after.keys()).collect();
    secrets
        .into_iter()
        .filter_map(|secret| delta(secret, before.get(secret), after.get(secret)))
        .collect()
}

/// Key-level change of one Secret's sources (None: no file), if any.
pub(super) fn delta(
    secret: &SecretRef,
    old: Option<&BTreeMap<String, String>>,
    new: Option<&BTreeMap<String, String>>,
) -> Option<SecretDelta> {
    let empty = BTreeMap::new();
    let (old_keys, new_keys) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let added: Vec<String> = new_keys
        .keys()
        .filter(|k| !old_keys.contains_key(*k))
        .cloned()
        .collect();
    let removed: Vec<String> = old_keys
        .keys()
        .filter(|k| !new_keys.contains_key(*k))
        .cloned()
        .collect();
    let changed: Vec<String> = new_keys
        .iter()
        .filter(|(k, v)| old_keys.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    if added.is_empty() && removed.is_empty() && changed.is_empty() {
        return None;
    }
    let action = match (old.is_some(), new.is_some()) {
        (false, _) => "create",
        (_, false) => "delete",
        _ => "update",
    };
    Some(SecretDelta {
        secret: secret.clone(),
        action,
        added,
        changed,
        removed,
    })
}

/// The commit message: what changed, by Secret and key name, never a value.
pub(super) fn commit_message(
    heading: &str,
    deltas: &[SecretDelta],
    foreign: &trust::ForeignFiles,
) -> String {
    let count = |a: &str| deltas.iter().filter(|d| d.action == a).count();
    let mut msg = format!(
        "credsync: {} created, {} updated, {} deleted\n\n",
        count("create"),
        count("update"),
        count("delete")
    );
    for d in deltas {
        let mark = match d.action {
            "create" => '+',
            "delete" => '-',
            _ => '~',
        };
        let keys = crate::manifest::marked_keys(&d.added, &d.changed, &d.removed);
        msg.push_str(&format!("{mark} {}: {keys}\n", d.secret));
    }
    msg.push('\n');
    msg.push_str(&trust::restored_paragraph(foreign));
    msg.push_str(heading);
    msg.push('\n');
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn delta_names_keys_by_what_happened_to_them() {
        let secret = SecretRef::new("app", "svc");
        let old = sources(&[
            ("A", "app/svc/a@1"),
            ("B", "app/svc/b@1"),
            ("C", "app/svc/c@1"),
        ]);
        let new = sources(&[
            ("A", "app/svc/a@1"),
            ("B", "app/svc/b@2"),
            ("D", "app/svc/d@1"),
        ]);
        let update = delta(&secret, Some(&old), Some(&new)).unwrap();
        assert_eq!(update.action, "update");
        assert_eq!(
            (update.added, update.changed, update.removed),
            (vec!["D".into()], vec!["B".into()], vec!["C".into()])
        );
        assert_eq!(delta(&secret, None, Some(&new)).unwrap().action, "create");
        assert_eq!(delta(&secret, Some(&old), None).unwrap().action, "delete");
        assert!(delta(&secret, Some(&old), Some(&old)).is_none());
    }
}
