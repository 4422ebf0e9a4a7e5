//! The last full read of the table, kept for targeted reconciles.
//!
//! A stream or queue event names a few items; the Secrets they map to need
//! all their items, not only the changed ones. Items are kept by the Secret
//! each maps to, so finding a Secret's items costs a lookup instead of
//! mapping every name of the table (at 100,000 items that walk was most of
//! credsync's own time per put).

use std::collections::{BTreeMap, BTreeSet};

use crate::credstash::RawItem;
use crate::manifest::{KeyMapping, SecretRef};

pub(super) struct TableIndex {
    /// Items by the Secret their name maps to, then by name. A name that
    /// maps to no Secret is left out: no reconcile could use it.
    by_secret: BTreeMap<SecretRef, BTreeMap<String, RawItem>>,
    pub(super) namespaces: BTreeSet<String>,
}

impl TableIndex {
    pub(super) fn new(
        items: &[RawItem],
        namespaces: BTreeSet<String>,
        mapping: KeyMapping,
    ) -> Self {
        let mut index = Self {
            by_secret: BTreeMap::new(),
            namespaces,
        };
        for item in items {
            index.insert(item.id.name.clone(), item.clone(), mapping);
        }
        index
    }

    /// Records `item` as the latest version of `name`.
    pub(super) fn insert(&mut self, name: String, item: RawItem, mapping: KeyMapping) {
        if let Ok(target) = mapping.map(&name) {
            self.by_secret
                .entry(target.secret)
                .or_default()
                .insert(name, item);
        }
    }

    /// Forgets `name` (it is no longer in the table).
    pub(super) fn remove(&mut self, name: &str, mapping: KeyMapping) {
        let Ok(target) = mapping.map(name) else {
            return;
        };
        if let Some(items) = self.by_secret.get_mut(&target.secret) {
            items.remove(name);
            if items.is_empty() {
                self.by_secret.remove(&target.secret);
            }
        }
    }

    /// Every item of the given Secrets.
    pub(super) fn items_of(&self, secrets: &BTreeSet<SecretRef>) -> Vec<RawItem> {
        secrets
            .iter()
            .filter_map(|secret| self.by_secret.get(secret))
            .flat_map(BTreeMap::values)
            .cloned()
            .collect()
    }

    /// The names that map into `namespace`, or into `secret` when given.
    pub(super) fn names_in(&self, namespace: &str, secret: Option<&SecretRef>) -> BTreeSet<String> {
        match secret {
            Some(secret) => self
                .by_secret
                .get(secret)
                .into_iter()
                .flat_map(BTreeMap::keys)
                .cloned()
                .collect(),
            None => self
                .by_secret
                .iter()
                .filter(|(secret, _)| secret.namespace == namespace)
                .flat_map(|(_, items)| items.keys().cloned())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> RawItem {
        RawItem {
            id: crate::source::ItemId {
                name: name.to_owned(),
                version: "0000000000000000001".to_owned(),
            },
            key: "".into(),
            contents: "".into(),
            hmac: Box::default(),
            other_digest: None,
        }
    }

    #[test]
    fn a_secrets_items_are_found_without_the_others_and_follow_changes() {
        let mapping = KeyMapping::Credsync;
        let items = [
            item("a/app/user"),
            item("a/app/password"),
            item("a/db/url"),
            item("b/app/user"),
            item("bad"),
        ];
        let mut index = TableIndex::new(&items, BTreeSet::new(), mapping);
        let app = BTreeSet::from([SecretRef::new("a", "app")]);
        let names = |items: Vec<RawItem>| {
            let mut names: Vec<String> = items.into_iter().map(|i| i.id.name).collect();
            names.sort();
            names
        };
        assert_eq!(
            names(index.items_of(&app)),
            ["a/app/password", "a/app/user"]
        );
        assert_eq!(index.names_in("a", None).len(), 3);
        assert_eq!(
            index.names_in("b", None),
            BTreeSet::from(["b/app/user".to_owned()])
        );

        index.remove("a/app/user", mapping);
        index.insert("a/app/token".to_owned(), item("a/app/token"), mapping);
        assert_eq!(
            names(index.items_of(&app)),
            ["a/app/password", "a/app/token"]
        );
        index.remove("a/app/password", mapping);
        index.remove("a/app/token", mapping);
        assert!(index.items_of(&app).is_empty());
        assert!(
            index
                .names_in("a", Some(&SecretRef::new("a", "app")))
                .is_empty()
        );
        // Removing a name never seen changes nothing.
        index.remove("a/db/other", mapping);
        assert_eq!(index.names_in("a", None).len(), 1);
    }
}
