//! `credsync run` as a subprocess against moto and a real kube-apiserver:
//! stream propagation, drift repair, the HTTP surface, leader
//! election and faults.

mod support;

use std::time::{Duration, Instant};

use support::{StandIns, eventually, http, metric, ready};

async fn value_is(env: &StandIns, ns: &str, name: &str, key: &str, want: &str) -> bool {
    env.secret_data(ns, name)
        .await
        .and_then(|d| d.get(key).cloned())
        .is_some_and(|v| v == want.as_bytes())
}

/// The latency test holds this exclusively; every other test shares it, so
/// the machine's two cores are not busy with another test while it measures.
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics", None).1
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test]
async fn a_credstash_put_reaches_the_secret_through_the_stream() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/token", "stream-token-initial");
    env.enable_stream().await;
    let daemon = env.daemon(&[], &[]);
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    assert!(value_is(&env, "app", "svc", "TOKEN", "stream-token-initial").await);

    // Timing is measured alone: the other tests of this binary wait.
    let _alone = TIMING.write().await;
    let debounce = Duration::from_secs(1);
    let mut latencies = Vec::new();
    for i in 0..20 {
        let value = format!("stream-token-{i:02}");
        env.put("app/svc/token", &value);
        // From the moment the item is in the table (the CLI returned).
        let started = Instant::now();
        let arrived = env
            .eventually_value("app", "svc", "TOKEN", &value, Duration::from_secs(15))
            .await;
        assert!(
            arrived,
            "put {i} did not arrive:\n{}",
            env.daemon_log(&daemon)
        );
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "credstash put -> Secret over {} puts: p50 {p50:?}, p99 {p99:?} (debounce {debounce:?})",
        latencies.len()
    );
    assert!(p99 < debounce + Duration::from_secs(2), "p99 {p99:?}");
    let text = metrics(daemon.port);
    assert_eq!(metric(&text, "credsync_stream_enabled"), 1.0);
    assert!(metric(&text, "credsync_stream_records_total") >= 20.0);
    env.daemon_log(&daemon);
}

#[tokio::test]
async fn one_put_among_500_secrets_costs_one_kms_call_no_scan_one_write() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["bulk"]).await;
    env.put("bulk/seed/key", "bulk-seed-value");
    // 500 items: copies of one CLI-written item under other names (the
    // ciphertext does not bind the name), written in batches.
    let ddb = env.dynamodb().await;
    let seed = ddb
        .scan()
        .table_name(&env.table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap()
        .remove(0);
    let names: Vec<String> = (0..500).map(|i| format!("bulk/svc-{i:03}/key")).collect();
    for chunk in names.chunks(25) {
        use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
        let writes = chunk
            .iter()
            .map(|name| {
                let mut item = seed.clone();
                item.insert("name".into(), AttributeValue::S(name.clone()));
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                    .build()
            })
            .collect();
        ddb.batch_write_item()
            .request_items(&env.table, writes)
            .send()
            .await
            .unwrap();
    }
    env.enable_stream().await;
    let daemon = env.daemon(&["--no-drift-repair"], &[]);
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let before = metrics(daemon.port);
    let count = |text: &str, sample: &str| metric(text, sample);
    env.put("bulk/svc-250/key", "bulk-rotated-value");
    assert!(
        env.eventually_value(
            "bulk",
            "svc-250",
            "KEY",
            "bulk-rotated-value",
            Duration::from_secs(15)
        )
        .await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = metrics(daemon.port);
    let delta = |sample: &str| count(&after, sample) - count(&before, sample);
    assert_eq!(
        delta("credsync_kms_requests_total{operation=\"Decrypt\"}"),
        1.0,
        "KMS calls"
    );
    assert_eq!(
        delta("credsync_dynamodb_requests_total{operation=\"Scan\"}"),
        0.0,
        "Scans"
    );
    let writes: f64 = ["create", "update", "patch", "delete"]
        .iter()
        .map(|verb| {
            delta(&format!(
                "credsync_kubernetes_requests_total{{verb=\"{verb}\"}}"
            ))
        })
        .sum();
    assert_eq!(writes, 1.0, "Kubernetes writes");
}

#[tokio::test]
async fn a_hand_edit_of_a_managed_key_is_reverted() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/password", "drift-original-value");
    let daemon = env.daemon(&["--no-stream"], &[]);
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let started = Instant::now();
    env.patch_secret(
        "app",
        "svc",
        serde_json::json!({"data": {"PASSWORD": "aGFuZC1lZGl0"}}),
    )
    .await;
    let restored = env
        .eventually_value(
            "app",
            "svc",
            "PASSWORD",
            "drift-original-value",
            Duration::from_secs(5),
        )
        .await;
    assert!(restored, "{}", env.daemon_log(&daemon));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "restored in {:?}",
        started.elapsed()
    );
    // A deleted Secret comes back too.
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.kube().await, "app");
    api.delete("svc", &Default::default()).await.unwrap();
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "PASSWORD",
            "drift-original-value",
            Duration::from_secs(5)
        )
        .await
    );
    // The counter moves when the reconcile finishes, just after its write.
    let port = daemon.port;
    let counted = eventually(Duration::from_secs(10), || async move {
        metric(&metrics(port), "credsync_drift_corrections_total") >= 2.0
    })
    .await;
    assert!(counted, "{}", metrics(port));
}

