//! Sharing the snapshot repository: clone, fetch, replay, push.
//!
//! Several writers (clusters) may push to one remote, each under its own
//! `<cluster>/` directory. When the remote moved, credsync replays its own
//! commits on top, keeping the others' files, and pushes again. If the
//! remote changed credsync's own directory, that is a real conflict: the
//! local commit stays, the conflict is reported, and the next sync retries.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

use git2::{
    BranchType, Cred, CredentialType, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository,
};

use super::BRANCH;
use super::request::REQUESTS_DIR;

/// Where to push, and how to authenticate.
#[derive(Clone)]
pub struct RemoteConfig {
    pub url: RemoteUrl,
    /// Private key for ssh remotes.
    pub ssh_key: Option<PathBuf>,
    /// Token for https remotes (sent as the password).
    pub token: Option<String>,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("ssh_key", &self.ssh_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A remote URL with any `user:password@` of an http(s) URL taken out.
///
/// The credentials go to git through the credential callback only, so they
/// are neither stored in `.git/config` nor part of any git error message;
/// Display and Debug show `***@` where they were.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// What git is given: the URL without userinfo (http(s)) or as written.
    bare: String,
    /// The userinfo taken out: (user, password).
    userinfo: Option<(String, String)>,
}

impl RemoteUrl {
    pub fn parse(text: &str) -> Self {
        let Ok(mut url) = url::Url::parse(text) else {
            // scp-like ssh (`git@host:repo`) or a local path: no password in it.
            return Self {
                bare: text.to_owned(),
                userinfo: None,
            };
        };
        let http = matches!(url.scheme(), "http" | "https");
        if !http || (url.username().is_empty() && url.password().is_none()) {
            return Self {
                bare: text.to_owned(),
                userinfo: None,
            };
        }
        let decode = |part: &str| percent_decode_str(part).decode_utf8_lossy().into_owned();
        let userinfo = (
            decode(url.username()),
            url.password().map(decode).unwrap_or_default(),
        );
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Self {
            bare: url.to_string(),
            userinfo: Some(userinfo),
        }
    }

    /// The URL git connects to (no credentials in it).
    pub fn as_git_url(&self) -> &str {
        &self.bare
    }

    /// The user and password that were in the URL, for the credential callback.
    fn userinfo(&self) -> Option<(&str, &str)> {
        self.userinfo
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.userinfo, self.bare.split_once("://")) {
            (Some(_), Some((scheme, rest))) => write!(f, "{scheme}://***@{rest}"),
            _ => f.write_str(&self.bare),
        }
    }
}

impl std::fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// How a push attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The remote has every local commit.
    UpToDate,
    /// The remote changed this cluster's files too: the local commits stay unpushed.
    Conflict,
}

pub const REMOTE: &str = "origin";

fn callbacks(config: &RemoteConfig) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |_url, username, allowed| {
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = &config.ssh_key
        {
            return Cred::ssh_key(username.unwrap_or("git"), None, key, None);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Some(token) = &config.token {
                return Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token);
            }
            if let Some((user, password)) = config.url.userinfo() {
                return Cred::userpass_plaintext(user, password);
            }
        }
        Cred::default()
    });
    callbacks
}

pub(super) fn clone(config: &RemoteConfig, path: &Path) -> Result<Repository, git2::Error> {
    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks(config));
    let mut builder = git2::build::RepoBuilder::new();
    builder.fetch_options(fetch);
    builder.clone(config.url.as_git_url(), path)
}

/// Points `origin` at the configured URL.
pub(super) fn ensure_origin(repo: &Repository, config: &RemoteConfig) -> Result<(), git2::Error> {
    match repo.find_remote(REMOTE) {
        Ok(remote) if remote.url() == Ok(config.url.as_git_url()) => Ok(()),
        Ok(_) => repo.remote_set_url(REMOTE, config.url.as_git_url()),
        Err(_) => repo.remote(REMOTE, config.url.as_git_url()).map(|_| ()),
    }
}

/// Fetches the branch; returns the remote's head, if the branch exists there.
pub(super) fn fetch(repo: &Repository, config: &RemoteConfig) -> Result<Option<Oid>, git2::Error> {
    let mut remote = repo.find_remote(REMOTE)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks(config));
    remote.fetch(
        &[format!(
            "+refs/heads/{BRANCH}:refs/remotes/{REMOTE}/{BRANCH}"
        )],
        Some(&mut options),
        None,
    )?;
    tracking_head(repo)
}

