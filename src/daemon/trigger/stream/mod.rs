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

use std::collections::HashMap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::types::StreamStatus;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

mod calls;
mod debounce;
mod pacing;
mod reader;
mod records;
mod shards;

use crate::aws_error::{AwsError as Failure, FailureClass};
use crate::metrics::Metrics;
use calls::{
    BACKOFF_BASE, BACKOFF_CAP, Position, TableStream, describe_stream, describe_table,
    get_shard_iterator, log_failure, stream_hint,
};
pub use debounce::ChangedNames;
use debounce::Debouncer;
use reader::{Event, ShardReader};
pub use records::{RecordsRead, read_records};
use shards::{ShardSet, StartAt};

/// How often the stream is re-described to find new (child) shards.
const REDESCRIBE_INTERVAL: Duration = Duration::from_secs(10);
/// Earliest re-describe after a reader reports a missing shard or stream.
const TROUBLE_REDESCRIBE: Duration = Duration::from_secs(1);

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
    /// The same once a shard has been idle a while (default 3 s): see `pacing`.
    pub idle_poll_interval: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            table: "credential-store".to_owned(),
            stream_arn: None,
            debounce: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            idle_poll_interval: Duration::from_secs(3),
        }
    }
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
    #[error("{operation} for {target} in region {region} failed: {hint}")]
    Aws {
        operation: &'static str,
        /// "table 'x'" or "stream 'arn' of table 'x'".
        target: String,
        region: String,
        hint: &'static str,
        #[source]
        aws: crate::aws_error::AwsError,
    },
}

// ---------------------------------------------------------------------------
// The follower.
// ---------------------------------------------------------------------------

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
                        hint: stream_hint(&f),
                        aws: f,
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
                    hint: stream_hint(&f),
                    aws: f,
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
                code: None,
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
                pacing: pacing::Pacing::new(
                    self.config.poll_interval,
                    self.config.idle_poll_interval,
                    Instant::now(),
                ),
                events: events.clone(),
                metrics: self.metrics.clone(),
            };
            tracing::debug!(shard = %id, start = ?start, "reading stream shard");
            handles.insert(id, readers.spawn(reader.run()));
        }
    }
}
