//! DynamoDB Streams follower: turns stream records into debounced sets of
//! changed Credstash names, so `credsync run` reconciles only the Secrets
//! those names map to, about a second after a `credstash put`.
//!
//! Shape: [`StreamFollower::connect`] finds the stream and pins a `LATEST`
//! iterator on every open shard (the initial full reconcile covers the past,
//! so spawn [`StreamFollower::run`] before it and nothing written during it is
//! missed). [`StreamFollower::run`] is a coordinator that owns the shard set
//! and the debouncer, and one reader task per shard that polls GetRecords and
//! reports the names it saw. The pure parts (`Debouncer`, `Backoff`,
//! `ShardSet`) hold the decisions and are tested without AWS.
//!
//! Records carry the encrypted item in `NewImage`/`OldImage`; only
//! `Keys["name"]` is ever read, and nothing but names is logged. A
//! `KEYS_ONLY` stream view is enough.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::config::http::HttpResponse;
use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType, StreamStatus};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::credstash::error_chain;
use crate::metrics::Metrics;

/// The Credstash hash key: what a record's `Keys` names the item by.
const NAME_KEY: &str = "name";
/// How often the stream is re-described to find new (child) shards.
const REDESCRIBE_INTERVAL: Duration = Duration::from_secs(10);
/// Earliest re-describe after a reader reports a missing shard or stream.
const TROUBLE_REDESCRIBE: Duration = Duration::from_secs(1);
/// A busy table still propagates: a batch waits at most this many debounces.
const MAX_WAIT_FACTOR: u32 = 5;
/// GetRecords page size (the API maximum).
const RECORDS_LIMIT: i32 = 1000;
/// Failures in a row after which throttling is logged as a warning and a
/// GetRecords iterator is no longer trusted (it may be what the server rejects).
const PERSISTENT_FAILURES: u32 = 3;
/// Backoff after a failed call: first step and cap.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(20);

/// Where and how to follow the stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub table: String,
    /// Given explicitly (STREAM_ARN / --stream-arn), else from DescribeTable.
    pub stream_arn: Option<String>,
    /// Quiet time after the last record before a batch is sent (default 1 s).
    pub debounce: Duration,
    /// Sleep between GetRecords polls of a shard with no new records (default 250 ms).
    pub poll_interval: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            table: "credential-store".to_owned(),
            stream_arn: None,
            debounce: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// A batch of changed table names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangedNames {
    pub names: BTreeSet<String>,
    /// ApproximateCreationDateTime of the oldest record in the batch, for the lag metric.
    pub oldest_record: Option<DateTime<Utc>>,
}

/// Why the stream cannot be followed. Each message names the table or stream
/// and says what to check.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "Credstash table '{table}' not found in region {region}: check --table and --region \
         (DDB_TABLE, TABLE_REGION)"
    )]
    TableNotFound { table: String, region: String },
    #[error(
        "stream '{stream_arn}' for table '{table}' not found in region {region}: check \
         --stream-arn (STREAM_ARN), or leave it unset to follow the table's latest stream"
    )]
    StreamNotFound {
        table: String,
        stream_arn: String,
        region: String,
    },
    #[error(
        "stream '{stream_arn}' belongs to table '{stream_table}', not to the Credstash table \
         '{table}': give the stream of '{table}' in --stream-arn (STREAM_ARN) or leave it unset"
    )]
    OtherTable {
        table: String,
        stream_arn: String,
        stream_table: String,
    },
    #[error("{operation} for {target} in region {region} failed: {cause}")]
    Aws {
        operation: &'static str,
        /// "table 'x'" or "stream 'arn' of table 'x'".
        target: String,
        region: String,
        cause: String,
    },
}

// ---------------------------------------------------------------------------
// Pure parts: debounce, backoff, shard ordering.
// ---------------------------------------------------------------------------

/// Collects names until `debounce` passes with no new record, or until
/// `MAX_WAIT_FACTOR` debounces after the first one so steady traffic cannot
/// hold a batch back forever.
#[derive(Debug)]
pub(crate) struct Debouncer {
    debounce: Duration,
    max_wait: Duration,
    names: BTreeSet<String>,
    oldest: Option<DateTime<Utc>>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Debouncer {
    pub(crate) fn new(debounce: Duration) -> Self {
        Self {
            debounce,
            max_wait: debounce.saturating_mul(MAX_WAIT_FACTOR),
            names: BTreeSet::new(),
            oldest: None,
            first_at: None,
            last_at: None,
        }
    }

    /// Adds the names of records seen at `now`; a record without a name
    /// does not restart the quiet time.
    pub(crate) fn add<I>(&mut self, names: I, oldest: Option<DateTime<Utc>>, now: Instant)
    where
        I: IntoIterator<Item = String>,
    {
        let mut any = false;
        for name in names {
            any = true;
            self.names.insert(name);
        }
        if !any {
            return;
        }
        // A name already pending is still traffic: the quiet time restarts.
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.oldest = match (self.oldest, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// When the pending batch becomes due, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let first = self.first_at?;
        let last = self.last_at.unwrap_or(first);
        Some((last + self.debounce).min(first + self.max_wait))
    }

    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Takes everything pending, due or not.
    pub(crate) fn take(&mut self) -> Option<ChangedNames> {
        self.first_at = None;
        self.last_at = None;
        let oldest_record = self.oldest.take();
        if self.names.is_empty() {
            return None;
        }
        Some(ChangedNames {
            names: std::mem::take(&mut self.names),
            oldest_record,
        })
    }
}

/// Capped exponential backoff with "equal jitter" (half fixed, half random),
/// so many readers throttled together do not retry in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        // Seeded from the std hasher's per-process random keys: no rand crate needed.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
        {
            hasher.write_u128(since_epoch.as_nanos());
        }
        Self {
            base,
            cap,
            attempt: 0,
            rng: hasher.finish() | 1,
        }
    }

