//! The DynamoDB Streams follower against moto in server mode: items written
//! by the real credstash CLI arrive as debounced batches of names.
//!
//! moto has one shard per stream that never closes, splits or expires its
//! iterators, so shard ordering, expired iterators and throttling are covered
//! by the unit tests in `src/daemon/trigger/stream/`, not here.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, StreamSpecification, StreamViewType};
use credsync::daemon::trigger::stream::{ChangedNames, StreamConfig, StreamError, StreamFollower};
use credsync::metrics::Metrics;
use support::{Put, REGION, StandIns};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything credsync logged in this test binary (all tests share it).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures credsync's debug logs so a test can check no value leaked.
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter("credsync=debug")
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

async fn enable_stream(env: &StandIns, table: &str, view: StreamViewType) {
    env.dynamodb()
        .await
        .update_table()
        .table_name(table)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(view)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

fn config(table: &str, debounce_ms: u64) -> StreamConfig {
    StreamConfig {
        table: table.to_owned(),
        stream_arn: None,
        debounce: Duration::from_millis(debounce_ms),
        poll_interval: Duration::from_millis(100),
        idle_poll_interval: Duration::from_millis(100),
    }
}

async fn connect(
    env: &StandIns,
    config: StreamConfig,
) -> (Result<Option<StreamFollower>, StreamError>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new().unwrap());
    let sdk = env.sdk_config(REGION).await;
    (
        StreamFollower::connect(&sdk, config, metrics.clone()).await,
        metrics,
    )
}