/// Reconciles of one trigger, whatever their outcome.
fn reconciles_by(metrics: &str, trigger: &str) -> f64 {
    let label = format!("trigger=\"{trigger}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("credsync_reconciles_by_trigger_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn credsyncs_own_writes_do_not_come_back_as_drift() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    for i in 0..10 {
        env.put(&format!("app/svc-{i}/key"), &format!("own-write-first-{i}"));
    }
    let token_file = env.write_file("token", "own-writes-token\n");
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--sync-token-file",
            support::path_str(&token_file),
        ],
        &[],
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let watching = eventually(Duration::from_secs(10), || async {
        env.daemon_log(&daemon).contains("drift watch ready")
    })
    .await;
    assert!(watching, "{}", env.daemon_log(&daemon));

    // Ten Secrets change through credsync, with the watch running.
    for i in 0..10 {
        env.put(
            &format!("app/svc-{i}/key"),
            &format!("own-write-second-{i}"),
        );
    }
    let port = daemon.port;
    assert_eq!(http(port, "POST", "/sync", Some("own-writes-token")).0, 202);
    for i in 0..10 {
        let (name, want) = (format!("svc-{i}"), format!("own-write-second-{i}"));
        let arrived = env
            .eventually_value("app", &name, "KEY", &want, Duration::from_secs(15))
            .await;
        assert!(arrived, "{name}: {}", env.daemon_log(&daemon));
    }
    let synced = eventually(Duration::from_secs(10), || async move {
        reconciles_by(&metrics(port), "http") >= 1.0
    })
    .await;
    assert!(synced, "{}", metrics(port));

    // Then one hand edit. The watch delivers events in order, so by the
    // time this one is repaired, the ten writes' events have been seen:
    // only the hand edit may have caused a drift reconcile.
    env.patch_secret(
        "app",
        "svc-3",
        serde_json::json!({"data": {"KEY": "aGFuZC1lZGl0"}}),
    )
    .await;
    let restored = env
        .eventually_value(
            "app",
            "svc-3",
            "KEY",
            "own-write-second-3",
            Duration::from_secs(10),
        )
        .await;
    assert!(restored, "{}", env.daemon_log(&daemon));
    let repaired = eventually(Duration::from_secs(10), || async move {
        metric(&metrics(port), "credsync_drift_corrections_total") >= 1.0
    })
    .await;
    assert!(repaired, "{}", metrics(port));
    let text = metrics(port);
    assert_eq!(reconciles_by(&text, "drift"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "credsync_drift_corrections_total"),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn sync_endpoint_checks_token_rate_and_input() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "http-value");
    let token_file = env.write_file("token", "s3cret-sync-token\n");
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--sync-token-file",
            support::path_str(&token_file),
        ],
        &[],
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let port = daemon.port;
    assert_eq!(http(port, "POST", "/sync", None).0, 401);
    assert_eq!(http(port, "POST", "/sync", Some("wrong-token")).0, 401);
    assert_eq!(
        http(
            port,
            "POST",
            "/sync?namespace=Bad_NS",
            Some("s3cret-sync-token")
        )
        .0,
        400
    );
    assert_eq!(
        http(port, "POST", "/sync?bogus=1", Some("s3cret-sync-token")).0,
        400
    );
    let statuses: Vec<(u16, String)> = (0..50)
        .map(|_| http(port, "POST", "/sync", Some("s3cret-sync-token")))
        .collect();
    assert_eq!(statuses.iter().filter(|(s, _)| *s == 202).count(), 1);
    let limited: Vec<&String> = statuses
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(limited.len(), 49);
    assert!(
        limited
            .iter()
            .all(|r| r.to_ascii_lowercase().contains("retry-after: ")),
        "{}",
        limited[0]
    );
    // Another scope has its own budget.
    assert_eq!(
        http(
            port,
            "POST",
            "/sync?namespace=app&secret=svc",
            Some("s3cret-sync-token")
        )
        .0,
        202
    );
    // Kubestash-V2 callers: GET /syncnow with an API-Key header.
    let (status, _) =
        support::http_with(port, "GET", "/syncnow", &[("API-Key", "s3cret-sync-token")]);
    assert_eq!(status, 429, "the same budget as POST /sync");
    assert_eq!(
        support::http_with(port, "GET", "/syncnow", &[("API-Key", "nope")]).0,
        401
    );
    // /plan needs the token too and returns JSON.
    assert_eq!(http(port, "GET", "/plan", None).0, 401);
    let (status, body) = http(port, "GET", "/plan?format=json", Some("s3cret-sync-token"));
    assert_eq!(status, 200);
    assert!(body.contains("\"schema\": \"credsync.plan/v1\""), "{body}");
    let log = env.daemon_log(&daemon);
    assert!(
        !log.contains("s3cret-sync-token"),
        "the token must not be logged"
    );
    let text = metrics(port);
    assert_eq!(
        metric(
            &text,
            "credsync_http_requests_total{code=\"429\",path=\"/sync\"}"
        ),
        49.0,
        "{text}"
    );
}

