//! Rollbacks by pull request, end to end on the real API server with a bare
//! git remote and the real git CLI: `rollback --propose` pushes a request
//! and prints its plan, `plan` on the branch shows it, a merge makes the
//! running loop restore and pin the Secret (a commit naming the request's
//! author), a revert unpins it and the table's value returns, and tampered
//! or malformed requests are refused and reported.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::daemon::{Daemon, eventually, http, metric, reconciled};
use support::path_str;
use support::snap::Snap;

const PINNED: &str = "credsync.io/pinned";
const PINNED_BY_REQUEST: &str = "credsync.io/pinned-by-request";

struct Flow {
    s: Snap,
    remote: PathBuf,
    /// A clone people review and merge in, with the real git CLI.
    review: PathBuf,
}

impl Flow {
    /// Stand-ins with a namespace `app`, a snapshot repository and an empty bare remote.
    async fn start() -> Self {
        Self::start_in(&["app"]).await
    }

    /// [`Flow::start`] with these namespaces.
    async fn start_in(namespaces: &[&str]) -> Self {
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

    fn dir(&self) -> PathBuf {
        self.s.env.dir.path().to_owned()
    }

    /// Waits until app/api's TOKEN is `value`; the daemon's log if it never is.
    async fn token_becomes(&self, daemon: &Daemon, value: &[u8]) {
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
    fn two_snapshots(&self) -> String {
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

    fn with_remote(&self, command: &[&str]) -> support::Run {
        let mut args = vec!["--snapshot-remote", path_str(&self.remote)];
        args.extend_from_slice(command);
        self.s.run(&args)
    }

    /// The reviewers' clone of the remote.
    fn clone_review(&self) {
        let (remote, review) = (path_str(&self.remote), path_str(&self.review));
        self.s
            .env
            .git(&self.dir(), &["clone", "-q", remote, review]);
    }

    fn git(&self, args: &[&str]) -> String {
        self.s.env.git(&self.review, args)
    }

    /// git as a person with a name, as a merge on a forge records it.
    fn git_as(&self, who: &str, args: &[&str]) -> String {
        let name = format!("user.name={who}");
        let email = format!("user.email={}@example.com", who.to_lowercase());
        let mut all = vec!["-c", name.as_str(), "-c", email.as_str()];
        all.extend_from_slice(args);
        self.git(&all)
    }

    fn daemon(&self, loop_repo: &Path) -> Daemon {
        self.daemon_with(loop_repo, &[])
    }

    /// [`Flow::daemon`] with more flags.
    fn daemon_with(&self, loop_repo: &Path, extra: &[&str]) -> Daemon {
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

    fn metrics(&self, daemon: &Daemon) -> String {
        http(daemon.port, "GET", "/metrics", None).1
    }

    /// Waits until the daemon counts `n` requests applied: the count comes
    /// once the rollback, its push included, has returned.
    async fn applied_becomes(&self, daemon: &Daemon, n: f64) {
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
    async fn remote_log_shows(&self, text: &str) {
        assert!(
            eventually(Duration::from_secs(20), || async {
                self.remote_log().contains(text)
            })
            .await,
            "{}",
            self.remote_log()
        );
    }

    fn remote_log(&self) -> String {
        self.s
            .env
            .git(&self.remote, &["log", "--format=%H %an%n%B%n--", "main"])
    }
}

async fn annotations(s: &Snap) -> std::collections::BTreeMap<String, String> {
    annotations_of(s, "api").await
}

async fn annotations_of(s: &Snap, name: &str) -> std::collections::BTreeMap<String, String> {
    s.env
        .secret("app", name)
        .await
        .and_then(|secret| secret.metadata.annotations)
        .unwrap_or_default()
}

async fn token(s: &Snap) -> Vec<u8> {
    s.env.secret_data("app", "api").await.unwrap()["TOKEN"].clone()
}

#[tokio::test]
async fn a_rollback_proposed_reviewed_merged_and_reverted_by_pull_request() {
    let flow = Flow::start().await;
    let (s, dir) = (&flow.s, flow.dir());
    let with_remote = |command: &[&str]| flow.with_remote(command);
    let v1 = flow.two_snapshots();
    flow.clone_review();

    // The loop runs in its own clone, as a pod would.
    let loop_repo = dir.join("loop");
    let daemon = flow.daemon(&loop_repo);
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    assert_eq!(token(s).await, b"token-version-two");

    // 1. Propose: a request on a new branch, pushed, and its plan in markdown.
    s.git(&["config", "user.name", "Ada Lovelace"]);
    s.git(&["config", "user.email", "ada@example.com"]);
    let proposed = with_remote(&[
        "rollback",
        &v1,
        "--secret",
        "app/api",
        "--propose",
        "--branch",
        "rollback-api",
        "--reason",
        "token two broke the logins",
    ]);
    assert_eq!(proposed.code, 0, "{}", proposed.stderr);
    assert!(
        proposed.stderr.contains("pushed branch rollback-api"),
        "{}",
        proposed.stderr
    );
    let body = &proposed.stdout;
    assert!(
        body.starts_with("<!-- credsync-plan cluster=\"test\" -->"),
        "{body}"
    );
    assert!(body.contains("1 rollback request(s) to apply"), "{body}");
    assert!(
        body.contains(&format!(
            "| pending | `app/api` | `{}` | Ada Lovelace &lt;ada@example.com&gt;",
            &v1[..12]
        )),
        "{body}"
    );
    assert!(body.contains("token two broke the logins"), "{body}");
    assert!(
        body.contains("| update | `app/api` |  | `TOKEN` |  |"),
        "the details name the changed key: {body}"
    );
    s.env.assert_no_value_in(body, "the proposed plan");
    // Nothing applied, nothing on main.
    assert_eq!(token(s).await, b"token-version-two");
    let request_files = s.env.git(
        &flow.remote,
        &["ls-tree", "-r", "--name-only", "rollback-api"],
    );
    let request_file = request_files
        .lines()
        .find(|f| f.starts_with("test/.requests/"))
        .unwrap_or_else(|| panic!("{request_files}"))
        .to_owned();
    let main_files = s
        .env
        .git(&flow.remote, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(!main_files.contains(".requests"), "{main_files}");
    let request_text = s.env.git(
        &flow.remote,
        &["show", &format!("rollback-api:{request_file}")],
    );
    assert!(
        request_text.contains(&v1) && request_text.contains("app/api"),
        "{request_text}"
    );
    let request_commit = s
        .env
        .git(&flow.remote, &["rev-parse", "rollback-api"])
        .trim()
        .to_owned();

    // A request on a branch the loop does not follow counts for nothing.
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(&flow.metrics(&daemon), "credsync_snapshot_remote_up") == 1.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(token(s).await, b"token-version-two");

    // 2. `plan` on a checkout of the branch (as CI runs it) shows the request.
    flow.git(&["fetch", "-q", "origin"]);
    flow.git(&["checkout", "-q", "rollback-api"]);
    let review_args = |format: &str| {
        vec![
            "--cluster-name".to_owned(),
            "test".to_owned(),
            "--snapshot-repo".to_owned(),
            path_str(&flow.review).to_owned(),
            "--age-identity".to_owned(),
            path_str(&s.identity).to_owned(),
            // The plan job verifies credsync's signatures with the public key only.
            "--snapshot-trusted-key".to_owned(),
            path_str(&s.trusted_key()).to_owned(),
            "plan".to_owned(),
            "--format".to_owned(),
            format.to_owned(),
        ]
    };
    let run = |format: &str| {
        let args = review_args(format);
        s.env
            .credsync(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let outputs = dir.join("github-output");
    let json = {
        let args = review_args("json");
        s.env.credsync_env(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[("GITHUB_OUTPUT", path_str(&outputs))],
        )
    };
    assert_eq!(json.code, 0, "{}", json.stderr);
    let outputs = std::fs::read_to_string(&outputs).unwrap();
    assert!(
        outputs.contains("has_changes=true\n") && outputs.contains("requests_pending=1\n"),
        "{outputs}"
    );
    support::validate_against_schema(&json.stdout);
    let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(plan["summary"]["has_changes"], true, "{}", json.stdout);
    let request = &plan["requests"][0];
    assert_eq!(request["state"], "pending", "{}", json.stdout);
    assert_eq!(request["file"], request_file.as_str());
    assert_eq!(request["author"], "Ada Lovelace <ada@example.com>");
    assert_eq!(request["changes"][0]["keys"]["changed"][0], "TOKEN");
    let text = run("text");
    let squeezed = text.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        squeezed.contains(&format!("to apply: restores app/api from {}", &v1[..12])),
        "{}",
        text.stdout
    );
    assert!(
        squeezed.contains("update app/api ~TOKEN (pinned)"),
        "{}",
        text.stdout
    );
    let markdown = run("markdown");
    assert!(
        markdown.stdout.contains("**Rollback requests**"),
        "{}",
        markdown.stdout
    );

    // A standby's clone, made before the merge (its pod started earlier).
    let standby = dir.join("standby");
    s.env.git(
        &dir,
        &["clone", "-q", path_str(&flow.remote), path_str(&standby)],
    );

    // 3. Merge it with git, as a forge's merge button does.
    flow.git(&["checkout", "-q", "main"]);
    flow.git(&["pull", "-q", "origin", "main"]);
    flow.git_as(
        "Grace",
        &[
            "merge",
            "-q",
            "--no-ff",
            "rollback-api",
            "-m",
            "Merge pull request #1",
        ],
    );
    flow.git(&["push", "-q", "origin", "main"]);
    let merge = flow.git(&["rev-parse", "HEAD"]).trim().to_owned();
    flow.token_becomes(&daemon, b"token-version-one").await;
    let pins = annotations(s).await;
    assert_eq!(pins.get(PINNED), Some(&v1), "{pins:?}");
    assert_eq!(
        pins.get(PINNED_BY_REQUEST),
        Some(&format!("{request_file}@{request_commit}")),
        "{pins:?}"
    );
    // The rollback commit, pushed, names the request's commit and author.
    flow.remote_log_shows("credsync: roll back 1 Secret(s)")
        .await;
    let log = flow.remote_log();
    assert!(log.contains("by Ada Lovelace <ada@example.com>"), "{log}");
    assert!(
        log.contains(&format!("Credsync-Request-Commit: {request_commit}")),
        "{log}"
    );
    flow.applied_becomes(&daemon, 1.0).await;

    // Applied once. The standby takes over while the remote is down: its
    // clone predates the merge, so it must release nothing; once the remote
    // answers, it must not apply the request again.
    let rollbacks = log.matches("credsync: roll back").count();
    drop(daemon);
    let away = dir.join("remote-away.git");
    std::fs::rename(&flow.remote, &away).unwrap();
    let daemon = flow.daemon(&standby);
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    let remote_up = |value: f64| {
        let (flow, daemon) = (&flow, &daemon);
        async move {
            eventually(Duration::from_secs(20), || async {
                metric(&flow.metrics(daemon), "credsync_snapshot_remote_up") == value
            })
            .await
        }
    };
    assert!(remote_up(0.0).await, "{}", s.env.daemon_log(&daemon));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pins = annotations(s).await;
    assert_eq!(
        pins.get(PINNED),
        Some(&v1),
        "nothing released from a stale clone: {pins:?}"
    );
    assert_eq!(token(s).await, b"token-version-one");
    std::fs::rename(&away, &flow.remote).unwrap();
    assert!(remote_up(1.0).await, "{}", s.env.daemon_log(&daemon));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = flow.metrics(&daemon);
    assert_eq!(
        metric(
            &metrics,
            "credsync_rollback_requests_total{outcome=\"applied\"}"
        ),
        0.0,
        "{}",
        s.env.daemon_log(&daemon)
    );
    assert_eq!(
        flow.remote_log().matches("credsync: roll back").count(),
        rollbacks
    );
    assert_eq!(
        token(s).await,
        b"token-version-one",
        "the pin holds through the new leader's reconciles"
    );
    let (code, plan) = http(daemon.port, "GET", "/plan?format=json", None);
    assert_eq!(code, 200, "{plan}");
    let plan = &plan[plan.find('{').unwrap()..];
    support::validate_against_schema(plan);
    let plan: serde_json::Value = serde_json::from_str(plan).unwrap();
    assert_eq!(plan["requests"][0]["state"], "applied", "{plan}");
    assert_eq!(
        plan["pinned"][0]["request"],
        format!("{request_file}@{request_commit}").as_str()
    );
    // A request's pin is lifted by removing the request, not by hand.
    let unpin = s.run(&["unpin", "app/api"]);
    assert_ne!(unpin.code, 0);
    assert!(
        unpin
            .stderr
            .contains("pinned by a reviewed rollback request"),
        "{}",
        unpin.stderr
    );
    assert_eq!(annotations(s).await.get(PINNED), Some(&v1));

    // 4. Requests that cannot be honoured (a tampered snapshot file, a
    // malformed file, an unknown revision, a namespace credsync does not
    // write, a Secret another request pins, two requests for one Secret):
    // each refused and reported, nothing applied; the loop goes on.
    flow.git(&["pull", "-q", "origin", "main"]);
    let file = flow.review.join("test/app/web.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    // One character of the ciphertext: the MAC no longer matches.
    let enc = "ENC[AES256_GCM,data:";
    let at = original.find(enc).unwrap() + enc.len();
    let flipped = if &original[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    std::fs::write(
        &file,
        format!("{}{flipped}{}", &original[..at], &original[at + 1..]),
    )
    .unwrap();
    flow.git_as("Mallory", &["commit", "-qam", "an innocent-looking edit"]);
    let tampered = flow.git(&["rev-parse", "HEAD"]).trim().to_owned();
    flow.git_as("Mallory", &["revert", "--no-edit", "HEAD"]);
    // Every kind of request the loop must refuse, each with the words its
    // refusal must say.
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let refusals = [
        (
            "tampered.yaml",
            format!("revision: {tampered}\nsecrets: [app/web]"),
            // A commit in main's history, but not one credsync signed.
            "not a snapshot commit credsync signed",
        ),
        (
            "broken.yaml",
            "revision: main\nsecrets: [app/web]".to_owned(),
            "not a full commit id",
        ),
        (
            "unknown.yaml",
            format!("revision: {unknown}\nsecrets: [app/old]"),
            "unknown revision",
        ),
        (
            "outside.yaml",
            format!("revision: {v1}\nsecrets: [kube-system/web]"),
            "outside the namespaces",
        ),
        (
            "again.yaml",
            format!("revision: {v1}\nsecrets: [app/api]"),
            "is pinned by request",
        ),
        (
            "dup-1.yaml",
            format!("revision: {v1}\nsecrets: [app/cache]"),
            "also named by test/.requests/dup-2.yaml",
        ),
        (
            "dup-2.yaml",
            format!("revision: {v1}\nsecrets: [app/cache]"),
            "also named by test/.requests/dup-1.yaml",
        ),
    ];
    for (file, body, _) in &refusals {
        std::fs::write(
            flow.review.join("test/.requests").join(file),
            format!("kind: RollbackRequest\n{body}\nreason: looks fine\n"),
        )
        .unwrap();
    }
    flow.git(&["add", "-A"]);
    flow.git_as("Mallory", &["commit", "-qm", "more rollbacks"]);
    flow.git(&["push", "-q", "origin", "main"]);
    let count = refusals.len() as f64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric(&flow.metrics(&daemon), "credsync_rollback_requests_refused") == count
        })
        .await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    // The loop went on: more polls, and still one refusal counted each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = flow.metrics(&daemon);
    assert_eq!(
        metric(
            &metrics,
            "credsync_rollback_requests_total{outcome=\"refused\"}"
        ),
        count
    );
    let log = s.env.daemon_log(&daemon);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rollback request refused"))
        .collect();
    assert_eq!(
        refused.len(),
        refusals.len(),
        "each refusal is logged once: {log}"
    );
    let (_, plan) = http(daemon.port, "GET", "/plan?format=text", None);
    for (file, _, words) in &refusals {
        assert!(
            refused
                .iter()
                .any(|l| l.contains(*file) && l.contains(words)),
            "{file}: {words}\n{log}"
        );
        assert!(
            plan.contains(&format!(
                "x request test/.requests/{file}  refused, nothing applied:"
            )),
            "{file}\n{plan}"
        );
    }
    assert!(
        refused
            .iter()
            .any(|l| l.contains("tampered.yaml") && l.contains(&tampered[..12])),
        "the forging commit is named: {log}"
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(s.env.kube().await, "app");
    let warnings: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RollbackRefused"))
        .filter_map(|e| e.note)
        .collect();
    for file in ["tampered.yaml", "broken.yaml"] {
        assert!(
            warnings.iter().any(|n| n.contains(file)),
            "a Warning Event on the Secret {file} names: {warnings:?}"
        );
    }
    assert_eq!(
        s.env.secret_data("app", "web").await.unwrap()["KEY"],
        b"web-value-two",
        "nothing of it applied"
    );
    assert!(!annotations_of(s, "web").await.contains_key(PINNED));

    // 5. Revert the merge: the loop unpins and the table's value returns.
    flow.git(&["pull", "-q", "origin", "main"]);
    for (file, _, _) in &refusals {
        flow.git(&["rm", "-q", &format!("test/.requests/{file}")]);
    }
    flow.git_as("Grace", &["commit", "-qm", "drop the refused requests"]);
    flow.git_as("Grace", &["revert", "--no-edit", "-m", "1", &merge]);
    flow.git(&["push", "-q", "origin", "main"]);
    flow.token_becomes(&daemon, b"token-version-two").await;
    let pins = annotations(s).await;
    assert!(
        !pins.contains_key(PINNED) && !pins.contains_key(PINNED_BY_REQUEST),
        "{pins:?}"
    );
    let metrics = flow.metrics(&daemon);
    assert_eq!(
        metric(
            &metrics,
            "credsync_rollback_requests_total{outcome=\"released\"}"
        ),
        1.0
    );
    // Reported after the unpins, so possibly just after the table's value is back.
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&flow.metrics(&daemon), "credsync_rollback_requests_refused") == 0.0
        })
        .await
    );
    s.env
        .assert_no_value_in(&flow.remote_log(), "the remote's commit messages");
    s.env.daemon_log(&daemon);
}

#[tokio::test]
async fn an_unreachable_remote_stops_only_the_requests() {
    let flow = Flow::start().await;
    let (s, dir) = (&flow.s, flow.dir());
    s.env.put("app/api/token", "token-before-outage");
    assert_eq!(flow.with_remote(&["sync"]).code, 0);
    let daemon = flow.daemon(&dir.join("loop"));
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    let up = |value: f64| {
        let flow = &flow;
        let daemon = &daemon;
        async move {
            eventually(Duration::from_secs(20), || async {
                metric(&flow.metrics(daemon), "credsync_snapshot_remote_up") == value
            })
            .await
        }
    };
    assert!(up(1.0).await);

    // The remote goes away: reported once, and the table still reaches the cluster.
    let moved = dir.join("remote-moved.git");
    std::fs::rename(&flow.remote, &moved).unwrap();
    assert!(up(0.0).await, "{}", s.env.daemon_log(&daemon));
    s.env.put("app/api/token", "token-during-outage");
    assert_eq!(http(daemon.port, "POST", "/sync", None).0, 202);
    flow.token_becomes(&daemon, b"token-during-outage").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = s.env.daemon_log(&daemon);
    assert_eq!(
        log.matches("the snapshot remote cannot be read").count(),
        1,
        "reported when it starts, not at every poll: {log}"
    );

    // Back: reported, and the snapshot made meanwhile is pushed.
    std::fs::rename(&moved, &flow.remote).unwrap();
    assert!(up(1.0).await, "{}", s.env.daemon_log(&daemon));
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.env
                .daemon_log(&daemon)
                .contains("the snapshot remote answers again")
        })
        .await
    );
    let pushed = s.env.git(&flow.remote, &["show", "main:test/app/api.yaml"]);
    assert!(
        pushed.contains("TOKEN=app/api/token@0000000000000000002"),
        "{pushed}"
    );
}

#[tokio::test]
async fn a_proposal_that_cannot_work_is_refused_before_anything_is_pushed() {
    let flow = Flow::start().await;
    let s = &flow.s;
    s.env.put("app/api/token", "token-version-one");
    assert_eq!(flow.with_remote(&["sync"]).code, 0);
    let v1 = s.head();
    // A revision on a branch the loop does not read.
    s.git(&["checkout", "-q", "-b", "side"]);
    s.git(&[
        "-c",
        "user.name=o",
        "-c",
        "user.email=o@o",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "elsewhere",
    ]);
    let side = s.head();
    s.git(&["checkout", "-q", "main"]);
    let branches = || s.env.git(&flow.remote, &["branch", "--list"]);
    let before = branches();

    let cases: [(Vec<&str>, &str, bool); 6] = [
        (
            vec!["rollback", &side, "--propose"],
            "that revision is not in main's history",
            true,
        ),
        (
            vec!["rollback", &v1, "--propose"],
            "--propose pushes a branch for review: give --snapshot-remote",
            false,
        ),
        (
            vec!["rollback", "no-such-rev", "--propose"],
            "unknown revision 'no-such-rev'",
            true,
        ),
        (
            vec!["rollback", &v1, "--propose", "--branch", "main"],
            "not a branch name a proposal can use",
            true,
        ),
        (
            vec!["rollback", &v1, "--propose", "--secret", "app/nothing"],
            "app/nothing",
            true,
        ),
        (
            vec!["rollback", &v1, "--propose", "--dry-run"],
            "cannot be used with",
            true,
        ),
    ];
    for (args, expected, with_remote) in cases {
        let run = if with_remote {
            flow.with_remote(&args)
        } else {
            s.run(&args)
        };
        assert_ne!(run.code, 0, "{args:?}");
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
        assert_eq!(branches(), before, "{args:?} pushed nothing");
    }

    // A branch that exists already is not overwritten.
    let first = flow.with_remote(&["rollback", &v1, "--propose", "--branch", "roll"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let pushed = s.env.git(&flow.remote, &["rev-parse", "roll"]);
    let again = flow.with_remote(&["rollback", &v1, "--propose", "--branch", "roll"]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains("creating branch roll") && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );
    assert_eq!(s.env.git(&flow.remote, &["rev-parse", "roll"]), pushed);

    // One the loop would refuse (the Secret is pinned by hand) is not pushed.
    assert_eq!(s.run(&["rollback", &v1, "--secret", "app/api"]).code, 0);
    let before = branches();
    let refused = flow.with_remote(&["rollback", &v1, "--propose", "--branch", "pinned"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains(
            "the loop would refuse this request, so it is not proposed: app/api is pinned by a `credsync rollback` run by hand"
        ),
        "{}",
        refused.stderr
    );
    assert_eq!(branches(), before);
    assert!(
        s.git(&["branch", "--list", "pinned"]).trim().is_empty(),
        "no local branch left"
    );
}

#[tokio::test]
async fn a_request_written_in_part_is_finished_at_the_next_poll() {
    let flow = Flow::start().await;
    let (s, dir) = (&flow.s, flow.dir());
    let v1 = flow.two_snapshots();
    // Every credsync from here on talks to the API server through the proxy.
    let faults = s.env.faults().await;
    let daemon = flow.daemon(&dir.join("loop"));
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    let proposed = flow.with_remote(&["rollback", &v1, "--propose", "--branch", "both"]);
    assert_eq!(proposed.code, 0, "{}", proposed.stderr);

    // The first of the two Secret writes fails; the request is not applied
    // (no rollback commit) until the next poll writes the other one too.
    faults.inject_json(
        serde_json::json!({"verb": "patch", "resource": "secrets", "status": 500, "times": 1}),
    );
    flow.clone_review();
    flow.git(&["fetch", "-q", "origin"]);
    flow.git_as(
        "Grace",
        &["merge", "-q", "--no-ff", "origin/both", "-m", "Merge both"],
    );
    flow.git(&["push", "-q", "origin", "main"]);
    let restored = || async {
        s.env.secret_data("app", "api").await.unwrap()["TOKEN"] == b"token-version-one"
            && s.env.secret_data("app", "web").await.unwrap()["KEY"] == b"web-value-one"
    };
    assert!(
        eventually(Duration::from_secs(30), restored).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    flow.remote_log_shows("credsync: roll back 2 Secret(s)")
        .await;
    let log = s.env.daemon_log(&daemon);
    assert!(
        log.contains("Secret of a rollback request not written; retried at the next poll"),
        "{log}"
    );
    assert_eq!(
        flow.remote_log().matches("credsync: roll back").count(),
        1,
        "one rollback commit, written once all of it was: {}",
        flow.remote_log()
    );
    flow.applied_becomes(&daemon, 1.0).await;
    for name in ["api", "web"] {
        assert_eq!(
            annotations_of(s, name).await.get(PINNED),
            Some(&v1),
            "{name}"
        );
    }
}

/// A commit message is not credsync's word: a pushed commit carrying the
/// trailers that mark a request applied does not stop the loop from
/// applying it, and a request file with a name outside `[a-z0-9-]+.yaml`
/// is refused without its name breaking a log line or the plan.
#[tokio::test]
async fn forged_trailers_and_hostile_file_names_change_nothing() {
    let flow = Flow::start().await;
    let s = &flow.s;
    let v1 = flow.two_snapshots();
    flow.clone_review();
    // A request merged while the loop is down, then a commit that claims it
    // was applied, in credsync's own words.
    let request =
        format!("kind: RollbackRequest\nrevision: {v1}\nsecrets: [app/api]\nreason: reviewed\n");
    std::fs::create_dir_all(flow.review.join("test/.requests")).unwrap();
    std::fs::write(flow.review.join("test/.requests/r1.yaml"), &request).unwrap();
    // A second request whose file name holds a newline and markdown.
    let hostile = "x\nCredsync-Request: [evil](https:__e)";
    let hostile_file = flow
        .review
        .join("test/.requests")
        .join(format!("{hostile}.yaml"));
    std::fs::write(&hostile_file, request.replace("app/api", "app/web")).unwrap();
    flow.git(&["add", "-A"]);
    flow.git_as("Ada", &["commit", "-qm", "roll back app/api"]);
    let request_commit = flow.git(&["rev-parse", "HEAD"]).trim().to_owned();
    let forged = format!(
        "credsync: roll back 1 Secret(s) in cluster test\n\nCredsync-Request: test/.requests/r1.yaml\nCredsync-Request-Commit: {request_commit}\n"
    );
    flow.git_as("Mallory", &["commit", "-q", "--allow-empty", "-m", &forged]);
    flow.git(&["push", "-q", "origin", "main"]);

    let daemon = flow.daemon(&flow.dir().join("loop"));
    flow.token_becomes(&daemon, b"token-version-one").await;
    flow.applied_becomes(&daemon, 1.0).await;
    let log = s.env.daemon_log(&daemon);
    assert!(
        log.lines().any(
            |l| l.contains("rollback request refused") && l.contains("x\\u{a}Credsync-Request")
        ),
        "the hostile name is refused, escaped on one line: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("Credsync-Request")),
        "no log line starts inside a file name: {log}"
    );
    let (_, plan) = http(daemon.port, "GET", "/plan?format=markdown", None);
    // Shown on its one line, as code (where markdown makes no link).
    assert!(
        plan.contains(
            "| `test/.requests/x\\u{a}Credsync-Request: [evil](https:__e).yaml` | **refused**"
        ),
        "{plan}"
    );
    assert!(
        !plan.lines().any(|l| l.starts_with("Credsync-Request")),
        "{plan}"
    );
    assert_eq!(
        s.env.secret_data("app", "web").await.unwrap()["KEY"],
        b"web-value-two",
        "nothing of the hostile request applied"
    );
    // The loop's own rollback commit is the only one that counts, and it
    // never carries the hostile name unescaped.
    let remote = flow.remote_log();
    assert!(
        remote.contains("(the git author: claimed, not verified)"),
        "{remote}"
    );
    assert!(!remote.contains("\nCredsync-Request: [evil]"), "{remote}");
}

/// An SQS message queued while the worker waits for the write lock (held
/// by the request follower's slow write) is not covered by the reconcile
/// that was waiting: it is deleted only after one that started after it
/// wrote everything, so it survives a crash in between.
#[tokio::test]
async fn an_sqs_message_that_arrives_while_a_reconcile_waits_for_the_lock_survives_a_crash() {
    let flow = Flow::start_in(&["app", "other"]).await;
    let s = &flow.s;
    let v1 = flow.two_snapshots();
    s.env.put("other/svc/key", "other-namespace-value");
    flow.clone_review();
    let url = s.env.create_queue("events").await;
    let faults = s.env.faults().await;
    let queue_args = ["--events-queue", url.as_str(), "--debounce", "100ms"];
    let loop_repo = flow.dir().join("loop");
    let mut daemon = flow.daemon_with(&loop_repo, &queue_args);
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );

    // The follower's write of app/api is slow (4 s, holding the write lock);
    // every write of app/web fails.
    faults.inject_json(serde_json::json!({"verb": "patch", "resource": "secrets", "namespace": "app", "name": "api", "delay_ms": 4000, "times": 1}));
    faults.inject_json(serde_json::json!({"verb": "patch", "resource": "secrets", "namespace": "app", "name": "web", "status": 503}));
    flow.git(&["pull", "-q", "origin", "main"]);
    let request =
        format!("kind: RollbackRequest\nrevision: {v1}\nsecrets: [app/api]\nreason: slow write\n");
    std::fs::create_dir_all(flow.review.join("test/.requests")).unwrap();
    std::fs::write(flow.review.join("test/.requests/slow.yaml"), request).unwrap();
    flow.git(&["add", "-A"]);
    flow.git_as("Ada", &["commit", "-qm", "roll back app/api"]);
    flow.git(&["push", "-q", "origin", "main"]);
    // Within the slow write: a reconcile of another namespace queues and
    // waits for the lock; then app/web changes and its event arrives.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = http(daemon.port, "POST", "/sync?namespace=other", None);
    assert!(status == 202 || status == 200, "{status} {body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.env.put("app/web/key", "web-value-three");
    let event = serde_json::json!({"eventSource": "aws:dynamodb", "dynamodb": {"Keys": {"name": {"S": "app/web/key"}}}});
    s.env.send_to_queue(&url, &event.to_string()).await;
    // The request is applied; the reconcile for app/web fails: the message
    // is left for the queue, not deleted by the reconcile that waited.
    flow.token_becomes(&daemon, b"token-version-one").await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            metric(
                &flow.metrics(&daemon),
                "credsync_queue_messages_total{outcome=\"retried\"}",
            ) >= 1.0
        })
        .await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    assert!(
        s.env.queued(&url).await >= 1,
        "the message is still queued: {}",
        s.env.daemon_log(&daemon)
    );
    // A crash; the writes work again after it.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGKILL) };
    let _ = daemon.child.wait();
    faults.clear_faults();
    let daemon = flow.daemon_with(&loop_repo, &queue_args);
    // Counted just after the delete: both, eventually.
    let handled = "credsync_queue_messages_total{outcome=\"handled\"}";
    assert!(
        eventually(Duration::from_secs(30), || async {
            s.env.queued(&url).await == 0 && metric(&flow.metrics(&daemon), handled) >= 1.0
        })
        .await,
        "the message comes back and is handled: {}",
        s.env.daemon_log(&daemon)
    );
    assert_eq!(
        s.env.secret_data("app", "web").await.unwrap()["KEY"],
        b"web-value-three"
    );
}
