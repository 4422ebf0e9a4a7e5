//! What a reconcile decrypts and what it builds: [`Selection::of`] maps the
//! encrypted items and decides which are worth a KMS call (bad names and
//! filtered or absent namespaces are not, conflicts neither), and
//! [`Selection::into_assembly`] starts the [`Manifest`] that decrypted items
//! complete one by one ([`Selection::assemble`] when they are all in).

use std::collections::{BTreeMap, BTreeSet};

use super::assembly::Assembly;
use super::{
    Conflict, Failed, KeyMapping, Manifest, NamespaceFilter, Ready, SecretRef, Skip, Target,
};
use crate::source::{Credential, ItemFailure, ItemId, SourceItem};

/// The items worth decrypting, plus what the mapping already rejected.
#[derive(Debug)]
pub struct Selection<I> {
    pub to_decrypt: Vec<I>,
    /// Values read already, by other sources.
    ready: Vec<Credential>,
    /// Keys held for failures that name no target of their own.
    held: Vec<Target>,
    mapping: KeyMapping,
    targets: BTreeMap<ItemId, Target>,
    filter: NamespaceFilter,
    existing: BTreeSet<String>,
    skipped: Vec<Skip>,
    conflicts: Vec<Conflict>,
    failures: Vec<ItemFailure>,
}

impl<I: SourceItem> Selection<I> {
    /// Maps every item, drops bad names and namespaces that are filtered or
    /// absent from `existing`, and finds conflicts before any KMS call.
    pub fn of(
        items: Vec<I>,
        malformed: Vec<ItemFailure>,
        filter: &NamespaceFilter,
        existing: &BTreeSet<String>,
        mapping: KeyMapping,
    ) -> Self {
        let mut selection = Selection {
            to_decrypt: Vec::new(),
            ready: Vec::new(),
            held: Vec::new(),
            mapping,
            targets: BTreeMap::new(),
            filter: filter.clone(),
            existing: existing.clone(),
            skipped: Vec::new(),
            conflicts: Vec::new(),
            failures: malformed,
        };
        let mut claims: BTreeMap<(SecretRef, String), Vec<I>> = BTreeMap::new();
        for item in items {
            let target = match mapping.map(&item.id().name) {
                Ok(target) => target,
                Err(reason) => {
                    selection.skip(item.id().name.clone(), reason.to_string());
                    continue;
                }
            };
            if let Some(reason) = selection.refusal(&target.secret.namespace) {
                selection.skip(item.id().name.clone(), reason);
                continue;
            }
            // Almost every key has one claimant: a Vec sized for one, not
            // the four a first push reserves (heaptrack: 5.8 MB of 13 MB at
            // 10,000 items went to those spare slots).
            claims
                .entry((target.secret, target.key))
                .or_insert_with(|| Vec::with_capacity(1))
                .push(item);
        }
        for ((secret, key), mut claimants) in claims {
            if claimants.len() > 1 {
                claimants.sort_by(|a, b| a.id().cmp(b.id()));
                selection.conflicts.push(Conflict {
                    secret,
                    key,
                    sources: claimants.iter().map(|item| item.id().clone()).collect(),
                });
                continue;
            }
            for item in claimants {
                let target = Target {
                    secret: secret.clone(),
                    key: key.clone(),
                };
                selection.targets.insert(item.id().clone(), target);
                selection.to_decrypt.push(item);
            }
        }
        selection
    }

    fn skip(&mut self, subject: String, reason: String) {
        self.skipped.push(Skip { subject, reason });
    }

    /// Why a target's namespace is not written to, if it is not.
    fn refusal(&self, namespace: &str) -> Option<String> {
        if let Some(reason) = self.filter.reason_to_skip(namespace) {
            return Some(reason.to_owned());
        }
        (!self.existing.contains(namespace))
            .then(|| format!("namespace '{namespace}' does not exist in the cluster"))
    }

