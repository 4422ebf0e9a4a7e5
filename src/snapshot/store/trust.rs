//! Which snapshot files credsync trusts: those of the commits it signed.
//!
//! Every commit credsync writes is signed when it has a signing key. The
//! files of this cluster in its newest signed commit are what it last wrote
//! itself; any other content at those paths (a file pushed by someone else,
//! an edit, a removal) is foreign. Foreign files are never read as values,
//! and the next commit credsync signs puts its own files back first, so a
//! signature never vouches for a file credsync did not write.

use std::collections::BTreeMap;
use std::path::Path;

use git2::build::TreeUpdateBuilder;
use git2::{FileMode, ObjectType, Oid, Repository, Signature};

use super::error::SnapshotError;
use super::{SnapshotStore, find_rev};

/// A file of this cluster that differs from credsync's last signed commit:
/// its path, and what that commit holds there (None: no file).
pub(super) type ForeignFiles = BTreeMap<String, Option<Oid>>;

impl SnapshotStore {
    /// Whether commits are signed here (a signing key was given).
    pub fn signs(&self) -> bool {
        self.config.signing.signer.is_some()
    }

    /// Whether any key is trusted, so a commit can be authenticated at all.
    pub fn verifies(&self) -> bool {
        !self.config.signing.trusted.is_empty()
    }

