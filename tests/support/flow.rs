//! A rollback-request flow for the tests: stand-ins with a snapshot
//! repository, a bare remote, a reviewers' clone driven with the real git
//! CLI, and `credsync run` following the remote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::daemon::{Daemon, eventually, http, metric};
use super::path_str;
use super::snap::Snap;

pub const PINNED: &str = "credsync.io/pinned";
pub const PINNED_BY_REQUEST: &str = "credsync.io/pinned-by-request";

pub struct Flow {
    pub s: Snap,
    pub remote: PathBuf,
    /// A clone people review and merge in, with the real git CLI.
    pub review: PathBuf,
}

impl Flow {
    /// Stand-ins with a namespace `app`, a snapshot repository and an empty bare remote.
    pub async fn start() -> Self {
        Self::start_in(&["app"]).await
    }

    /// [`Flow::start`] with these namespaces.
    pub async fn start_in(namespaces: &[&str]) -> Self {
        let s = Snap::start(namespaces).await;
        let dir = s.env.dir.path().to_owned();
        let remote = dir.join("remote.git");
        s.env.git(
            &dir,
            &["init", "-q", "--bare", "-b", "main", path_str(&remote)],
        );
        Flow {
            s,
            remote,
            review: dir.join("review"),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.s.env.dir.path().to_owned()
    }

    /// Waits until app/api's TOKEN is `value`; the daemon's log if it never is.
    pub async fn token_becomes(&self, daemon: &Daemon, value: &[u8]) {
        assert!(
            self.s
                .env
                .eventually_value("app", "api", "TOKEN", value, Duration::from_secs(30))
                .await,
            "{}",
            self.s.env.daemon_log(daemon)
        );
    }

    /// Two snapshots pushed: app/api and app/web at version one, then at
    /// version two. Returns the first one's commit.
    pub fn two_snapshots(&self) -> String {
        let env = &self.s.env;
        env.put("app/api/token", "token-version-one");
        env.put("app/web/key", "web-value-one");
        assert_eq!(self.with_remote(&["sync"]).code, 0);
        let v1 = self.s.head();
        env.put("app/api/token", "token-version-two");
        env.put("app/web/key", "web-value-two");
        assert_eq!(self.with_remote(&["sync"]).code, 0);
        v1
    }

    pub fn with_remote(&self, command: &[&str]) -> super::Run {
        let mut args = vec!["--snapshot-remote", path_str(&self.remote)];
        args.extend_from_slice(command);
        self.s.run(&args)
    }

    /// The reviewers' clone of the remote.
    pub fn clone_review(&self) {
        let (remote, review) = (path_str(&self.remote), path_str(&self.review));
        self.s
            .env
            .git(&self.dir(), &["clone", "-q", remote, review]);
    }

    pub fn git(&self, args: &[&str]) -> String {
        self.s.env.git(&self.review, args)
    }

    /// git as a person with a name, as a merge on a forge records it.
    pub fn git_as(&self, who: &str, args: &[&str]) -> String {
        let name = format!("user.name={who}");
        let email = format!("user.email={}@example.com", who.to_lowercase());
        let mut all = vec!["-c", name.as_str(), "-c", email.as_str()];
        all.extend_from_slice(args);
        self.git(&all)
    }

    pub fn daemon(&self, loop_repo: &Path) -> Daemon {
        self.daemon_with(loop_repo, &[])
    }

    /// [`Flow::daemon`] with more flags.
    pub fn daemon_with(&self, loop_repo: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--cluster-name",
            "test",
            "--snapshot-repo",
            path_str(loop_repo),
            "--snapshot-remote",
            path_str(&self.remote),
            "--age-recipient",
            &self.s.recipient,
            "--age-identity",
            path_str(&self.s.identity),
            "--snapshot-signing-key",
            path_str(&self.s.signing_key),
            "--request-poll-interval",
            "1s",
            "--no-stream",
            "--insecure-no-auth",
            // /plan is cached this long: the test reads it fresh.
            "--sync-rate-limit",
            "1ms",
        ];
        args.extend_from_slice(extra);
        self.s.env.daemon(&args, &[])
    }

    pub fn metrics(&self, daemon: &Daemon) -> String {
        http(daemon.port, "GET", "/metrics", None).1
    }

    /// Waits until the daemon counts `n` requests applied: the count comes
    /// once the rollback, its push included, has returned.
    pub async fn applied_becomes(&self, daemon: &Daemon, n: f64) {
        let sample = "credsync_rollback_requests_total{outcome=\"applied\"}";
        assert!(
            eventually(Duration::from_secs(10), || async {
                metric(&self.metrics(daemon), sample) == n
            })
            .await,
            "{}",
            self.s.env.daemon_log(daemon)
        );
    }

    /// Waits until the remote's `main` has a commit saying `text`.
    pub async fn remote_log_shows(&self, text: &str) {
        assert!(
            eventually(Duration::from_secs(20), || async {
                self.remote_log().contains(text)
            })
            .await,
            "{}",
            self.remote_log()
        );
    }

    pub fn remote_log(&self) -> String {
        self.s
            .env
            .git(&self.remote, &["log", "--format=%H %an%n%B%n--", "main"])
    }
}

pub async fn annotations(s: &Snap) -> std::collections::BTreeMap<String, String> {
    annotations_of(s, "api").await
}

pub async fn annotations_of(s: &Snap, name: &str) -> std::collections::BTreeMap<String, String> {
    s.env
        .secret("app", name)
        .await
        .and_then(|secret| secret.metadata.annotations)
        .unwrap_or_default()
}

pub async fn token(s: &Snap) -> Vec<u8> {
    s.env.secret_data("app", "api").await.unwrap()["TOKEN"].clone()
}