    /// The delay before the next retry; each call doubles the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // xorshift64: plenty for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let delay = backoff_delay(self.base, self.cap, self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset: failures in a row.
    pub(crate) fn failures(&self) -> u32 {
        self.attempt
    }
}

/// `min(cap, base * 2^attempt)`, of which the upper half is scaled by
/// `unit` (in `[0, 1)`).
pub(crate) fn backoff_delay(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Where a new shard iterator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// Only records written from now on (open shards at start-up).
    Latest,
    /// Every record still held (shards that appear later: children).
    TrimHorizon,
}

impl StartAt {
    fn iterator_type(self) -> ShardIteratorType {
        match self {
            StartAt::Latest => ShardIteratorType::Latest,
            StartAt::TrimHorizon => ShardIteratorType::TrimHorizon,
        }
    }
}

/// One shard as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedShard {
    pub id: String,
    pub parent: Option<String>,
    /// Has an EndingSequenceNumber: no new records will be added.
    pub closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShardState {
    Waiting(StartAt),
    Reading,
    Finished,
}

#[derive(Debug)]
struct TrackedShard {
    parent: Option<String>,
    state: ShardState,
}

/// The shards of the stream and which of them may be read, so that a child
/// is read only after its parent (records of one key stay in order).
#[derive(Debug, Default)]
pub(crate) struct ShardSet {
    shards: BTreeMap<String, TrackedShard>,
}

impl ShardSet {
    /// The shards at start-up: open ones start at LATEST, closed ones hold
    /// only the past that the initial full reconcile covers.
    pub(crate) fn initial(listed: &[ListedShard]) -> Self {
        let shards = listed
            .iter()
            .map(|s| {
                let state = if s.closed {
                    ShardState::Finished
                } else {
                    ShardState::Waiting(StartAt::Latest)
                };
                let tracked = TrackedShard {
                    parent: s.parent.clone(),
                    state,
                };
                (s.id.clone(), tracked)
            })
            .collect();
        Self { shards }
    }

    /// Merges a complete listing: new shards start at TRIM_HORIZON; a shard
    /// no longer listed is forgotten. Returns the shards being read that
    /// are gone (their readers must stop).
    pub(crate) fn update(&mut self, listed: &[ListedShard]) -> Vec<String> {
        let listed_ids: BTreeSet<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        let mut gone = Vec::new();
        self.shards.retain(|id, shard| {
            let keep = listed_ids.contains(id.as_str());
            if !keep && shard.state == ShardState::Reading {
                gone.push(id.clone());
            }
            keep
        });
        for s in listed {
            self.shards
                .entry(s.id.clone())
                .or_insert_with(|| TrackedShard {
                    parent: s.parent.clone(),
                    state: ShardState::Waiting(StartAt::TrimHorizon),
                });
        }
        gone
    }

    /// Shards that may start now, in shard-id order: LATEST ones at once,
    /// TRIM_HORIZON ones when their parent is finished or no longer listed.
    pub(crate) fn ready(&self) -> Vec<(String, StartAt)> {
        self.shards
            .iter()
            .filter_map(|(id, shard)| match shard.state {
                ShardState::Waiting(StartAt::Latest) => Some((id.clone(), StartAt::Latest)),
                ShardState::Waiting(StartAt::TrimHorizon) if self.parent_done(shard) => {
                    Some((id.clone(), StartAt::TrimHorizon))
                }
                _ => None,
            })
            .collect()
    }

    fn parent_done(&self, shard: &TrackedShard) -> bool {
        match shard.parent.as_deref().and_then(|p| self.shards.get(p)) {
            None => true,
            Some(parent) => parent.state == ShardState::Finished,
        }
    }

    pub(crate) fn mark_reading(&mut self, id: &str) {
        if let Some(shard) = self.shards.get_mut(id) {
            shard.state = ShardState::Reading;
        }
    }

    /// The shard's reader saw its end (NextShardIterator null).
    pub(crate) fn finish(&mut self, id: &str) {
        if let Some(shard) = self.shards.get_mut(id) {
            shard.state = ShardState::Finished;
        }
    }

    /// Open shards (LATEST start) at start-up.
    fn latest_ids(&self) -> Vec<String> {
        self.shards
            .iter()
            .filter(|(_, s)| s.state == ShardState::Waiting(StartAt::Latest))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.shards.len()
    }
}

/// What a page of stream records says: which names changed, the oldest
/// change, and where to resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecordsRead {
    pub names: Vec<String>,
    pub oldest: Option<DateTime<Utc>>,
    /// The last sequence number of the page, if any record had one.
    pub last_sequence: Option<String>,
    /// Records without a string `name` key (ignored).
    pub nameless: usize,
}

