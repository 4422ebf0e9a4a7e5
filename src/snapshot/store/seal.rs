//! Sealing the changed files of a commit on every core.
//!
//! A new file needs a data key wrapped for every recipient (two X25519
//! operations per recipient, a third of a first commit's CPU when each file
//! had its own) and its values encrypted. The new files of a batch share
//! one data key, wrapped once; a changed file keeps its own. Files are
//! sealed in batches, so no more than a batch of documents (with their
//! values) is held at once.

use sops_age::{self as sops, Identities, Recipients, SecretDocument};

use super::SnapshotError;
use super::warm::FileValues;

/// Files sealed together; bounds what is held at once.
pub(super) const BATCH: usize = 512;

/// One file to write: its new content and what is recorded about it.
pub(super) struct SealJob {
    pub(super) path: String,
    pub(super) doc: SecretDocument,
    /// The file as committed before, whose data key is reused.
    pub(super) old_text: Option<String>,
    pub(super) fingerprint: [u8; 32],
    /// Its values, for the warm-start cache (None when that is off).
    pub(super) values: Option<FileValues>,
}

/// Seals every job, in order, spread over the available cores.
pub(super) fn seal_all(
    jobs: &[SealJob],
    recipients: &Recipients,
    identities: Option<&Identities>,
) -> Vec<Result<String, SnapshotError>> {
    let now = chrono::Utc::now();
    // New files of the batch share one data key, wrapped once (see
    // `sops_age::seal_sharing`); a batch of changed files (a put's commit)
    // or of one new file has nothing to share and wraps nothing extra.
    // Without a shared key (no randomness), each file tries for its own and
    // reports why it failed.
    let new_files = jobs.iter().filter(|job| job.old_text.is_none()).count();
    let shared = (new_files > 1)
        .then(|| sops::SharedKey::new(recipients).ok())
        .flatten();
    let seal = |job: &SealJob| {
        let previous = job.old_text.as_deref().zip(identities);
        match &shared {
            Some(shared) => sops::seal_sharing(&job.doc, recipients, previous, now, shared),
            None => sops::seal(&job.doc, recipients, previous, now),
        }
        .map_err(|cause| SnapshotError::File {
            file: job.path.clone(),
            cause,
        })
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(jobs.len().div_ceil(8).max(1));
    if workers <= 1 {
        return jobs.iter().map(seal).collect();
    }
    let chunk = jobs.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                (
                    part.len(),
                    scope.spawn(move || part.iter().map(seal).collect::<Vec<_>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(len, handle)| {
                handle.join().unwrap_or_else(|_| {
                    (0..len)
                        .map(|_| {
                            Err(SnapshotError::Internal(
                                "a thread sealing snapshot files panicked".to_owned(),
                            ))
                        })
                        .collect()
                })
            })
            .collect()
    })
}