    /// Writes a commit object (not moving any ref), signed with the signing
    /// key when there is one.
    pub(super) fn write_commit(
        &self,
        repo: &Repository,
        author: &Signature<'_>,
        committer: &Signature<'_>,
        message: &str,
        tree: &git2::Tree<'_>,
        parents: &[&git2::Commit<'_>],
    ) -> Result<Oid, git2::Error> {
        let Some(signer) = &self.config.signing.signer else {
            return repo.commit(None, author, committer, message, tree, parents);
        };
        let buffer = repo.commit_create_buffer(author, committer, message, tree, parents)?;
        let content = buffer
            .as_str()
            .map_err(|_| git2::Error::from_str("the commit is not UTF-8"))?;
        let signature = signer
            .sign(content.as_bytes())
            .map_err(|e| git2::Error::from_str(&e.to_string()))?;
        let oid = repo.commit_signed(content, &signature, None)?;
        if let Ok(mut verified) = self.verified.lock() {
            verified.insert(oid, true);
        }
        Ok(oid)
    }

    /// Whether `oid` carries a valid signature by a trusted key. Answers are
    /// kept: a commit id is the hash of its bytes, signature included.
    pub(super) fn is_signed(&self, repo: &Repository, oid: Oid) -> bool {
        if let Some(known) = self.verified.lock().ok().and_then(|v| v.get(&oid).copied()) {
            return known;
        }
        let signed = self.verifies()
            && repo.extract_signature(&oid, None).is_ok_and(|(sig, data)| {
                sig.as_str()
                    .is_ok_and(|sig| self.config.signing.trusted.verify(sig, &data))
            });
        if let Ok(mut verified) = self.verified.lock() {
            verified.insert(oid, signed);
        }
        signed
    }

    /// Whether REV is a commit credsync signed: the only kind a rollback
    /// request may name, and the only kind that vouches for a value the
    /// source no longer holds.
    pub fn authenticated(&self, rev: &str) -> Result<bool, SnapshotError> {
        self.with_repo(|repo| {
            let commit = find_rev(repo, rev)?;
            Ok(self.is_signed(repo, commit.id()))
        })
    }

    /// The newest commit reachable from `head` that credsync signed.
    pub(super) fn last_signed<'r>(
        &self,
        repo: &'r Repository,
        head: Oid,
    ) -> Result<Option<git2::Commit<'r>>, SnapshotError> {
        if !self.verifies() {
            return Ok(None);
        }
        if self.is_signed(repo, head) {
            return repo
                .find_commit(head)
                .map(Some)
                .map_err(|e| self.err("reading a commit", e));
        }
        let walking = |e| self.err("walking history", e);
        let mut walk = repo.revwalk().map_err(walking)?;
        walk.push(head).map_err(walking)?;
        walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)
            .map_err(walking)?;
        for oid in walk {
            let oid = oid.map_err(walking)?;
            if self.is_signed(repo, oid) {
                return repo
                    .find_commit(oid)
                    .map(Some)
                    .map_err(|e| self.err("reading a commit", e));
            }
        }
        Ok(None)
    }

    /// This cluster's files at `tree` that are not as credsync's last signed
    /// commit before `head` has them. Without a trusted key every file is
    /// foreign: nothing in the repository can be told from a forgery.
    pub(super) fn foreign_files(
        &self,
        repo: &Repository,
        head: Option<Oid>,
        tree: &git2::Tree<'_>,
    ) -> Result<ForeignFiles, SnapshotError> {
        let signed = match head {
            Some(head) => self.last_signed(repo, head)?,
            None => None,
        };
        let trusted_tree = signed
            .map(|c| c.tree())
            .transpose()
            .map_err(|e| self.err("reading a signed commit's tree", e))?;
        let cluster = &self.config.cluster;
        let namespaces = |tree: Option<&git2::Tree<'_>>| -> BTreeMap<String, Oid> {
            tree.and_then(|t| t.get_path(Path::new(cluster)).ok())
                .filter(|e| e.kind() == Some(ObjectType::Tree))
                .and_then(|e| repo.find_tree(e.id()).ok())
                .map(|dir| {
                    dir.iter()
                        .filter(|e| e.kind() == Some(ObjectType::Tree))
                        .filter_map(|e| Some((e.name().ok()?.to_owned(), e.id())))
                        .filter(|(name, _)| !name.starts_with('.'))
                        .collect()
                })
                .unwrap_or_default()
        };
        let ours = namespaces(trusted_tree.as_ref());
        let now = namespaces(Some(tree));
        let mut foreign = ForeignFiles::new();
        let all: std::collections::BTreeSet<&String> = ours.keys().chain(now.keys()).collect();
        for namespace in all {
            let (signed_dir, current_dir) = (ours.get(namespace), now.get(namespace));
            if signed_dir == current_dir {
                continue;
            }
            let signed_files = self.listing(repo, signed_dir)?;
            let current_files = self.listing(repo, current_dir)?;
            let path = |name: &str| format!("{cluster}/{namespace}/{name}");
            for (name, file) in &current_files {
                let trusted = signed_files.get(name);
                if trusted != Some(file) {
                    foreign.insert(path(name), trusted.map(|(oid, _)| *oid));
                }
            }
            for (name, (oid, _)) in &signed_files {
                if !current_files.contains_key(name) {
                    foreign.insert(path(name), Some(*oid));
                }
            }
        }
        Ok(foreign)
    }

    /// The Secret files (`*.yaml` blobs and links) of one namespace directory.
    fn listing(
        &self,
        repo: &Repository,
        dir: Option<&Oid>,
    ) -> Result<BTreeMap<String, (Oid, i32)>, SnapshotError> {
        let Some(dir) = dir else {
            return Ok(BTreeMap::new());
        };
        let tree = repo
            .find_tree(*dir)
            .map_err(|e| self.err("reading a namespace directory", e))?;
        Ok(tree
            .iter()
            .filter(|e| e.kind() == Some(ObjectType::Blob))
            .filter_map(|e| {
                let name = e.name().ok()?.to_owned();
                name.ends_with(".yaml")
                    .then(|| (name, (e.id(), e.filemode())))
            })
            .collect())
    }

    /// `base` (HEAD's tree) with this cluster's files put back as credsync
    /// last signed them, and the paths that changed. Only when signing: an
    /// unsigned repository vouches for nothing anyway.
    pub(super) fn restore_signed<'r>(
        &self,
        repo: &'r Repository,
        head: Option<Oid>,
        base: git2::Tree<'r>,
    ) -> Result<(git2::Tree<'r>, ForeignFiles), SnapshotError> {
        if !self.signs() {
            return Ok((base, ForeignFiles::new()));
        }
        let foreign = self.foreign_files(repo, head, &base)?;
        if foreign.is_empty() {
            return Ok((base, foreign));
        }
        let mut update = TreeUpdateBuilder::new();
        for (path, signed) in &foreign {
            match signed {
                Some(oid) => update.upsert(path.as_str(), *oid, FileMode::Blob),
                None => update.remove(path.as_str()),
            };
        }
        let restored = update
            .create_updated(repo, &base)
            .and_then(|oid| repo.find_tree(oid))
            .map_err(|e| self.err("restoring credsync's own snapshot files", e))?;
        tracing::warn!(
            files = foreign.len(),
            paths = %crate::text::one_line(&foreign.keys().take(20).cloned().collect::<Vec<_>>().join(","), 2000),
            "snapshot files changed by commits credsync did not sign: its own signed versions are restored in the next commit, and the foreign ones never used"
        );
        Ok((restored, foreign))
    }
}

/// The commit-message paragraph naming the files a commit put back.
pub(super) fn restored_paragraph(foreign: &ForeignFiles) -> String {
    if foreign.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "Restored {} file(s) changed by commits credsync did not sign:\n",
        foreign.len()
    );
    for (path, signed) in foreign {
        let what = if signed.is_some() {
            "restored"
        } else {
            "removed"
        };
        text.push_str(&format!("  {what} {}\n", crate::text::one_line(path, 200)));
    }
    text.push('\n');
    text
}
