//! Rollback requests under attack and under faults, on the real API server
//! with a bare git remote: a request pushed in part is finished at the next
//! poll, forged trailers and hostile file names change nothing, and an SQS
//! message queued while the follower holds the write lock survives a crash.

mod support;

use std::time::Duration;

use support::daemon::{eventually, http, metric, reconciled};
use support::flow::*;

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