    /// Adds what another source read: its values (`ready`), its failures
    /// (their keys held) and its skips. A key claimed here and by an item
    /// already selected, or twice here, is a conflict like any other: no
    /// claimant is applied, and the item is no longer worth decrypting.
    pub fn add_source(&mut self, ready: Vec<Ready>, failed: Vec<Failed>, skipped: Vec<Skip>) {
        self.skipped.extend(skipped);
        let mut claims: BTreeMap<(SecretRef, String), Vec<ItemId>> = BTreeMap::new();
        for (id, target) in &self.targets {
            claims
                .entry((target.secret.clone(), target.key.clone()))
                .or_default()
                .push(id.clone());
        }
        let mut arriving: Vec<Ready> = Vec::new();
        for entry in ready {
            if let Some(reason) = self.refusal(&entry.target.secret.namespace) {
                self.skip(entry.credential.id.name.clone(), reason);
                continue;
            }
            // Already in conflict among the first source's items: one more claimant.
            if let Some(conflict) = self
                .conflicts
                .iter_mut()
                .find(|c| c.secret == entry.target.secret && c.key == entry.target.key)
            {
                conflict.sources.push(entry.credential.id.clone());
                conflict.sources.sort();
                continue;
            }
            let key = (entry.target.secret.clone(), entry.target.key.clone());
            claims
                .entry(key)
                .or_default()
                .push(entry.credential.id.clone());
            arriving.push(entry);
        }
        let mut lost: BTreeSet<ItemId> = BTreeSet::new();
        for ((secret, key), mut ids) in claims {
            if ids.len() < 2 {
                continue;
            }
            ids.sort();
            lost.extend(ids.iter().cloned());
            self.conflicts.push(Conflict {
                secret,
                key,
                sources: ids,
            });
        }
        self.targets.retain(|id, _| !lost.contains(id));
        self.to_decrypt.retain(|item| !lost.contains(item.id()));
        for entry in arriving {
            if lost.contains(&entry.credential.id) {
                continue;
            }
            self.targets
                .insert(entry.credential.id.clone(), entry.target);
            self.ready.push(entry.credential);
        }
        for failed in failed {
            self.held.extend(failed.keys);
            self.failures.push(failed.failure);
        }
    }

    /// Every Secret the assembled manifest can hold, known before anything
    /// is decrypted: the live Secrets can be read while decryption runs.
    pub fn secrets(&self) -> BTreeSet<SecretRef> {
        let failed = self
            .failures
            .iter()
            .filter_map(|f| self.mapping.map(&f.id.name).ok());
        self.targets
            .values()
            .cloned()
            .chain(failed)
            .chain(self.held.iter().cloned())
            .map(|t| t.secret)
            .chain(self.conflicts.iter().map(|c| c.secret.clone()))
            .collect()
    }

    /// Builds the manifest from the decrypted items; failed items and
    /// conflicts become held keys so their live values stay.
    pub fn assemble(self, credentials: Vec<Credential>, failures: Vec<ItemFailure>) -> Manifest {
        let mut assembly = self.into_assembly();
        for credential in credentials {
            assembly.add(Ok(credential));
        }
        for failure in failures {
            assembly.add(Err(failure));
        }
        assembly.finish()
    }