/// Reads one GetRecords page; records are untrusted input, so anything
/// missing or malformed is skipped, never a reason to stop.
pub fn read_records(records: &[Record]) -> RecordsRead {
    let mut read = RecordsRead::default();
    for record in records {
        if let Some(seq) = record.dynamodb().and_then(|d| d.sequence_number()) {
            read.last_sequence = Some(seq.to_owned());
        }
        match record_name(record) {
            Some(name) => read.names.push(name.to_owned()),
            None => read.nameless += 1,
        }
        if let Some(t) = record_time(record) {
            read.oldest = Some(read.oldest.map_or(t, |o| o.min(t)));
        }
    }
    read
}

/// The Credstash name of a record (`Keys["name"].S`); nothing else is read.
pub(crate) fn record_name(record: &Record) -> Option<&str> {
    match record.dynamodb()?.keys()?.get(NAME_KEY)? {
        AttributeValue::S(name) => Some(name),
        _ => None,
    }
}

fn record_time(record: &Record) -> Option<DateTime<Utc>> {
    let t = record.dynamodb()?.approximate_creation_date_time()?;
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

// ---------------------------------------------------------------------------
// AWS errors.
// ---------------------------------------------------------------------------

/// What a failed call means for the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureClass {
    /// The shard iterator is older than 15 minutes: re-open it.
    Expired,
    /// The iterator points before the 24 h trim horizon: re-open at TRIM_HORIZON.
    Trimmed,
    /// Table, stream or shard does not exist (any more).
    NotFound,
    /// Throttling or a server-side error: back off and retry.
    Throttled,
    /// Credentials or permissions.
    Denied,
    /// Anything else, including an unreachable endpoint.
    Other,
}

pub(crate) fn classify(code: Option<&str>, status: Option<u16>) -> FailureClass {
    match (code, status) {
        (Some("ExpiredIteratorException"), _) => FailureClass::Expired,
        (Some("TrimmedDataAccessException"), _) => FailureClass::Trimmed,
        (Some("ResourceNotFoundException"), _) => FailureClass::NotFound,
        (
            Some(
                "LimitExceededException"
                | "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError",
            ),
            _,
        ) => FailureClass::Throttled,
        (_, Some(s)) if s == 429 || s >= 500 => FailureClass::Throttled,
        (
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException",
            ),
            _,
        )
        | (_, Some(401 | 403)) => FailureClass::Denied,
        _ => FailureClass::Other,
    }
}

/// A failed call: its class and one line for logs and errors (AWS error
/// messages name resources, never item values).
#[derive(Debug)]
struct Failure {
    class: FailureClass,
    detail: String,
}

impl Failure {
    fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code();
                let class = classify(code, Some(status));
                let detail = match (code, service.err().message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(code), None) => code.to_owned(),
                    _ => format!("HTTP {status}"),
                };
                Self { class, detail }
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Self {
                class: FailureClass::Other,
                detail: format!(
                    "endpoint unreachable (check network, AWS_ENDPOINT_URL and region): {}",
                    error_chain(err)
                ),
            },
            SdkError::ResponseError(_) => Self {
                class: FailureClass::Throttled,
                detail: format!("unreadable response: {}", error_chain(err)),
            },
            other => Self {
                class: FailureClass::Other,
                detail: error_chain(other),
            },
        }
    }

    /// The detail with a hint on what to do, for errors returned to the caller.
    fn cause(&self) -> String {
        let hint = match self.class {
            FailureClass::Denied => {
                "access denied (the credentials need dynamodb:DescribeTable, DescribeStream, \
                 GetShardIterator and GetRecords on the table and its stream)"
            }
            FailureClass::Throttled => "throttled or AWS-side error (retry later)",
            FailureClass::NotFound => "not found",
            _ => "failed",
        };
        format!("{hint}: {}", self.detail)
    }
}

// ---------------------------------------------------------------------------
// AWS calls, each counted.
// ---------------------------------------------------------------------------

/// What DescribeTable says about the table's stream.
enum TableStream {
    Enabled(String),
    Disabled,
}

async fn describe_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    metrics: &Metrics,
) -> Result<TableStream, Failure> {
    metrics
        .dynamodb_requests
        .with_label_values(&["DescribeTable"])
        .inc();
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| Failure::from_sdk(&e))?;
    let Some(desc) = out.table() else {
        return Ok(TableStream::Disabled);
    };
    let enabled = desc
        .stream_specification()
        .is_some_and(|spec| spec.stream_enabled());
    match (enabled, desc.latest_stream_arn()) {
        (true, Some(arn)) => Ok(TableStream::Enabled(arn.to_owned())),
        _ => Ok(TableStream::Disabled),
    }
}

/// A complete DescribeStream listing (all pages).
#[derive(Debug)]
struct StreamListing {
    status: Option<StreamStatus>,
    table: Option<String>,
    shards: Vec<ListedShard>,
}

