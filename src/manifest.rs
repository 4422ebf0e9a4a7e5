//! From table names to desired Secrets (SPEC 2).
//!
//! `namespace/secret-name/KEY` names Secret `secret-name` in `namespace`,
//! data key `KEY` upper-cased with `.` and `-` turned into `_`. Mapping runs
//! twice: [`Selection::of`] on the encrypted items decides which are worth a
//! KMS call (bad names and filtered namespaces are not), and
//! [`Selection::assemble`] builds the [`Manifest`] from what was decrypted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::secret::SecretValue;
use crate::source::{Credential, ItemFailure, ItemId, SourceItem};

/// A Secret by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl SecretRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::str::FromStr for SecretRef {
    type Err = String;

    /// Parses `namespace/name`, as users name Secrets on the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self::new(ns, name))
            }
            _ => Err(format!("'{s}' is not namespace/name")),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a table name lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub secret: SecretRef,
    pub key: String,
}

/// How a table name becomes a Secret and a key (`--key-mapping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyMapping {
    /// Upper-case, `.` and `-` become `_` (what Kubestash-V2's README says).
    #[default]
    Credsync,
    /// What Kubestash-V2's code does: upper-case, `-` becomes `_`, `.` is
    /// kept; Secret names with a dot are skipped. A cluster it fed keeps
    /// every key under this mapping.
    #[value(name = "kubestash-v2")]
    KubestashV2,
}

impl KeyMapping {
    /// Maps a table name, or says why it cannot be mapped.
    pub fn map(self, name: &str) -> Result<Target, String> {
        let parts: Vec<&str> = name.split('/').collect();
        let [namespace, secret, key] = parts.as_slice() else {
            return Err(format!(
                "name has {} segment(s), expected namespace/secret-name/KEY",
                parts.len()
            ));
        };
        if !is_dns1123_label(namespace) {
            return Err(format!(
                "namespace '{namespace}' is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63)"
            ));
        }
        match self {
            KeyMapping::Credsync if !is_dns1123_subdomain(secret) => {
                return Err(format!(
                    "secret name '{secret}' is not a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most 253)"
                ));
            }
            KeyMapping::KubestashV2 if !is_dns1123_label(secret) => {
                return Err(format!(
                    "secret name '{secret}' is skipped by the kubestash-v2 mapping (lower-case alphanumerics and '-' only, no '.', at most 63)"
                ));
            }
            _ => {}
        }
        let key = match self {
            KeyMapping::Credsync => normalize_key(key),
            KeyMapping::KubestashV2 => key.replace('-', "_").to_ascii_uppercase(),
        };
        if !is_secret_key(&key) {
            return Err(format!(
                "key '{key}' is not a valid Secret data key (only A-Z a-z 0-9 . _ - allowed)"
            ));
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
pub fn map_name(name: &str) -> Result<Target, String> {
    KeyMapping::Credsync.map(name)
}

/// Key names marked `+added ~changed -removed`, the one notation of plans,
/// commit messages, Events and listings.
pub fn marked_keys(added: &[String], changed: &[String], removed: &[String]) -> String {
    key_marks(added, changed, removed)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The marks of [`marked_keys`] one by one, for texts that must be cut.
pub fn key_marks<'a>(
    added: &'a [String],
    changed: &'a [String],
    removed: &'a [String],
) -> impl Iterator<Item = String> + 'a {
    added
        .iter()
        .map(|k| format!("+{k}"))
        .chain(changed.iter().map(|k| format!("~{k}")))
        .chain(removed.iter().map(|k| format!("-{k}")))
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

/// Which namespaces credsync may write to.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    exclude: BTreeSet<String>,
    include: Option<BTreeSet<String>>,
}

/// Kubestash-V2's default: never touch the cluster's own namespaces.
pub const DEFAULT_NAMESPACE_EXCLUDE: &str = "kube-system|kube-public|kube-node-lease";

impl NamespaceFilter {
    /// The include list, if one is set: credsync then reads Secrets only in
    /// those namespaces, so namespaced RBAC (Roles) is enough.
    pub fn included(&self) -> Option<Vec<String>> {
        self.include
            .as_ref()
            .map(|set| set.iter().cloned().collect())
    }

    /// Lists are `|`- or `,`-separated; an empty include list means "all".
    pub fn parse(exclude: &str, include: Option<&str>) -> Self {
        let split = |s: &str| -> BTreeSet<String> {
            s.split(['|', ','])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Self {
            exclude: split(exclude),
            include: include.map(split).filter(|set| !set.is_empty()),
        }
    }

    /// Why credsync does not write to `namespace`, if it does not.
    pub fn reason_to_skip(&self, namespace: &str) -> Option<&'static str> {
        if self.exclude.contains(namespace) {
            Some("namespace is excluded (--namespace-exclude)")
        } else if self
            .include
            .as_ref()
            .is_some_and(|include| !include.contains(namespace))
        {
            Some("namespace is not included (--namespace-include)")
        } else {
            None
        }
    }
}

/// A table name that does not sync, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skip {
    /// A table name, or a Secret as `namespace/name`.
    pub subject: String,
    pub reason: String,
}

/// Two or more table names claiming one Secret key: none of them is applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub secret: SecretRef,
    pub key: String,
    pub sources: Vec<ItemId>,
}

/// A key's desired value and where it came from.
#[derive(Debug, Clone)]
pub struct DesiredKey {
    pub value: SecretValue,
    pub source: ItemId,
}

/// Why a key's live value must be left as it is this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Its item failed to decrypt.
    Failed,
    /// Several table names claim it.
    Conflict,
}

