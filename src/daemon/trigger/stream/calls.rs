//! The AWS calls the follower makes, each counted, and how their failures
//! are logged and reported.

use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{ShardIteratorType, StreamStatus};

use super::shards::{ListedShard, StartAt};
use crate::aws_error::{AwsError as Failure, FailureClass};
use crate::metrics::Metrics;

/// Failures in a row after which throttling is logged as a warning and a
/// GetRecords iterator is no longer trusted (it may be what the server rejects).
pub(crate) const PERSISTENT_FAILURES: u32 = 3;
/// Backoff after a failed call: first step and cap.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(20);

/// What to do about a failed call, for errors returned to the caller.
pub(crate) fn stream_hint(f: &Failure) -> &'static str {
    match f.class {
        FailureClass::Denied => {
            "access denied (the credentials need dynamodb:DescribeTable, DescribeStream, \
             GetShardIterator and GetRecords on the table and its stream)"
        }
        FailureClass::Throttled => "throttled or AWS-side error (retry later)",
        FailureClass::NotFound => "not found",
        _ => "failed",
    }
}

/// What DescribeTable says about the table's stream.
pub(crate) enum TableStream {
    Enabled(String),
    Disabled,
}

pub(crate) async fn describe_table(
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
pub(crate) struct StreamListing {
    pub(crate) status: Option<StreamStatus>,
    pub(crate) table: Option<String>,
    pub(crate) shards: Vec<ListedShard>,
}

pub(crate) async fn describe_stream(
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

pub(crate) async fn get_shard_iterator(
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
pub(crate) enum Position {
    Start(StartAt),
    After(String),
}

/// Logs a failed call that will be retried. Throttling is expected now and
/// then, so it is only a warning once it persists (`failures` in a row).
pub(crate) fn log_failure(
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
