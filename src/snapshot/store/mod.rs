//! The snapshot repository: one SOPS file per Secret, one commit per change.
//!
//! Commits are built from blobs and trees straight into the object database
//! and published by moving the branch ref (compare-and-swap), never through
//! the index: a process killed half way leaves unreferenced objects, never a
//! commit of partial state. The work tree is refreshed afterwards so people
//! can read the files with `git` and `sops -d`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use git2::build::TreeUpdateBuilder;
use git2::{ErrorCode, FileMode, Oid, Repository, Signature};

use super::remote::{self, PushOutcome, RemoteConfig};
mod changes;
mod checkout;
mod error;
mod read;
mod recorded;
mod requests;
mod revert;
mod seal;
mod trust;
mod warm;

use super::BRANCH;
use crate::labels::{SOURCES_ANNOTATION, parse_sources};
use crate::manifest::{DesiredSecret, SecretRef};
use crate::metrics::Metrics;
pub use error::SnapshotError;
use error::{GitCause, git_error};
pub use read::WarmValues;
use recorded::FingerprintIndex;
pub use requests::{FoundRequest, Proposal, REQUEST_TRAILER, RequestOrigin, is_request_file_name};
pub use revert::{GoodContent, RollbackCause};
use seal::SealJob;
use sops_age::{Identities, Outline, Recipients};
use trust::Restored;
pub use warm::WarmError;
use warm::{FileValues, WarmCache};

/// An index.lock older than this was left by a killed process.
const STALE_LOCK: Duration = Duration::from_secs(60);

/// Where snapshots go and who can read them.
pub struct StoreConfig {
    pub path: PathBuf,
    pub cluster: String,
    /// Who can read new files; only writing needs them.
    pub recipients: Option<Recipients>,
    /// Lets credsync reuse a file's data key, so a changed file keeps the
    /// ciphertext of its unchanged values (a minimal diff).
    pub identities: Option<Identities>,
    /// A remote to clone from and push to.
    pub remote: Option<RemoteConfig>,
    /// The key commits are signed with, and the keys whose commits are
    /// trusted: only files of signed commits are ever read as values.
    pub signing: crate::snapshot::signing::Signing,
}

/// One commit, as `history` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    pub id: String,
    pub time: String,
    pub summary: String,
    pub message: String,
    /// Signed by credsync (a trusted key): only such commits vouch for
    /// their files. Filled where it matters (`history`, `resolve`).
    pub signed: bool,
}

pub use changes::SecretDelta;
use changes::{Listing, commit_message, delta};

/// A Secret at a revision, readable without any identity.
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    pub secret: SecretRef,
    pub path: String,
    pub outline: Outline,
    /// Key -> `name@version` it came from.
    pub sources: BTreeMap<String, String>,
}

pub struct SnapshotStore {
    repo: Mutex<Repository>,
    config: StoreConfig,
    /// Set while a work-tree refresh has not completed: the next one is whole.
    work_tree_behind: std::sync::atomic::AtomicBool,
    /// A whole checkout running on its own thread (see `checkout.rs`).
    pending_checkout: Mutex<Option<checkout::Pending>>,
    /// The commit that wrote each request file seen, and the HEAD it was
    /// checked at: later reads walk only the commits since.
    origins: Mutex<requests::OriginCache>,
    /// Commits whose signature was checked, and the answer.
    verified: Mutex<std::collections::HashMap<Oid, bool>>,
}

