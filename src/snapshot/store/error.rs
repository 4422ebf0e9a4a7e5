//! What can go wrong with the snapshot repository, named so the user knows
//! what to do (a full disk, a lock left behind, a tampered file).

use std::path::Path;

use sops_age as sops;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot repository {path}: {what}{}", note.as_deref().map(|n| format!(": {n}")).unwrap_or_default())]
    Git {
        path: String,
        what: String,
        /// credsync's own words for the cause (a full disk, a refusal), if any.
        note: Option<String>,
        /// libgit2's error, when there was one: callers tell a missing
        /// object from a lock or a network failure by it.
        #[source]
        source: Option<git2::Error>,
    },
    #[error("unknown revision '{0}' in the snapshot repository (see `credsync history`)")]
    UnknownRev(String),
    #[error("revision '{0}' is ambiguous in the snapshot repository: give more characters")]
    AmbiguousRev(String),
    #[error("{}", describe_file(file, cause))]
    File {
        file: String,
        #[source]
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
            Self::Locked { .. }
                | Self::Internal(_)
                | Self::Git {
                    source: Some(_),
                    ..
                }
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
    let (mut note, source) = match cause.into() {
        GitCause::Git(err) => (None, Some(err)),
        GitCause::Text(text) => (Some(text), None),
    };
    // libgit2 does not always say that the disk is full ("no error", or a
    // commit whose object "doesn't exist"): look, and say so.
    let said = |text: &str| {
        note.as_deref().is_some_and(|n| n.contains(text))
            || source.as_ref().is_some_and(|e| e.message().contains(text))
    };
    if let Some(free) = free_bytes(path).filter(|free| *free < LOW_DISK)
        && !said("No space left")
    {
        let full = format!(
            "the file system holding the repository is full ({free} bytes free): \
             free some space or move --snapshot-repo"
        );
        note = Some(match note {
            Some(text) => format!("{text}; {full}"),
            None => full,
        });
    }
    SnapshotError::Git {
        path: path.display().to_string(),
        what: what.to_owned(),
        note,
        source,
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
/// user both are the same fact, the file was edited, so both say so (the
/// cause, SOPS's own words, follows as the source).
fn describe_file(file: &str, cause: &sops::SopsError) -> String {
    match cause {
        sops::SopsError::MacMismatch | sops::SopsError::BadCiphertext { .. } => {
            format!("MAC mismatch in {file}")
        }
        _ => format!("snapshot file {file}"),
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
        // What this layer was doing, then libgit2's words as the source.
        assert!(from_git.to_string().ends_with("reading HEAD"), "{from_git}");
        let source = std::error::Error::source(&from_git).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("object not found"));
        assert!(crate::errors::chain(&from_git).ends_with("reading HEAD: object not found"));
        let from_text = git_error(&dir, "writing a snapshot", "no --age-recipient given");
        assert!(std::error::Error::source(&from_text).is_none());
        assert!(from_text.to_string().contains("no --age-recipient given"));
    }
}