#[tokio::test]
async fn streams_off_is_schedule_only_and_still_ready() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "schedule-value-one");
    let daemon = env.daemon(&["--interval", "1s", "--no-drift-repair"], &[]);
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let log = env.daemon_log(&daemon);
    assert!(log.contains("schedule-only"), "{log}");
    assert_eq!(
        metric(&metrics(daemon.port), "credsync_stream_enabled"),
        0.0
    );
    env.put("app/svc/key", "schedule-value-two");
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "schedule-value-two",
            Duration::from_secs(10)
        )
        .await
    );
}

#[tokio::test]
async fn print_config_shows_settings_without_secrets() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    let run = env.credsync_env(
        &["run", "--print-config"],
        &[
            ("FLASK_API_KEY", "legacy-flask-token"),
            ("CRON_HOURS", "6"),
            ("WAIT_TIME", "120"),
            ("CREDSTASH_SYNC_TIMEOUT_SECS", "90"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let config: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(config["sync_token"], "set");
    assert_eq!(config["interval"], "21600s");
    assert_eq!(config["debounce"], "120s");
    assert_eq!(config["reconcile_timeout"], "90s");
    assert!(!run.stdout.contains("legacy-flask-token"));
}

#[tokio::test]
async fn two_replicas_only_the_leader_writes_and_a_dead_leader_is_replaced() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "leader-value-one");
    let args = |identity: &'static str| {
        [
            "--no-stream",
            "--interval",
            "1s",
            "--leader-election",
            "--lease-duration",
            "3s",
            "--lease-namespace",
            "default",
            "--identity",
            identity,
            "--insecure-no-auth",
        ]
    };
    let mut a = Some(env.daemon(&args("replica-a"), &[]));
    assert!(ready(a.as_ref().unwrap().port).await);
    let b = env.daemon(&args("replica-b"), &[]);
    assert!(ready(b.port).await);
    let leads = |port: u16| metric(&metrics(port), "credsync_leader") == 1.0;
    let a_port = a.as_ref().unwrap().port;
    assert!(
        eventually(Duration::from_secs(10), || async move {
            leads(a_port) != leads(b.port)
        })
        .await,
        "exactly one leader"
    );
    let (leader, follower) = if leads(a_port) {
        (a_port, b.port)
    } else {
        (b.port, a_port)
    };

    // The follower points /sync at the leader, once it has read the Lease
    // (one round after start-up: on a real server that is not instant).
    let points_at_leader = eventually(Duration::from_secs(10), || async move {
        let (status, body) = http(follower, "POST", "/sync", None);
        status == 503 && body.contains("replica-")
    })
    .await;
    assert!(
        points_at_leader,
        "{}",
        http(follower, "POST", "/sync", None).1
    );

    // Only the leader writes: one put, one Secret write at the API server.
    // The new leader's first reconcile creates the Secret; on a real server
    // that can land after the follower already names the leader.
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "leader-value-one",
            Duration::from_secs(10)
        )
        .await
    );
    env.mark_requests();
    env.put("app/svc/key", "leader-value-two");
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "leader-value-two",
            Duration::from_secs(10)
        )
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.secret_writes().len(), 1, "{:#?}", env.secret_writes());
    let written = |port: u16| {
        metric(
            &metrics(port),
            "credsync_secrets_written_total{action=\"update\"}",
        )
    };
    assert_eq!(written(follower), 0.0, "the follower wrote");

    // Kill the leader without letting it release the Lease: the other
    // replica takes over within the lease duration and writes again.
    let killed = std::time::Instant::now();
    if leader == a_port {
        let daemon = a.take().unwrap();
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGKILL) };
        drop(daemon);
    } else {
        unsafe { libc::kill(b.child.id() as i32, libc::SIGKILL) };
    }
    let survivor = follower;
    assert!(
        eventually(Duration::from_secs(6), || async move { leads(survivor) }).await,
        "no takeover"
    );
    let took = killed.elapsed();
    println!("leader killed; replaced after {took:?} (lease 3s)");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    env.put("app/svc/key", "leader-value-three");
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "leader-value-three",
            Duration::from_secs(10)
        )
        .await
    );
}