impl SnapshotStore {
    /// Opens the repository, cloning the remote or creating it if absent.
    pub fn open(config: StoreConfig) -> Result<Self, SnapshotError> {
        let path = &config.path;
        if config.cluster.is_empty()
            || config.cluster.contains(['/', '\\'])
            || config.cluster.starts_with('.')
        {
            return Err(git_error(
                path,
                "checking --cluster-name",
                "it names the snapshot directory: no '/', not empty, not starting with '.'",
            ));
        }
        let repo = match Repository::open(path) {
            Ok(repo) => repo,
            Err(e)
                if e.code() == ErrorCode::NotFound
                    && config.remote.is_some()
                    && is_empty_dir(path) =>
            {
                let remote = config
                    .remote
                    .as_ref()
                    .map(|r| r.url.to_string())
                    .unwrap_or_default();
                let repo = config
                    .remote
                    .as_ref()
                    .map(|r| remote::clone(r, path))
                    .transpose()
                    .map_err(|e| git_error(path, &format!("cloning {remote}"), e))?
                    .ok_or_else(|| git_error(path, "cloning", "no remote"))?;
                if head_commit(&repo).ok().flatten().is_none() {
                    repo.set_head(&format!("refs/heads/{BRANCH}"))
                        .map_err(|e| git_error(path, "setting HEAD", e))?;
                }
                repo
            }
            Err(e) if e.code() == ErrorCode::NotFound => {
                std::fs::create_dir_all(path)
                    .map_err(|e| git_error(path, "creating the directory", e))?;
                let mut opts = git2::RepositoryInitOptions::new();
                opts.initial_head(BRANCH);
                Repository::init_opts(path, &opts)
                    .map_err(|e| git_error(path, "initializing", e))?
            }
            Err(e) => return Err(git_error(path, "opening", e)),
        };
        if let Some(remote) = &config.remote {
            remote::ensure_origin(&repo, remote)
                .map_err(|e| git_error(path, "configuring the remote", e))?;
        }
        let behind = checkout::index_behind(&repo);
        Ok(Self {
            repo: Mutex::new(repo),
            config,
            // Trusted at start unless the index lags HEAD: then the first
            // refresh is whole; otherwise only changed paths are written
            // (and checked for links).
            work_tree_behind: std::sync::atomic::AtomicBool::new(behind),
            pending_checkout: Mutex::new(None),
            origins: Mutex::new(Default::default()),
            verified: Mutex::new(Default::default()),
        })
    }

    /// Brings in what other writers pushed and pushes local commits, replaying
    /// them if the remote moved. Without a remote there is nothing to do.
    pub fn share(&self) -> Result<PushOutcome, SnapshotError> {
        let Some(config) = &self.config.remote else {
            return Ok(PushOutcome::UpToDate);
        };
        self.with_repo(|repo| {
            for _ in 0..3 {
                let remote_head = remote::fetch(repo, config).map_err(|e| self.err(&format!("fetching {}", config.url), e))?;
                let local_head = head_commit(repo).map_err(|e| self.err("reading HEAD", e))?.map(|c| c.id());
                let to_push = match (local_head, remote_head) {
                    (None, None) => return Ok(PushOutcome::UpToDate),
                    (None, Some(theirs)) => {
                        self.move_branch(repo, theirs, "credsync: take the remote's snapshots")?;
                        return Ok(PushOutcome::UpToDate);
                    }
                    (Some(_), None) => true,
                    (Some(ours), Some(theirs)) if ours == theirs => return Ok(PushOutcome::UpToDate),
                    (Some(ours), Some(theirs)) => {
                        let (ahead, behind) = repo
                            .graph_ahead_behind(ours, theirs)
                            .map_err(|e| self.err("comparing with the remote", e))?;
                        match (ahead, behind) {
                            (0, _) => {
                                self.move_branch(repo, theirs, "credsync: fast-forward to the remote")?;
                                return Ok(PushOutcome::UpToDate);
                            }
                            (_, 0) => true,
                            _ => match remote::replay(repo, &self.config.cluster, ours, theirs, &|old, tree, parent| {
                                // Signed again only if credsync signed it: a replay vouches for nothing new.
                                let message = old.message().unwrap_or_default();
                                let sign = self.is_signed(repo, old.id());
                                self.write_commit(repo, (&old.author(), &old.committer()), message, tree, &[parent], sign)
                            })
                                .map_err(|e| self.err("replaying local snapshots on the remote's", e))?
                            {
                                Some(replayed) => {
                                    self.move_branch(repo, replayed, "credsync: replay on the remote")?;
                                    true
                                }
                                None => {
                                    tracing::warn!(remote = %config.url, cluster = %self.config.cluster, "the remote changed this cluster's snapshot files too; local commits kept, push retried next sync");
                                    return Ok(PushOutcome::Conflict);
                                }
                            },
                        }
                    }
                };
                if to_push && remote::push(repo, config).map_err(|e| self.err(&format!("pushing to {}", config.url), e))? {
                    return Ok(PushOutcome::UpToDate);
                }
            }
            Err(self.err(&format!("pushing to {}", config.url), "the remote kept moving; the next sync retries"))
        })
    }

