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

use git2::{FileMode, ObjectType, Oid, Repository, Signature};

use super::error::SnapshotError;
use super::{SnapshotStore, find_rev};
use crate::snapshot::request::REQUESTS_DIR;

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
    /// key when there is one and `sign` says its files are all credsync's.
    pub(super) fn write_commit(
        &self,
        repo: &Repository,
        (author, committer): (&Signature<'_>, &Signature<'_>),
        message: &str,
        tree: &git2::Tree<'_>,
        parents: &[&git2::Commit<'_>],
        sign: bool,
    ) -> Result<Oid, git2::Error> {
        let signer = self.config.signing.signer.as_ref().filter(|_| sign);
        let Some(signer) = signer else {
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
            // Pushed history can be long: the answers are cheap to find again.
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
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

    /// `base` (HEAD's tree) with this cluster's directory put back as
    /// credsync last signed it (its `.requests`, the remote's, kept), what
    /// changed, and whether the commit built on it may be signed. The whole
    /// directory is replaced, not file by file, so no shape of pushed
    /// content (a directory where a file was, a file where a namespace was)
    /// can make the commit fail.
    ///
    /// With no signed commit yet (a repository written before signing),
    /// every file is foreign: a full record removes them all and rewrites
    /// the desired ones; a scoped one (`scoped`) cannot rewrite the others,
    /// so its commit is left unsigned and the next full one signs.
    /// Without a signing key nothing is signed and nothing restored.
    pub(super) fn restore_signed<'r>(
        &self,
        repo: &'r Repository,
        head: Option<Oid>,
        base: git2::Tree<'r>,
        scoped: bool,
    ) -> Result<Restored<'r>, SnapshotError> {
        let untouched = |tree, sign| Restored {
            tree,
            foreign: ForeignFiles::new(),
            sign,
        };
        if !self.signs() {
            return Ok(untouched(base, false));
        }
        let Some(head) = head else {
            return Ok(untouched(base, true));
        };
        let signed = self.last_signed(repo, head)?;
        if signed.is_none() && scoped {
            return Ok(untouched(base, false));
        }
        let failed = |e| self.err("restoring credsync's own snapshot files", e);
        let cluster = self.config.cluster.as_str();
        let signed_dir = signed
            .map(|c| c.tree())
            .transpose()
            .map_err(failed)?
            .and_then(|t| t.get_name(cluster).map(|e| (e.id(), e.kind())))
            .filter(|(_, kind)| *kind == Some(ObjectType::Tree))
            .map(|(id, _)| id);
        let current = base.get_name(cluster).map(|e| (e.id(), e.kind()));
        let current_dir = current
            .filter(|(_, kind)| *kind == Some(ObjectType::Tree))
            .map(|(id, _)| id);
        // What the remote owns there: its rollback requests.
        let requests = current_dir
            .and_then(|dir| repo.find_tree(dir).ok())
            .and_then(|dir| dir.get_name(REQUESTS_DIR).map(|e| (e.id(), e.filemode())));
        let mut dir = repo
            .treebuilder(signed_dir.and_then(|d| repo.find_tree(d).ok()).as_ref())
            .map_err(failed)?;
        if dir.get(REQUESTS_DIR).map_err(failed)?.is_some() {
            dir.remove(REQUESTS_DIR).map_err(failed)?;
        }
        if let Some((id, mode)) = requests {
            dir.insert(REQUESTS_DIR, id, mode).map_err(failed)?;
        }
        let restored_dir = dir.write().map_err(failed)?;
        let empty = repo
            .treebuilder(None)
            .and_then(|b| b.write())
            .map_err(failed)?;
        let wanted = (restored_dir != empty).then_some(restored_dir);
        if current.map(|(id, _)| id) == wanted && current_dir == wanted {
            return Ok(untouched(base, true));
        }
        let mut foreign = self.foreign_files(repo, Some(head), &base)?;
        if foreign.is_empty() {
            // Only things no Secret file is (a directory in a file's place,
            // other names): say so rather than nothing.
            foreign.insert(
                format!("{cluster}/ (entries that are no Secret's file)"),
                None,
            );
        }
        let mut root = repo.treebuilder(Some(&base)).map_err(failed)?;
        match wanted {
            Some(id) => {
                root.insert(cluster, id, i32::from(FileMode::Tree))
                    .map_err(failed)?;
            }
            None => {
                if root.get(cluster).map_err(failed)?.is_some() {
                    root.remove(cluster).map_err(failed)?;
                }
            }
        }
        let tree = root
            .write()
            .and_then(|oid| repo.find_tree(oid))
            .map_err(failed)?;
        tracing::warn!(
            files = foreign.len(),
            paths = %crate::text::one_line(&foreign.keys().take(20).cloned().collect::<Vec<_>>().join(","), 2000),
            "snapshot files changed by commits credsync did not sign: its own signed versions are restored in the next commit, and the foreign ones never used"
        );
        Ok(Restored {
            tree,
            foreign,
            sign: true,
        })
    }
}

/// A base tree with credsync's own files put back.
pub(super) struct Restored<'r> {
    pub(super) tree: git2::Tree<'r>,
    /// The files that differed (for the commit message).
    pub(super) foreign: ForeignFiles,
    /// Whether a commit built on it vouches only for credsync's own files.
    pub(super) sign: bool,
}

/// Signature answers kept at most.
const MAX_VERIFIED: usize = 100_000;

/// Files named one by one in a commit message at most.
const LISTED: usize = 50;

/// The commit-message paragraph naming the files a commit put back.
pub(super) fn restored_paragraph(foreign: &ForeignFiles) -> String {
    if foreign.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "Restored {} file(s) changed by commits credsync did not sign:\n",
        foreign.len()
    );
    for (path, signed) in foreign.iter().take(LISTED) {
        let what = if signed.is_some() {
            "restored"
        } else {
            "removed"
        };
        text.push_str(&format!("  {what} {}\n", crate::text::one_line(path, 200)));
    }
    if foreign.len() > LISTED {
        text.push_str(&format!("  ... and {} more\n", foreign.len() - LISTED));
    }
    text.push('\n');
    text
}
