//! One task per shard: polls GetRecords and reports the names it saw.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::calls::{
    BACKOFF_BASE, BACKOFF_CAP, PERSISTENT_FAILURES, Position, get_shard_iterator, log_failure,
};
use super::pacing::Pacing;
use super::records::{RecordsRead, read_records};
use super::shards::StartAt;
use crate::aws_error::{AwsError as Failure, FailureClass};
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// GetRecords page size (the API maximum).
pub(crate) const RECORDS_LIMIT: i32 = 1000;

/// What a shard reader tells the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    Records {
        names: Vec<String>,
        oldest: Option<DateTime<Utc>>,
    },
    /// NextShardIterator was null: the shard is closed and fully read.
    Ended(String),
    /// The shard or stream was not found: re-describe soon.
    Lost,
}

/// Polls one shard and reports the names in its records.
pub(crate) struct ShardReader {
    pub(crate) streams: aws_sdk_dynamodbstreams::Client,
    pub(crate) table: String,
    pub(crate) stream_arn: String,
    pub(crate) shard_id: String,
    pub(crate) start: StartAt,
    pub(crate) iterator: Option<String>,
    /// The last sequence number seen, to re-open an expired iterator after it.
    pub(crate) last_sequence: Option<String>,
    /// The sleep after an empty poll: short while records come, longer once idle.
    pub(crate) pacing: Pacing,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) metrics: Arc<Metrics>,
}

impl ShardReader {
    /// Runs until the shard ends or the task is aborted.
    pub(crate) async fn run(mut self) {
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
                self.pacing.records(Instant::now());
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
                        tokio::time::sleep(self.pacing.after_empty(Instant::now())).await;
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
    pub(crate) async fn handle_failure(
        &mut self,
        operation: &str,
        f: &Failure,
        failures: u32,
    ) -> bool {
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
            FailureClass::NotFound
            | FailureClass::Throttled
            | FailureClass::Denied
            | FailureClass::Unreachable
            | FailureClass::Other => {
                log_failure(
                    &self.table,
                    &self.stream_arn,
                    Some(&self.shard_id),
                    operation,
                    f,
                    failures,
                );
                match f.class {
                    FailureClass::NotFound => {
                        self.iterator = None;
                        return self.events.send(Event::Lost).await.is_ok();
                    }
                    // Throttling says nothing about the iterator: keep it.
                    FailureClass::Throttled => {}
                    // The iterator itself may be what the server rejects.
                    _ => self.iterator = None,
                }
            }
        }
        true
    }
}