    /// Points the branch at `target` and refreshes the work tree.
    fn move_branch(&self, repo: &Repository, target: Oid, why: &str) -> Result<(), SnapshotError> {
        let refname = format!("refs/heads/{BRANCH}");
        repo.reference(&refname, target, true, why)
            .map_err(|e| self.err("moving the branch", e))?;
        repo.set_head(&refname)
            .map_err(|e| self.err("pointing HEAD at the branch", e))?;
        let tree = repo
            .find_commit(target)
            .and_then(|c| c.tree())
            .map_err(|e| self.err("reading the new tree", e))?;
        self.refresh_work_tree(repo, &tree, None, false)
    }

    /// Runs a repository operation off the async runtime's worker threads:
    /// git work is blocking, and the store owns that boundary.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&SnapshotStore) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .unwrap_or_else(|join| {
                Err(SnapshotError::Internal(format!(
                    "the snapshot task did not finish: {join}"
                )))
            })
    }

    /// [`SnapshotStore::share`], for writers that go on whatever happens: a
    /// failure is reported and counted, and the local commit stays for the
    /// next share to push.
    pub fn share_or_report(&self, metrics: &Metrics) {
        match self.share() {
            Ok(PushOutcome::UpToDate) => {}
            Ok(PushOutcome::Conflict) => {
                metrics.snapshot_push_failures.inc();
                tracing::warn!(
                    "snapshot push: the remote changed this cluster's files; kept the local commit, will retry"
                );
            }
            Err(err) => {
                metrics.snapshot_push_failures.inc();
                tracing::warn!(error = %crate::errors::Chain(&err), "snapshot push failed; kept the local commit, will retry");
            }
        }
    }

    pub fn cluster(&self) -> &str {
        &self.config.cluster
    }

    fn warm_cache(&self, repo: &Repository) -> WarmCache {
        WarmCache::new(repo.path(), &self.config.cluster)
    }

    /// Adds the values of the files just written to the warm-start cache,
    /// folding its segments into one once there are many. Only with an
    /// identity: without one, nothing could read the cache back. A cache
    /// that cannot be written costs the next start time, nothing else.
    fn remember_written(&self, repo: &Repository, tree_id: Oid, written: warm::Segment) {
        let (Some(recipients), Some(identities)) =
            (&self.config.recipients, &self.config.identities)
        else {
            return;
        };
        if written.is_empty() {
            return;
        }
        let cache = self.warm_cache(repo);
        let mut result = cache.add_segment(written, recipients).map(|_| ());
        if result.is_ok() && cache.segments().len() > warm::COMPACT_AT {
            let live = repo
                .find_tree(tree_id)
                .map_err(|e| self.err("reading the new tree", e))
                .and_then(|tree| self.cluster_files(repo, &tree));
            if let Ok(files) = live {
                let live = files.iter().map(|f| f.oid).collect();
                let read = cache.read(&live, identities);
                let entries: Vec<(Oid, &FileValues)> =
                    read.entries.iter().map(|(o, v)| (*o, v)).collect();
                result = cache.replace(&entries, recipients, &read.segments);
            }
        }
        if let Err(err) = result {
            tracing::warn!(error = %crate::errors::Chain(&err), "warm-start cache not updated; the next start opens the files it lacks");
        }
    }

    fn err(&self, what: &str, cause: impl Into<GitCause>) -> SnapshotError {
        git_error(&self.config.path, what, cause)
    }

    fn with_repo<T>(
        &self,
        f: impl FnOnce(&Repository) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let repo = self.repo.lock().map_err(|_| {
            SnapshotError::Internal(
                "the repository handle is unusable: a previous operation panicked".to_owned(),
            )
        })?;
        f(&repo)
    }

    fn file_path(&self, secret: &SecretRef) -> String {
        format!(
            "{}/{}/{}.yaml",
            self.config.cluster, secret.namespace, secret.name
        )
    }

    /// Writes the desired `secrets` (those with keys) as the cluster's
    /// snapshot and commits if anything changed; each file is built as it is
    /// written, so no copy of every document is held at once. Secrets in `keep` (pinned by a rollback) keep their files.
    /// Returns the new commit, or None when nothing changed.
    /// With `scope`, only those Secrets' files are considered (a targeted
    /// reconcile); the rest of the tree stays as it is.
    pub fn record(
        &self,
        secrets: &BTreeMap<SecretRef, DesiredSecret>,
        keep: &BTreeSet<SecretRef>,
        heading: &str,
        scope: Option<&BTreeSet<SecretRef>>,
    ) -> Result<Option<CommitInfo>, SnapshotError> {
        let Some(recipients) = &self.config.recipients else {
            return Err(self.err("writing a snapshot", "no --age-recipient given"));
        };
        self.with_repo(|repo| {
            self.check_lock(repo)?;
            let head = head_commit(repo).map_err(|e| self.err("reading HEAD", e))?;
            let base_tree = match &head {
                Some(commit) => commit
                    .tree()
                    .map_err(|e| self.err("reading HEAD's tree", e))?,
                None => empty_tree(repo).map_err(|e| self.err("creating an empty tree", e))?,
            };
            let head_tree = base_tree.id();
            // Files someone else changed are put back first: a signed
            // commit vouches only for what credsync wrote.
            let restored = self.restore_signed(
                repo,
                head.as_ref().map(git2::Commit::id),
                base_tree,
                scope.is_some(),
            )?;
            let (base_tree, foreign, sign) = (restored.tree, restored.foreign, restored.sign);
            for secret in keep {
                if foreign.get(&self.file_path(secret)) == Some(&None) {
                    tracing::warn!(%secret, "the snapshot file of this pinned Secret is not one credsync signed: it leaves the snapshot (the Secret stays pinned, its value as it is)");
                }
            }
            // Pinned Secrets keep their files as they are; outside `scope`,
            // every file does, and is not even read.
            let mut index = FingerprintIndex::load(repo.path(), &self.config.cluster);
            let mut before = self.recorded_in(repo, &base_tree, &mut index, |secret| {
                !keep.contains(secret) && scope.is_none_or(|scope| scope.contains(secret))
            })?;
            let recipients_now = recipients.as_strings();
            let mut tree = NewTree {
                update: TreeUpdateBuilder::new(),
                index,
                changed: Vec::new(),
                written: warm::Segment::default(),
            };
            // Built file by file: what stays of a Secret once its file is
            // written is its delta, if it changed.
            let mut listing = Listing::default();
            let caching = self.config.identities.is_some();
            let mut jobs: Vec<SealJob> = Vec::new();
            for (secret, desired) in secrets {
                if desired.keys.is_empty() || keep.contains(secret) {
                    continue;
                }
                let doc = crate::snapshot::document(secret, desired);
                let old = before.remove(secret);
                // The annotations hold the sources (name@version per key),
                // so an equal fingerprint means equal contents.
                let fingerprint = file_fingerprint(&doc.labels, &doc.annotations, recipients_now);
                if old
                    .as_ref()
                    .is_some_and(|old| old.fingerprint == Some(fingerprint))
                {
                    continue;
                }
                let new_sources = parse_sources(doc.annotations.get(SOURCES_ANNOTATION));
                let old_sources = old
                    .as_ref()
                    .and_then(|old| self.sources_of(repo, old))
                    .map(|sources| parse_sources(Some(&sources)));
                listing.add(delta(secret, old_sources.as_ref(), Some(&new_sources)));
                if let Some(old) = &old {
                    tree.index.forget(&old.oid);
                }
                // Reusing a file's data key keeps its unchanged lines, but
                // whoever chose that key reads every value sealed with it:
                // only a file known to be credsync's own (with signing, every
                // file left at the base) lends its key.
                let old_text = match old.filter(|old| old.fingerprint.is_some() && self.signs()) {
                    Some(old) => Some(
                        repo.find_blob(old.oid)
                            .map(|blob| String::from_utf8_lossy(blob.content()).into_owned())
                            .map_err(|e| self.err("reading a snapshot file", e))?,
                    ),
                    None => None,
                };
                jobs.push(SealJob {
                    path: self.file_path(secret),
                    doc,
                    old_text,
                    fingerprint,
                    values: caching.then(|| {
                        let values = desired.keys.values();
                        values
                            .map(|k| (k.source.clone(), k.value.clone()))
                            .collect()
                    }),
                });
                if jobs.len() >= seal::BATCH {
                    self.write_sealed(repo, &mut jobs, recipients, &mut tree)?;
                }
            }
            self.write_sealed(repo, &mut jobs, recipients, &mut tree)?;
            let NewTree {
                mut update,
                mut index,
                mut changed,
                written,
            } = tree;
            // Files of Secrets no longer desired.
            for (secret, gone) in &before {
                index.forget(&gone.oid);
                let path = self.file_path(secret);
                update.remove(path.as_str());
                changed.push(path);
                let old_sources = parse_sources(self.sources_of(repo, gone).as_ref());
                listing.add(delta(secret, Some(&old_sources), None));
            }
            let tree_id = update
                .create_updated(repo, &base_tree)
                .map_err(|e| self.err("building the tree", e))?;
            // What the commit replaced or removed is forgotten, what it wrote
            // added: no walk of the new tree is needed.
            index.save();
            if tree_id == head_tree {
                return Ok(None);
            }
            let message = commit_message(heading, listing, &foreign);
            changed.extend(foreign.into_keys());
            let commit = self.commit(repo, head.as_ref(), tree_id, &message, Some(&changed), sign)?;
            self.remember_written(repo, tree_id, written);
            Ok(Some(commit))
        })
    }

    /// Seals `jobs` (on every core) and writes their blobs into the tree
    /// being built, recording what the fingerprint index and the warm-start
    /// cache keep of each.
    fn write_sealed(
        &self,
        repo: &Repository,
        jobs: &mut Vec<SealJob>,
        recipients: &Recipients,
        tree: &mut NewTree,
    ) -> Result<(), SnapshotError> {
        let sealed = seal::seal_all(jobs, recipients, self.config.identities.as_ref());
        for (job, text) in jobs.drain(..).zip(sealed) {
            let oid = repo
                .blob(text?.as_bytes())
                .map_err(|e| self.err("writing a blob", e))?;
            tree.update.upsert(job.path.as_str(), oid, FileMode::Blob);
            tree.index.insert(oid, job.fingerprint);
            if let Some(values) = job.values {
                tree.written.push(oid, &values);
            }
            tree.changed.push(job.path);
        }
        Ok(())
    }

    fn commit(
        &self,
        repo: &Repository,
        parent: Option<&git2::Commit<'_>>,
        tree_id: Oid,
        message: &str,
        changed: Option<&[String]>,
        sign: bool,
    ) -> Result<CommitInfo, SnapshotError> {
        let tree = repo
            .find_tree(tree_id)
            .map_err(|e| self.err("reading the new tree", e))?;
        let signature = repo
            .signature()
            .or_else(|_| Signature::now("credsync", "credsync@localhost"))
            .map_err(|e| self.err("making a signature", e))?;
        let parents: Vec<&git2::Commit<'_>> = parent.into_iter().collect();
        let oid = self
            .write_commit(
                repo,
                (&signature, &signature),
                message,
                &tree,
                &parents,
                sign,
            )
            .map_err(|e| self.err("writing the commit", e))?;
        // Publish by compare-and-swap on the branch: a concurrent writer makes this fail, not overwrite.
        let refname = format!("refs/heads/{BRANCH}");
        let published = match parent {
            Some(p) => repo.reference_matching(&refname, oid, true, p.id(), message),
            None => repo.reference(&refname, oid, false, message),
        };
        published.map_err(|e| self.err("moving the branch to the new commit", e))?;
        repo.set_head(&refname)
            .map_err(|e| self.err("pointing HEAD at the branch", e))?;
        // The commit is published; a work tree that cannot be refreshed now
        // is refreshed by the next write.
        if let Err(e) = self.refresh_work_tree(repo, &tree, changed, true) {
            tracing::warn!(error = %crate::errors::Chain(&e), "snapshot committed, but the work tree was not refreshed");
        }
        let commit = repo
            .find_commit(oid)
            .map_err(|e| self.err("reading the new commit", e))?;
        Ok(commit_info(&commit))
    }

    /// Refuses to write while another git process holds the index, and
    /// removes a lock a killed process left behind.
    fn check_lock(&self, repo: &Repository) -> Result<(), SnapshotError> {
        self.finish_checkout();
        let lock = repo.path().join("index.lock");
        let Ok(meta) = std::fs::metadata(&lock) else {
            return Ok(());
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if age.is_some_and(|age| age > STALE_LOCK) {
            tracing::warn!(lock = %lock.display(), "removing a stale index.lock left by a killed git process");
            std::fs::remove_file(&lock).map_err(|e| self.err("removing a stale index.lock", e))
        } else {
            Err(SnapshotError::Locked {
                path: self.config.path.display().to_string(),
                lock: lock.display().to_string(),
            })
        }
    }

    /// Records a rollback: the files of the `restored` Secrets as they were
    /// at `rev`. A signed revision's files are credsync's own and are taken
    /// as they are; any other revision's are sealed anew from `restored`
    /// (checked against the sources), so no file credsync did not write
    /// enters a commit it signs. The message says why (`cause`): a request
    /// is named with its commit and author, and its trailers mark it
    /// applied; a revert says which rollout failed.
    pub fn record_rollback(
        &self,
        rev: &str,
        restored: &BTreeMap<SecretRef, DesiredSecret>,
        cause: &RollbackCause,
    ) -> Result<Option<CommitInfo>, SnapshotError> {
        self.with_repo(|repo| {
            self.check_lock(repo)?;
            let source = find_rev(repo, rev)?;
            let source_tree = source.tree().map_err(|e| self.err("reading a tree", e))?;
            let from_signed = self.is_signed(repo, source.id());
            let head = head_commit(repo).map_err(|e| self.err("reading HEAD", e))?;
            let base_tree = match &head {
                Some(commit) => commit.tree().map_err(|e| self.err("reading HEAD's tree", e))?,
                None => empty_tree(repo).map_err(|e| self.err("creating an empty tree", e))?,
            };
            let Restored { tree: base_tree, foreign, sign } =
                self.restore_signed(repo, head.as_ref().map(git2::Commit::id), base_tree, true)?;
            let mut update = TreeUpdateBuilder::new();
            let mut to_seal = Vec::new();
            for (secret, desired) in restored {
                let path = self.file_path(secret);
                if from_signed {
                    let entry = source_tree
                        .get_path(Path::new(&path))
                        .map_err(|e| self.err(&format!("reading {path} at {rev}"), e))?;
                    update.upsert(path.as_str(), entry.id(), FileMode::Blob);
                } else {
                    to_seal.push(SealJob {
                        path,
                        doc: crate::snapshot::document(secret, desired),
                        old_text: None,
                        fingerprint: [0; 32],
                        values: None,
                    });
                }
            }
            if !to_seal.is_empty() {
                let Some(recipients) = &self.config.recipients else {
                    return Err(self.err(
                        "recording the rollback",
                        "its revision is not one credsync signed, so its files are sealed anew: give --age-recipient",
                    ));
                };
                for (job, text) in to_seal.iter().zip(seal::seal_all(&to_seal, recipients, None)) {
                    let oid = repo.blob(text?.as_bytes()).map_err(|e| self.err("writing a blob", e))?;
                    update.upsert(job.path.as_str(), oid, FileMode::Blob);
                }
            }
            let tree_id = update.create_updated(repo, &base_tree).map_err(|e| self.err("building the tree", e))?;
            let short = source.id().to_string()[..12].to_owned();
            let names: Vec<String> = restored.keys().map(|s| format!("  {s}")).collect();
            let (verb, until) = match cause {
                RollbackCause::Request(origin) => ("roll back", format!(
                    "Requested in {} by {} (the git author: claimed, not verified)\n(request commit {}).\nPinned until that file is removed.\n\n{}",
                    origin.path,
                    origin.author,
                    origin.commit,
                    requests::request_trailers(origin)
                )),
                RollbackCause::ByHand => ("roll back", "Pinned until `credsync unpin`.\n".to_owned()),
                RollbackCause::Revert { why, .. } => ("revert a failed rotation of", format!(
                    "{}\nPinned (credsync.io/pinned-by: rollout-failure) until the source offers a\nnewer version of the held-out items, or `credsync unpin`.\n",
                    crate::text::one_line(why, 2000)
                )),
            };
            let message = format!(
                "credsync: {verb} {} Secret(s) in cluster {} to {short}\n\n{}\n\n{}{until}",
                restored.len(),
                self.config.cluster,
                names.join("\n"),
                trust::restored_paragraph(&foreign),
            );
            // Recorded even when the files already match: the rollback happened.
            self.commit(repo, head.as_ref(), tree_id, &message, None, sign).map(Some)
        })
    }
}

