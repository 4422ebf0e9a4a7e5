//! What can go wrong with the snapshot repository, named so the user knows
//! what to do (a full disk, a lock left behind, a tampered file).

use std::path::Path;

use sops_age as sops;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot repository {path}: {what}: {cause}")]
    Git {
        path: String,
        what: String,
        /// libgit2's words (and a full-disk note), already in the message.
        cause: String,
        /// The libgit2 error itself when there was one, for callers that
        /// must tell a missing object from a lock or a network failure. Not
        /// a `#[source]`: its Display is `cause` again.
        git: Option<git2::Error>,
    },
    #[error("unknown revision '{0}' in the snapshot repository (see `credsync history`)")]
    UnknownRev(String),
    #[error("revision '{0}' is ambiguous in the snapshot repository: give more characters")]
    AmbiguousRev(String),
    #[error("{}", describe_file_error(file, cause))]
    File {
        file: String,
        cause: sops::SopsError,
    },
    #[error(
        "snapshot file {file} names the Secret {says} in its metadata, not the one its path names: refused (it was not written by credsync; pick a revision whose file is credsync's)"
    )]
    NameMismatch { file: String, says: String },
    #[error(
        "snapshot repository {path} is locked by another git process ({lock} is recent); retry, or remove it if no git process is running"
    )]
    Locked { path: String, lock: String },
    /// A bug in credsync (a panic in an earlier operation), not a git problem.
    #[error(
        "internal error in the snapshot store: {0}; this is a bug in credsync, please report it"
    )]
    Internal(String),
}

impl SnapshotError {
    /// A failure of the repository itself (a lock, a libgit2 error, a bug)
    /// that may pass, rather than something wrong with what was asked for
    /// (an unknown revision, a tampered or unreadable file).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Locked { .. } | Self::Internal(_) | Self::Git { git: Some(_), .. }
        )
    }
}

/// Why a repository operation failed: libgit2's error, kept as is, or
/// credsync's own words.
pub(super) enum GitCause {
    Git(git2::Error),
    Text(String),
}

impl From<git2::Error> for GitCause {
    fn from(err: git2::Error) -> Self {
        Self::Git(err)
    }
}

impl From<String> for GitCause {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

/// A work-tree file that could not be written or removed.
impl From<std::io::Error> for GitCause {
    fn from(err: std::io::Error) -> Self {
        Self::Text(err.to_string())
    }
}

impl From<&str> for GitCause {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

pub(super) fn git_error(path: &Path, what: &str, cause: impl Into<GitCause>) -> SnapshotError {
    let (mut text, git) = match cause.into() {
        GitCause::Git(err) => (err.to_string(), Some(err)),
        GitCause::Text(text) => (text, None),
    };
    let cause = &mut text;
    // libgit2 does not always say that the disk is full ("no error", or a
    // commit whose object "doesn't exist"): look, and say so.
    if let Some(free) = free_bytes(path).filter(|free| *free < LOW_DISK)
        && !cause.contains("No space left")
    {
        cause.push_str(&format!(
            "; the file system holding the repository is full ({free} bytes free): \
             free some space or move --snapshot-repo"
        ));
    }
    SnapshotError::Git {
        path: path.display().to_string(),
        what: what.to_owned(),
        cause: text,
        git,
    }
}

/// Below this much free space a failed write is put down to a full disk.
const LOW_DISK: u64 = 1 << 20;

/// Free bytes (for unprivileged users) on the file system holding `path`
/// or, if it does not exist yet, its nearest existing parent.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type; the
    // buffer is read only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// An edited value fails its GCM tag before the MAC is even computed: to the
/// user both are the same fact, the file was edited, so both say so.
fn describe_file_error(file: &str, cause: &sops::SopsError) -> String {
    match cause {
        sops::SopsError::MacMismatch | sops::SopsError::BadCiphertext { .. } => {
            format!("MAC mismatch in {file}: {cause}")
        }
        other => format!("{file}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libgit2_cause_is_kept_and_text_is_not_invented() {
        let dir = std::env::temp_dir();
        let from_git = git_error(
            &dir,
            "reading HEAD",
            git2::Error::from_str("object not found"),
        );
        match &from_git {
            SnapshotError::Git { cause, git, .. } => {
                assert!(cause.contains("object not found"));
                assert_eq!(
                    git.as_ref().map(git2::Error::message),
                    Some("object not found")
                );
            }
            other => panic!("{other:?}"),
        }
        let from_text = git_error(&dir, "writing a snapshot", "no --age-recipient given");
        assert!(matches!(from_text, SnapshotError::Git { git: None, .. }));
        assert!(from_text.to_string().contains("no --age-recipient given"));
    }
}
