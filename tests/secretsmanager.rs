//! AWS Secrets Manager as a second source and SQS events, on moto (server
//! mode: secretsmanager, sqs, sns) and a real API server.

mod support;

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::primitives::Blob;
use serde_json::json;
use support::{
    Daemon, REGION, StandIns, cloudtrail_event, eventually, http, metric, ready, reconciled,
};

/// Messages credsync could not read as an event it knows.
const UNRECOGNIZED: &str = "credsync_queue_messages_total{outcome=\"unrecognized\"}";

/// Waits until team-a/app's TOKEN holds `value` and the queue at `url` is
/// empty: the message that announced it was handled, then deleted.
async fn handled_and_deleted(env: &StandIns, daemon: &Daemon, url: &str, value: &str) {
    let within = Duration::from_secs(30);
    let arrived = env
        .eventually_value("team-a", "app", "TOKEN", value, within)
        .await;
    assert!(arrived, "{}", env.daemon_log(daemon));
    let drained = env.eventually_drained(url, Duration::from_secs(20)).await;
    assert!(drained, "{}", env.daemon_log(daemon));
}

#[tokio::test]
async fn credstash_items_and_secrets_manager_secrets_sync_in_one_plan() {
    let env = StandIns::start(&["team-a", "team-b", "team-c"]).await;
    env.put("team-a/app/PASSWORD", "credstash-app-password");
    env.put("team-b/web/URL", "credstash-web-url");
    env.sm_create(
        "team-a/app",
        r#"{"API_TOKEN":"sm-app-token","PASSWORD":"sm-claims-the-same-key"}"#,
        &["sm-app-token", "sm-claims-the-same-key"],
    )
    .await;
    env.sm_create(
        "team-b/db",
        r#"{"user":"sm-db-user","port":5432}"#,
        &["sm-db-user"],
    )
    .await;
    env.sm_create("team-b/cache", "sm-cache-not-json", &["sm-cache-not-json"])
        .await;
    env.sm_create("loose-name", "sm-loose-value", &["sm-loose-value"])
        .await;
    let binary = vec![0u8, 1, 2, 255, 10, 0];
    env.secrets_manager()
        .await
        .create_secret()
        .name("team-b/tls/KEY")
        .secret_binary(Blob::new(binary.clone()))
        .send()
        .await
        .unwrap();
    let both = ["--source", "credstash", "--source", "secretsmanager"];

    let plan = env.credsync(&[&both[..], &["plan"]].concat());
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    let squeezed = plan.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "+ create team-a/app +API_TOKEN",
        "+ create team-b/db +USER",
        "+ create team-b/tls +KEY",
        "+ create team-b/web +URL",
        "! conflict team-a/app key PASSWORD claimed by arn:",
        "member 'port' is not a string",
        "team-b/cache the value is not a JSON object",
        "loose-name name has 1 segment(s)",
    ] {
        assert!(squeezed.contains(expected), "{expected}:\n{}", plan.stdout);
    }
    assert!(
        plan.stdout
            .contains("team-a/app/PASSWORD@0000000000000000001"),
        "{}",
        plan.stdout
    );

    let run = env.credsync(&[&both[..], &["sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let app = env.secret_data("team-a", "app").await.unwrap();
    assert_eq!(app["API_TOKEN"], b"sm-app-token");
    assert!(!app.contains_key("PASSWORD"), "a conflict is not applied");
    assert_eq!(
        env.secret_data("team-b", "db").await.unwrap()["USER"],
        b"sm-db-user"
    );
    assert_eq!(
        env.secret_data("team-b", "tls").await.unwrap()["KEY"],
        binary
    );
    assert_eq!(
        env.secret_data("team-b", "web").await.unwrap()["URL"],
        b"credstash-web-url"
    );

    // Scheduled for deletion: absent, so the Secret credsync created goes.
    env.secrets_manager()
        .await
        .delete_secret()
        .secret_id("team-b/db")
        .send()
        .await
        .unwrap();
    let run = env.credsync(&[&both[..], &["sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("- delete  team-b/db"), "{}", run.stdout);
    assert!(env.secret("team-b", "db").await.is_none());

    // Secrets Manager alone, kiss names, in a namespace of its own: the
    // table is not read at all (the table's team-c item does not appear).
    env.put("team-c/table/KEY", "credstash-team-c-value");
    env.sm_create(
        "k8s-secret_team-c_kiss",
        r#"{"TOKEN":"sm-kiss-token"}"#,
        &["sm-kiss-token"],
    )
    .await;
    let kiss = env.credsync(&[
        "--source",
        "secretsmanager",
        "--sm-names",
        "kiss",
        "--namespace-include",
        "team-c",
        "sync",
    ]);
    assert_eq!(kiss.code, 0, "{}\n{}", kiss.stdout, kiss.stderr);
    assert_eq!(
        env.secret_data("team-c", "kiss").await.unwrap()["TOKEN"],
        b"sm-kiss-token"
    );
    assert!(
        env.secret("team-c", "table").await.is_none(),
        "{}",
        kiss.stdout
    );
}

/// A queue subscribed to `topic`, with a short visibility timeout.
async fn subscribed_queue(env: &StandIns, topic: &str, name: &str) -> String {
    let sqs = aws_sdk_sqs::Client::new(&env.sdk_config(REGION).await);
    let url = env.create_queue(name).await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let sns = aws_sdk_sns::Client::new(&env.sdk_config(REGION).await);
    sns.subscribe()
        .topic_arn(topic)
        .protocol("sqs")
        .endpoint(arn)
        .send()
        .await
        .unwrap();
    url
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn three_processes_on_three_queues_fed_by_one_topic_converge() {
    let env = StandIns::start(&["team-1", "team-2", "team-3"]).await;
    let sns = aws_sdk_sns::Client::new(&env.sdk_config(REGION).await);
    let topic = sns
        .create_topic()
        .name("credsync-events")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let mut daemons = Vec::new();
    let mut queues = Vec::new();
    for i in 1..=3 {
        env.sm_create(
            &format!("team-{i}/app"),
            r#"{"TOKEN":"queue-token-initial"}"#,
            &[],
        )
        .await;
        let url = subscribed_queue(&env, &topic, &format!("cluster-{i}")).await;
        let namespace = format!("team-{i}");
        let daemon = env.daemon(
            &[
                "--source",
                "secretsmanager",
                "--events-queue",
                &url,
                "--namespace-include",
                &namespace,
            ],
            &[],
        );
        assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
        daemons.push(daemon);
        queues.push(url);
    }
    // Something no rule should send: logged by id, counted, deleted.
    sns.publish()
        .topic_arn(&topic)
        .message("{\"hello\":\"world\"}")
        .send()
        .await
        .unwrap();

    let mut latencies = Vec::new();
    for change in 0..20 {
        let i = change % 3 + 1;
        let (secret, value) = (
            format!("team-{i}/app"),
            format!("queue-token-change-{change}"),
        );
        env.seed(&value);
        let started = Instant::now();
        env.sm_put(&secret, &json!({ "TOKEN": value }).to_string())
            .await;
        sns.publish()
            .topic_arn(&topic)
            .message(cloudtrail_event("PutSecretValue", &secret))
            .send()
            .await
            .unwrap();
        let arrived = env
            .eventually_value(
                &format!("team-{i}"),
                "app",
                "TOKEN",
                &value,
                Duration::from_secs(30),
            )
            .await;
        assert!(
            arrived,
            "change {change}: {}",
            env.daemon_log(&daemons[i - 1])
        );
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "PutSecretValue -> Secret over SNS -> SQS, 20 changes, debounce 1 s: p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    // Every process handled every message (its own and the others'), and
    // all three queues drain.
    for (daemon, url) in daemons.iter().zip(&queues) {
        let drained = env.eventually_drained(url, Duration::from_secs(20)).await;
        let log = env.daemon_log(daemon);
        assert!(drained, "{url}: {log}");
        let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
        assert_eq!(metric(&metrics, UNRECOGNIZED), 1.0, "{metrics}");
        assert!(
            metric(
                &metrics,
                "credsync_queue_messages_total{outcome=\"handled\"}"
            ) >= 20.0,
            "{metrics}"
        );
        assert!(log.contains("a message of no known shape"), "{log}");
    }
}

#[tokio::test]
async fn a_failed_reconcile_leaves_its_message_and_a_missing_queue_is_reported() {
    let env = StandIns::start(&["team-a"]).await;
    let sns = aws_sdk_sns::Client::new(&env.sdk_config(REGION).await);
    let topic = sns
        .create_topic()
        .name("events")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let url = subscribed_queue(&env, &topic, "cluster").await;
    env.sm_create(
        "team-a/app",
        r#"{"TOKEN":"retry-token-one"}"#,
        &["retry-token-one"],
    )
    .await;
    let missing = format!("{}/000000000000/no-such-queue", env.aws_endpoint);
    let faults = env.faults().await;
    let daemon = env.daemon(
        &[
            "--source",
            "secretsmanager",
            "--events-queue",
            &url,
            "--events-queue",
            &missing,
        ],
        &[],
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));

    // Writes refused: the reconcile does not finish, the message stays.
    faults.inject_json(json!({"verb": "patch", "resource": "secrets", "status": 503}));
    env.seed("retry-token-two");
    env.sm_put("team-a/app", r#"{"TOKEN":"retry-token-two"}"#)
        .await;
    sns.publish()
        .topic_arn(&topic)
        .message(cloudtrail_event("PutSecretValue", "team-a/app"))
        .send()
        .await
        .unwrap();
    let retried = eventually(Duration::from_secs(20), || async {
        let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
        metric(
            &metrics,
            "credsync_queue_messages_total{outcome=\"retried\"}",
        ) >= 1.0
    })
    .await;
    assert!(retried, "{}", env.daemon_log(&daemon));
    assert!(env.queued(&url).await >= 1, "the message was not deleted");

    // Once writes go through, the message comes back, is handled and deleted.
    faults.clear_faults();
    handled_and_deleted(&env, &daemon, &url, "retry-token-two").await;

    // The missing queue: counted and logged; the daemon stays ready.
    let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
    assert!(
        metric(&metrics, "credsync_queue_receive_failures_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(http(daemon.port, "GET", "/readyz", None).0, 200);
    let log = env.daemon_log(&daemon);
    assert!(
        log.contains("cannot receive from the events queue") && log.contains("no-such-queue"),
        "{log}"
    );
}

#[tokio::test]
async fn a_restart_fetches_only_the_secrets_that_changed() {
    let env = StandIns::start(&["team-a"]).await;
    for i in 0..5 {
        env.sm_create(
            &format!("team-a/app-{i}"),
            &format!(r#"{{"TOKEN":"warm-token-{i}"}}"#),
            &[],
        )
        .await;
    }
    let (recipient, identity) = env.age_identity("reader");
    let repo = env.dir.path().join("snapshots");
    let args = [
        "--source",
        "secretsmanager",
        "--snapshot-repo",
        repo.to_str().unwrap(),
        "--age-recipient",
        &recipient,
        "--age-identity",
        identity.to_str().unwrap(),
        "--no-drift-repair",
    ];
    let fetched = |port: u16| {
        let (_, metrics) = http(port, "GET", "/metrics", None);
        metric(
            &metrics,
            "credsync_secretsmanager_requests_total{operation=\"BatchGetSecretValue\"}",
        )
    };
    let first = env.daemon(&args, &[]);
    assert!(ready(first.port).await, "{}", env.daemon_log(&first));
    assert!(reconciled(first.port).await, "{}", env.daemon_log(&first));
    assert_eq!(fetched(first.port), 1.0, "five secrets, one batch");
    drop(first);
    let warm = env.daemon(&args, &[]);
    assert!(ready(warm.port).await, "{}", env.daemon_log(&warm));
    assert!(reconciled(warm.port).await, "{}", env.daemon_log(&warm));
    assert_eq!(fetched(warm.port), 0.0, "{}", env.daemon_log(&warm));
    drop(warm);
    // One changed while it was down: one fetch, of that one.
    env.seed("warm-token-changed");
    env.sm_put("team-a/app-3", r#"{"TOKEN":"warm-token-changed"}"#)
        .await;
    let third = env.daemon(&args, &[]);
    assert!(ready(third.port).await, "{}", env.daemon_log(&third));
    assert!(reconciled(third.port).await, "{}", env.daemon_log(&third));
    assert_eq!(fetched(third.port), 1.0);
    assert_eq!(
        env.secret_data("team-a", "app-3").await.unwrap()["TOKEN"],
        b"warm-token-changed"
    );
    // The snapshot records each key's source as the secret's ARN and VersionId.
    let show = env.credsync(&["--snapshot-repo", repo.to_str().unwrap(), "show", "HEAD"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    assert!(
        show.stdout.contains(":secretsmanager:us-east-1:") && show.stdout.contains("app-3"),
        "{}",
        show.stdout
    );
}

#[tokio::test]
async fn a_stream_record_on_the_queue_reconciles_only_its_name() {
    let env = StandIns::start(&["team-a"]).await;
    let url = env.create_queue("pipes").await;
    env.put("team-a/app/TOKEN", "pipes-token-one");
    env.put("team-a/other/TOKEN", "pipes-other-token");
    // The same Secret also gets a key from Secrets Manager: a targeted
    // reconcile of the table's name must keep it.
    env.sm_create(
        "team-a/app",
        r#"{"API_KEY":"pipes-sm-api-key"}"#,
        &["pipes-sm-api-key"],
    )
    .await;
    let daemon = env.daemon(
        &[
            "--source",
            "credstash,secretsmanager",
            "--no-stream",
            "--events-queue",
            &url,
        ],
        &[],
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let calls = |operation: &str| {
        let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
        metric(
            &metrics,
            &format!("credsync_dynamodb_requests_total{{operation=\"{operation}\"}}"),
        )
    };
    let scans = calls("Scan");
    env.put("team-a/app/TOKEN", "pipes-token-two");
    // What an EventBridge Pipe from the table's stream delivers.
    let record = json!({
        "eventName": "MODIFY",
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"name": {"S": "team-a/app/TOKEN"}, "version": {"S": "0000000000000000002"}}},
    });
    env.send_to_queue(&url, &record.to_string()).await;
    let arrived = env
        .eventually_value(
            "team-a",
            "app",
            "TOKEN",
            b"pipes-token-two",
            Duration::from_secs(20),
        )
        .await;
    assert!(arrived, "{}", env.daemon_log(&daemon));
    assert_eq!(
        env.secret_data("team-a", "app").await.unwrap()["API_KEY"],
        b"pipes-sm-api-key",
        "Secrets Manager's key survives a targeted reconcile"
    );
    assert_eq!(calls("Scan"), scans, "a targeted reconcile: no table Scan");
    assert!(calls("Query") >= 1.0);
    let drained = env.eventually_drained(&url, Duration::from_secs(10)).await;
    assert!(drained, "{}", env.daemon_log(&daemon));
}

/// `credsync run` on Secrets Manager alone, following the queue at `url`.
fn queue_daemon(env: &StandIns, url: &str) -> Daemon {
    env.daemon(
        &[
            "--source",
            "secretsmanager",
            "--events-queue",
            url,
            "--debounce",
            "100ms",
            "--no-drift-repair",
        ],
        &[],
    )
}

/// A message of a shape credsync does not know (here a batch of events, as
/// an EventBridge input transformer may send) may still announce a change:
/// it triggers a full reconcile, and is deleted only after that reconcile
/// wrote everything.
#[tokio::test]
async fn a_message_of_an_unknown_shape_triggers_a_full_reconcile_before_it_is_deleted() {
    let env = StandIns::start(&["team-a"]).await;
    env.sm_create(
        "team-a/app",
        r#"{"TOKEN":"shape-token-one"}"#,
        &["shape-token-one"],
    )
    .await;
    let url = env.create_queue("shapes").await;
    let daemon = queue_daemon(&env, &url);
    assert!(reconciled(daemon.port).await, "{}", env.daemon_log(&daemon));
    // A change no event of a known shape announces; no schedule runs.
    env.seed("shape-token-two");
    env.sm_put("team-a/app", r#"{"TOKEN":"shape-token-two"}"#)
        .await;
    let batch = format!("[{}]", cloudtrail_event("PutSecretValue", "team-a/app"));
    env.send_to_queue(&url, &batch).await;
    handled_and_deleted(&env, &daemon, &url, "shape-token-two").await;
    let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
    assert_eq!(metric(&metrics, UNRECOGNIZED), 1.0, "{metrics}");
    let log = env.daemon_log(&daemon);
    assert!(log.contains("a full reconcile covers it"), "{log}");
    env.assert_no_value_in(&log, "the log");
}

/// A Secrets Manager event costs the same whatever the number of secrets:
/// one DescribeSecret, and one GetSecretValue when the version moved; no
/// listing. A message naming a secret of another account is not read; one
/// naming a deleted secret removes its keys; one naming a secret that
/// cannot be read alone falls back to a full read.
#[tokio::test]
async fn a_secrets_manager_event_reads_its_secret_alone() {
    const SECRETS: usize = 150; // two ListSecrets pages
    let env = StandIns::start(&["team-a"]).await;
    let sm = env.secrets_manager().await;
    for i in 0..SECRETS {
        sm.create_secret()
            .name(format!("team-a/app-{i}"))
            .secret_string(format!(r#"{{"TOKEN":"event-token-{i}"}}"#))
            .send()
            .await
            .unwrap();
    }
    let url = env.create_queue("one-secret").await;
    let daemon = queue_daemon(&env, &url);
    assert!(reconciled(daemon.port).await, "{}", env.daemon_log(&daemon));
    let calls = || {
        let (_, metrics) = http(daemon.port, "GET", "/metrics", None);
        [
            "ListSecrets",
            "DescribeSecret",
            "GetSecretValue",
            "BatchGetSecretValue",
        ]
        .map(|op| {
            metric(
                &metrics,
                &format!("credsync_secretsmanager_requests_total{{operation=\"{op}\"}}"),
            )
        })
    };
    let since = |before: [f64; 4]| {
        let now = calls();
        [0, 1, 2, 3].map(|i| now[i] - before[i])
    };
    env.seed("event-token-1");
    let [listed, ..] = calls();
    assert!(listed >= 2.0, "the full read lists every page");

    // A change: one DescribeSecret, one GetSecretValue.
    let before = calls();
    env.seed("event-token-changed");
    env.sm_put("team-a/app-7", r#"{"TOKEN":"event-token-changed"}"#)
        .await;
    env.send_to_queue(&url, &cloudtrail_event("PutSecretValue", "team-a/app-7"))
        .await;
    let arrived = env
        .eventually_value(
            "team-a",
            "app-7",
            "TOKEN",
            b"event-token-changed",
            Duration::from_secs(20),
        )
        .await;
    assert!(arrived, "{}", env.daemon_log(&daemon));
    assert!(env.eventually_drained(&url, Duration::from_secs(10)).await);
    assert_eq!(
        since(before),
        [0.0, 1.0, 1.0, 0.0],
        "ListSecrets, DescribeSecret, GetSecretValue, BatchGetSecretValue"
    );

    // The same event again (SQS delivers at least once): one DescribeSecret.
    let before = calls();
    env.send_to_queue(&url, &cloudtrail_event("PutSecretValue", "team-a/app-7"))
        .await;
    assert!(env.eventually_drained(&url, Duration::from_secs(10)).await);
    assert_eq!(since(before), [0.0, 1.0, 0.0, 0.0]);

    // A forged message naming another account's secret: nothing is read.
    let before = calls();
    let foreign = "arn:aws:secretsmanager:us-east-1:999999999999:secret:team-a/app-1-AbCdEf";
    env.send_to_queue(&url, &cloudtrail_event("PutSecretValue", foreign))
        .await;
    assert!(env.eventually_drained(&url, Duration::from_secs(10)).await);
    assert_eq!(since(before), [0.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        env.secret_data("team-a", "app-1").await.unwrap()["TOKEN"],
        b"event-token-1"
    );
    let log = env.daemon_log(&daemon);
    assert!(log.contains("outside this account and region"), "{log}");

    // Marked for deletion: its Secret goes, still without a listing.
    let before = calls();
    sm.delete_secret()
        .secret_id("team-a/app-9")
        .send()
        .await
        .unwrap();
    env.send_to_queue(&url, &cloudtrail_event("DeleteSecret", "team-a/app-9"))
        .await;
    let gone = eventually(Duration::from_secs(20), || async {
        env.secret("team-a", "app-9").await.is_none()
    })
    .await;
    assert!(gone, "{}", env.daemon_log(&daemon));
    assert_eq!(since(before)[0], 0.0, "no listing for a deletion");

    // A name Secrets Manager does not know: a full read covers it.
    let before = calls();
    env.send_to_queue(&url, &cloudtrail_event("DeleteSecret", "team-a/never-was"))
        .await;
    assert!(env.eventually_drained(&url, Duration::from_secs(20)).await);
    assert!(since(before)[0] >= 2.0, "{}", env.daemon_log(&daemon));
    env.assert_no_value_in(&env.daemon_log(&daemon), "the log");
}
