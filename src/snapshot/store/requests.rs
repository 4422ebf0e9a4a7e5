//! Rollback requests in the repository: proposing one on a branch, finding
//! those on a revision with the commit that brought each, and knowing
//! which ones a rollback commit already applied.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use git2::build::TreeUpdateBuilder;
use git2::{FileMode, ObjectType, Oid, Repository, Signature};

use super::error::SnapshotError;
use super::{BRANCH, SnapshotStore, find_rev, head_commit, remote};
use crate::snapshot::request::{MalformedRequest, REQUESTS_DIR, RollbackRequest};

/// The trailers a rollback commit carries when a request asked for it:
/// how the loop knows, after a restart or on another replica, that a
/// request was applied once already.
pub const REQUEST_TRAILER: &str = "Credsync-Request";

/// Where a request came from: its file and the commit that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestOrigin {
    pub path: String,
    /// The commit that last wrote this file's content (not the merge).
    pub commit: String,
    /// That commit's author, `Name <email>`, as git records it: anyone can
    /// set it, so it is shown as claimed, never as verified (and escaped).
    pub author: String,
}

impl RequestOrigin {
    /// Names one request for good: the same file written again (after a
    /// revert, say) is a new request.
    pub fn key(&self) -> String {
        format!("{}@{}", self.path, self.commit)
    }
}

/// A request file at a revision.
#[derive(Debug, Clone)]
pub struct FoundRequest {
    pub origin: RequestOrigin,
    pub request: Result<RollbackRequest, MalformedRequest>,
    /// For a malformed file, the Secrets it still names (where to report).
    pub named: Vec<crate::manifest::SecretRef>,
}

/// A proposed request, pushed on its own branch.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub branch: String,
    pub path: String,
    pub commit: String,
    /// The branch the request was built on (the remote's, when there is one).
    pub base: String,
}

impl SnapshotStore {
    /// The request files of this cluster at `rev` (HEAD when None).
    pub fn requests(&self, rev: Option<&str>) -> Result<Vec<FoundRequest>, SnapshotError> {
        self.with_repo(|repo| {
            let commit = match rev {
                Some(rev) => find_rev(repo, rev)?,
                None => match head_commit(repo).map_err(|e| self.err("reading HEAD", e))? {
                    Some(commit) => commit,
                    None => return Ok(Vec::new()),
                },
            };
            let tree = commit.tree().map_err(|e| self.err("reading a tree", e))?;
            let dir = format!("{}/{REQUESTS_DIR}", self.config.cluster);
            let Ok(entry) = tree.get_path(Path::new(&dir)) else {
                return Ok(Vec::new());
            };
            if entry.kind() != Some(ObjectType::Tree) {
                return Ok(Vec::new());
            }
            let files = repo
                .find_tree(entry.id())
                .map_err(|e| self.err("reading the requests directory", e))?;
            let mut out = Vec::new();
            for file in files.iter() {
                let name = String::from_utf8_lossy(file.name_bytes()).into_owned();
                let name = name.as_str();
                // Read at its real path; whatever the name holds is shown only escaped.
                let tree_path = format!("{dir}/{name}");
                let path = format!("{dir}/{}", crate::text::one_line(name, 120));
                let mut named = Vec::new();
                let request = if file.kind() != Some(ObjectType::Blob)
                    || file.filemode() == i32::from(FileMode::Link)
                {
                    Err(MalformedRequest::new("not a regular file"))
                } else if !is_request_file_name(name) {
                    Err(MalformedRequest::new(
                        "the file name must be lower-case letters, digits and '-', ending in .yaml",
                    ))
                } else {
                    let blob = repo
                        .find_blob(file.id())
                        .map_err(|e| self.err(&format!("reading {path}"), e))?;
                    match std::str::from_utf8(blob.content()) {
                        Ok(text) => RollbackRequest::parse(text).inspect_err(|_| {
                            named = RollbackRequest::named_in(text);
                        }),
                        Err(_) => Err(MalformedRequest::new("not UTF-8 text")),
                    }
                };
                let origin = if file.name().is_err() {
                    // No path to look it up by: refused (above) as it is.
                    RequestOrigin {
                        path: path.clone(),
                        commit: commit.id().to_string(),
                        author: "unknown".to_owned(),
                    }
                } else {
                    let cache_key = (tree_path.clone(), file.id());
                    let known = self.cached_origin(&cache_key);
                    let mut origin =
                        origin(repo, commit.id(), &tree_path, file.id(), known.as_ref()).map_err(
                            |e| self.err(&format!("finding the commit that wrote {path}"), e),
                        )?;
                    origin.path = path.clone();
                    if let Ok(mut cache) = self.origins.lock() {
                        cache.insert(cache_key, (origin.clone(), commit.id()));
                    }
                    origin
                };
                out.push(FoundRequest {
                    origin,
                    request,
                    named,
                });
            }
            Ok(out)
        })
    }