    /// The manifest to build item by item as decryption goes on: what needs
    /// no KMS call (other sources' values, failures, held keys, conflicts)
    /// is in already.
    pub fn into_assembly(self) -> Assembly {
        let manifest = Manifest {
            skipped: self.skipped,
            filter: self.filter,
            existing: self.existing,
            ..Manifest::default()
        };
        let mut assembly = Assembly::new(
            manifest,
            self.targets,
            self.mapping,
            self.held,
            self.conflicts,
        );
        for credential in self.ready {
            assembly.add(Ok(credential));
        }
        for failure in self.failures {
            assembly.add(Err(failure));
        }
        assembly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Hold;
    use crate::manifest::{DEFAULT_NAMESPACE_EXCLUDE, SecretRef, map_name};
    use crate::secret::SecretValue;

    /// An item as any source would hand it over: only its id matters here.
    struct Item(ItemId);

    impl SourceItem for Item {
        fn id(&self) -> &ItemId {
            &self.0
        }
    }

    fn item(name: &str) -> Item {
        Item(ItemId {
            name: name.into(),
            version: "0000000000000000001".into(),
        })
    }

    fn existing(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_kubestash_v2_mapping_keeps_dots_and_skips_dotted_secret_names() {
        let kv2 = KeyMapping::KubestashV2;
        let t = kv2.map("team-a/db-creds/db.pass-word").unwrap();
        assert_eq!(t.secret, SecretRef::new("team-a", "db-creds"));
        assert_eq!(t.key, "DB.PASS_WORD");
        assert_eq!(kv2.map("a/b/Key_1").unwrap().key, "KEY_1");
        let err = kv2.map("a/b.c/k").unwrap_err().to_string();
        assert!(err.contains("kubestash-v2"), "{err}");
        assert!(map_name("a/b.c/k").is_ok());
        // Spellings credsync folds together stay apart under kubestash-v2.
        let filter = NamespaceFilter::parse("", None);
        let items = vec![item("ns/app/db.pass"), item("ns/app/DB_PASS")];
        let sel = Selection::of(items, vec![], &filter, &existing(&["ns"]), kv2);
        assert_eq!((sel.to_decrypt.len(), sel.conflicts.len()), (2, 0));
    }

    #[test]
    fn filter_excludes_includes_and_requires_existing_namespaces() {
        let filter = NamespaceFilter::parse(DEFAULT_NAMESPACE_EXCLUDE, Some("a,b,kube-system"));
        let items = vec![
            item("a/s/k"),
            item("b/s/k"),
            item("c/s/k"),
            item("kube-system/s/k"),
        ];
        let sel = Selection::of(
            items,
            vec![],
            &filter,
            &existing(&["a", "c", "kube-system"]),
            KeyMapping::Credsync,
        );
        let chosen: Vec<_> = sel
            .to_decrypt
            .iter()
            .map(|i| i.id().name.as_str())
            .collect();
        assert_eq!(chosen, ["a/s/k"]);
        let m = sel.assemble(vec![], vec![]);
        let reasons: Vec<_> = m
            .skipped
            .iter()
            .map(|s| (s.subject.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons.contains(&("b/s/k", "namespace 'b' does not exist in the cluster")));
        assert!(reasons.contains(&("c/s/k", "namespace is not included (--namespace-include)")));
        assert!(reasons.contains(&(
            "kube-system/s/k",
            "namespace is excluded (--namespace-exclude)"
        )));
    }

    #[test]
    fn normalized_collisions_are_conflicts_and_hold_the_key() {
        let filter = NamespaceFilter::parse("", None);
        let sel = Selection::of(
            vec![
                item("ns/app/db.pass"),
                item("ns/app/DB_PASS"),
                item("ns/app/user"),
            ],
            vec![],
            &filter,
            &existing(&["ns"]),
            KeyMapping::Credsync,
        );
        assert_eq!(
            sel.to_decrypt.len(),
            1,
            "conflicting items are not decrypted"
        );
        let m = sel.assemble(vec![], vec![]);
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].key, "DB_PASS");
        assert_eq!(m.conflicts[0].sources.len(), 2);
        let secret = &m.secrets[&SecretRef::new("ns", "app")];
        assert_eq!(secret.held.get("DB_PASS"), Some(&Hold::Conflict));
    }

    #[test]
    fn failed_items_hold_their_key() {
        let filter = NamespaceFilter::parse("", None);
        let sel = Selection::of(
            vec![item("ns/app/k")],
            vec![],
            &filter,
            &existing(&["ns"]),
            KeyMapping::Credsync,
        );
        let failure = ItemFailure {
            id: sel.to_decrypt[0].id().clone(),
            reason: "HMAC mismatch".into(),
        };
        let m = sel.assemble(vec![], vec![failure]);
        assert_eq!(m.failures.len(), 1);
        assert_eq!(
            m.secrets[&SecretRef::new("ns", "app")].held.get("K"),
            Some(&Hold::Failed)
        );
    }

    #[test]
    fn the_secrets_known_before_decryption_cover_the_manifest() {
        let filter = NamespaceFilter::parse("", None);
        let malformed = ItemFailure {
            id: ItemId {
                name: "ns/broken/k".into(),
                version: "0000000000000000001".into(),
            },
            reason: "not base64".into(),
        };
        let sel = Selection::of(
            vec![
                item("ns/app/k"),
                item("ns/clash/db.pass"),
                item("ns/clash/DB_PASS"),
                item("ns/fails/k"),
                item("other/app/k"),
            ],
            vec![malformed],
            &filter,
            &existing(&["ns"]),
            KeyMapping::Credsync,
        );
        let known = sel.secrets();
        let fails = sel
            .to_decrypt
            .iter()
            .find(|i| i.id().name == "ns/fails/k")
            .map(|i| ItemFailure {
                id: i.id().clone(),
                reason: "KMS refused".into(),
            })
            .unwrap();
        let decrypted: Vec<Credential> = sel
            .to_decrypt
            .iter()
            .filter(|i| i.id().name == "ns/app/k")
            .map(|i| Credential {
                id: i.id().clone(),
                value: SecretValue::new(b"v".to_vec()),
            })
            .collect();
        let manifest = sel.assemble(decrypted, vec![fails]);
        let assembled: BTreeSet<SecretRef> = manifest.secrets.keys().cloned().collect();
        assert!(assembled.is_subset(&known), "{assembled:?} vs {known:?}");
        assert_eq!(
            assembled.len(),
            4,
            "app, clash, fails, broken: {assembled:?}"
        );
    }

    fn ready(name: &str, target: &str, value: &str) -> Ready {
        Ready {
            target: map_name(target).unwrap(),
            credential: Credential {
                id: ItemId {
                    name: name.into(),
                    version: "v1".into(),
                },
                value: SecretValue::new(value.as_bytes().to_vec()),
            },
        }
    }

    #[test]
    fn a_secret_is_whole_once_its_last_item_is_in_and_not_before() {
        let filter = NamespaceFilter::parse("", None);
        let mut sel = Selection::of(
            vec![
                item("ns/app/A"),
                item("ns/app/B"),
                item("ns/one/K"),
                item("ns/clash/db.pass"),
                item("ns/clash/DB_PASS"),
            ],
            vec![],
            &filter,
            &existing(&["ns"]),
            KeyMapping::Credsync,
        );
        sel.add_source(
            vec![ready("arn:sm:only#T", "ns/sm-only/T", "sm")],
            vec![],
            vec![],
        );
        let mut assembly = sel.into_assembly();
        // Nothing to decrypt for these: a conflict, another source's value.
        let mut whole = assembly.whole();
        whole.sort();
        assert_eq!(
            whole,
            vec![
                SecretRef::new("ns", "clash"),
                SecretRef::new("ns", "sm-only")
            ]
        );
        // The selected items' ids, as `item` made them.
        let credential = |name: &str| Credential {
            id: item(name).0,
            value: SecretValue::new(b"v".to_vec()),
        };
        let app_keys = |assembly: &Assembly| {
            assembly
                .secret(&SecretRef::new("ns", "app"))
                .map(|app| (app.keys.len(), app.held.get("B").cloned()))
        };
        assert_eq!(assembly.add(Ok(credential("ns/app/A"))), None);
        assert_eq!(app_keys(&assembly), Some((1, None)));
        // A failed item completes its Secret too, with its key held.
        let failure = ItemFailure {
            id: credential("ns/app/B").id,
            reason: "KMS refused".into(),
        };
        assert_eq!(
            assembly.add(Err(failure)),
            Some(SecretRef::new("ns", "app"))
        );
        assert_eq!(app_keys(&assembly), Some((1, Some(Hold::Failed))));
        assert_eq!(
            assembly.add(Ok(credential("ns/one/K"))),
            Some(SecretRef::new("ns", "one"))
        );
        // An item nobody selected makes nothing whole.
        let stray = Credential {
            id: ItemId {
                name: "ns/other/K".into(),
                version: "0000000000000000001".into(),
            },
            value: SecretValue::new(b"v".to_vec()),
        };
        assert_eq!(assembly.add(Ok(stray)), None);
        let manifest = assembly.finish();
        assert_eq!(manifest.secrets.len(), 4, "{:?}", manifest.secrets.keys());
        assert_eq!(manifest.failures.len(), 1);
    }

    #[test]
    fn a_second_source_merges_and_a_key_claimed_by_both_is_a_conflict() {
        let filter = NamespaceFilter::parse("kube-system", None);
        let mut sel = Selection::of(
            vec![item("ns/app/PASSWORD"), item("ns/app/USER")],
            vec![],
            &filter,
            &existing(&["ns", "kube-system"]),
            KeyMapping::Credsync,
        );
        sel.add_source(
            vec![
                ready("arn:sm:app#PASSWORD", "ns/app/PASSWORD", "from-sm"),
                ready("arn:sm:app#TOKEN", "ns/app/TOKEN", "sm-token"),
                ready("arn:sm:sys#KEY", "kube-system/x/KEY", "never"),
            ],
            vec![Failed {
                failure: ItemFailure {
                    id: ItemId {
                        name: "ns/broken".into(),
                        version: "v9".into(),
                    },
                    reason: "ThrottlingException".into(),
                },
                keys: vec![map_name("ns/broken/KEY").unwrap()],
            }],
            vec![Skip {
                subject: "loose".into(),
                reason: "name has 1 segment(s)".into(),
            }],
        );
        // The table's PASSWORD is no longer worth decrypting: it is in conflict.
        let names: Vec<&str> = sel
            .to_decrypt
            .iter()
            .map(|i| i.id().name.as_str())
            .collect();
        assert_eq!(names, ["ns/app/USER"]);
        let user = Credential {
            id: sel.to_decrypt[0].id().clone(),
            value: SecretValue::new(b"u".to_vec()),
        };
        let m = sel.assemble(vec![user], vec![]);
        let app = &m.secrets[&SecretRef::new("ns", "app")];
        let keys: Vec<&str> = app.keys.keys().map(String::as_str).collect();
        assert_eq!(keys, ["TOKEN", "USER"]);
        assert_eq!(app.held.get("PASSWORD"), Some(&Hold::Conflict));
        assert_eq!(m.conflicts.len(), 1);
        let claimants: Vec<String> = m.conflicts[0]
            .sources
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            claimants,
            [
                "arn:sm:app#PASSWORD@v1",
                "ns/app/PASSWORD@0000000000000000001"
            ]
        );
        assert_eq!(
            m.secrets[&SecretRef::new("ns", "broken")].held.get("KEY"),
            Some(&Hold::Failed)
        );
        assert!(m.skipped.iter().any(|s| s.subject == "arn:sm:sys#KEY"));
        assert!(m.skipped.iter().any(|s| s.subject == "loose"));
    }
}