async fn describe_stream(
    client: &aws_sdk_dynamodbstreams::Client,
    stream_arn: &str,
    metrics: &Metrics,
) -> Result<StreamListing, Failure> {
    let mut listing = StreamListing {
        status: None,
        table: None,
        shards: Vec::new(),
    };
    let mut start: Option<String> = None;
    loop {
        metrics
            .dynamodb_requests
            .with_label_values(&["DescribeStream"])
            .inc();
        let out = client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(start.clone())
            .send()
            .await
            .map_err(|e| Failure::from_sdk(&e))?;
        let Some(desc) = out.stream_description else {
            return Ok(listing);
        };
        listing.status = desc.stream_status.or(listing.status);
        listing.table = desc.table_name.or(listing.table);
        for shard in desc.shards.unwrap_or_default() {
            let Some(id) = shard.shard_id else { continue };
            let closed = shard
                .sequence_number_range
                .as_ref()
                .is_some_and(|r| r.ending_sequence_number.is_some());
            listing.shards.push(ListedShard {
                id,
                parent: shard.parent_shard_id,
                closed,
            });
        }
        match desc.last_evaluated_shard_id {
            // A server that repeats itself must not keep us here forever.
            Some(next) if start.as_deref() != Some(next.as_str()) => start = Some(next),
            _ => return Ok(listing),
        }
    }
}

async fn get_shard_iterator(
    client: &aws_sdk_dynamodbstreams::Client,
    stream_arn: &str,
    shard_id: &str,
    position: &Position,
    metrics: &Metrics,
) -> Result<Option<String>, Failure> {
    metrics
        .dynamodb_requests
        .with_label_values(&["GetShardIterator"])
        .inc();
    let request = client
        .get_shard_iterator()
        .stream_arn(stream_arn)
        .shard_id(shard_id);
    let request = match position {
        Position::Start(start) => request.shard_iterator_type(start.iterator_type()),
        Position::After(seq) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq),
    };
    let out = request.send().await.map_err(|e| Failure::from_sdk(&e))?;
    Ok(out.shard_iterator)
}

/// Where a reader re-opens its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Start(StartAt),
    After(String),
}

// ---------------------------------------------------------------------------
// The follower.
// ---------------------------------------------------------------------------

/// What a shard reader tells the coordinator.
#[derive(Debug)]
enum Event {
    Records {
        names: Vec<String>,
        oldest: Option<DateTime<Utc>>,
    },
    /// NextShardIterator was null: the shard is closed and fully read.
    Ended(String),
    /// The shard or stream was not found: re-describe soon.
    Lost,
}

/// Follows one table's DynamoDB Stream.
pub struct StreamFollower {
    config: StreamConfig,
    stream_arn: String,
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    metrics: Arc<Metrics>,
    shards: ShardSet,
    /// LATEST iterators taken in `connect`, so writes after it are not missed.
    pinned: HashMap<String, String>,
}

impl StreamFollower {
    /// Finds the stream (DescribeTable's LatestStreamArn unless given).
    /// Ok(None) when streams are not enabled on the table (the caller logs a
    /// warning and runs schedule-only).
    ///
    /// Also pins a LATEST iterator on every open shard: records written
    /// after this returns are seen even if `run` starts later (within the
    /// 15 minutes an iterator lives).
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        config: StreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, StreamError> {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "<unset: give --region or AWS_REGION>".to_owned());
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let streams = aws_sdk_dynamodbstreams::Client::new(sdk);
        let table = config.table.clone();

        let stream_arn = match &config.stream_arn {
            Some(arn) => arn.clone(),
            None => match describe_table(&dynamodb, &table, &metrics).await {
                Ok(TableStream::Enabled(arn)) => arn,
                Ok(TableStream::Disabled) => {
                    metrics.stream_enabled.set(0);
                    return Ok(None);
                }
                Err(f) if f.class == FailureClass::NotFound => {
                    return Err(StreamError::TableNotFound { table, region });
                }
                Err(f) => {
                    return Err(StreamError::Aws {
                        operation: "DescribeTable",
                        target: format!("table '{table}'"),
                        region,
                        cause: f.cause(),
                    });
                }
            },
        };

        let listing = match describe_stream(&streams, &stream_arn, &metrics).await {
            Ok(listing) => listing,
            Err(f) if f.class == FailureClass::NotFound => {
                return Err(StreamError::StreamNotFound {
                    table,
                    stream_arn,
                    region,
                });
            }
            Err(f) => {
                return Err(StreamError::Aws {
                    operation: "DescribeStream",
                    target: format!("stream '{stream_arn}' of table '{table}'"),
                    region,
                    cause: f.cause(),
                });
            }
        };
        if let Some(stream_table) = &listing.table
            && *stream_table != table
        {
            return Err(StreamError::OtherTable {
                table,
                stream_arn,
                stream_table: stream_table.clone(),
            });
        }
        if listing.status == Some(StreamStatus::Disabled) {
            metrics.stream_enabled.set(0);
            return Ok(None);
        }