    fn cached_origin(&self, key: &(String, Oid)) -> Option<(RequestOrigin, Oid)> {
        self.origins.lock().ok()?.get(key).cloned()
    }

    /// Whether `revision` is `tip` (HEAD when None) or one of its
    /// ancestors: a request may only restore what its branch recorded.
    pub fn in_history(&self, revision: &str, tip: Option<&str>) -> Result<bool, SnapshotError> {
        self.with_repo(|repo| {
            let head = match tip {
                Some(tip) => find_rev(repo, tip)?,
                None => match head_commit(repo).map_err(|e| self.err("reading HEAD", e))? {
                    Some(head) => head,
                    None => return Ok(false),
                },
            };
            let revision = find_rev(repo, revision)?.id();
            reaches(repo, head.id(), revision).map_err(|e| self.err("walking history", e))
        })
    }

    /// The keys ([`RequestOrigin::key`]) of the requests rollback commits
    /// applied, in HEAD's history back to `since` (exclusive; the whole
    /// history when None), and the HEAD they were read at.
    pub fn applied_requests(
        &self,
        since: Option<&str>,
    ) -> Result<(HashSet<String>, Option<String>), SnapshotError> {
        self.with_repo(|repo| {
            let Some(head) = head_commit(repo).map_err(|e| self.err("reading HEAD", e))? else {
                return Ok((HashSet::new(), None));
            };
            let walking = |e| self.err("walking history", e);
            let mut walk = repo.revwalk().map_err(walking)?;
            walk.push(head.id()).map_err(walking)?;
            if let Some(since) = since.and_then(|s| Oid::from_str(s).ok())
                && repo.find_commit(since).is_ok()
            {
                walk.hide(since).map_err(walking)?;
            }
            let mut applied = HashSet::new();
            for oid in walk {
                let oid = oid.map_err(walking)?;
                let commit = repo
                    .find_commit(oid)
                    .map_err(|e| self.err("reading a commit", e))?;
                // Only credsync's own commits say what it applied: a
                // trailer anyone can write would silence a request.
                if let Some(key) = commit.message().ok().and_then(request_key_of)
                    && self.is_signed(repo, oid)
                {
                    applied.insert(key);
                }
            }
            Ok((applied, Some(head.id().to_string())))
        })
    }

    /// Fetches the followed branch from the remote, so revisions pushed by
    /// others resolve; nothing local moves. Without a remote, nothing.
    pub fn fetch(&self) -> Result<(), SnapshotError> {
        let Some(config) = &self.config.remote else {
            return Ok(());
        };
        self.with_repo(|repo| {
            remote::fetch(repo, config)
                .map(|_| ())
                .map_err(|e| self.err(&format!("fetching {}", config.url), e))
        })
    }

