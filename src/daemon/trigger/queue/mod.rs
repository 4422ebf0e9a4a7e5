//! SQS event queues (`credsync run --events-queue URL`): how many clusters
//! follow one table (or Secrets Manager) without each reading the stream.
//!
//! Each queue is long-polled while this replica leads. A batch (messages
//! arriving within the debounce of each other) becomes one reconcile:
//! targeted at the Credstash names and Secrets Manager secrets it carries
//! (each secret read alone: DescribeSecret, and GetSecretValue if its
//! version moved; no listing). Messages are deleted only once every request
//! up to theirs was reconciled with everything written; otherwise they
//! come back after their visibility timeout (and reach a dead-letter queue
//! if the queue has one). Duplicates cost a reconcile that writes nothing.
//! A body that is none of the understood shapes is logged by message id,
//! counted, and deleted only after a full reconcile that started after it. A missing queue or a refusal is counted and
//! logged, and retried with backoff; readiness and the schedule carry on.

pub mod events;

use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::aws_error::AwsError;
use crate::backoff::Backoff;
use crate::cluster::lease::Leadership;
use crate::daemon::trigger::{Finished, ReconcileRequest, Sequencer, Trigger};
use crate::metrics::Metrics;
use crate::reconcile::Changed;
use events::Change;

/// SQS's longest long poll.
const LONG_POLL_SECONDS: i32 = 20;
/// Messages in one batch at most, so a flood still reconciles regularly.
const MAX_BATCH: usize = 100;

/// One queue to follow.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub url: String,
    /// Quiet time that ends a batch.
    pub debounce: Duration,
}

/// What the consumer needs from the rest of `run`.
pub struct QueueLinks {
    pub requests: mpsc::Sender<ReconcileRequest>,
    /// Numbers what the queues send, shared by every queue.
    pub sequencer: Sequencer,
    pub finished: watch::Receiver<Option<Finished>>,
    pub leadership: watch::Receiver<Leadership>,
    pub metrics: std::sync::Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// What one batch asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    changed: Changed,
    full: bool,
}

impl Wanted {
    fn request(self) -> Option<ReconcileRequest> {
        if self.full {
            Some(ReconcileRequest::full(Trigger::Queue))
        } else if self.changed == Changed::default() {
            None
        } else {
            Some(ReconcileRequest::changed(
                Trigger::Queue,
                Some(self.changed),
            ))
        }
    }
}