/// A commit being built: its tree edits and what is learnt of each file.
struct NewTree {
    update: TreeUpdateBuilder,
    index: FingerprintIndex,
    /// Paths written or removed: what the work tree refresh checks out.
    changed: Vec<String>,
    /// Blobs written, with their values: the warm-start cache's new segment.
    written: warm::Segment,
}

/// A digest of everything in a file but its values, which the sources
/// annotation (name@version per key) stands for: equal digests, equal file.
pub(super) fn file_fingerprint(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    recipients: &[String],
) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut part = |text: &str| {
        hash.update((text.len() as u64).to_be_bytes());
        hash.update(text.as_bytes());
    };
    for map in [labels, annotations] {
        part(&map.len().to_string());
        for (key, value) in map {
            part(key);
            part(value);
        }
    }
    for recipient in recipients {
        part(recipient);
    }
    hash.finalize().into()
}

fn commit_info(commit: &git2::Commit<'_>) -> CommitInfo {
    let time = chrono::DateTime::from_timestamp(commit.time().seconds(), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    CommitInfo {
        id: commit.id().to_string(),
        time,
        summary: commit
            .summary()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        message: commit.message().unwrap_or_default().to_owned(),
        signed: false,
    }
}

fn head_commit(repo: &Repository) -> Result<Option<git2::Commit<'_>>, git2::Error> {
    match repo.head() {
        Ok(head) => head.peel_to_commit().map(Some),
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn find_rev<'r>(repo: &'r Repository, rev: &str) -> Result<git2::Commit<'r>, SnapshotError> {
    let object = repo.revparse_single(rev).map_err(|e| match e.code() {
        ErrorCode::Ambiguous => SnapshotError::AmbiguousRev(rev.to_owned()),
        _ => SnapshotError::UnknownRev(rev.to_owned()),
    })?;
    object
        .peel_to_commit()
        .map_err(|_| SnapshotError::UnknownRev(rev.to_owned()))
}

fn empty_tree(repo: &Repository) -> Result<git2::Tree<'_>, git2::Error> {
    let oid = repo.treebuilder(None)?.write()?;
    repo.find_tree(oid)
}

fn blob_text(repo: &Repository, tree: &git2::Tree<'_>, path: &str) -> Result<String, git2::Error> {
    let entry = tree.get_path(Path::new(path))?;
    let blob = repo.find_blob(entry.id())?;
    Ok(String::from_utf8_lossy(blob.content()).into_owned())
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_tells_labels_annotations_and_recipients_apart() {
        let map = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let none = BTreeMap::new();
        let recipients = vec!["age1x".to_owned()];
        let base = file_fingerprint(&map("a", "b"), &none, &recipients);
        assert_eq!(base, file_fingerprint(&map("a", "b"), &none, &recipients));
        // The same text moved from labels to annotations is a different file.
        assert_ne!(base, file_fingerprint(&none, &map("a", "b"), &recipients));
        assert_ne!(base, file_fingerprint(&map("a", "bb"), &none, &recipients));
        assert_ne!(base, file_fingerprint(&map("a", "b"), &none, &[]));
    }
}
