use super::*;
use crate::manifest::{DesiredKey, Hold};
use crate::secret::SecretValue;
use crate::source::ItemId;
use std::collections::BTreeMap;

fn sref() -> SecretRef {
    SecretRef::new("ns", "app")
}

fn desired(pairs: &[(&str, &str)]) -> DesiredSecret {
    let mut d = DesiredSecret::default();
    for (k, v) in pairs {
        d.keys.insert(
            k.to_string(),
            DesiredKey {
                value: SecretValue::new(v.as_bytes().to_vec()),
                source: ItemId {
                    name: format!("ns/app/{k}"),
                    version: "1".into(),
                },
            },
        );
    }
    d
}

fn live(pairs: &[(&str, &str)], owned: &[&str], created: bool) -> LiveSecret {
    LiveSecret {
        type_: "Opaque".into(),
        data: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::new(v.as_bytes().to_vec())))
            .collect(),
        managed: !owned.is_empty() || created,
        owned_keys: owned.iter().map(|s| (s.to_string(), ())).collect(),
        created_by_credsync: created,
        pinned: None,
        resource_version: Some("7".into()),
        kubestash_v2: false,
        pinned_by_request: None,
        fingerprint: None,
        held_out: None,
    }
}

#[test]
fn a_kubestash_v2_secret_gets_merges_until_taken_over() {
    let mut kv2 = live(&[("DB.PASSWORD", "1"), ("OLD", "x")], &[], false);
    kv2.kubestash_v2 = true;
    // In step: nothing to write, not even an adoption.
    assert_eq!(diff(&desired(&[("DB.PASSWORD", "1")]), Some(&kv2)), None);
    // A rotation: the key alone, metadata untouched, nothing removed.
    let c = diff(&desired(&[("DB.PASSWORD", "2")]), Some(&kv2)).unwrap();
    assert!(c.merge_only && !c.adopt && c.removed.is_empty());
    assert_eq!(c.changed, vec!["DB.PASSWORD".to_string()]);
    // Taken over: adopted, the table's keys owned from then on.
    let take = DiffOptions {
        adopt_kubestash_v2: true,
        ..DiffOptions::default()
    };
    let d = desired(&[("DB.PASSWORD", "1")]);
    let c = diff_secret(&sref(), Some(&d), Some(&kv2), take)
        .unwrap()
        .unwrap();
    assert!(c.adopt && !c.merge_only && !c.content_changed());
    assert_eq!(
        owned_after(&d, &kv2, &c.removed),
        KeySet::from_iter([("DB.PASSWORD".to_string(), ())])
    );
}

#[test]
fn a_key_added_beside_another_spelling_of_it_is_a_warning() {
    let l = live(&[("DB.PASSWORD", "1"), ("db-user", "u")], &[], false);
    let mut manifest = Manifest::default();
    manifest.secrets.insert(
        sref(),
        desired(&[("DB_PASSWORD", "1"), ("DB_USER", "u"), ("NEW", "n")]),
    );
    let live_state = LiveState {
        secrets: BTreeMap::from([(sref(), l)]),
    };
    let p = plan(&manifest, &live_state, DiffOptions::default());
    let pairs: Vec<(&str, &str)> = p
        .respelled
        .iter()
        .map(|r| (r.key.as_str(), r.existing.as_str()))
        .collect();
    assert_eq!(
        pairs,
        vec![("DB_PASSWORD", "DB.PASSWORD"), ("DB_USER", "db-user")]
    );
}

fn diff(d: &DesiredSecret, l: Option<&LiveSecret>) -> Option<SecretChange> {
    diff_secret(&sref(), Some(d), l, DiffOptions::default()).unwrap()
}

#[test]
fn missing_secret_is_created_with_all_keys() {
    let c = diff(&desired(&[("A", "1"), ("B", "2")]), None).unwrap();
    assert_eq!(c.action, Action::Create);
    assert_eq!(c.added, ["A", "B"]);
}

#[test]
fn in_step_secret_is_unchanged() {
    let l = live(&[("A", "1"), ("OTHER", "x")], &["A"], true);
    assert_eq!(diff(&desired(&[("A", "1")]), Some(&l)), None);
}

