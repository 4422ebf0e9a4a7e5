//! Prometheus metrics, and the call counters tests and benchmarks read.
//!
//! Counters live in the library, not the server, so a one-shot `sync` can
//! report how many KMS, DynamoDB and Kubernetes calls it made and a test can
//! assert "the second reconcile made zero KMS calls" without any endpoint.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// How a reconcile ended: the `outcome` label of `reconciles_total` and
/// `reconciles_by_trigger_total`, spelled in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    Success,
    /// Some Secrets were not written.
    Partial,
    Error,
    Timeout,
}

impl ReconcileOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

/// All credsync metrics, registered on one registry.
pub struct Metrics {
    registry: Registry,
    /// KMS requests by operation (`Decrypt`).
    pub kms_requests: IntCounterVec,
    /// DynamoDB requests by operation (`Scan`, `Query`, `GetItem`).
    pub dynamodb_requests: IntCounterVec,
    /// Time spent waiting for AWS, by operation (every service): what of a
    /// reconcile is AWS's (or an emulator's) and what is credsync's own.
    pub aws_request_duration: prometheus::HistogramVec,
    /// Secrets Manager requests by operation (`ListSecrets`, `BatchGetSecretValue`).
    pub secretsmanager_requests: IntCounterVec,
    /// SQS event messages by outcome (`handled`, `unrecognized`, `retried`),
    /// and receive calls that failed (queue gone, no rights).
    pub queue_messages: IntCounterVec,
    /// SQS requests by operation (`ReceiveMessage`, `DeleteMessageBatch`).
    pub sqs_requests: IntCounterVec,
    pub queue_receive_failures: prometheus::IntCounter,
    /// Kubernetes API requests by verb (`list`, `get`, `create`, `patch`, `delete`).
    pub kubernetes_requests: IntCounterVec,
    /// Reconciles by outcome (`success`, `partial`, `error`).
    pub reconciles: IntCounterVec,
    /// Secrets written by action (`create`, `update`, `delete`).
    pub secrets_written: IntCounterVec,
    /// Secrets whose write failed, by reason class.
    pub secret_write_failures: IntCounterVec,
    /// Workloads restarted for changed Secrets, and restarts that failed, by kind.
    pub workload_restarts: IntCounterVec,
    pub workload_restart_failures: IntCounterVec,
    /// Watched rollouts of restarted workloads, by outcome (`done`, `failed`).
    pub rollouts: IntCounterVec,
    /// Rotations whose rollout failed, by what credsync did (`reverted`, or
    /// `not_reverted` when it could not or was told not to).
    pub rotation_reverts: IntCounterVec,
    /// Credstash items that could not be decrypted in the last reconcile.
    pub keys_failed: IntGauge,
    /// Table names skipped by the mapping in the last reconcile.
    pub names_skipped: IntGauge,
    /// Conflicting keys in the last reconcile.
    pub key_conflicts: IntGauge,
    /// Secrets and keys credsync manages after the last reconcile.
    pub secrets_managed: IntGauge,
    pub keys_managed: IntGauge,
    /// Snapshot commits written, and snapshot writes that failed.
    pub snapshot_commits: prometheus::IntCounter,
    pub snapshot_failures: prometheus::IntCounter,
    /// Snapshot pushes that failed or hit a conflict (retried next sync).
    pub snapshot_push_failures: prometheus::IntCounter,
    /// DynamoDB Stream records seen, and whether a stream is followed (1) or not (0).
    pub stream_records: prometheus::IntCounter,
    pub stream_enabled: IntGauge,
    /// Seconds between a stream record's creation and its reconcile starting.
    pub stream_lag_seconds: prometheus::Gauge,
    /// Reconciles by trigger and outcome, their duration, and timeouts.
    pub reconciles_by_trigger: IntCounterVec,
    pub reconcile_duration: prometheus::HistogramVec,
    pub reconcile_timeouts: prometheus::IntCounter,
    /// Managed keys restored after a hand edit or deletion.
    pub drift_corrections: prometheus::IntCounter,
    /// HTTP requests by path and status code.
    pub http_requests: IntCounterVec,
    /// Time to read the table, and 1 while the last read failed.
    pub table_fetch_duration: prometheus::Histogram,
    pub table_fetch_failing: IntGauge,
    /// The settings in force, as labels of a constant 1.
    pub settings: prometheus::IntGaugeVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Leadership changes seen by this replica.
    pub leader_transitions: prometheus::IntCounter,
    /// Secrets pinned by a rollback, and those the table now disagrees with.
    pub secrets_pinned: IntGauge,
    pub secrets_pinned_differing: IntGauge,
    /// Reviewed rollback requests, by outcome (applied, refused, released).
    pub rollback_requests: IntCounterVec,
    /// Requests on the followed branch that are refused right now.
    pub rollback_requests_refused: IntGauge,
    /// 1 while the snapshot remote answers the request follower's fetches.
    pub snapshot_remote_up: IntGauge,
}