    /// Writes `request` as a new file on a new local branch built on the
    /// followed branch (the remote's as [`SnapshotStore::fetch`] last saw
    /// it, when there is a remote); [`SnapshotStore::publish`] pushes it.
    /// Nothing else moves.
    pub fn propose(
        &self,
        request: &RollbackRequest,
        branch: &str,
        file_name: &str,
    ) -> Result<Proposal, SnapshotError> {
        self.with_repo(|repo| {
            if git2::Branch::name_is_valid(branch) != Ok(true) || branch == BRANCH {
                return Err(self.err(
                    &format!("creating branch {branch:?}"),
                    format!("not a branch name a proposal can use (and not {BRANCH}, which the loop follows)"),
                ));
            }
            let base = match &self.config.remote {
                Some(_) => remote::tracking_head(repo)
                    .map_err(|e| self.err("reading the remote's head", e))?,
                None => None,
            };
            let base = match base {
                Some(oid) => repo.find_commit(oid).map_err(|e| self.err("reading the remote's head", e))?,
                None => head_commit(repo)
                    .map_err(|e| self.err("reading HEAD", e))?
                    .ok_or_else(|| self.err("proposing a rollback", "the repository has no snapshot yet"))?,
            };
            // The loop reads only its branch: a revision elsewhere would be unknown to it.
            let revision = Oid::from_str(&request.revision)
                .map_err(|e| self.err(&format!("reading revision {}", request.revision), e))?;
            if !reaches(repo, base.id(), revision).map_err(|e| self.err("walking history", e))? {
                return Err(self.err(
                    &format!("proposing a rollback to {}", &request.revision[..12]),
                    format!("that revision is not in {BRANCH}'s history, the only branch the loop reads: pick one `credsync history` lists"),
                ));
            }
            let path = format!("{}/{REQUESTS_DIR}/{file_name}", self.config.cluster);
            let base_tree = base.tree().map_err(|e| self.err("reading a tree", e))?;
            if base_tree.get_path(Path::new(&path)).is_ok() {
                return Err(self.err(&format!("writing {path}"), "a request of that name exists: give another --branch"));
            }
            let blob = repo
                .blob(request.render().as_bytes())
                .map_err(|e| self.err("writing the request", e))?;
            let mut update = TreeUpdateBuilder::new();
            update.upsert(path.as_str(), blob, FileMode::Blob);
            let tree_id = update
                .create_updated(repo, &base_tree)
                .map_err(|e| self.err("building the tree", e))?;
            let tree = repo.find_tree(tree_id).map_err(|e| self.err("reading the new tree", e))?;
            let signature = repo
                .signature()
                .or_else(|_| Signature::now("credsync", "credsync@localhost"))
                .map_err(|e| self.err("making a signature", e))?;
            let names: Vec<String> = request.secrets.iter().map(|s| format!("  {s}")).collect();
            let why = if request.reason.is_empty() { String::new() } else { format!("\n\nWhy: {}", request.reason) };
            let message = format!(
                "credsync: propose rolling back {} Secret(s) in cluster {} to {}\n\n{}{why}\n",
                request.secrets.len(),
                self.config.cluster,
                &request.revision[..12],
                names.join("\n"),
            );
            let oid = repo
                .commit(None, &signature, &signature, &message, &tree, &[&base])
                .map_err(|e| self.err("writing the commit", e))?;
            let refname = format!("refs/heads/{branch}");
            repo.reference(&refname, oid, false, "credsync: propose a rollback")
                .map_err(|e| self.err(&format!("creating branch {branch}"), e))?;
            Ok(Proposal {
                branch: branch.to_owned(),
                path,
                commit: oid.to_string(),
                base: base.id().to_string(),
            })
        })
    }
}

impl SnapshotStore {
    /// Pushes a proposal's branch to the remote (nothing without one).
    pub fn publish(&self, proposal: &Proposal) -> Result<(), SnapshotError> {
        let Some(config) = &self.config.remote else {
            return Ok(());
        };
        let branch = &proposal.branch;
        self.with_repo(|repo| {
            let doing = format!("pushing {branch} to {}", config.url);
            let pushed = remote::push_branch(repo, config, branch).map_err(|e| self.err(&doing, e))?;
            if pushed {
                Ok(())
            } else {
                Err(self.err(&doing, "the remote refused it (a branch of that name exists there?): give another --branch"))
            }
        })
    }

    /// Deletes a proposal's local branch: it will not be pushed.
    pub fn discard(&self, proposal: &Proposal) -> Result<(), SnapshotError> {
        self.with_repo(|repo| {
            repo.find_reference(&format!("refs/heads/{}", proposal.branch))
                .and_then(|mut r| r.delete())
                .map_err(|e| self.err(&format!("deleting branch {}", proposal.branch), e))
        })
    }
}