        let shards = ShardSet::initial(&listing.shards);
        let mut pinned = HashMap::new();
        for id in shards.latest_ids() {
            let position = Position::Start(StartAt::Latest);
            match get_shard_iterator(&streams, &stream_arn, &id, &position, &metrics).await {
                Ok(Some(iterator)) => {
                    pinned.insert(id, iterator);
                }
                Ok(None) => {}
                // The reader tries again; only the pinning is lost.
                Err(f) => tracing::warn!(
                    table = %table, stream = %stream_arn, shard = %id,
                    "GetShardIterator failed, will retry when following: {}", f.detail
                ),
            }
        }
        tracing::debug!(
            table = %table, stream = %stream_arn,
            shards = shards.len(), open = pinned.len(),
            "found DynamoDB stream"
        );
        Ok(Some(Self {
            config,
            stream_arn,
            dynamodb,
            streams,
            metrics,
            shards,
            pinned,
        }))
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Follows the stream until `shutdown` is cancelled, sending batches on `changes`.
    ///
    /// Never gives up on AWS errors (they are logged and retried with
    /// backoff). Returns early only if the receiver of `changes` is dropped,
    /// as then nobody is listening.
    pub async fn run(mut self, changes: mpsc::Sender<ChangedNames>, shutdown: CancellationToken) {
        self.metrics.stream_enabled.set(1);
        // The caller logs the stream at info when it starts us.
        tracing::debug!(
            table = %self.config.table, stream = %self.stream_arn,
            debounce_ms = self.config.debounce.as_millis() as u64,
            "following DynamoDB stream"
        );
        let (events_tx, mut events) = mpsc::channel::<Event>(64);
        let mut readers: JoinSet<()> = JoinSet::new();
        let mut handles: HashMap<String, AbortHandle> = HashMap::new();
        let mut debouncer = Debouncer::new(self.config.debounce);
        let mut describe_backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        let mut next_describe = Instant::now() + REDESCRIBE_INTERVAL;
        let mut warned_disabled = false;

        self.start_ready(&mut readers, &mut handles, &events_tx);

        loop {
            let now = Instant::now();
            let due = debouncer.is_due(now);
            let wake = debouncer
                .deadline()
                .filter(|_| !due)
                .map_or(next_describe, |d| d.min(next_describe));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = changes.reserve(), if due => match permit {
                    Ok(permit) => {
                        if let Some(batch) = debouncer.take() {
                            tracing::debug!(
                                names = ?batch.names,
                                "stream batch ready"
                            );
                            permit.send(batch);
                        }
                    }
                    Err(_) => {
                        tracing::debug!("stream batch receiver dropped; stop following");
                        break;
                    }
                },
                Some(event) = events.recv() => match event {
                    Event::Records { names, oldest } => {
                        debouncer.add(names, oldest, Instant::now());
                    }
                    Event::Ended(id) => {
                        tracing::debug!(shard = %id, "stream shard closed and read to its end");
                        handles.remove(&id);
                        self.shards.finish(&id);
                        self.start_ready(&mut readers, &mut handles, &events_tx);
                        // Its children are listed by now (or soon).
                        next_describe = Instant::now();
                    }
                    Event::Lost => {
                        next_describe = next_describe.min(Instant::now() + TROUBLE_REDESCRIBE);
                    }
                },
                Some(joined) = readers.join_next(), if !readers.is_empty() => {
                    if let Err(err) = joined
                        && err.is_panic()
                    {
                        tracing::warn!(stream = %self.stream_arn, "a stream shard reader panicked");
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    if Instant::now() >= next_describe {
                        next_describe = match self
                            .redescribe(
                                &mut readers,
                                &mut handles,
                                &events_tx,
                                &mut warned_disabled,
                            )
                            .await
                        {
                            Ok(()) => {
                                describe_backoff.reset();
                                Instant::now() + REDESCRIBE_INTERVAL
                            }
                            Err(f) => {
                                log_failure(
                                    &self.config.table,
                                    &self.stream_arn,
                                    None,
                                    "describing the stream",
                                    &f,
                                    describe_backoff.failures(),
                                );
                                let delay = describe_backoff.next_delay();
                                Instant::now() + delay.min(REDESCRIBE_INTERVAL)
                            }
                        };
                    }
                }
            }
        }

        readers.shutdown().await;
        self.metrics.stream_enabled.set(0);
        tracing::info!(
            table = %self.config.table, stream = %self.stream_arn,
            "stopped following DynamoDB stream"
        );
    }