/// Follows one queue until shutdown.
pub async fn run(client: aws_sdk_sqs::Client, config: QueueConfig, mut links: QueueLinks) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        if *links.leadership.borrow() != Leadership::Leading {
            tokio::select! {
                _ = links.shutdown.cancelled() => return,
                _ = links.leadership.wait_for(|l| *l == Leadership::Leading) => {}
            }
        }
        let batch = tokio::select! {
            _ = links.shutdown.cancelled() => return,
            batch = receive_batch(&client, &config, &links.metrics) => batch,
        };
        let messages = match batch {
            Ok(messages) => {
                backoff.reset();
                messages
            }
            Err(err) => {
                links.metrics.queue_receive_failures.inc();
                let delay = backoff.next_delay();
                tracing::warn!(queue = %config.url, error = %err.line(receive_hint(&err)), retry_in = ?delay, "cannot receive from the events queue; the schedule keeps reconciling");
                tokio::select! {
                    _ = links.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut wanted = Wanted::default();
        let mut understood = Vec::new();
        let mut unrecognized = Vec::new();
        for message in messages {
            match message.body().and_then(events::parse) {
                Some(Change::Credstash(name)) => {
                    wanted.changed.names.insert(name);
                    understood.push(message);
                }
                Some(Change::SecretsManager(id)) => {
                    wanted.changed.secrets.insert(id);
                    understood.push(message);
                }
                None => {
                    // Maybe a change in a shape not known yet (a batched
                    // EventBridge array, an input transformer): a full
                    // reconcile covers it before it is deleted.
                    tracing::warn!(queue = %config.url, message_id = message.message_id().unwrap_or("?"), "events queue: a message of no known shape; a full reconcile covers it, then it is deleted");
                    wanted.full = true;
                    unrecognized.push(message);
                }
            }
        }
        links
            .metrics
            .queue_messages
            .with_label_values(&["unrecognized"])
            .inc_by(unrecognized.len() as u64);
        let known = understood.len() as u64;
        understood.extend(unrecognized);
        let Some(request) = wanted.request() else {
            continue;
        };
        let Some(seq) = links.sequencer.send(&links.requests, request).await else {
            return;
        };
        // The first reconcile to take it says whether it is done; if not, a
        // later success may still be too late for these copies: they come
        // back after their visibility timeout.
        let done = tokio::select! {
            _ = links.shutdown.cancelled() => return,
            done = links.finished.wait_for(|f| f.is_some_and(|f| f.taken >= seq)) => done.map(|f| f.is_some_and(|f| f.done >= seq)),
        };
        let count = known;
        if done.unwrap_or(false) {
            delete(&client, &config.url, &understood, &links.metrics).await;
            links
                .metrics
                .queue_messages
                .with_label_values(&["handled"])
                .inc_by(count);
        } else {
            // Left in flight: SQS makes them visible again after their timeout.
            links
                .metrics
                .queue_messages
                .with_label_values(&["retried"])
                .inc_by(count);
            tracing::warn!(queue = %config.url, messages = count, "the reconcile for these events did not finish cleanly; they come back after the queue's visibility timeout");
        }
    }
}

/// One long poll, then short ones while messages keep coming within the debounce.
async fn receive_batch(
    client: &aws_sdk_sqs::Client,
    config: &QueueConfig,
    metrics: &Metrics,
) -> Result<Vec<Message>, AwsError> {
    let poll = |wait_seconds| {
        metrics
            .sqs_requests
            .with_label_values(&["ReceiveMessage"])
            .inc();
        receive(client, &config.url, wait_seconds)
    };
    let mut batch = poll(LONG_POLL_SECONDS).await?;
    let quiet = i32::try_from(config.debounce.as_secs().clamp(1, 20)).unwrap_or(1);
    while !batch.is_empty() && batch.len() < MAX_BATCH {
        let more = poll(quiet).await?;
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}

async fn receive(
    client: &aws_sdk_sqs::Client,
    url: &str,
    wait_seconds: i32,
) -> Result<Vec<Message>, AwsError> {
    client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_seconds)
        .send()
        .await
        .map(|out| out.messages.unwrap_or_default())
        .map_err(|err| AwsError::from_sdk(&err))
}

/// Deletes `messages`, 10 per call; a failed delete only means a redelivery.
async fn delete(client: &aws_sdk_sqs::Client, url: &str, messages: &[Message], metrics: &Metrics) {
    for chunk in messages.chunks(10) {
        let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        metrics
            .sqs_requests
            .with_label_values(&["DeleteMessageBatch"])
            .inc();
        if let Err(err) = client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            let err = AwsError::from_sdk(&err);
            tracing::warn!(queue = %url, error = %err.line("deleting handled messages failed; they will be handled again"), "events queue");
        }
    }
}

fn receive_hint(err: &AwsError) -> &'static str {
    if err.is("AWS.SimpleQueueService.NonExistentQueue") || err.is("QueueDoesNotExist") {
        "the queue does not exist (check --events-queue)"
    } else {
        match err.class {
            crate::aws_error::FailureClass::Denied => {
                "access denied (needs sqs:ReceiveMessage and sqs:DeleteMessage on the queue)"
            }
            _ => "ReceiveMessage failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_asks_for_what_it_names_or_for_everything() {
        assert_eq!(Wanted::default().request(), None);
        let changed = Changed {
            names: ["a/b/C".to_owned()].into(),
            secrets: ["team-a/db".to_owned()].into(),
        };
        let targeted = Wanted {
            changed: changed.clone(),
            full: false,
        };
        assert_eq!(
            targeted.request().map(|r| r.changed),
            Some(Some(changed.clone()))
        );
        let full = Wanted {
            changed,
            full: true,
        };
        let request = full.request().unwrap();
        assert_eq!(request.changed, None);
        assert_eq!(request.primary(), Trigger::Queue);
    }
}
