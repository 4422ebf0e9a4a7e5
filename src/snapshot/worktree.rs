//! Keeping the snapshot work tree inside the repository.
//!
//! libgit2's checkout follows a symbolic link that stands in the work tree
//! where the commit has a file or a directory, and writes the snapshot file
//! wherever the link points (outside the repository, over any file the
//! process may write). The work tree is only a view of the commits, so a
//! link there that the commit does not hold is removed before every
//! checkout, with a warning naming it; committed links stay links and are
//! never written through, since nothing is checked out beneath them.

use std::path::Path;

use git2::{FileMode, ObjectType, Repository, Tree};

/// Removes every symbolic link in the work tree that stands where `tree`
/// has a file or a directory. Returns how many were removed.
pub(super) fn remove_stray_links(repo: &Repository, tree: &Tree<'_>) -> std::io::Result<usize> {
    let Some(workdir) = repo.workdir() else {
        return Ok(0);
    };
    let mut removed = 0;
    walk(repo, tree, workdir, &mut removed)?;
    Ok(removed)
}

/// [`remove_stray_links`] for the files at `paths` only (and the
/// directories above them): what a commit that changed those files checks
/// out. Costs a few `lstat`s per path instead of one per file of the tree.
pub(super) fn remove_stray_links_on(
    tree: &Tree<'_>,
    workdir: &Path,
    paths: &[String],
) -> std::io::Result<usize> {
    let mut removed = 0;
    for path in paths {
        let mut prefix = std::path::PathBuf::new();
        for part in Path::new(path).components() {
            prefix.push(part);
            let on_disk = workdir.join(&prefix);
            let Ok(meta) = std::fs::symlink_metadata(&on_disk) else {
                break;
            };
            if !meta.is_symlink() {
                continue;
            }
            let committed_link = tree
                .get_path(&prefix)
                .is_ok_and(|e| e.filemode() == i32::from(FileMode::Link));
            if !committed_link {
                remove_link(&on_disk)?;
                removed += 1;
            }
            break;
        }
    }
    Ok(removed)
}

fn remove_link(path: &Path) -> std::io::Result<()> {
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    tracing::warn!(
        link = %path.display(),
        target = %target,
        "removing a symbolic link from the snapshot work tree: the commit has a file or \
         directory there, and credsync never writes through a link"
    );
    std::fs::remove_file(path)
}

fn walk(
    repo: &Repository,
    tree: &Tree<'_>,
    dir: &Path,
    removed: &mut usize,
) -> std::io::Result<()> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else {
            continue;
        };
        let path = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let committed_link = entry.filemode() == i32::from(FileMode::Link);
        if meta.is_symlink() && !committed_link {
            remove_link(&path)?;
            *removed += 1;
            continue;
        }
        if entry.kind() == Some(ObjectType::Tree) && meta.is_dir() {
            let Ok(subtree) = repo.find_tree(entry.id()) else {
                continue;
            };
            walk(repo, &subtree, &path, removed)?;
        }
    }
    Ok(())
}