    /// Re-lists the shards: starts children whose parents are done, stops
    /// readers of shards no longer listed. When the stream was disabled and
    /// its ARN was not given, moves to the table's new stream if there is one.
    async fn redescribe(
        &mut self,
        readers: &mut JoinSet<()>,
        handles: &mut HashMap<String, AbortHandle>,
        events: &mpsc::Sender<Event>,
        warned_disabled: &mut bool,
    ) -> Result<(), Failure> {
        let listing = match describe_stream(&self.streams, &self.stream_arn, &self.metrics).await {
            Ok(listing) => Some(listing),
            Err(f) if f.class == FailureClass::NotFound && self.config.stream_arn.is_none() => None,
            Err(f) => return Err(f),
        };
        let disabled = listing.as_ref().is_none_or(|l| {
            matches!(
                l.status,
                Some(StreamStatus::Disabled | StreamStatus::Disabling)
            )
        });
        if disabled && self.config.stream_arn.is_none() {
            let table = describe_table(&self.dynamodb, &self.config.table, &self.metrics).await?;
            if let TableStream::Enabled(arn) = table
                && arn != self.stream_arn
            {
                tracing::info!(
                    table = %self.config.table, old = %self.stream_arn, stream = %arn,
                    "table has a new stream; following it from its start"
                );
                let new_listing = describe_stream(&self.streams, &arn, &self.metrics).await?;
                for (_, handle) in handles.drain() {
                    handle.abort();
                }
                self.stream_arn = arn;
                // Every record of a new stream is a change we have not seen.
                self.shards = ShardSet::default();
                self.shards.update(&new_listing.shards);
                *warned_disabled = false;
                self.metrics.stream_enabled.set(1);
                self.start_ready(readers, handles, events);
                return Ok(());
            }
        }
        let Some(listing) = listing else {
            return Err(Failure {
                class: FailureClass::NotFound,
                detail: "stream not found and the table has no other stream".to_owned(),
            });
        };
        // A disabled stream gets no new records: schedule-only in effect.
        self.metrics.stream_enabled.set(i64::from(!disabled));
        if disabled && !*warned_disabled {
            *warned_disabled = true;
            tracing::warn!(
                table = %self.config.table, stream = %self.stream_arn,
                "DynamoDB stream is disabled: changes now reach Secrets only through the \
                 schedule; re-enable the stream (credsync follows the new one unless \
                 --stream-arn pins the old)"
            );
        }
        for id in self.shards.update(&listing.shards) {
            tracing::debug!(shard = %id, "stream shard no longer listed; reader stopped");
            if let Some(handle) = handles.remove(&id) {
                handle.abort();
            }
        }
        self.start_ready(readers, handles, events);
        Ok(())
    }

    /// Spawns a reader for every shard that may start now.
    fn start_ready(
        &mut self,
        readers: &mut JoinSet<()>,
        handles: &mut HashMap<String, AbortHandle>,
        events: &mpsc::Sender<Event>,
    ) {
        for (id, start) in self.shards.ready() {
            self.shards.mark_reading(&id);
            let reader = ShardReader {
                streams: self.streams.clone(),
                table: self.config.table.clone(),
                stream_arn: self.stream_arn.clone(),
                iterator: self.pinned.remove(&id),
                shard_id: id.clone(),
                start,
                last_sequence: None,
                poll_interval: self.config.poll_interval,
                events: events.clone(),
                metrics: self.metrics.clone(),
            };
            tracing::debug!(shard = %id, start = ?start, "reading stream shard");
            handles.insert(id, readers.spawn(reader.run()));
        }
    }
}

/// Logs a failed call that will be retried. Throttling is expected now and
/// then, so it is only a warning once it persists (`failures` in a row).
fn log_failure(
    table: &str,
    stream: &str,
    shard: Option<&str>,
    operation: &str,
    f: &Failure,
    failures: u32,
) {
    let shard = shard.unwrap_or("-");
    match f.class {
        FailureClass::Throttled if failures < PERSISTENT_FAILURES => tracing::debug!(
            table = %table, stream = %stream, shard = %shard,
            "{operation} throttled, backing off: {}", f.detail
        ),
        _ => tracing::warn!(
            table = %table, stream = %stream, shard = %shard,
            "{operation} failed, retrying with backoff: {}", f.detail
        ),
    }
}

