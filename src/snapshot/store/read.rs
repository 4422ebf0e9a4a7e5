//! Reading revisions back: `history`, `show`, `diff`, the Secrets of a
//! revision (readable without an identity, or decrypted with one), and
//! what to do with a file that cannot be read.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use git2::{FileMode, ObjectType, Oid, Repository};
use sops_age::{self as sops, Identities, SecretDocument};

use super::error::SnapshotError;
use super::warm::FileValues;
use super::{
    CommitInfo, SecretDelta, SnapshotEntry, SnapshotStore, blob_text, changes::compare,
    commit_info, find_rev, head_commit,
};
use crate::labels::{SOURCES_ANNOTATION, parse_sources};
use crate::manifest::{DesiredSecret, SecretRef};
use crate::secret::SecretValue;
use crate::source::ItemId;

impl SnapshotStore {
    /// Snapshot commits, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<CommitInfo>, SnapshotError> {
        self.with_repo(|repo| {
            let Some(head) = head_commit(repo).map_err(|e| self.err("reading HEAD", e))? else {
                return Ok(Vec::new());
            };
            let mut walk = repo.revwalk().map_err(|e| self.err("walking history", e))?;
            walk.push(head.id())
                .map_err(|e| self.err("walking history", e))?;
            let mut out = Vec::new();
            for oid in walk.take(limit) {
                let oid = oid.map_err(|e| self.err("walking history", e))?;
                let commit = repo
                    .find_commit(oid)
                    .map_err(|e| self.err("reading a commit", e))?;
                let mut info = commit_info(&commit);
                info.signed = self.is_signed(repo, oid);
                out.push(info);
            }
            Ok(out)
        })
    }

    /// Resolves REV to a commit id, with clear errors for unknown and ambiguous ones.
    pub fn resolve(&self, rev: &str) -> Result<CommitInfo, SnapshotError> {
        self.with_repo(|repo| {
            let commit = find_rev(repo, rev)?;
            let mut info = commit_info(&commit);
            info.signed = self.is_signed(repo, commit.id());
            Ok(info)
        })
    }

    /// The Secrets at REV (all, or those in `only`), readable without identity.
    /// Files that cannot be read are left out with a warning, unless `only`
    /// names them.
    pub fn entries(
        &self,
        rev: &str,
        only: &[SecretRef],
    ) -> Result<Vec<SnapshotEntry>, SnapshotError> {
        self.selected_entries(rev, only, Unreadable::LeaveOut)
    }

    /// The one read of REV's files behind [`SnapshotStore::entries`] and
    /// [`SnapshotStore::documents`]: an unreadable file in the selection is
    /// left out with a warning or refused, as `unreadable` says.
    fn selected_entries(
        &self,
        rev: &str,
        only: &[SecretRef],
        unreadable: Unreadable,
    ) -> Result<Vec<SnapshotEntry>, SnapshotError> {
        self.with_repo(|repo| {
            let commit = find_rev(repo, rev)?;
            let tree = commit.tree().map_err(|e| self.err("reading a tree", e))?;
            let (entries, bad) = self.entries_in(repo, &tree)?;
            for file in bad
                .iter()
                .filter(|f| only.is_empty() || only.contains(&f.secret))
            {
                if unreadable == Unreadable::Refuse || only.contains(&file.secret) {
                    return Err(self.unreadable_error(file));
                }
                file.warn("it is left out");
            }
            for secret in only {
                if !entries.contains_key(secret) {
                    return Err(self.err(
                        &format!("reading {rev}"),
                        format!("no snapshot of Secret {secret} at this revision"),
                    ));
                }
            }
            Ok(entries
                .into_values()
                .filter(|e| only.is_empty() || only.contains(&e.secret))
                .collect())
        })
    }

    /// Decrypts the Secrets at REV; a file that fails its MAC, or cannot be
    /// read at all, is an error naming it: nothing at REV is used then.
    pub fn documents(
        &self,
        rev: &str,
        only: &[SecretRef],
        identities: &Identities,
    ) -> Result<Vec<SecretDocument>, SnapshotError> {
        let entries = self.selected_entries(rev, only, Unreadable::Refuse)?;
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        self.open_files(rev, &paths, identities)
    }

    /// Opens and verifies `paths` at REV, in order. Every file is opened on
    /// its own (age, then the MAC), so the work spreads over the cores: a
    /// warm start of 10,000 files took 8 s on one. Files are read from git
    /// in small batches under the repository lock, and decrypted outside it.
    fn open_files(
        &self,
        rev: &str,
        paths: &[&str],
        identities: &Identities,
    ) -> Result<Vec<SecretDocument>, SnapshotError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, paths.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let opened: Vec<Result<Vec<(usize, SecretDocument)>, SnapshotError>> =
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..workers)
                    .map(|_| scope.spawn(|| self.open_some(rev, paths, &next, identities)))
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(SnapshotError::Internal(
                                "a thread decrypting snapshot files panicked".to_owned(),
                            ))
                        })
                    })
                    .collect()
            });
        let mut docs: Vec<(usize, SecretDocument)> = Vec::with_capacity(paths.len());
        for part in opened {
            docs.extend(part?);
        }
        docs.sort_by_key(|(index, _)| *index);
        Ok(docs.into_iter().map(|(_, doc)| doc).collect())
    }

    /// One worker of [`SnapshotStore::open_files`]: takes batches of `paths`
    /// by index until none is left; each document keeps its index.
    fn open_some(
        &self,
        rev: &str,
        paths: &[&str],
        next: &std::sync::atomic::AtomicUsize,
        identities: &Identities,
    ) -> Result<Vec<(usize, SecretDocument)>, SnapshotError> {
        const BATCH: usize = 32;
        let mut out = Vec::new();
        loop {
            let start = next.fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
            if start >= paths.len() {
                return Ok(out);
            }
            let end = (start + BATCH).min(paths.len());
            let texts: Vec<String> = self.with_repo(|repo| {
                let commit = find_rev(repo, rev)?;
                let tree = commit.tree().map_err(|e| self.err("reading a tree", e))?;
                paths[start..end]
                    .iter()
                    .map(|path| {
                        blob_text(repo, &tree, path)
                            .map_err(|e| self.err("reading a snapshot file", e))
                    })
                    .collect()
            })?;
            for (offset, text) in texts.iter().enumerate() {
                let index = start + offset;
                let doc = sops::open(text, identities).map_err(|cause| SnapshotError::File {
                    file: paths[index].to_owned(),
                    cause,
                })?;
                self.check_names(paths[index], &doc)?;
                out.push((index, doc));
            }
        }
    }

    /// Refuses a file whose metadata names another Secret than its path:
    /// the path is what the namespace filter and every reader checked, so
    /// it is the only name a file is ever applied as.
    fn check_names(&self, path: &str, doc: &SecretDocument) -> Result<(), SnapshotError> {
        let by_path = path
            .strip_prefix(&format!("{}/", self.config.cluster))
            .and_then(|rest| rest.strip_suffix(".yaml"))
            .and_then(|rest| rest.split_once('/'));
        if by_path == Some((doc.namespace.as_str(), doc.name.as_str())) {
            return Ok(());
        }
        Err(SnapshotError::NameMismatch {
            file: path.to_owned(),
            says: crate::text::one_line(&format!("{}/{}", doc.namespace, doc.name), 300),
        })
    }

    /// The Secrets at REV as desired state (decrypted, every MAC checked):
    /// what a rollback applies and `plan --from-snapshot` compares.
    pub fn desired(
        &self,
        rev: &str,
        only: &[SecretRef],
        identities: &Identities,
    ) -> Result<BTreeMap<SecretRef, DesiredSecret>, SnapshotError> {
        Ok(self
            .documents(rev, only, identities)?
            .into_iter()
            .map(crate::snapshot::desired)
            .collect())
    }

    fn unreadable_error(&self, file: &UnreadableFile) -> SnapshotError {
        self.err(
            &format!("reading {}", file.path),
            format!(
                "{}; this file is not used (to restore this Secret, pick a revision where `credsync show` lists it)",
                file.reason
            ),
        )
    }

    /// Key-level changes from REV1 to REV2.
    pub fn diff(&self, from: &str, to: &str) -> Result<Vec<SecretDelta>, SnapshotError> {
        let sources =
            |rev: &str| -> Result<BTreeMap<SecretRef, BTreeMap<String, String>>, SnapshotError> {
                Ok(self
                    .entries(rev, &[])?
                    .into_iter()
                    .map(|e| (e.secret, e.sources))
                    .collect())
            };
        Ok(compare(&sources(from)?, &sources(to)?))
    }

    fn entries_in(
        &self,
        repo: &Repository,
        tree: &git2::Tree<'_>,
    ) -> Result<(BTreeMap<SecretRef, SnapshotEntry>, Vec<UnreadableFile>), SnapshotError> {
        self.files_in(
            repo,
            tree,
            |_| true,
            |secret, path, outline| {
                let sources = parse_sources(outline.annotations.get(SOURCES_ANNOTATION));
                SnapshotEntry {
                    secret,
                    path,
                    outline,
                    sources,
                }
            },
        )
    }

    /// Reads the outline of every file of this cluster at `tree`. A file
    /// that cannot be read (not SOPS, truncated, a committed link) does not
    /// stop the others: it is returned apart, with why. Only the files of
    /// Secrets `wanted` says yes to are read at all.
    pub(super) fn files_in<T>(
        &self,
        repo: &Repository,
        tree: &git2::Tree<'_>,
        wanted: impl Fn(&SecretRef) -> bool,
        mut summarize: impl FnMut(SecretRef, String, sops::Outline) -> T,
    ) -> Result<(BTreeMap<SecretRef, T>, Vec<UnreadableFile>), SnapshotError> {
        let mut out = BTreeMap::new();
        let mut unreadable = Vec::new();
        let files = self.cluster_files(repo, tree)?;
        for file in files.into_iter().filter(|f| wanted(&f.secret)) {
            if file.link {
                unreadable.push(UnreadableFile {
                    secret: file.secret,
                    path: file.path,
                    reason: LINK_REASON.to_owned(),
                });
                continue;
            }
            let blob = repo
                .find_blob(file.oid)
                .map_err(|e| self.err("reading a blob", e))?;
            let text = String::from_utf8_lossy(blob.content());
            match sops::outline(&text) {
                Ok(outline) => {
                    out.insert(
                        file.secret.clone(),
                        summarize(file.secret, file.path, outline),
                    );
                }
                // The parser's words may quote the pushed file: escaped.
                Err(cause) => unreadable.push(UnreadableFile {
                    secret: file.secret,
                    path: file.path,
                    reason: crate::text::one_line(&crate::errors::chain(&cause), 500),
                }),
            }
        }
        Ok((out, unreadable))
    }

    /// The files of this cluster at `tree` (`CLUSTER/NAMESPACE/NAME.yaml`),
    /// from the trees alone: no blob is read.
    pub(super) fn cluster_files(
        &self,
        repo: &Repository,
        tree: &git2::Tree<'_>,
    ) -> Result<Vec<TreeFile>, SnapshotError> {
        let mut out = Vec::new();
        let Ok(cluster) = tree.get_path(Path::new(&self.config.cluster)) else {
            return Ok(out);
        };
        if cluster.kind() != Some(ObjectType::Tree) {
            return Ok(out);
        }
        let cluster = repo
            .find_tree(cluster.id())
            .map_err(|e| self.err("reading the cluster directory", e))?;
        // Only names a Secret can have: no namespace starts with '.' (such
        // directories hold rollback requests), and anything else (a newline
        // in a pushed file's name, say) is never a Secret's file, so it is
        // never read, listed or shown.
        for ns in cluster.iter().filter(|e| {
            e.kind() == Some(ObjectType::Tree)
                && e.name().is_ok_and(crate::manifest::is_dns1123_label)
        }) {
            let namespace = ns.name().unwrap_or_default().to_owned();
            let ns_tree = repo
                .find_tree(ns.id())
                .map_err(|e| self.err("reading a namespace directory", e))?;
            for file in ns_tree
                .iter()
                .filter(|e| e.kind() == Some(ObjectType::Blob))
            {
                let Some(name) = file
                    .name()
                    .ok()
                    .and_then(|n| n.strip_suffix(".yaml"))
                    .filter(|n| crate::manifest::is_dns1123_subdomain(n))
                else {
                    continue;
                };
                out.push(TreeFile {
                    path: format!("{}/{namespace}/{name}.yaml", self.config.cluster),
                    secret: SecretRef::new(&namespace, name),
                    oid: file.id(),
                    link: file.filemode() == i32::from(FileMode::Link),
                });
            }
        }
        Ok(out)
    }

    /// The values of the last snapshot (HEAD), for a warm start, from what
    /// credsync wrote itself only: the warm-start cache where it holds a
    /// file's blob (it holds only files credsync sealed or authenticated),
    /// else the file if credsync's last signed commit holds it as it is
    /// (opened with its MAC checked). Any other file is left out: its items
    /// cost a source read, never a value someone else wrote. The cache is
    /// then brought up to date. A trusted file that cannot be opened is an
    /// error: nothing is used then.
    pub fn warm_values(&self, identities: &Identities) -> Result<WarmValues, SnapshotError> {
        let head = self.with_repo(|repo| {
            let Some(head) = head_commit(repo).map_err(|e| self.err("reading HEAD", e))? else {
                return Ok(None);
            };
            let tree = head
                .tree()
                .map_err(|e| self.err("reading HEAD's tree", e))?;
            let files = self.cluster_files(repo, &tree)?;
            let foreign = self.foreign_files(repo, Some(head.id()), &tree)?;
            Ok(Some((
                head.id().to_string(),
                files,
                foreign,
                self.warm_cache(repo),
            )))
        })?;
        let Some((commit, files, foreign, cache)) = head else {
            return Ok(WarmValues::default());
        };
        let live: HashSet<Oid> = files.iter().map(|f| f.oid).collect();
        let mut read = cache.read(&live, identities);
        let (missing, untrusted): (Vec<&TreeFile>, Vec<&TreeFile>) = files
            .iter()
            .filter(|f| !read.entries.contains_key(&f.oid))
            .partition(|f| !foreign.contains_key(&f.path));
        if !untrusted.is_empty() {
            tracing::info!(
                files = untrusted.len(),
                "snapshot files not written by credsync here nor in a commit it signed: their items are read from the source"
            );
        }
        let paths: Vec<&str> = missing.iter().map(|f| f.path.as_str()).collect();
        let opened = self.open_files(&commit, &paths, identities)?;
        for (file, doc) in missing.iter().zip(opened) {
            let (_, desired) = crate::snapshot::desired(doc);
            let values = desired.keys.into_iter().map(|(_, k)| (k.source, k.value));
            read.entries.insert(file.oid, values.collect());
        }
        if (!missing.is_empty() || read.stale || read.segments.len() > 1)
            && let Some(recipients) = &self.config.recipients
        {
            let entries: Vec<(Oid, &FileValues)> =
                read.entries.iter().map(|(o, v)| (*o, v)).collect();
            if let Err(err) = cache.replace(&entries, recipients, &read.segments) {
                tracing::warn!(error = %crate::errors::Chain(&err), "warm-start cache not updated; the next start opens the files again");
            }
        }
        Ok(WarmValues {
            commit: Some(commit),
            files: files.len(),
            from_cache: files.len() - missing.len() - untrusted.len(),
            untrusted: untrusted.len(),
            values: read.entries.into_values().flatten().collect(),
        })
    }
}

