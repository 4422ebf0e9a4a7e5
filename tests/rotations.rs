//! Rotations that cannot take production down, on a real API server with
//! kube-controller-manager's workload controllers and a played kubelet
//! (Pods turn Ready unless their Secret holds a value the test marked
//! bad): waves, a failed wave reverted to the last good content, later
//! waves never restarted, and a later good version rolled through every
//! wave.

mod support;

use std::time::Duration;

use support::snap::Snap;
use support::workloads::Kind;
use support::{Daemon, StandIns, eventually, http, metric, reconciled};

const NS: &str = "app";
/// A Deployment's progressDeadlineSeconds in these tests.
const DEADLINE_S: i64 = 10;

fn metrics(daemon: &Daemon) -> String {
    http(daemon.port, "GET", "/metrics", None).1
}

async fn wait_available(env: &StandIns, kind: Kind, name: &str) {
    assert!(
        env.eventually_available(kind, NS, name, Duration::from_secs(60))
            .await,
        "{name} never became available: {:?}",
        env.workload(kind, NS, name).await
    );
}

/// A password rotated to a value that breaks wave 1: wave 1 fails its
/// deadline, wave 2 is never restarted, the Secret holds the last good
/// password again (pinned, the bad version held out), wave 1 rolls back
/// to it, and Events, metrics, the snapshot and the plan say why. A later
/// good version rolls through both waves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rotation_over_the_stream_is_reverted_and_a_good_one_rolls_through_every_wave() {
    let s = Snap::start_with_workloads(&[NS]).await;
    let env = &s.env;
    env.put("app/db/password", "rotation-good-one");
    env.enable_stream().await;
    let workloads = [(Kind::Deployment, "web", 1), (Kind::Deployment, "api", 2)];
    let flags = vec!["--rollouts", "--debounce", "200ms", "--insecure-no-auth"];
    let (daemons, good) = arrange(&s, &[], &workloads, &[flags]).await;
    let daemon = daemons.first().expect("one daemon");
    let api_before = env.workload(Kind::Deployment, NS, "api").await;

    // The bad rotation.
    env.kubelet.as_ref().unwrap().mark_bad(b"rotation-bad-two");
    env.seed("rotation-bad-two");
    env.put("app/db/password", "rotation-bad-two");
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"rotation-bad-two",
            Duration::from_secs(20)
        )
        .await,
        "{}",
        env.daemon_log(daemon)
    );
    let failed = eventually(Duration::from_secs(40), || async {
        env.workload(Kind::Deployment, NS, "web")
            .await
            .progressing
            .as_deref()
            == Some("ProgressDeadlineExceeded")
            || metric(
                &metrics(daemon),
                "credsync_rotation_reverts_total{outcome=\"reverted\"}",
            ) >= 1.0
    })
    .await;
    assert!(failed, "{}", env.daemon_log(daemon));
    // Reverted: the last good password, pinned, the bad version held out.
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"rotation-good-one",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        env.daemon_log(daemon)
    );
    let annotations = env.secret_annotations(NS, "db").await;
    assert_eq!(annotations["credsync.io/pinned-by"], "rollout-failure");
    assert!(
        annotations["credsync.io/held-out"].starts_with("app/db/password@"),
        "{annotations:?}"
    );
    assert_eq!(annotations["credsync.io/fingerprint"], good);
    // Wave 1 rolls back to it; wave 2 was never restarted.
    wait_available(env, Kind::Deployment, "web").await;
    let recorded = eventually(Duration::from_secs(20), || async {
        env.workload(Kind::Deployment, NS, "web")
            .await
            .rolled_out_for
            == Some(format!("app/db@{good}"))
    })
    .await;
    assert!(recorded, "{}", env.daemon_log(daemon));
    let api_after = env.workload(Kind::Deployment, NS, "api").await;
    assert_eq!(
        api_after.revision, api_before.revision,
        "wave 2 never restarted"
    );
    assert_eq!(api_after.restarted_for, api_before.restarted_for);

    // What says why: metrics, Events, the snapshot commit, the plan.
    let text = metrics(daemon);
    assert_eq!(
        metric(
            &text,
            "credsync_rotation_reverts_total{outcome=\"reverted\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "credsync_rollouts_total{outcome=\"failed\"}"),
        1.0,
        "{text}"
    );
    let web_events = env.events_about(NS, "Deployment", "web").await;
    assert!(
        web_events.iter().any(|(t, r, note)| t == "Warning"
            && r == "RolloutFailed"
            && note.contains("ProgressDeadlineExceeded")
            && note.contains("reverted")),
        "{web_events:?}"
    );
    assert!(
        web_events
            .iter()
            .any(|(_, r, note)| r == "Restarted" && note.contains("app/db")),
        "{web_events:?}"
    );
    let secret_events = env.events_about(NS, "Secret", "db").await;
    assert!(
        secret_events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "RolloutFailed"),
        "{secret_events:?}"
    );
    let log = env.git(&s.repo, &["log", "--format=%B", "-n", "5"]);
    assert!(log.contains("revert a failed rotation"), "{log}");
    assert!(log.contains("failed in wave 1"), "{log}");
    let (code, plan) = http(daemon.port, "GET", "/plan?format=json", None);
    assert_eq!(code, 200, "{plan}");
    let plan = &plan[plan.find('{').unwrap()..];
    support::validate_against_schema(plan);
    let plan: serde_json::Value = serde_json::from_str(plan).unwrap();
    assert_eq!(plan["pinned"][0]["name"], "db", "{plan}");
    assert!(
        plan["pinned"][0]["held_out"]
            .as_str()
            .is_some_and(|h| h.starts_with("app/db/password@")),
        "the plan says why it is pinned: {plan}"
    );

    // A later good version: the pin lifts, both waves roll, wave 1 first.
    env.put("app/db/password", "rotation-good-three");
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"rotation-good-three",
            Duration::from_secs(20)
        )
        .await,
        "{}",
        env.daemon_log(daemon)
    );
    let three = eventually(Duration::from_secs(60), || async {
        let api = env.workload(Kind::Deployment, NS, "api").await;
        api.available
            && api
                .rolled_out_for
                .is_some_and(|r| r != format!("app/db@{good}"))
    })
    .await;
    assert!(three, "{}", env.daemon_log(daemon));
    let annotations = env.secret_annotations(NS, "db").await;
    assert!(
        !annotations.contains_key("credsync.io/pinned"),
        "{annotations:?}"
    );
    assert!(!annotations.contains_key("credsync.io/held-out"));
    let web = env.workload(Kind::Deployment, NS, "web").await;
    assert_eq!(
        web.rolled_out_for,
        env.workload(Kind::Deployment, NS, "api")
            .await
            .rolled_out_for
    );
    // Every line it logged is checked for the values seeded.
    env.daemon_log(daemon);
}