#[test]
fn update_lists_added_changed_and_removed_owned_keys_only() {
    let l = live(
        &[("A", "1"), ("B", "old"), ("GONE", "z"), ("HANDS_OFF", "h")],
        &["A", "B", "GONE"],
        true,
    );
    let c = diff(&desired(&[("A", "1"), ("B", "new"), ("C", "3")]), Some(&l)).unwrap();
    assert_eq!(c.action, Action::Update);
    assert_eq!(
        (c.added, c.changed, c.removed),
        (
            vec!["C".to_string()],
            vec!["B".to_string()],
            vec!["GONE".to_string()]
        )
    );
}

#[test]
fn held_keys_are_never_removed() {
    let l = live(&[("A", "1"), ("B", "2")], &["A", "B"], true);
    let mut d = desired(&[("A", "1")]);
    d.held.insert("B".into(), Hold::Failed);
    assert_eq!(diff(&d, Some(&l)), None);
}

#[test]
fn unmanaged_secret_is_adopted_without_touching_other_keys() {
    let l = live(&[("THEIRS", "t"), ("A", "old")], &[], false);
    let c = diff(&desired(&[("A", "new")]), Some(&l)).unwrap();
    assert!(c.adopt);
    assert_eq!(c.changed, ["A"]);
    assert!(c.removed.is_empty());
    // Same values: still adopted (labels), with no key changes.
    let l = live(&[("A", "new")], &[], false);
    let c = diff(&desired(&[("A", "new")]), Some(&l)).unwrap();
    assert!(c.adopt && c.added.is_empty() && c.changed.is_empty());
}

#[test]
fn created_secret_left_empty_is_deleted_unless_switched_off() {
    let l = live(&[("A", "1")], &["A"], true);
    let c = diff_secret(&sref(), None, Some(&l), DiffOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(c.action, Action::Delete);
    let keep = DiffOptions {
        delete_empty: false,
        ..DiffOptions::default()
    };
    let c = diff_secret(&sref(), None, Some(&l), keep).unwrap().unwrap();
    assert_eq!(
        (c.action, c.removed.clone()),
        (Action::Update, vec!["A".to_string()])
    );
    let no_prune = DiffOptions {
        prune_keys: false,
        ..DiffOptions::default()
    };
    assert_eq!(
        diff_secret(&sref(), None, Some(&l), no_prune).unwrap(),
        None
    );
}

#[test]
fn adopted_secret_is_never_deleted() {
    let mut l = live(&[("A", "1"), ("THEIRS", "t")], &["A"], false);
    l.managed = true;
    let c = diff_secret(&sref(), None, Some(&l), DiffOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.action, c.removed),
        (Action::Update, vec!["A".to_string()])
    );
}

#[test]
fn pinned_secrets_are_listed_not_changed() {
    let mut l = live(&[("A", "rolled-back")], &["A"], true);
    l.pinned = Some("abc123".into());
    let mut desired_secrets = BTreeMap::new();
    desired_secrets.insert(sref(), desired(&[("A", "table")]));
    let manifest = Manifest::of_secrets(desired_secrets);
    let live_state = LiveState {
        secrets: BTreeMap::from([(sref(), l)]),
    };
    let plan = plan(&manifest, &live_state, DiffOptions::default());
    assert!(plan.changes.is_empty());
    assert!(
        plan.content_changes().is_empty(),
        "a pinned Secret restarts nothing"
    );
    assert_eq!(
        plan.pinned,
        [Pinned {
            secret: sref(),
            commit: "abc123".into(),
            differs_from_table: true,
            request: None,
            held_out: None,
        }]
    );
}

#[test]
fn only_key_changes_of_an_existing_secret_are_content_changes() {
    // Changed key: pods see something new.
    let l = live(&[("A", "1")], &["A"], true);
    assert!(
        diff(&desired(&[("A", "2")]), Some(&l))
            .unwrap()
            .content_changed()
    );
    // Adopting with the same value rewrites ownership only.
    let adopted = live(&[("A", "1")], &[], false);
    let c = diff(&desired(&[("A", "1")]), Some(&adopted)).unwrap();
    assert!(c.adopt && !c.content_changed());
    // A new Secret: pods waiting for it start by themselves.
    assert!(
        !diff(&desired(&[("A", "1")]), None)
            .unwrap()
            .content_changed()
    );
}

