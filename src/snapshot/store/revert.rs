//! What a failed rotation goes back to: a Secret's file walked back
//! through the history to the content its workloads last rolled out, read
//! from metadata alone (key -> item version, no identity needed); the
//! values themselves are read from the sources at those versions.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use git2::Oid;

use super::requests::RequestOrigin;
use super::{CommitInfo, SnapshotError, SnapshotStore, commit_info, head_commit};
use crate::labels::{SOURCES_ANNOTATION, parse_sources};
use crate::manifest::{SecretRef, fingerprint_of};
use crate::source::ItemId;

/// Why a rollback is made, for its commit message and its pins.
#[derive(Debug, Clone)]
pub enum RollbackCause {
    /// `credsync rollback` by hand.
    ByHand,
    /// A reviewed rollback request.
    Request(RequestOrigin),
    /// A rotation whose rollout failed, put back to the last good content.
    Revert {
        /// Which wave failed and how, in one line.
        why: String,
        /// The item versions held out (`credsync.io/held-out`).
        held_out: String,
    },
}

impl RollbackCause {
    /// The request behind it, if one.
    pub fn request(&self) -> Option<&RequestOrigin> {
        match self {
            Self::Request(origin) => Some(origin),
            _ => None,
        }
    }
}

/// The content to put back, found in the history.
#[derive(Debug, Clone)]
pub struct GoodContent {
    /// The newest commit whose file holds it.
    pub commit: CommitInfo,
    /// Key -> the item version it comes from.
    pub items: BTreeMap<String, ItemId>,
    /// The items of the content that failed, in key order (held out).
    pub held_out: Vec<String>,
}

impl SnapshotStore {
    /// Walks `secret`'s file back from HEAD (at most `depth` commits) to
    /// the content to put back after `failed` (a fingerprint) failed its
    /// rollout: the one with fingerprint `last_good` when the workloads
    /// recorded it, else the newest content older than `failed`'s first
    /// appearance. None when the history holds no such content.
    pub fn last_good(
        &self,
        secret: &SecretRef,
        failed: &str,
        last_good: Option<&str>,
        depth: usize,
    ) -> Result<Option<GoodContent>, SnapshotError> {
        let path = self.file_path(secret);
        self.with_repo(|repo| {
            let Some(head) = head_commit(repo).map_err(|e| self.err("reading HEAD", e))? else {
                return Ok(None);
            };
            let mut walk = repo.revwalk().map_err(|e| self.err("walking history", e))?;
            walk.push(head.id())
                .map_err(|e| self.err("walking history", e))?;
            walk.simplify_first_parent()
                .map_err(|e| self.err("walking history", e))?;
            let mut read: HashMap<Oid, Option<BTreeMap<String, String>>> = HashMap::new();
            let mut held_out: Option<Vec<String>> = None;
            let mut seen_failed = false;
            for oid in walk.take(depth) {
                let oid = oid.map_err(|e| self.err("walking history", e))?;
                let commit = repo
                    .find_commit(oid)
                    .map_err(|e| self.err("reading a commit", e))?;
                let tree = commit.tree().map_err(|e| self.err("reading a tree", e))?;
                let Ok(entry) = tree.get_path(Path::new(&path)) else {
                    continue;
                };
                let sources = read
                    .entry(entry.id())
                    .or_insert_with(|| {
                        let blob = repo.find_blob(entry.id()).ok()?;
                        let outline =
                            sops_age::outline(&String::from_utf8_lossy(blob.content())).ok()?;
                        Some(parse_sources(outline.annotations.get(SOURCES_ANNOTATION)))
                    })
                    .clone();
                let Some(sources) = sources.filter(|s| !s.is_empty()) else {
                    continue;
                };
                let fingerprint =
                    fingerprint_of(sources.iter().map(|(k, s)| (k.as_str(), s.clone())));
                if fingerprint == failed {
                    seen_failed = true;
                    held_out.get_or_insert_with(|| sources.values().cloned().collect());
                    continue;
                }
                let wanted = match last_good {
                    Some(good) => fingerprint == good,
                    None => seen_failed,
                };
                if !wanted {
                    continue;
                }
                let items: Option<BTreeMap<String, ItemId>> = sources
                    .iter()
                    .map(|(key, source)| Some((key.clone(), item_id(source)?)))
                    .collect();
                let Some(items) = items else {
                    continue;
                };
                let mut info = commit_info(&commit);
                info.signed = self.is_signed(repo, oid);
                return Ok(Some(GoodContent {
                    commit: info,
                    items,
                    held_out: held_out.unwrap_or_default(),
                }));
            }
            Ok(None)
        })
    }
}

/// `name@version` -> an item id.
fn item_id(source: &str) -> Option<ItemId> {
    let (name, version) = source.rsplit_once('@')?;
    (!name.is_empty() && !version.is_empty()).then(|| ItemId {
        name: name.to_owned(),
        version: version.to_owned(),
    })
}