/// The same on a StatefulSet (wave 1) and a DaemonSet (wave 2), neither of
/// which has a deadline of its own (`--rollout-timeout` is theirs), fed by
/// a Secrets Manager change announced over SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_secrets_manager_rotation_over_sqs_is_reverted_on_a_stateful_set_before_the_daemon_set()
 {
    let s = Snap::start_with_workloads(&[NS]).await;
    let env = &s.env;
    env.sm_create(
        "app/db",
        r#"{"PASSWORD":"sm-rotation-good-one"}"#,
        &["sm-rotation-good-one"],
    )
    .await;
    let url = env.create_queue("rotations").await;
    let workloads = [
        (Kind::StatefulSet, "queue", 1),
        (Kind::DaemonSet, "agent", 2),
    ];
    let flags = vec![
        "--source",
        "secretsmanager",
        "--events-queue",
        &url,
        "--rollouts",
        "--rollout-timeout",
        "8s",
        "--insecure-no-auth",
    ];
    let (daemons, good) = arrange(&s, &["--source", "secretsmanager"], &workloads, &[flags]).await;
    let daemon = daemons.first().expect("one daemon");
    let agent_before = env.workload(Kind::DaemonSet, NS, "agent").await;

    env.kubelet
        .as_ref()
        .unwrap()
        .mark_bad(b"sm-rotation-bad-two");
    env.seed("sm-rotation-bad-two");
    env.sm_put("app/db", r#"{"PASSWORD":"sm-rotation-bad-two"}"#)
        .await;
    let event = support::cloudtrail_event("PutSecretValue", "app/db");
    env.send_to_queue(&url, &event).await;
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"sm-rotation-bad-two",
            Duration::from_secs(20)
        )
        .await,
        "{}",
        env.daemon_log(daemon)
    );
    // Past --rollout-timeout the StatefulSet has failed: reverted.
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"sm-rotation-good-one",
            Duration::from_secs(30)
        )
        .await,
        "{}",
        env.daemon_log(daemon)
    );
    let annotations = env.secret_annotations(NS, "db").await;
    assert_eq!(annotations["credsync.io/pinned-by"], "rollout-failure");
    wait_available(env, Kind::StatefulSet, "queue").await;
    let agent_after = env.workload(Kind::DaemonSet, NS, "agent").await;
    assert_eq!(
        agent_after.generation, agent_before.generation,
        "wave 2 never restarted"
    );
    let events = env.events_about(NS, "StatefulSet", "queue").await;
    assert!(
        events.iter().any(|(t, r, note)| t == "Warning"
            && r == "RolloutFailed"
            && note.contains("--rollout-timeout")),
        "{events:?}"
    );

    // A later good version rolls through both.
    env.sm_put("app/db", r#"{"PASSWORD":"sm-rotation-good-three"}"#)
        .await;
    env.send_to_queue(&url, &event).await;
    let rolled = eventually(Duration::from_secs(60), || async {
        let agent = env.workload(Kind::DaemonSet, NS, "agent").await;
        agent.available
            && agent
                .rolled_out_for
                .is_some_and(|r| r != format!("app/db@{good}"))
    })
    .await;
    assert!(rolled, "{}", env.daemon_log(daemon));
    assert_eq!(
        env.secret_data(NS, "db").await.unwrap()["PASSWORD"],
        b"sm-rotation-good-three"
    );
}