#[tokio::test]
async fn faults_are_counted_and_the_loop_recovers() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "fault-value-one");
    env.put("app/svc/other", "fault-other-one");
    // The loop talks through the fault proxy from the start.
    let faults = env.faults().await;
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--interval",
            "1s",
            "--reconcile-timeout",
            "2s",
        ],
        &[],
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));

    // The API server fails some writes: retried, no key lost.
    faults.inject_json(
        serde_json::json!({"verb": "patch", "resource": "secrets", "status": 500, "times": 2}),
    );
    env.put("app/svc/key", "fault-value-two");
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "fault-value-two",
            Duration::from_secs(15)
        )
        .await,
        "{}",
        env.daemon_log(&daemon)
    );
    assert!(
        value_is(&env, "app", "svc", "OTHER", "fault-other-one").await,
        "no key lost"
    );

    // moto freezes: reconciles time out and are counted; after it thaws the loop recovers.
    unsafe { libc::kill(env.moto_pid(), libc::SIGSTOP) };
    let port = daemon.port;
    let timed_out = eventually(Duration::from_secs(15), || async move {
        metric(&metrics(port), "credsync_reconcile_timeouts_total") >= 1.0
    })
    .await;
    unsafe { libc::kill(env.moto_pid(), libc::SIGCONT) };
    assert!(timed_out, "{}", env.daemon_log(&daemon));
    env.put("app/svc/key", "fault-value-three");
    assert!(
        env.eventually_value(
            "app",
            "svc",
            "KEY",
            "fault-value-three",
            Duration::from_secs(20)
        )
        .await,
        "{}",
        env.daemon_log(&daemon)
    );
    assert!(value_is(&env, "app", "svc", "OTHER", "fault-other-one").await);
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
}

#[tokio::test]
async fn sigterm_during_a_reconcile_exits_within_the_grace_period() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "sigterm-value");
    let mut daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--interval",
            "1s",
            "--grace",
            "2s",
        ],
        &[],
    );
    assert!(ready(daemon.port).await);
    // Freeze moto so the next reconcile hangs mid-way, then ask to stop.
    unsafe { libc::kill(env.moto_pid(), libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let exited = eventually(Duration::from_secs(5), || {
        let done = matches!(daemon.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    unsafe { libc::kill(env.moto_pid(), libc::SIGCONT) };
    assert!(exited, "still running after SIGTERM");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );
    assert!(
        value_is(&env, "app", "svc", "KEY", "sigterm-value").await,
        "the Secret is whole"
    );
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let _shared = TIMING.read().await;
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "promtool-value");
    let daemon = env.daemon(&["--no-stream"], &[]);
    assert!(ready(daemon.port).await);
    let (_, response) = http(daemon.port, "GET", "/metrics", None);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default()
        .to_owned();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed: .ci/run installs it");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{body}"
    );
    for name in [
        "credsync_reconciles_by_trigger_total",
        "credsync_reconcile_duration_seconds_bucket",
        "credsync_kms_requests_total",
        "credsync_kubernetes_requests_total",
        "credsync_stream_enabled",
        "credsync_leader",
    ] {
        assert!(body.contains(name), "{name} missing");
    }
    env.assert_no_value_in(&body, "/metrics");
}