/// Whether `name` is a request file's name: `[a-z0-9-]+.yaml`, so it is
/// safe in a path, a commit message, a log line and markdown as it is.
pub fn is_request_file_name(name: &str) -> bool {
    name.strip_suffix(".yaml").is_some_and(|stem| {
        !stem.is_empty()
            && stem.len() <= 100
            && stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// The request key a rollback commit's message names, if any: in its
/// trailers, the last paragraph, where credsync writes them (a line of the
/// body cannot pass for one).
fn request_key_of(message: &str) -> Option<String> {
    let trailers = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    let value = |name: &str| {
        trailers.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(str::trim)
        })
    };
    let path = value(REQUEST_TRAILER)?;
    let commit = value(&format!("{REQUEST_TRAILER}-Commit"))?;
    Some(format!("{path}@{commit}"))
}

/// The trailer lines a rollback commit for `origin` ends with.
pub(super) fn request_trailers(origin: &RequestOrigin) -> String {
    format!(
        "{REQUEST_TRAILER}: {}\n{REQUEST_TRAILER}-Commit: {}\n",
        origin.path, origin.commit
    )
}

/// Whether `to` is `from` or one of its ancestors.
fn reaches(repo: &Repository, from: Oid, to: Oid) -> Result<bool, git2::Error> {
    Ok(from == to || repo.graph_descendant_of(from, to)?)
}

/// For each request file seen (path, blob): the commit that wrote it and
/// the HEAD that was checked up to.
pub(super) type OriginCache = HashMap<(String, Oid), (RequestOrigin, Oid)>;

/// The commit that wrote `blob` at `path` in `start`'s history: the newest
/// whose parents all hold something else there (for a merge, the commit on
/// the merged branch, with its author). With a `known` answer checked up
/// to some commit, only the commits since are walked.
fn origin(
    repo: &Repository,
    start: Oid,
    path: &str,
    blob: Oid,
    known: Option<&(RequestOrigin, Oid)>,
) -> Result<RequestOrigin, git2::Error> {
    let at = |commit: &git2::Commit<'_>| -> Option<Oid> {
        commit
            .tree()
            .ok()?
            .get_path(Path::new(path))
            .ok()
            .map(|e| e.id())
    };
    let mut walk = repo.revwalk()?;
    walk.push(start)?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL)?;
    let mut fallback = None;
    if let Some((origin, checked)) = known
        && let Ok(origin_id) = Oid::from_str(&origin.commit)
        && reaches(repo, start, origin_id)?
        && reaches(repo, start, *checked)?
    {
        walk.hide(*checked)?;
        fallback = Some(origin.clone());
    }
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        if at(&commit) == Some(blob) && commit.parents().all(|parent| at(&parent) != Some(blob)) {
            let author = commit.author();
            let author = format!(
                "{} <{}>",
                String::from_utf8_lossy(author.name_bytes()),
                String::from_utf8_lossy(author.email_bytes())
            );
            return Ok(RequestOrigin {
                path: path.to_owned(),
                commit: commit.id().to_string(),
                author: crate::text::one_line(&author, 200),
            });
        }
    }
    fallback.ok_or_else(|| git2::Error::from_str("no commit in its history wrote this file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_commit_names_its_request_in_trailers() {
        let origin = RequestOrigin {
            path: "prod/.requests/r.yaml".to_owned(),
            commit: "ab".repeat(20),
            author: "A <a@x>".to_owned(),
        };
        let message = format!(
            "credsync: roll back\n\nbody\n\n{}",
            request_trailers(&origin)
        );
        assert_eq!(request_key_of(&message), Some(origin.key()));
        assert_eq!(request_key_of("credsync: roll back 1 Secret(s)\n"), None);
        // Trailer-like lines in the body are not trailers.
        let body_only = format!(
            "credsync: roll back\n\n{}\nPinned until that file is removed.\n",
            request_trailers(&origin)
        );
        assert_eq!(request_key_of(&body_only), None);
    }

    #[test]
    fn request_file_names_are_plain() {
        for good in ["r.yaml", "rollback-2842c84d34d4-20261207.yaml", "a-1.yaml"] {
            assert!(is_request_file_name(good), "{good}");
        }
        for bad in [
            ".yaml",
            "R.yaml",
            "a b.yaml",
            "a\nb.yaml",
            "a.yml",
            "a_b.yaml",
            "../a.yaml",
            "a.yaml.txt",
        ] {
            assert!(!is_request_file_name(bad), "{bad:?}");
        }
    }
}
