//! Errors as people read them: each layer says what it was doing, the
//! cause is its `source()`, and one line joins them.

use std::error::Error;

/// `err` and its sources on one line, `what: why: cause`. A source whose
/// text is already on the line is not repeated, and the Kubernetes client's
/// API error, which prints a debug dump, ends the line: the layer above it
/// has said what the API server answered.
pub fn chain(err: &dyn Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<kube::Error>()
            .is_some_and(|e| matches!(e, kube::Error::Api(_)))
        {
            break;
        }
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// [`chain`] for logs: `error = %Chain(&err)`.
pub struct Chain<'a>(pub &'a dyn Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the table")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("access denied")]
    struct Inner(#[source] std::io::Error);

    /// The chain of one error of each kind people meet: every layer with a
    /// cause hands it on through `source()`.
    #[test]
    fn snapshot_cluster_and_aws_errors_keep_their_causes() {
        use crate::aws_error::{AwsError, FailureClass};
        let snapshot = crate::snapshot::store::SnapshotError::Git {
            path: "/srv/snaps".into(),
            what: "fetching origin".into(),
            note: None,
            source: Some(git2::Error::from_str("unsupported URL protocol")),
        };
        assert!(snapshot.source().is_some_and(|s| s.is::<git2::Error>()));
        assert_eq!(
            chain(&snapshot),
            "snapshot repository /srv/snaps: fetching origin: unsupported URL protocol"
        );

        let status =
            kube::core::Status::failure("secrets \"db\" is forbidden", "Forbidden").with_code(403);
        let cluster = crate::cluster::ClusterError::Api {
            doing: "reading Secret team-a/db".into(),
            cause: "403 Forbidden: secrets \"db\" is forbidden".into(),
            error: kube::Error::Api(Box::new(status)),
        };
        assert!(cluster.source().is_some_and(|s| s.is::<kube::Error>()));
        // The client's debug dump is left out; the API server's words stay.
        assert_eq!(
            chain(&cluster),
            "Kubernetes API call failed while reading Secret team-a/db: 403 Forbidden: secrets \"db\" is forbidden"
        );

        let aws = crate::credstash::SourceError {
            table: "credential-store".into(),
            region: "eu-west-1".into(),
            hint: "table not found (check --table and --region)".into(),
            aws: AwsError {
                class: FailureClass::NotFound,
                code: Some("ResourceNotFoundException".into()),
                detail: "ResourceNotFoundException: Requested resource not found".into(),
            },
        };
        assert!(aws.source().is_some_and(|s| s.is::<AwsError>()));
        assert_eq!(
            chain(&aws),
            "cannot read Credstash table 'credential-store' in region eu-west-1: table not found \
             (check --table and --region): ResourceNotFoundException: Requested resource not found"
        );
    }

    #[test]
    fn each_layer_says_what_it_was_doing_and_repeats_are_left_out() {
        let err = Outer(Inner(std::io::Error::other("access denied")));
        assert_eq!(chain(&err), "reading the table: access denied");
        let err = Outer(Inner(std::io::Error::other("timed out")));
        assert_eq!(chain(&err), "reading the table: access denied: timed out");
    }
}
