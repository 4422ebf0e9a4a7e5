//! What `record` compares the new desired state with: per file of the last
//! snapshot, a fingerprint of everything in it but its values.
//!
//! Reading that from every file means a YAML parse per Secret (3 s at
//! 50,000 files), so fingerprints are also kept in a small index under
//! `.git/credsync/`, by blob id. A blob id is the hash of the file's bytes,
//! so an entry can never go stale; the index holds no value, only what the
//! files show in clear (labels, annotations, recipients) in digested form.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use sops_age as sops;

use super::read::{LINK_REASON, REWRITTEN, UnreadableFile};
use super::{SnapshotError, SnapshotStore, file_fingerprint};
use crate::labels::SOURCES_ANNOTATION;
use crate::manifest::SecretRef;

/// A file of the last snapshot, as `record` compares it with the new state.
/// Its path is the Secret's (`SnapshotStore::file_path`): not kept, since
/// `record` holds one of these for every Secret at once.
pub(super) struct RecordedFile {
    pub(super) oid: Oid,
    /// The sources annotation as written, when the file was parsed; `record`
    /// reads it with [`SnapshotStore::sources_of`] for changed files only.
    pub(super) sources: Option<String>,
    /// [`file_fingerprint`] of the file's labels, annotations and
    /// recipients; None for a file that cannot be read (never equal).
    pub(super) fingerprint: Option<[u8; 32]>,
}

/// Blob id -> fingerprint, loaded from and saved to one file.
pub(super) struct FingerprintIndex {
    path: PathBuf,
    entries: HashMap<Oid, [u8; 32]>,
    changed: bool,
}

const RECORD: usize = 20 + 32;

impl FingerprintIndex {
    /// The index of `cluster`; a missing or damaged file is an empty index.
    pub(super) fn load(git_dir: &Path, cluster: &str) -> Self {
        let path = git_dir.join("credsync").join("fingerprints").join(cluster);
        let bytes = std::fs::read(&path).unwrap_or_default();
        let entries = if bytes.len().is_multiple_of(RECORD) {
            bytes
                .chunks_exact(RECORD)
                .filter_map(|r| {
                    let oid = Oid::from_bytes(&r[..20]).ok()?;
                    let mut fingerprint = [0u8; 32];
                    fingerprint.copy_from_slice(&r[20..]);
                    Some((oid, fingerprint))
                })
                .collect()
        } else {
            HashMap::new()
        };
        Self {
            path,
            entries,
            changed: false,
        }
    }

    pub(super) fn get(&self, oid: &Oid) -> Option<[u8; 32]> {
        self.entries.get(oid).copied()
    }

    pub(super) fn insert(&mut self, oid: Oid, fingerprint: [u8; 32]) {
        if self.entries.insert(oid, fingerprint) != Some(fingerprint) {
            self.changed = true;
        }
    }

    /// Drops the entry of a blob the new commit no longer holds at its path.
    pub(super) fn forget(&mut self, oid: &Oid) {
        if self.entries.remove(oid).is_some() {
            self.changed = true;
        }
    }

    /// Writes the file if anything changed (whole, then renamed). A failure
    /// only costs the next commit the parse of the files it lacks.
    pub(super) fn save(self) {
        if !self.changed {
            return;
        }
        let mut bytes = Vec::with_capacity(self.entries.len() * RECORD);
        for (oid, fingerprint) in &self.entries {
            bytes.extend_from_slice(oid.as_bytes());
            bytes.extend_from_slice(fingerprint);
        }
        let temporary = self.path.with_extension("tmp");
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&temporary, &bytes))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(err) = written {
            tracing::debug!(index = %self.path.display(), error = %crate::errors::Chain(&err), "fingerprint index not saved");
        }
    }
}

impl SnapshotStore {
    /// What `record` needs of each wanted file at `tree`: less than an
    /// [`super::SnapshotEntry`], because it holds one for every Secret at
    /// once. A file that cannot be read is there with no fingerprint: it is
    /// rewritten if its Secret is desired, removed if not.
    pub(super) fn recorded_in(
        &self,
        repo: &Repository,
        tree: &git2::Tree<'_>,
        index: &mut FingerprintIndex,
        wanted: impl Fn(&SecretRef) -> bool,
    ) -> Result<BTreeMap<SecretRef, RecordedFile>, SnapshotError> {
        let mut out = BTreeMap::new();
        for file in self.cluster_files(repo, tree)? {
            if !wanted(&file.secret) {
                continue;
            }
            let mut recorded = RecordedFile {
                oid: file.oid,
                sources: None,
                fingerprint: None,
            };
            let outline = if file.link {
                Err(Unreadable::Link)
            } else if let Some(fingerprint) = index.get(&file.oid) {
                recorded.fingerprint = Some(fingerprint);
                Ok(None)
            } else {
                self.outline_of(repo, file.oid).map(Some)
            };
            match outline {
                Ok(Some(outline)) => {
                    let fingerprint = file_fingerprint(
                        &outline.labels,
                        &outline.annotations,
                        &outline.recipients,
                    );
                    index.insert(file.oid, fingerprint);
                    recorded.fingerprint = Some(fingerprint);
                    recorded.sources = Some(sources_text(&outline));
                }
                Ok(None) => {}
                Err(reason) => UnreadableFile {
                    secret: file.secret.clone(),
                    path: file.path,
                    reason: crate::text::one_line(&crate::errors::chain(&reason), 500),
                }
                .warn(REWRITTEN),
            }
            out.insert(file.secret, recorded);
        }
        Ok(out)
    }

    /// The sources annotation of a recorded file (read now if the index
    /// answered for it); None for a file that cannot be read.
    pub(super) fn sources_of(&self, repo: &Repository, file: &RecordedFile) -> Option<String> {
        file.fingerprint?;
        match &file.sources {
            Some(sources) => Some(sources.clone()),
            None => self
                .outline_of(repo, file.oid)
                .ok()
                .map(|o| sources_text(&o)),
        }
    }

    /// A file's outline; why not, in words to log (the parser's own may
    /// quote the file: escaped).
    fn outline_of(&self, repo: &Repository, oid: Oid) -> Result<sops::Outline, Unreadable> {
        let blob = repo.find_blob(oid).map_err(Unreadable::Blob)?;
        sops::outline(&String::from_utf8_lossy(blob.content())).map_err(Unreadable::Outline)
    }
}

/// Why a recorded file cannot be read (it is then rewritten or removed).
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("{LINK_REASON}")]
    Link,
    #[error("reading its blob")]
    Blob(#[source] git2::Error),
    #[error("not a SOPS file credsync can read")]
    Outline(#[source] sops::SopsError),
}

fn sources_text(outline: &sops::Outline) -> String {
    outline
        .annotations
        .get(SOURCES_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}