/// `db` already holds its first content (synced with `sync_flags`); creates
/// `workloads` (kind, name, wave) reading it, waits until each is
/// available, starts one `credsync run` per flag set, and waits until one
/// reconciled and recorded what every workload runs. Returns the daemons
/// and the fingerprint of that first content.
async fn arrange(
    s: &Snap,
    sync_flags: &[&str],
    workloads: &[(Kind, &str, u32)],
    daemons: &[Vec<&str>],
) -> (Vec<Daemon>, String) {
    let env = &s.env;
    let mut sync = sync_flags.to_vec();
    sync.push("sync");
    assert_eq!(s.run(&sync).code, 0);
    for (kind, name, wave) in workloads {
        env.create_workload(*kind, NS, name, "db", Some(*wave), DEADLINE_S)
            .await;
    }
    for (kind, name, _) in workloads {
        wait_available(env, *kind, name).await;
    }
    let daemons: Vec<Daemon> = daemons
        .iter()
        .map(|flags| env.daemon(&s.args(flags), &[]))
        .collect();
    let logs = || {
        daemons
            .iter()
            .map(|d| env.daemon_log(d))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let reconciled = eventually(Duration::from_secs(60), || async {
        daemons.iter().any(|d| {
            metric(
                &metrics(d),
                "credsync_reconciles_total{outcome=\"success\"}",
            ) >= 1.0
        })
    })
    .await;
    assert!(reconciled, "{}", logs());
    let good = env.secret_annotations(NS, "db").await["credsync.io/fingerprint"].clone();
    // The first reconcile records what each workload runs (restarting nothing).
    let recorded = eventually(Duration::from_secs(10), || async {
        for (kind, name, _) in workloads {
            let rolled_out = env.workload(*kind, NS, name).await.rolled_out_for;
            if rolled_out != Some(format!("app/db@{good}")) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(recorded, "{}", logs());
    (daemons, good)
}

/// web (wave 1) and api (wave 2) on `db`, and a `credsync run` per identity
/// (more than one: leader election).
async fn two_waves(s: &Snap, identities: &[&'static str]) -> (Vec<Daemon>, String) {
    s.env.put("app/db/password", "crash-good-one");
    let flags: Vec<Vec<&str>> = identities
        .iter()
        .map(|identity| daemon_flags(identity, identities.len() > 1))
        .collect();
    let workloads = [(Kind::Deployment, "web", 1), (Kind::Deployment, "api", 2)];
    arrange(s, &[], &workloads, &flags).await
}

fn daemon_flags(identity: &'static str, elect: bool) -> Vec<&'static str> {
    let mut flags = vec![
        "--rollouts",
        "--no-stream",
        "--interval",
        "1s",
        "--insecure-no-auth",
    ];
    if elect {
        flags.extend([
            "--leader-election",
            "--lease-duration",
            "3s",
            "--lease-namespace",
            "default",
            "--identity",
            identity,
        ]);
    }
    flags
}

fn sigkill(daemon: &mut Daemon) {
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGKILL) };
    let _ = daemon.child.wait();
}

/// SIGKILL while wave 1 is still rolling: the next process reads where
/// the rotation stands from the cluster, waits for wave 1, then restarts
/// wave 2, each workload exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_rollout_resumes_it_and_restarts_nothing_twice() {
    let s = Snap::start_with_workloads(&[NS]).await;
    let env = &s.env;
    let (mut daemons, good) = two_waves(&s, &["one"]).await;
    let (web, api) = (
        env.workload(Kind::Deployment, NS, "web").await,
        env.workload(Kind::Deployment, NS, "api").await,
    );
    let kubelet = env.kubelet.as_ref().unwrap();
    kubelet.hold();
    env.put("app/db/password", "crash-good-two");
    let restarted = eventually(Duration::from_secs(20), || async {
        env.workload(Kind::Deployment, NS, "web").await.revision == web.revision + 1
    })
    .await;
    assert!(restarted, "{}", env.daemon_log(&daemons[0]));
    sigkill(&mut daemons[0]);
    let second = env.daemon(&s.args(&daemon_flags("two", false)), &[]);
    assert!(reconciled(second.port).await, "{}", env.daemon_log(&second));
    // Still rolling: wave 2 waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.workload(Kind::Deployment, NS, "api").await.revision,
        api.revision
    );
    kubelet.release();
    let done = eventually(Duration::from_secs(30), || async {
        let api_now = env.workload(Kind::Deployment, NS, "api").await;
        api_now.available && api_now.rolled_out_for.is_some_and(|r| !r.contains(&good))
    })
    .await;
    assert!(done, "{}", env.daemon_log(&second));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.workload(Kind::Deployment, NS, "web").await.revision,
        web.revision + 1,
        "web restarted once: {}\n---\n{}",
        env.daemon_log(&daemons[0]),
        env.daemon_log(&second)
    );
    assert_eq!(
        env.workload(Kind::Deployment, NS, "api").await.revision,
        api.revision + 1,
        "api restarted once"
    );
}

/// The leader dies (SIGKILL) while a bad wave 1 is rolling: the other
/// replica takes the Lease over, sees the wave fail, reverts, and never
/// restarts wave 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_during_a_bad_rollout_still_reverts_it() {
    let s = Snap::start_with_workloads(&[NS]).await;
    let env = &s.env;
    let (mut daemons, _good) = two_waves(&s, &["replica-a", "replica-b"]).await;
    let (web, api) = (
        env.workload(Kind::Deployment, NS, "web").await,
        env.workload(Kind::Deployment, NS, "api").await,
    );
    env.kubelet.as_ref().unwrap().mark_bad(b"crash-bad-two");
    env.seed("crash-bad-two");
    env.put("app/db/password", "crash-bad-two");
    let restarted = eventually(Duration::from_secs(20), || async {
        env.workload(Kind::Deployment, NS, "web").await.revision == web.revision + 1
    })
    .await;
    assert!(restarted);
    let leader = daemons
        .iter()
        .position(|d| metric(&metrics(d), "credsync_leader") == 1.0)
        .expect("a leader");
    sigkill(&mut daemons[leader]);
    let other = &daemons[1 - leader];
    assert!(
        env.eventually_value(
            NS,
            "db",
            "PASSWORD",
            b"crash-good-one",
            Duration::from_secs(40)
        )
        .await,
        "{}",
        env.daemon_log(other)
    );
    wait_available(env, Kind::Deployment, "web").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.workload(Kind::Deployment, NS, "web").await.revision,
        web.revision + 2,
        "restarted for the bad content, then once for the revert"
    );
    assert_eq!(
        env.workload(Kind::Deployment, NS, "api").await.revision,
        api.revision
    );
    assert_eq!(
        metric(
            &metrics(other),
            "credsync_rotation_reverts_total{outcome=\"reverted\"}"
        ),
        1.0
    );
}

