//! Rollbacks by pull request, end to end on the real API server with a bare
//! git remote and the real git CLI: `rollback --propose` pushes a request
//! and prints its plan, `plan` on the branch shows it, a merge makes the
//! running loop restore and pin the Secret (a commit naming the request's
//! author), a revert unpins it and the table's value returns, and tampered
//! or malformed requests are refused and reported.

mod support;

use std::time::Duration;

use support::daemon::{eventually, http, metric, reconciled};
use support::flow::*;
use support::path_str;

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