/// Polls one shard and reports the names in its records.
struct ShardReader {
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    stream_arn: String,
    shard_id: String,
    start: StartAt,
    iterator: Option<String>,
    /// The last sequence number seen, to re-open an expired iterator after it.
    last_sequence: Option<String>,
    poll_interval: Duration,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl ShardReader {
    /// Runs until the shard ends or the task is aborted.
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            let iterator = match self.iterator.take() {
                Some(iterator) => iterator,
                None => {
                    let position = match &self.last_sequence {
                        Some(seq) => Position::After(seq.clone()),
                        None => Position::Start(self.start),
                    };
                    match get_shard_iterator(
                        &self.streams,
                        &self.stream_arn,
                        &self.shard_id,
                        &position,
                        &self.metrics,
                    )
                    .await
                    {
                        Ok(Some(iterator)) => iterator,
                        // No iterator: nothing left to read in a closed shard.
                        Ok(None) => {
                            let _ = self.events.send(Event::Ended(self.shard_id)).await;
                            return;
                        }
                        Err(f) => {
                            if !self
                                .handle_failure("GetShardIterator", &f, backoff.failures())
                                .await
                            {
                                return;
                            }
                            tokio::time::sleep(backoff.next_delay()).await;
                            continue;
                        }
                    }
                }
            };

            self.metrics
                .dynamodb_requests
                .with_label_values(&["GetRecords"])
                .inc();
            let result = self
                .streams
                .get_records()
                .shard_iterator(&iterator)
                .limit(RECORDS_LIMIT)
                .send()
                .await;
            let out = match result {
                Ok(out) => out,
                Err(err) => {
                    let f = Failure::from_sdk(&err);
                    if f.class == FailureClass::Throttled
                        && backoff.failures() < PERSISTENT_FAILURES
                    {
                        // Throttled: the iterator is still good.
                        self.iterator = Some(iterator);
                    }
                    if !self
                        .handle_failure("GetRecords", &f, backoff.failures())
                        .await
                    {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();

            let records = out.records.unwrap_or_default();
            if !records.is_empty() {
                self.metrics.stream_records.inc_by(records.len() as u64);
                let RecordsRead {
                    names,
                    oldest,
                    last_sequence,
                    nameless,
                } = read_records(&records);
                if last_sequence.is_some() {
                    self.last_sequence = last_sequence;
                }
                if nameless > 0 {
                    tracing::debug!(
                        table = %self.table, shard = %self.shard_id, nameless,
                        "stream records without a string 'name' key; ignored"
                    );
                }
                if !names.is_empty()
                    && self
                        .events
                        .send(Event::Records { names, oldest })
                        .await
                        .is_err()
                {
                    return;
                }
            }
            match out.next_shard_iterator {
                Some(next) => {
                    self.iterator = Some(next);
                    // A full page may mean more is waiting: read on at once.
                    if records.is_empty() {
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                None => {
                    let _ = self.events.send(Event::Ended(self.shard_id)).await;
                    return;
                }
            }
        }
    }

    /// Logs a failed call and prepares the retry; false when the
    /// coordinator is gone.
    async fn handle_failure(&mut self, operation: &str, f: &Failure, failures: u32) -> bool {
        match f.class {
            FailureClass::Expired => {
                tracing::debug!(
                    table = %self.table, shard = %self.shard_id,
                    "shard iterator expired; re-opening after the last record seen"
                );
                self.iterator = None;
            }
            FailureClass::Trimmed => {
                tracing::warn!(
                    table = %self.table, stream = %self.stream_arn, shard = %self.shard_id,
                    "stream records were trimmed before they were read; continuing from the \
                     oldest record held (the scheduled full reconcile covers the gap)"
                );
                self.iterator = None;
                self.last_sequence = None;
                self.start = StartAt::TrimHorizon;
            }
            FailureClass::NotFound => {
                log_failure(
                    &self.table,
                    &self.stream_arn,
                    Some(&self.shard_id),
                    operation,
                    f,
                    failures,
                );
                self.iterator = None;
                return self.events.send(Event::Lost).await.is_ok();
            }
            FailureClass::Throttled => {
                log_failure(
                    &self.table,
                    &self.stream_arn,
                    Some(&self.shard_id),
                    operation,
                    f,
                    failures,
                );
            }
            FailureClass::Denied | FailureClass::Other => {
                log_failure(
                    &self.table,
                    &self.stream_arn,
                    Some(&self.shard_id),
                    operation,
                    f,
                    failures,
                );
                // The iterator itself may be what the server rejects.
                self.iterator = None;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn debounce_waits_for_quiet_then_sends_one_batch() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(1000));
        assert_eq!(d.deadline(), None);
        d.add(names(&["a/b/c"]), None, t0);
        d.add(names(&["a/b/d"]), None, at(t0, 400));
        d.add(names(&["a/b/c"]), None, at(t0, 800));
        assert!(
            !d.is_due(at(t0, 1500)),
            "quiet time restarts on each record"
        );
        assert_eq!(d.deadline(), Some(at(t0, 1800)));
        assert!(d.is_due(at(t0, 1800)));
        let batch = d.take().unwrap();
        assert_eq!(batch.names, ["a/b/c", "a/b/d"].map(String::from).into());
        assert_eq!(d.deadline(), None);
        assert!(d.take().is_none());
    }

    #[test]
    fn debounce_caps_the_wait_under_continuous_traffic() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(1000));
        for i in 0..20u64 {
            d.add(vec![format!("ns/s/k{i}")], None, at(t0, i * 300));
        }
        // Traffic never paused for 1 s, but 5 s after the first record it is due.
        assert_eq!(d.deadline(), Some(at(t0, 5000)));
        assert!(d.is_due(at(t0, 5000)));
        assert_eq!(d.take().unwrap().names.len(), 20);
    }

    #[test]
    fn debounce_keeps_the_oldest_record_time_and_ignores_nameless_records() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_millis(100));
        d.add(Vec::new(), DateTime::from_timestamp(5, 0), t0);
        assert_eq!(d.deadline(), None, "a record without a name starts nothing");
        d.add(names(&["x"]), DateTime::from_timestamp(20, 0), t0);
        d.add(names(&["y"]), DateTime::from_timestamp(10, 0), t0);
        d.add(names(&["z"]), None, t0);
        let batch = d.take().unwrap();
        assert_eq!(batch.oldest_record, DateTime::from_timestamp(10, 0));
        d.add(names(&["x"]), None, t0);
        assert_eq!(
            d.take().unwrap().oldest_record,
            None,
            "reset between batches"
        );
    }

    #[test]
    fn zero_debounce_is_due_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::ZERO);
        d.add(names(&["a"]), None, t0);
        assert!(d.is_due(t0));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(20);
        assert_eq!(backoff_delay(base, cap, 0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(base, cap, 0, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(base, cap, 3, 0.0), Duration::from_millis(800));
        assert_eq!(
            backoff_delay(base, cap, 3, 0.5),
            Duration::from_millis(1200)
        );
        assert_eq!(backoff_delay(base, cap, 10, 1.0), cap);
        assert_eq!(backoff_delay(base, cap, u32::MAX, 0.0), cap / 2);

        let mut b = Backoff::new(base, cap);
        let mut previous_ceiling = Duration::ZERO;
        for attempt in 0..12 {
            let delay = b.next_delay();
            let ceiling = backoff_delay(base, cap, attempt, 1.0);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert!(b.next_delay() <= cap);
        b.reset();
        assert!(b.next_delay() <= base);
    }

    fn shard(id: &str, parent: Option<&str>, closed: bool) -> ListedShard {
        ListedShard {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
            closed,
        }
    }

    #[test]
    fn startup_reads_open_shards_from_latest_and_skips_closed_ones() {
        let set = ShardSet::initial(&[
            shard("s0", None, true),
            shard("s1", Some("s0"), false),
            shard("s2", Some("s0"), false),
        ]);
        assert_eq!(
            set.ready(),
            vec![
                ("s1".to_owned(), StartAt::Latest),
                ("s2".to_owned(), StartAt::Latest)
            ]
        );
    }

    #[test]
    fn child_waits_for_its_parent_to_finish() {
        let mut set = ShardSet::initial(&[shard("p", None, false)]);
        set.mark_reading("p");
        assert!(set.ready().is_empty());
        // The parent splits: it closes, a child appears.
        let gone = set.update(&[shard("p", None, true), shard("c", Some("p"), false)]);
        assert!(gone.is_empty());
        assert!(
            set.ready().is_empty(),
            "child must wait while the parent is read"
        );
        set.finish("p");
        assert_eq!(set.ready(), vec![("c".to_owned(), StartAt::TrimHorizon)]);
        set.mark_reading("c");
        assert!(set.ready().is_empty());
        // A grandchild waits for the child in turn.
        set.update(&[
            shard("p", None, true),
            shard("c", Some("p"), true),
            shard("g", Some("c"), false),
        ]);
        assert!(set.ready().is_empty());
        set.finish("c");
        assert_eq!(set.ready(), vec![("g".to_owned(), StartAt::TrimHorizon)]);
    }

    #[test]
    fn child_of_an_unlisted_parent_starts_and_unlisted_readers_stop() {
        let mut set = ShardSet::initial(&[shard("p", None, false)]);
        set.mark_reading("p");
        // The parent was trimmed away before we saw it end.
        let gone = set.update(&[shard("c", Some("p"), false)]);
        assert_eq!(gone, vec!["p".to_owned()]);
        assert_eq!(set.ready(), vec![("c".to_owned(), StartAt::TrimHorizon)]);
        // A shard whose parent was never known starts at once too.
        set.mark_reading("c");
        set.update(&[shard("c", Some("p"), false), shard("x", Some("zz"), false)]);
        assert_eq!(set.ready(), vec![("x".to_owned(), StartAt::TrimHorizon)]);
    }

    #[test]
    fn a_merged_child_waits_for_the_parent_it_names() {
        // New shards listed in one description: parent and child both new.
        let mut set = ShardSet::default();
        set.update(&[shard("a", None, true), shard("b", Some("a"), false)]);
        assert_eq!(set.ready(), vec![("a".to_owned(), StartAt::TrimHorizon)]);
        set.mark_reading("a");
        set.finish("a");
        assert_eq!(set.ready(), vec![("b".to_owned(), StartAt::TrimHorizon)]);
    }

    #[test]
    fn errors_are_classified_for_retry() {
        assert_eq!(
            classify(Some("ExpiredIteratorException"), Some(400)),
            FailureClass::Expired
        );
        assert_eq!(
            classify(Some("TrimmedDataAccessException"), Some(400)),
            FailureClass::Trimmed
        );
        assert_eq!(
            classify(Some("LimitExceededException"), Some(400)),
            FailureClass::Throttled
        );
        assert_eq!(
            classify(Some("ProvisionedThroughputExceededException"), Some(400)),
            FailureClass::Throttled
        );
        assert_eq!(classify(None, Some(503)), FailureClass::Throttled);
        assert_eq!(
            classify(Some("ResourceNotFoundException"), Some(400)),
            FailureClass::NotFound
        );
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400)),
            FailureClass::Denied
        );
        assert_eq!(
            classify(Some("ValidationException"), Some(400)),
            FailureClass::Other
        );
    }

    #[test]
    fn names_come_from_the_hash_key_only() {
        use aws_sdk_dynamodbstreams::types::StreamRecord;
        let record = Record::builder()
            .dynamodb(
                StreamRecord::builder()
                    .keys("name", AttributeValue::S("ns/app/key".into()))
                    .keys("version", AttributeValue::S("0000000000000000001".into()))
                    .new_image("contents", AttributeValue::S("ciphertext".into()))
                    .approximate_creation_date_time(aws_smithy_types::DateTime::from_secs(7))
                    .build(),
            )
            .build();
        assert_eq!(record_name(&record), Some("ns/app/key"));
        assert_eq!(record_time(&record), DateTime::from_timestamp(7, 0));
        let nameless = Record::builder()
            .dynamodb(
                StreamRecord::builder()
                    .keys("name", AttributeValue::N("1".into()))
                    .build(),
            )
            .build();
        assert_eq!(record_name(&nameless), None);
        assert_eq!(record_name(&Record::builder().build()), None);
    }
}