/// A restart the API server refuses (RBAC taken away, a webhook) is owed,
/// not forgotten: the next reconcile makes it up once the refusal ends,
/// and so does a new process after a SIGKILL that came before it could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restart_is_made_up_by_the_next_reconcile_and_after_a_crash() {
    let s = Snap::start_with_workloads(&[NS]).await;
    let env = &s.env;
    let (mut daemons, _) = {
        let faults = env.faults().await;
        faults.clear_faults();
        two_waves(&s, &["one"]).await
    };
    let faults = env.faults().await;
    let revision =
        |name: &'static str| async move { env.workload(Kind::Deployment, NS, name).await.revision };
    let web = revision("web").await;
    let refuse = serde_json::json!({"verb": "patch", "resource": "deployments", "name": "web", "status": 403});

    // Refused: the Secret is written, the restart is not.
    faults.inject_json(refuse.clone());
    env.put("app/db/password", "owed-two");
    assert!(
        env.eventually_value(NS, "db", "PASSWORD", b"owed-two", Duration::from_secs(20))
            .await
    );
    let failures = eventually(Duration::from_secs(20), || async {
        metric(
            &metrics(&daemons[0]),
            "credsync_workload_restart_failures_total{kind=\"deployment\"}",
        ) >= 2.0
    })
    .await;
    assert!(
        failures,
        "refused, and refused again at the next reconcile: {}",
        env.daemon_log(&daemons[0])
    );
    assert_eq!(revision("web").await, web);
    // The refusal ends: the next reconcile restarts it, once.
    faults.clear_faults();
    let made_up = eventually(Duration::from_secs(20), || async {
        revision("web").await == web + 1
    })
    .await;
    assert!(made_up, "{}", env.daemon_log(&daemons[0]));

    // Refused again, then the process dies before the refusal ends.
    faults.inject_json(refuse);
    env.put("app/db/password", "owed-three");
    let refused = eventually(Duration::from_secs(20), || async {
        metric(
            &metrics(&daemons[0]),
            "credsync_workload_restart_failures_total{kind=\"deployment\"}",
        ) >= 3.0
    })
    .await;
    assert!(refused, "{}", env.daemon_log(&daemons[0]));
    sigkill(&mut daemons[0]);
    faults.clear_faults();
    let second = env.daemon(&s.args(&daemon_flags("two", false)), &[]);
    let made_up = eventually(Duration::from_secs(30), || async {
        revision("web").await == web + 2
    })
    .await;
    assert!(made_up, "{}", env.daemon_log(&second));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(revision("web").await, web + 2, "made up once, not twice");
}