struct Following {
    changes: mpsc::Receiver<ChangedNames>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn follow(follower: StreamFollower) -> Following {
    let (tx, changes) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(follower.run(tx, shutdown.clone()));
    Following {
        changes,
        shutdown,
        task,
    }
}

impl Following {
    async fn next(&mut self, within: Duration) -> Option<ChangedNames> {
        tokio::time::timeout(within, self.changes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Cancels and asserts `run` returns promptly.
    async fn stop(self) {
        let started = Instant::now();
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("run did not stop within 2 s of shutdown")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

/// `credstash put` on a blocking thread, so the follower keeps running.
async fn put(env: &Arc<StandIns>, name: &'static str, value: &'static str) {
    let env = env.clone();
    tokio::task::spawn_blocking(move || env.put(name, value))
        .await
        .unwrap();
}

fn set(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credstash_put_arrives_as_a_debounced_batch_of_names() {
    capture_logs();
    let env = StandIns::start(&[]).await;
    enable_stream(&env, &env.table, StreamViewType::NewAndOldImages).await;
    // Written before the follower connects: the initial full reconcile's job.
    put(&env, "team-a/app/before", "value-before-follower-1").await;

    // 1.5 s: four concurrent credstash CLIs on a loaded machine finish
    // within about a second of each other.
    let (follower, metrics) = connect(&env, config(&env.table, 1500)).await;
    let follower = follower.unwrap().expect("stream is enabled");
    assert!(
        follower
            .stream_arn()
            .contains(":table/credential-store/stream/"),
        "{}",
        follower.stream_arn()
    );
    assert_eq!(metrics.dynamodb_calls("DescribeTable"), 1);
    let mut following = follow(follower);

    // One put: its name arrives about a debounce later.
    let started = Instant::now();
    put(&env, "team-a/app/key", "first-stream-value-1").await;
    let batch = following
        .next(Duration::from_secs(10))
        .await
        .expect("a batch within 10 s");
    let took = started.elapsed();
    assert_eq!(
        batch.names,
        set(&["team-a/app/key"]),
        "LATEST: the earlier put is not replayed"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let oldest = batch.oldest_record.expect("record time");
    let age = chrono::Utc::now() - oldest;
    assert!(
        age > -chrono::TimeDelta::seconds(2) && age < chrono::TimeDelta::seconds(30),
        "oldest record {oldest} is {age} old"
    );
    assert_eq!(metrics.stream_enabled.get(), 1);

    // Several puts in quick succession (and a name twice): one batch. The
    // repeated name gets explicit versions so concurrent puts cannot race.
    let burst: [(&'static str, &'static str, Option<&'static str>); 4] = [
        ("team-a/app/one", "burst-value-one-1", Some("1")),
        ("team-a/app/two", "burst-value-two-2", None),
        ("team-b/db/password", "burst-value-three-3", None),
        ("team-a/app/one", "burst-value-one-again-4", Some("2")),
    ];
    let burst_started = Instant::now();
    let puts: Vec<_> = burst
        .iter()
        .map(|&(name, value, version)| {
            let env = env.clone();
            tokio::task::spawn_blocking(move || {
                env.put_with(
                    name,
                    value,
                    Put {
                        version,
                        ..Put::default()
                    },
                );
                burst_started.elapsed()
            })
        })
        .collect();
    let mut spread = Vec::new();
    for p in puts {
        spread.push(p.await.unwrap());
    }
    let batch = following
        .next(Duration::from_secs(10))
        .await
        .expect("a batch for the burst");
    assert_eq!(
        batch.names,
        set(&["team-a/app/one", "team-a/app/two", "team-b/db/password"]),
        "puts finished after {spread:?}"
    );
    assert!(
        following.next(Duration::from_millis(2500)).await.is_none(),
        "the burst came as one batch (puts finished after {spread:?})"
    );

    assert!(metrics.dynamodb_calls("DescribeStream") >= 1);
    assert!(metrics.dynamodb_calls("GetShardIterator") >= 1);
    assert!(metrics.dynamodb_calls("GetRecords") >= 2);
    assert_eq!(metrics.stream_records.get(), 5);

    following.stop().await;
    assert_eq!(metrics.stream_enabled.get(), 0);

    let logs = logs();
    assert!(
        logs.contains("team-a/app/key"),
        "debug logs name the batch:\n{logs}"
    );
    env.assert_no_value_in(&logs, "follower logs");
    // Nor the encrypted item the NEW_AND_OLD_IMAGES records carry.
    for field in ["NewImage", "OldImage", "contents", "hmac"] {
        assert!(!logs.contains(field), "logs mention {field}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_stream_and_wrong_settings() {
    capture_logs();
    let env = StandIns::start(&[]).await;

    // Streams not enabled: schedule-only, no error.
    let (follower, metrics) = connect(&env, config(&env.table, 1000)).await;
    assert!(follower.unwrap().is_none());
    assert_eq!(metrics.stream_enabled.get(), 0);
    assert_eq!(metrics.dynamodb_calls("DescribeTable"), 1);
    assert_eq!(metrics.dynamodb_calls("DescribeStream"), 0);

    // A table that does not exist: the message names it and says what to check.
    let err = connect(&env, config("no-such-table", 1000))
        .await
        .0
        .err()
        .expect("missing table is an error");
    assert!(matches!(err, StreamError::TableNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("'no-such-table'") && text.contains("--table"),
        "{text}"
    );

    // An explicit stream ARN that does not exist.
    let mut bad = config(&env.table, 1000);
    let bad_arn = format!(
        "arn:aws:dynamodb:{REGION}:123456789012:table/{}/stream/2020-01-01T00:00:00.000",
        "no-such-table"
    );
    bad.stream_arn = Some(bad_arn.clone());
    let err = connect(&env, bad)
        .await
        .0
        .err()
        .expect("missing stream is an error");
    let text = err.to_string();
    assert!(
        text.contains(&bad_arn) && text.contains("STREAM_ARN"),
        "{text}"
    );

    // The stream of another table is refused: its names are not this table's.
    let out = env.credstash_in(REGION, "other-store", &["setup"]);
    support::assert_ok(&out, "credstash setup other-store");
    enable_stream(&env, "other-store", StreamViewType::KeysOnly).await;
    let (other, _) = connect(&env, config("other-store", 1000)).await;
    let other_arn = other.unwrap().unwrap().stream_arn().to_owned();
    let mut wrong = config(&env.table, 1000);
    wrong.stream_arn = Some(other_arn);
    let err = connect(&env, wrong)
        .await
        .0
        .err()
        .expect("other table's stream");
    assert!(matches!(err, StreamError::OtherTable { .. }), "{err:?}");

    // An explicit ARN skips DescribeTable and follows that stream.
    enable_stream(&env, &env.table, StreamViewType::KeysOnly).await;
    let (found, _) = connect(&env, config(&env.table, 1000)).await;
    let arn = found.unwrap().unwrap().stream_arn().to_owned();
    let mut explicit = config(&env.table, 300);
    explicit.stream_arn = Some(arn.clone());
    let (follower, metrics) = connect(&env, explicit).await;
    let follower = follower.unwrap().expect("explicit stream");
    assert_eq!(follower.stream_arn(), arn);
    assert_eq!(metrics.dynamodb_calls("DescribeTable"), 0);
    let mut following = follow(follower);
    put(&env, "team-c/svc/token", "keys-only-value-1").await;
    let batch = following
        .next(Duration::from_secs(10))
        .await
        .expect("batch");
    assert_eq!(batch.names, set(&["team-c/svc/token"]));
    following.stop().await;
    env.assert_no_value_in(&logs(), "follower logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_traffic_still_propagates_and_shutdown_is_prompt() {
    capture_logs();
    let env = StandIns::start(&[]).await;
    let table = "busy-store";
    let out = env.credstash_in(REGION, table, &["setup"]);
    support::assert_ok(&out, "credstash setup busy-store");
    enable_stream(&env, table, StreamViewType::KeysOnly).await;

    let debounce = Duration::from_millis(400);
    let (follower, _metrics) = connect(&env, config(table, debounce.as_millis() as u64)).await;
    let mut following = follow(follower.unwrap().unwrap());

    // A write every 150 ms for 5 s never leaves 400 ms of quiet, yet a
    // batch must come within about 5 debounces of the first write.
    let client = env.dynamodb().await;
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(5) {
            client
                .put_item()
                .table_name(table)
                .item("name", AttributeValue::S(format!("busy/app/k{i}")))
                .item("version", AttributeValue::S("0000000000000000001".into()))
                .send()
                .await
                .unwrap();
            i += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        i
    });
    let started = Instant::now();
    let first = following
        .next(Duration::from_secs(10))
        .await
        .expect("a batch during continuous traffic");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4000),
        "first batch after {took:?}: not held back by traffic"
    );
    assert!(!writer.is_finished(), "the batch came while writes went on");
    let written = writer.await.unwrap();
    let mut seen = first.names.clone();
    while seen.len() < written {
        let batch = following
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of {written} names arrived", seen.len()));
        seen.extend(batch.names);
    }
    assert_eq!(seen.len(), written);

    // Shutdown is prompt with a record still in flight.
    client_put(&env, table, "busy/app/late").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    following.stop().await;
}

async fn client_put(env: &StandIns, table: &str, name: &str) {
    env.dynamodb()
        .await
        .put_item()
        .table_name(table)
        .item("name", AttributeValue::S(name.to_owned()))
        .item("version", AttributeValue::S("0000000000000000001".into()))
        .send()
        .await
        .unwrap();
}
