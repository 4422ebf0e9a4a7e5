//! The HTTP client of every AWS call: rustls on ring (Cargo.toml says why),
//! each request timed into `credsync_aws_request_duration_seconds`, so a
//! slow reconcile shows whether the time went to AWS or to credsync.

use std::sync::Arc;
use std::time::Instant;

use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::metrics::Metrics;

/// The operations credsync calls, as their `X-Amz-Target` names them; any
/// other is counted as `other` (the label set stays bounded).
const OPERATIONS: [&str; 17] = [
    "Scan",
    "Query",
    "GetItem",
    "DescribeTable",
    "Decrypt",
    "DescribeStream",
    "GetShardIterator",
    "GetRecords",
    "ListSecrets",
    "BatchGetSecretValue",
    "GetSecretValue",
    "DescribeSecret",
    "ReceiveMessage",
    "DeleteMessageBatch",
    "DeleteMessage",
    "GetQueueUrl",
    "AssumeRoleWithWebIdentity",
];

/// The client for the AWS SDK's configuration; `metrics` (None: not timed)
/// gets each request's duration.
pub fn aws_http_client(metrics: Option<Arc<Metrics>>) -> SharedHttpClient {
    let tls = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    match metrics {
        Some(metrics) => SharedHttpClient::new(Timed {
            inner: tls,
            metrics,
        }),
        None => tls,
    }
}

struct Timed<T> {
    inner: T,
    metrics: Arc<Metrics>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Timed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl HttpClient for Timed<SharedHttpClient> {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Timed {
            inner: self.inner.http_connector(settings, components),
            metrics: self.metrics.clone(),
        })
    }
}

impl HttpConnector for Timed<SharedHttpConnector> {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = operation_of(request.headers().get("x-amz-target"));
        let histogram = self
            .metrics
            .aws_request_duration
            .with_label_values(&[operation]);
        let response = self.inner.call(request);
        let started = Instant::now();
        HttpConnectorFuture::new(async move {
            let answer = response.await;
            histogram.observe(started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// `DynamoDB_20120810.Query` -> `Query`; unknown or absent -> `other`.
fn operation_of(target: Option<&str>) -> &'static str {
    let name = target
        .and_then(|t| t.rsplit_once('.'))
        .map_or("", |(_, op)| op);
    OPERATIONS
        .iter()
        .find(|op| **op == name)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_come_from_the_target_header_and_stay_a_known_set() {
        assert_eq!(operation_of(Some("DynamoDB_20120810.Query")), "Query");
        assert_eq!(operation_of(Some("TrentService.Decrypt")), "Decrypt");
        assert_eq!(
            operation_of(Some("secretsmanager.DescribeSecret")),
            "DescribeSecret"
        );
        assert_eq!(
            operation_of(Some("AmazonSQS.ReceiveMessage")),
            "ReceiveMessage"
        );
        assert_eq!(operation_of(Some("DynamoDB_20120810.PutItem")), "other");
        assert_eq!(operation_of(Some("no-dot")), "other");
        assert_eq!(operation_of(None), "other");
    }
}