#[test]
fn other_types_are_skipped() {
    let mut l = live(&[], &[], false);
    l.type_ = "kubernetes.io/tls".into();
    let skip = diff_secret(
        &sref(),
        Some(&desired(&[("A", "1")])),
        Some(&l),
        DiffOptions::default(),
    )
    .unwrap_err();
    assert!(skip.reason.contains("kubernetes.io/tls"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Small key and value spaces, so desired and live overlap often.
    fn keys() -> impl Strategy<Value = BTreeMap<String, u8>> {
        proptest::collection::btree_map("[A-F]", 0u8..3, 0..6)
    }

    /// The Secret's data after a change, as the API server would hold it.
    fn applied(
        change: &SecretChange,
        desired: &DesiredSecret,
        live: &KeyMap<SecretValue>,
    ) -> Option<KeyMap<SecretValue>> {
        if change.action == Action::Delete {
            return None;
        }
        let mut data = live.clone();
        for key in change.added.iter().chain(&change.changed) {
            data.insert(key.clone(), desired.keys[key].value.clone());
        }
        for key in &change.removed {
            data.remove(key);
        }
        Some(data)
    }

    proptest! {
        /// Applying the plan gives every desired key its value, keeps
        /// every key credsync does not own, drops the owned keys the
        /// table no longer names, and leaves nothing to do next time.
        #[test]
        fn applying_the_plan_yields_the_desired_state(
            want in keys(),
            have in keys(),
            owned_mask in proptest::collection::vec(any::<bool>(), 6),
            created in any::<bool>(),
            exists in any::<bool>(),
        ) {
            let pairs: Vec<(String, String)> =
                want.iter().map(|(k, v)| (k.clone(), format!("v{v}"))).collect();
            let pairs: Vec<(&str, &str)> =
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let desired = desired(&pairs);
            let live_pairs: Vec<(String, String)> =
                have.iter().map(|(k, v)| (k.clone(), format!("v{v}"))).collect();
            let live_pairs: Vec<(&str, &str)> =
                live_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let owned: Vec<&str> = ["A", "B", "C", "D", "E", "F"]
                .into_iter()
                .zip(&owned_mask)
                .filter(|(_, on)| **on)
                .map(|(k, _)| k)
                .collect();
            let live = exists.then(|| live(&live_pairs, &owned, created));
            let options = DiffOptions { prune_keys: true, delete_empty: true, adopt_kubestash_v2: false };
            let change = diff_secret(&sref(), Some(&desired), live.as_ref(), options).unwrap();
            let before = live.as_ref().map(|l| l.data.clone()).unwrap_or_default();
            let Some(change) = change else {
                // Nothing to do: it already holds.
                for (key, want) in &desired.keys {
                    prop_assert!(before.get(key).is_some_and(|v| v == &want.value));
                }
                return Ok(());
            };
            let after = applied(&change, &desired, &before);
            let Some(after) = after else {
                prop_assert!(desired.keys.is_empty());
                prop_assert!(live.as_ref().is_some_and(|l| l.created_by_credsync));
                return Ok(());
            };
            for (key, want) in &desired.keys {
                prop_assert_eq!(after.get(key), Some(&want.value));
            }
            let owned_before = live.as_ref().map(|l| l.owned_keys.clone()).unwrap_or_default();
            for (key, value) in &before {
                if !owned_before.contains_key(key) && !desired.keys.contains_key(key) {
                    prop_assert_eq!(after.get(key), Some(value), "a foreign key is kept");
                }
                if owned_before.contains_key(key) && !desired.keys.contains_key(key) {
                    prop_assert!(!after.contains_key(key), "an owned key is pruned");
                }
            }
            // The next reconcile of the written Secret finds nothing to do.
            let written = LiveSecret {
                data: after,
                managed: true,
                owned_keys: match &live {
                    Some(l) => owned_after(&desired, l, &change.removed),
                    None => desired.keys.keys().map(|k| (k.clone(), ())).collect(),
                },
                created_by_credsync: live.as_ref().is_none_or(|l| l.created_by_credsync),
                ..self::live(&[], &[], false)
            };
            let again = diff_secret(&sref(), Some(&desired), Some(&written), options).unwrap();
            prop_assert_eq!(again, None);
        }
    }
}