/// The keys one Secret should hold.
#[derive(Debug, Clone, Default)]
pub struct DesiredSecret {
    pub keys: BTreeMap<String, DesiredKey>,
    /// Keys named by the table whose live value stays untouched.
    pub held: BTreeMap<String, Hold>,
}

impl DesiredSecret {
    /// `sha256:` and 32 hex digits over the key names and the item versions
    /// they come from, never the values: it changes when any key's source
    /// does, and can be shown anywhere (annotations, restarts, logs).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for (key, want) in &self.keys {
            hash.update(format!("{key}={}\n", want.source).as_bytes());
        }
        format!("sha256:{}", &hex::encode(hash.finalize())[..32])
    }
}

/// The desired state built from the table.
#[derive(Debug, Default)]
pub struct Manifest {
    pub secrets: BTreeMap<SecretRef, DesiredSecret>,
    pub skipped: Vec<Skip>,
    pub conflicts: Vec<Conflict>,
    pub failures: Vec<ItemFailure>,
    filter: NamespaceFilter,
    existing: BTreeSet<String>,
}

impl Manifest {
    /// Exactly these Secrets and nothing else in scope: what a rollback or
    /// `plan --from-snapshot` compares with the cluster.
    pub fn of_secrets(secrets: BTreeMap<SecretRef, DesiredSecret>) -> Self {
        Self {
            secrets,
            ..Self::default()
        }
    }

    /// Whether credsync may act in `namespace`: managed Secrets elsewhere
    /// are left alone even if the table no longer names them.
    pub fn in_scope(&self, namespace: &str) -> bool {
        self.filter.reason_to_skip(namespace).is_none() && self.existing.contains(namespace)
    }
}

/// A value another source already read and mapped (Secrets Manager): it
/// joins the selection under the same namespace and conflict rules.
#[derive(Debug, Clone)]
pub struct Ready {
    pub target: Target,
    pub credential: Credential,
}

/// A source's failure whose keys keep their live values (the keys a failed
/// Secrets Manager secret held the last time it was read).
#[derive(Debug, Clone)]
pub struct Failed {
    pub failure: ItemFailure,
    pub keys: Vec<Target>,
}

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
                    selection.skip(item.id().name.clone(), reason);
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

    /// Builds the manifest from the decrypted items; failed items and
    /// conflicts become held keys so their live values stay.
    pub fn assemble(self, credentials: Vec<Credential>, failures: Vec<ItemFailure>) -> Manifest {
        let mut manifest = Manifest {
            skipped: self.skipped,
            filter: self.filter,
            existing: self.existing,
            ..Manifest::default()
        };
        for credential in credentials.into_iter().chain(self.ready) {
            if let Some(target) = self.targets.get(&credential.id) {
                manifest
                    .secrets
                    .entry(target.secret.clone())
                    .or_default()
                    .keys
                    .insert(
                        target.key.clone(),
                        DesiredKey {
                            value: credential.value,
                            source: credential.id,
                        },
                    );
            }
        }
        for failure in self.failures.into_iter().chain(failures) {
            let target = self.targets.get(&failure.id).cloned();
            // A malformed item was never selected; hold its key all the same.
            let target = target.or_else(|| self.mapping.map(&failure.id.name).ok());
            if let Some(target) = target {
                let secret = manifest.secrets.entry(target.secret.clone()).or_default();
                secret.held.insert(target.key.clone(), Hold::Failed);
            }
            manifest.failures.push(failure);
        }
        for target in self.held {
            let secret = manifest.secrets.entry(target.secret).or_default();
            secret.held.insert(target.key, Hold::Failed);
        }
        for conflict in &self.conflicts {
            let secret = manifest.secrets.entry(conflict.secret.clone()).or_default();
            secret.held.insert(conflict.key.clone(), Hold::Conflict);
        }
        manifest.conflicts = self.conflicts;
        manifest.skipped.sort_by(|a, b| a.subject.cmp(&b.subject));
        manifest.failures.sort_by(|a, b| a.id.cmp(&b.id));
        manifest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn maps_and_normalizes_keys() {
        let t = map_name("team-a/db-creds/db.pass-word").unwrap();
        assert_eq!(t.secret, SecretRef::new("team-a", "db-creds"));
        assert_eq!(t.key, "DB_PASS_WORD");
        assert_eq!(map_name("a/b.c/Key_1").unwrap().key, "KEY_1");
    }

    #[test]
    fn the_kubestash_v2_mapping_keeps_dots_and_skips_dotted_secret_names() {
        let kv2 = KeyMapping::KubestashV2;
        let t = kv2.map("team-a/db-creds/db.pass-word").unwrap();
        assert_eq!(t.secret, SecretRef::new("team-a", "db-creds"));
        assert_eq!(t.key, "DB.PASS_WORD");
        assert_eq!(kv2.map("a/b/Key_1").unwrap().key, "KEY_1");
        let err = kv2.map("a/b.c/k").unwrap_err();
        assert!(err.contains("kubestash-v2"), "{err}");
        assert!(map_name("a/b.c/k").is_ok());
        // Spellings credsync folds together stay apart under kubestash-v2.
        let filter = NamespaceFilter::parse("", None);
        let items = vec![item("ns/app/db.pass"), item("ns/app/DB_PASS")];
        let sel = Selection::of(items, vec![], &filter, &existing(&["ns"]), kv2);
        assert_eq!((sel.to_decrypt.len(), sel.conflicts.len()), (2, 0));
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
            let err = map_name(name).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
        }
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

    mod properties {
        use super::super::*;
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
