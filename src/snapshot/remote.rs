//! Sharing the snapshot repository: clone, fetch, replay, push.
//!
//! Several writers (clusters) may push to one remote, each under its own
//! `<cluster>/` directory. When the remote moved, credsync replays its own
//! commits on top, keeping the others' files, and pushes again. If the
//! remote changed credsync's own directory, that is a real conflict: the
//! local commit stays, the conflict is reported, and the next sync retries.

use std::path::{Path, PathBuf};

use git2::{
    BranchType, Cred, CredentialType, FetchOptions, Oid, PushOptions, RemoteCallbacks, Repository,
};

use super::store::BRANCH;

/// Where to push, and how to authenticate.
#[derive(Clone)]
pub struct RemoteConfig {
    pub url: String,
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
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && let Some(token) = &config.token
        {
            return Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token);
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
    builder.clone(&config.url, path)
}

/// Points `origin` at the configured URL.
pub(super) fn ensure_origin(repo: &Repository, config: &RemoteConfig) -> Result<(), git2::Error> {
    match repo.find_remote(REMOTE) {
        Ok(remote) if remote.url() == Ok(config.url.as_str()) => Ok(()),
        Ok(_) => repo.remote_set_url(REMOTE, &config.url),
        Err(_) => repo.remote(REMOTE, &config.url).map(|_| ()),
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
    match repo.find_branch(&format!("{REMOTE}/{BRANCH}"), BranchType::Remote) {
        Ok(branch) => Ok(branch.get().target()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pushes the branch; Ok(false) when the remote refused it (it moved).
pub(super) fn push(repo: &Repository, config: &RemoteConfig) -> Result<bool, git2::Error> {
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
    let refspec = format!("refs/heads/{BRANCH}:refs/heads/{BRANCH}");
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
) -> Result<Option<Oid>, git2::Error> {
    let base = repo.merge_base(local_head, remote_head)?;
    let cluster_at = |commit: Oid| -> Result<Option<(Oid, i32)>, git2::Error> {
        let tree = repo.find_commit(commit)?.tree()?;
        Ok(tree.get_name(cluster).map(|e| (e.id(), e.filemode())))
    };
    if cluster_at(remote_head)? != cluster_at(base)? {
        return Ok(None);
    }
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
                tree.insert(cluster, entry.id(), entry.filemode())?;
            }
            None => {
                if tree.get(cluster)?.is_some() {
                    tree.remove(cluster)?;
                }
            }
        }
        let tree = repo.find_tree(tree.write()?)?;
        let message = commit.message().unwrap_or_default();
        let new = repo.commit(
            None,
            &commit.author(),
            &commit.committer(),
            message,
            &tree,
            &[&parent],
        )?;
        parent = repo.find_commit(new)?;
    }
    Ok(Some(parent.id()))
}
