//! Keeping the work tree a view of the newest commit.
//!
//! The work tree is for people (a `git status`, a look at the files); no
//! read of credsync goes through it. A commit that changed a few files
//! checks out those only. A commit that changed many (the first snapshot of
//! 50,000 Secrets writes as many files, seconds of inode creation) is
//! checked out whole on a thread of its own, beside the writes to the
//! cluster that follow the commit: the Secrets do not wait for a view. That
//! checkout is joined before the index or the work tree is used again, and
//! when the store is dropped, so a process ends with its work tree whole.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use git2::build::CheckoutBuilder;
use git2::{Oid, Repository, Tree};

use super::error::git_error;
use super::{SnapshotError, SnapshotStore};
use crate::snapshot::worktree;

/// Commits that change at most this many files check out only those:
/// libgit2 matches each path against every file, so past a few hundred
/// paths a whole checkout is cheaper.
const TARGETED_CHECKOUT_PATHS: usize = 256;

/// A whole checkout running on its own thread.
pub(super) type Pending = JoinHandle<Result<(), SnapshotError>>;

impl SnapshotStore {
    /// Makes the work tree show `tree` (HEAD's), after removing any link
    /// that would lead a checkout outside the repository. With `changed`
    /// (the files a commit wrote or removed), only those are checked out:
    /// a one-key commit among 50,000 files then costs a few file writes,
    /// not a stat of every file. After a refresh that failed, the next one
    /// covers the whole tree again. With `beside`, a whole checkout runs on
    /// its own thread and this returns at once.
    pub(super) fn refresh_work_tree(
        &self,
        repo: &Repository,
        tree: &Tree<'_>,
        changed: Option<&[String]>,
        beside: bool,
    ) -> Result<(), SnapshotError> {
        self.finish_checkout();
        let changed = changed
            .filter(|paths| paths.len() <= TARGETED_CHECKOUT_PATHS)
            .filter(|_| !self.work_tree_behind.load(Ordering::Relaxed));
        self.work_tree_behind.store(true, Ordering::Relaxed);
        if changed.is_none() && beside && repo.workdir().is_some() {
            let job = WholeCheckout {
                git_dir: repo.path().to_owned(),
                tree: tree.id(),
                shown_as: self.config.path.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("snapshot-checkout".to_owned())
                .spawn(move || job.run());
            match (spawned, self.pending_checkout.lock()) {
                (Ok(handle), Ok(mut pending)) => {
                    *pending = Some(handle);
                    return Ok(());
                }
                // No thread (or a poisoned slot, which cannot hold one): in line.
                (Ok(handle), Err(_)) => return join(handle).map(|()| self.caught_up()),
                (Err(err), _) => {
                    tracing::debug!(error = %err, "no thread for the work-tree checkout; checking out in line");
                }
            }
        }
        check_out(&self.config.path, repo, tree, changed)?;
        self.caught_up();
        Ok(())
    }

    /// Waits for a checkout running beside, if any; one that failed is
    /// reported, and the next refresh covers the whole tree.
    pub(super) fn finish_checkout(&self) {
        let Some(handle) = self.pending_checkout.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        match join(handle) {
            Ok(()) => self.caught_up(),
            Err(err) => {
                tracing::warn!(error = %crate::errors::Chain(&err), "snapshot committed, but the work tree was not refreshed");
            }
        }
    }

    fn caught_up(&self) {
        self.work_tree_behind.store(false, Ordering::Relaxed);
    }
}

impl Drop for SnapshotStore {
    /// A process does not end half way through writing its work tree.
    fn drop(&mut self) {
        self.finish_checkout();
    }
}

/// What a thread needs to check out a committed tree: its own handle on the
/// repository (a `Repository` is not shared between threads).
struct WholeCheckout {
    git_dir: PathBuf,
    tree: Oid,
    /// The path errors name (`--snapshot-repo`).
    shown_as: PathBuf,
}

impl WholeCheckout {
    fn run(self) -> Result<(), SnapshotError> {
        let repo = Repository::open(&self.git_dir)
            .map_err(|e| git_error(&self.shown_as, "opening the repository for the checkout", e))?;
        // This tree, not HEAD's: the links were checked against it, and a
        // later commit's files are checked out by that commit's refresh.
        let tree = repo
            .find_tree(self.tree)
            .map_err(|e| git_error(&self.shown_as, "reading the committed tree", e))?;
        check_out(&self.shown_as, &repo, &tree, None)
    }
}

/// Whether the index (so the work tree) lags HEAD: libgit2 writes the index
/// last, so a process killed during a checkout leaves the one before it, and
/// the next refresh must then be whole. Uses the index's cached trees.
pub(super) fn index_behind(repo: &Repository) -> bool {
    if repo.workdir().is_none() {
        return false;
    }
    let Ok(head) = repo.head().and_then(|h| h.peel_to_tree()) else {
        return false; // no commit yet: nothing to lag
    };
    repo.index()
        .and_then(|mut index| index.write_tree())
        .map_or(true, |id| id != head.id())
}

fn join(handle: Pending) -> Result<(), SnapshotError> {
    handle.join().unwrap_or_else(|_| {
        Err(SnapshotError::Internal(
            "the work-tree checkout panicked".to_owned(),
        ))
    })
}

/// Removes stray links, then checks out `tree` (only `paths`, if given).
fn check_out(
    shown_as: &Path,
    repo: &Repository,
    tree: &Tree<'_>,
    paths: Option<&[String]>,
) -> Result<(), SnapshotError> {
    let removed = match (paths, repo.workdir()) {
        (Some(paths), Some(workdir)) => worktree::remove_stray_links_on(tree, workdir, paths),
        _ => worktree::remove_stray_links(repo, tree),
    };
    removed.map_err(|e| git_error(shown_as, "removing a symbolic link from the work tree", e))?;
    let mut checkout = CheckoutBuilder::new();
    checkout.force().remove_untracked(false);
    if let Some(paths) = paths {
        checkout.disable_pathspec_match(true);
        for path in paths {
            checkout.path(path);
        }
    }
    repo.checkout_tree(tree.as_object(), Some(&mut checkout))
        .map_err(|e| git_error(shown_as, "updating the work tree", e))
}