/// A snapshot file as a tree lists it.
pub(super) struct TreeFile {
    pub(super) path: String,
    pub(super) secret: SecretRef,
    pub(super) oid: Oid,
    /// A committed symbolic link: never followed, never trusted.
    pub(super) link: bool,
}

/// The last snapshot's values, by the item each came from.
#[derive(Default)]
pub struct WarmValues {
    /// The commit they were read at; None when there is no snapshot yet.
    pub commit: Option<String>,
    pub values: Vec<(ItemId, SecretValue)>,
    /// Files in the snapshot, and how many of them the cache answered for.
    pub files: usize,
    pub from_cache: usize,
    /// Files left out: neither in the cache nor as credsync signed them.
    pub untrusted: usize,
}

/// Why a committed link is never read as a snapshot file.
pub(super) const LINK_REASON: &str = "it is a symbolic link, not a SOPS file";
/// What `record` does with a file it cannot read.
pub(super) const REWRITTEN: &str =
    "it is rewritten from the desired state (or removed if the Secret is no longer desired)";

/// What a read of a revision does with a file it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    LeaveOut,
    Refuse,
}

/// A committed snapshot file credsync cannot read. It is never trusted:
/// `record` rewrites it from the desired state, `rollback` refuses it.
#[derive(Debug, Clone)]
pub struct UnreadableFile {
    pub secret: SecretRef,
    pub path: String,
    pub reason: String,
}

impl UnreadableFile {
    pub(super) fn warn(&self, what_happens: &str) {
        tracing::warn!(file = %self.path, reason = %self.reason, "snapshot file cannot be read; {what_happens}");
    }
}