/// The remote's head as the last fetch saw it, if the branch exists there.
pub(super) fn tracking_head(repo: &Repository) -> Result<Option<Oid>, git2::Error> {
    match repo.find_branch(&format!("{REMOTE}/{BRANCH}"), BranchType::Remote) {
        Ok(branch) => Ok(branch.get().target()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pushes the branch; Ok(false) when the remote refused it (it moved).
pub(super) fn push(repo: &Repository, config: &RemoteConfig) -> Result<bool, git2::Error> {
    push_branch(repo, config, BRANCH)
}

/// Pushes local `branch` to the remote's branch of that name; Ok(false)
/// when the remote refused it.
pub(super) fn push_branch(
    repo: &Repository,
    config: &RemoteConfig,
    branch: &str,
) -> Result<bool, git2::Error> {
    let mut remote = repo.find_remote(REMOTE)?;
    let rejected = std::cell::Cell::new(false);
    let mut callbacks = callbacks(config);
    callbacks.push_update_reference(|_refname, status| {
        if status.is_some() {
            rejected.set(true);
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
    match remote.push(&[refspec.as_str()], Some(&mut options)) {
        Ok(()) => Ok(!rejected.get()),
        // Local and some smart transports report a non-fast-forward as an error.
        Err(e)
            if e.code() == git2::ErrorCode::NotFastForward
                || e.message().contains("fast-forward") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Rebuilds the local commits since the merge base on top of `remote_head`,
/// taking only this cluster's directory from them. None on a real conflict.
pub(super) fn replay(
    repo: &Repository,
    cluster: &str,
    local_head: Oid,
    remote_head: Oid,
    write: &dyn Fn(
        &git2::Commit<'_>,
        &git2::Tree<'_>,
        &git2::Commit<'_>,
    ) -> Result<Oid, git2::Error>,
) -> Result<Option<Oid>, git2::Error> {
    let base = repo.merge_base(local_head, remote_head)?;
    // Rollback requests arrive in the cluster's directory by pull request:
    // they are the remote's to change, so they neither conflict nor get
    // replayed over.
    let cluster_at = |commit: Oid| -> Result<Option<(Oid, i32)>, git2::Error> {
        let tree = repo.find_commit(commit)?.tree()?;
        tree.get_name(cluster)
            .map(|e| Ok((with_requests(repo, e.id(), None)?, e.filemode())))
            .transpose()
    };
    if cluster_at(remote_head)? != cluster_at(base)? {
        return Ok(None);
    }
    let remote_requests = repo
        .find_commit(remote_head)?
        .tree()?
        .get_path(Path::new(cluster).join(REQUESTS_DIR).as_path())
        .ok()
        .map(|e| e.id());
    let mut walk = repo.revwalk()?;
    walk.push(local_head)?;
    walk.hide(base)?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)?;
    let mut parent = repo.find_commit(remote_head)?;
    for oid in walk {
        let commit = repo.find_commit(oid?)?;
        let mut tree = repo.treebuilder(Some(&parent.tree()?))?;
        match commit.tree()?.get_name(cluster) {
            Some(entry) => {
                let merged = with_requests(repo, entry.id(), remote_requests)?;
                tree.insert(cluster, merged, entry.filemode())?;
            }
            // No Secret left here: the remote's requests stay all the same.
            None => match remote_requests {
                Some(requests) => {
                    let mut only = repo.treebuilder(None)?;
                    only.insert(REQUESTS_DIR, requests, i32::from(git2::FileMode::Tree))?;
                    tree.insert(cluster, only.write()?, i32::from(git2::FileMode::Tree))?;
                }
                None => {
                    if tree.get(cluster)?.is_some() {
                        tree.remove(cluster)?;
                    }
                }
            },
        }
        let tree = repo.find_tree(tree.write()?)?;
        let new = write(&commit, &tree, &parent)?;
        parent = repo.find_commit(new)?;
    }
    Ok(Some(parent.id()))
}

/// The cluster directory `dir` with its requests directory replaced by
/// `requests` (removed when None).
fn with_requests(repo: &Repository, dir: Oid, requests: Option<Oid>) -> Result<Oid, git2::Error> {
    let Ok(tree) = repo.find_tree(dir) else {
        return Ok(dir);
    };
    let mut builder = repo.treebuilder(Some(&tree))?;
    match requests {
        Some(requests) => {
            builder.insert(REQUESTS_DIR, requests, i32::from(git2::FileMode::Tree))?;
        }
        None => {
            if builder.get(REQUESTS_DIR)?.is_some() {
                builder.remove(REQUESTS_DIR)?;
            }
        }
    }
    builder.write()
}

#[cfg(test)]
mod tests {
    use super::{RemoteUrl, replay};

    use git2::{Oid, Repository, Signature};

    /// A commit on top of `parent` that writes `files` (path -> text) and
    /// removes the paths in `gone`.
    fn commit(
        repo: &Repository,
        parent: Option<Oid>,
        files: &[(&str, &str)],
        gone: &[&str],
    ) -> Oid {
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (path, text) in files {
            update.upsert(
                *path,
                repo.blob(text.as_bytes()).unwrap(),
                git2::FileMode::Blob,
            );
        }
        for path in gone {
            update.remove(*path);
        }
        let parent = parent.map(|p| repo.find_commit(p).unwrap());
        let base = match &parent {
            Some(p) => p.tree().unwrap(),
            None => repo
                .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
                .unwrap(),
        };
        let tree = repo
            .find_tree(update.create_updated(repo, &base).unwrap())
            .unwrap();
        let sig = Signature::now("t", "t@t").unwrap();
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(None, &sig, &sig, "c", &tree, &parents).unwrap()
    }

    /// Replays as the store does without a signing key: a plain copy.
    fn replay_plain(repo: &Repository, ours: Oid, theirs: Oid) -> Option<Oid> {
        let write = |old: &git2::Commit<'_>, tree: &git2::Tree<'_>, parent: &git2::Commit<'_>| {
            let message = old.message().unwrap_or_default();
            repo.commit(
                None,
                &old.author(),
                &old.committer(),
                message,
                tree,
                &[parent],
            )
        };
        replay(repo, "c", ours, theirs, &write).unwrap()
    }

    fn text(repo: &Repository, commit: Oid, path: &str) -> Option<String> {
        let tree = repo.find_commit(commit).unwrap().tree().unwrap();
        let entry = tree.get_path(std::path::Path::new(path)).ok()?;
        let blob = repo.find_blob(entry.id()).unwrap();
        Some(String::from_utf8_lossy(blob.content()).into_owned())
    }

    #[test]
    fn replay_keeps_the_remotes_requests_and_never_brings_back_a_removed_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let base = commit(
            &repo,
            None,
            &[("c/ns/a.yaml", "a1"), ("c/.requests/old.yaml", "old")],
            &[],
        );
        // The remote merged a new request and removed the old one; locally a
        // snapshot changed a Secret meanwhile.
        let new = [("c/.requests/new.yaml", "new")];
        let theirs = commit(&repo, Some(base), &new, &["c/.requests/old.yaml"]);
        let ours = commit(&repo, Some(base), &[("c/ns/a.yaml", "a2")], &[]);
        let replayed = replay_plain(&repo, ours, theirs).expect("no conflict");
        assert_eq!(text(&repo, replayed, "c/ns/a.yaml").as_deref(), Some("a2"));
        assert_eq!(
            text(&repo, replayed, "c/.requests/new.yaml").as_deref(),
            Some("new")
        );
        assert_eq!(text(&repo, replayed, "c/.requests/old.yaml"), None);

        // A local commit that leaves no Secret keeps the remote's requests.
        let gone = ["c/ns/a.yaml", "c/.requests/old.yaml"];
        let emptied = commit(&repo, Some(ours), &[], &gone);
        let replayed = replay_plain(&repo, emptied, theirs).expect("no conflict");
        assert_eq!(text(&repo, replayed, "c/ns/a.yaml"), None);
        assert_eq!(
            text(&repo, replayed, "c/.requests/new.yaml").as_deref(),
            Some("new")
        );

        // The remote changing a Secret's file is still a conflict.
        let edited = commit(&repo, Some(base), &[("c/ns/a.yaml", "edited")], &[]);
        assert_eq!(replay_plain(&repo, ours, edited), None);
    }

    #[test]
    fn https_credentials_leave_the_url_and_never_print() {
        let url = RemoteUrl::parse("https://ci-bot:p%40ss-W0rd@git.example.com/org/snaps.git");
        assert_eq!(url.as_git_url(), "https://git.example.com/org/snaps.git");
        assert_eq!(url.userinfo(), Some(("ci-bot", "p@ss-W0rd")));
        let shown = format!("{url} {url:?}");
        assert!(
            !shown.contains("W0rd") && !shown.contains("ci-bot"),
            "{shown}"
        );
        assert!(shown.contains("https://***@git.example.com/org/snaps.git"));
        // A token as the user name (GitHub style) is a secret too.
        let token_only = RemoteUrl::parse("https://ghp_abc123@github.com/o/r.git");
        assert_eq!(token_only.userinfo(), Some(("ghp_abc123", "")));
        assert!(!token_only.to_string().contains("ghp_abc123"));
    }

    #[test]
    fn ssh_and_plain_urls_are_kept_as_written() {
        for text in [
            "git@github.com:org/snaps.git",
            "ssh://git@host:2222/org/snaps.git",
            "https://git.example.com/org/snaps.git",
            "/srv/git/snaps.git",
            "file:///srv/git/snaps.git",
        ] {
            let url = RemoteUrl::parse(text);
            assert_eq!(url.as_git_url(), text);
            assert_eq!(url.to_string(), text);
            assert_eq!(url.userinfo(), None);
        }
    }
}