/// Labels of `credsync_settings_info`: settings, never secrets.
pub const SETTINGS_LABELS: [&str; 7] = [
    "table",
    "region",
    "cluster",
    "namespace_exclude",
    "dry_run",
    "stream",
    "leader_election",
];

/// Kubernetes verbs that change state: what "0 writes" counts.
pub const KUBERNETES_WRITE_VERBS: [&str; 4] = ["create", "update", "patch", "delete"];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(format!("credsync_{name}"), help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter2 = |name: &str,
                        help: &str,
                        labels: [&str; 2]|
         -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(format!("credsync_{name}"), help), &labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let plain_counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
                let c = prometheus::IntCounter::new(format!("credsync_{name}"), help)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        // Histograms take their full name: the chart tests find every
        // exported name as a literal in this file.
        let histogram = |name: &str,
                         help: &str,
                         label: &str,
                         buckets: Vec<f64>|
         -> Result<prometheus::HistogramVec, prometheus::Error> {
            let h = prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(buckets),
                &[label],
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(format!("credsync_{name}"), help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            kms_requests: counter(
                "kms_requests_total",
                "KMS requests by operation.",
                "operation",
            )?,
            dynamodb_requests: counter(
                "dynamodb_requests_total",
                "DynamoDB requests by operation.",
                "operation",
            )?,
            kubernetes_requests: counter(
                "kubernetes_requests_total",
                "Kubernetes API requests by verb.",
                "verb",
            )?,
            reconciles: counter("reconciles_total", "Reconciles by outcome.", "outcome")?,
            secrets_written: counter(
                "secrets_written_total",
                "Secrets written by action.",
                "action",
            )?,
            secret_write_failures: counter(
                "secret_write_failures_total",
                "Secret writes that failed, by reason.",
                "reason",
            )?,
            workload_restarts: counter(
                "workload_restarts_total",
                "Workloads restarted because a Secret they use changed, by kind.",
                "kind",
            )?,
            workload_restart_failures: counter(
                "workload_restart_failures_total",
                "Workload restarts that failed after retries, by kind.",
                "kind",
            )?,
            rollouts: counter(
                "rollouts_total",
                "Rollouts of restarted workloads followed to their end, by outcome (done, failed).",
                "outcome",
            )?,
            rotation_reverts: counter(
                "rotation_reverts_total",
                "Rotations whose rollout failed, by what credsync did (reverted, not_reverted).",
                "outcome",
            )?,
            keys_failed: gauge("keys_failed", "Credstash items that failed to decrypt.")?,
            names_skipped: gauge(
                "names_skipped",
                "Table names that do not map to a Secret key.",
            )?,
            key_conflicts: gauge(
                "key_conflicts",
                "Secret keys claimed by more than one table name.",
            )?,
            secrets_managed: gauge("secrets_managed", "Secrets credsync manages.")?,
            keys_managed: gauge("keys_managed", "Secret keys credsync manages.")?,
            snapshot_commits: plain_counter("snapshot_commits_total", "Snapshot commits written.")?,
            snapshot_failures: plain_counter(
                "snapshot_failures_total",
                "Snapshot writes that failed (nothing was applied).",
            )?,
            snapshot_push_failures: plain_counter(
                "snapshot_push_failures_total",
                "Snapshot pushes that failed or conflicted; retried on the next sync.",
            )?,
            stream_records: plain_counter("stream_records_total", "DynamoDB Stream records read.")?,
            secretsmanager_requests: counter(
                "secretsmanager_requests_total",
                "AWS Secrets Manager requests by operation.",
                "operation",
            )?,
            queue_messages: counter(
                "queue_messages_total",
                "SQS event messages by outcome.",
                "outcome",
            )?,
            sqs_requests: counter(
                "sqs_requests_total",
                "SQS requests by operation.",
                "operation",
            )?,
            queue_receive_failures: plain_counter(
                "queue_receive_failures_total",
                "SQS receive calls that failed (queue missing, access denied, unreachable).",
            )?,
            stream_enabled: gauge(
                "stream_enabled",
                "1 when a DynamoDB Stream is followed, 0 in schedule-only mode.",
            )?,
            stream_lag_seconds: {
                let g = prometheus::Gauge::new(
                    "credsync_stream_lag_seconds",
                    "Seconds from a stream record's creation to the start of its reconcile.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            reconciles_by_trigger: counter2(
                "reconciles_by_trigger_total",
                "Reconciles in `run`, by trigger and outcome.",
                ["trigger", "outcome"],
            )?,
            reconcile_duration: histogram(
                "credsync_reconcile_duration_seconds",
                "Reconcile wall time, by trigger.",
                "trigger",
                vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ],
            )?,
            aws_request_duration: histogram(
                "credsync_aws_request_duration_seconds",
                "Time from sending an AWS request to its response, by operation.",
                "operation",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )?,
            reconcile_timeouts: plain_counter(
                "reconcile_timeouts_total",
                "Reconciles cancelled for exceeding their timeout.",
            )?,
            drift_corrections: plain_counter(
                "drift_corrections_total",
                "Secrets restored after a hand edit or deletion of a managed key.",
            )?,
            http_requests: counter2(
                "http_requests_total",
                "HTTP requests by path and code.",
                ["path", "code"],
            )?,
            table_fetch_duration: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "credsync_table_fetch_duration_seconds",
                        "Time to read the Credstash table (Scan or Queries).",
                    )
                    .buckets(vec![
                        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            table_fetch_failing: gauge(
                "table_fetch_failing",
                "1 while the last read of the table failed, else 0.",
            )?,
            settings: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new("credsync_settings_info", "The settings in force (value 1)."),
                    &SETTINGS_LABELS,
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            leader: gauge("leader", "1 while this replica holds the leader Lease.")?,
            leader_transitions: plain_counter(
                "leader_transitions_total",
                "Leadership changes this replica saw.",
            )?,
            secrets_pinned: gauge("secrets_pinned", "Secrets pinned by a rollback.")?,
            secrets_pinned_differing: gauge(
                "secrets_pinned_differing",
                "Pinned Secrets whose table state differs from the pinned state.",
            )?,
            rollback_requests: counter(
                "rollback_requests_total",
                "Reviewed rollback requests by outcome: applied, refused, released (file removed, Secrets unpinned).",
                "outcome",
            )?,
            rollback_requests_refused: gauge(
                "rollback_requests_refused",
                "Rollback requests on the followed branch that are refused (see the log, Events and /plan).",
            )?,
            snapshot_remote_up: gauge(
                "snapshot_remote_up",
                "1 when the last fetch of the snapshot remote succeeded (with --request-poll-interval).",
            )?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub fn kms_calls(&self) -> u64 {
        self.kms_requests.with_label_values(&["Decrypt"]).get()
    }

    pub fn dynamodb_calls(&self, operation: &str) -> u64 {
        self.dynamodb_requests.with_label_values(&[operation]).get()
    }

    pub fn kubernetes_calls(&self, verb: &str) -> u64 {
        self.kubernetes_requests.with_label_values(&[verb]).get()
    }

    pub fn kubernetes_writes(&self) -> u64 {
        KUBERNETES_WRITE_VERBS
            .iter()
            .map(|v| self.kubernetes_calls(v))
            .sum()
    }

    /// A one-line summary of calls made, for the end of a one-shot command.
    pub fn call_summary(&self) -> String {
        format!(
            "kms_decrypt={} dynamodb_scan={} dynamodb_query={} kubernetes_reads={} kubernetes_writes={}",
            self.kms_calls(),
            self.dynamodb_calls("Scan"),
            self.dynamodb_calls("Query"),
            self.kubernetes_calls("list") + self.kubernetes_calls("get"),
            self.kubernetes_writes()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_prefix_and_sum_writes() {
        let m = Metrics::new().unwrap();
        m.kubernetes_requests.with_label_values(&["patch"]).inc();
        m.kubernetes_requests.with_label_values(&["create"]).inc();
        m.kubernetes_requests.with_label_values(&["list"]).inc();
        assert_eq!(m.kubernetes_writes(), 2);
        let text = m.render();
        assert!(
            text.contains("credsync_kubernetes_requests_total{verb=\"patch\"} 1"),
            "{text}"
        );
    }
}
