//! One reading of a failed AWS call, shared by the table reader, KMS and the
//! stream follower: what kind of failure it is (what to do next) and one line
//! that names the cause. AWS error messages name resources, never item
//! values, so the line is safe to log and to return.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// What a failed call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// A stream shard iterator older than 15 minutes: re-open it.
    Expired,
    /// A stream iterator before the 24 h trim horizon: re-open at TRIM_HORIZON.
    Trimmed,
    /// Table, stream, shard or key does not exist (any more).
    NotFound,
    /// Throttling, a server-side error or an unreadable answer: back off and retry.
    Throttled,
    /// Credentials or permissions.
    Denied,
    /// No answer at all: network, endpoint or region.
    Unreachable,
    /// Anything else.
    Other,
}

/// A failed AWS call, read once.
#[derive(Debug, Clone)]
pub struct AwsError {
    pub class: FailureClass,
    /// The service's error code (`ResourceNotFoundException`, ...), if it answered.
    pub code: Option<String>,
    /// `code: message`, `HTTP status`, or what to check and the error chain
    /// of a call that got no answer.
    pub detail: String,
}

impl AwsError {
    pub fn from_sdk<E>(err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code();
                let detail = match (code, service.err().message()) {
                    (Some(code), Some(message)) => format!("{code}: {message}"),
                    (Some(code), None) => code.to_owned(),
                    _ => format!("HTTP {status}"),
                };
                Self {
                    class: classify(code, Some(status)),
                    code: code.map(str::to_owned),
                    detail,
                }
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Self {
                class: FailureClass::Unreachable,
                code: None,
                detail: format!(
                    "endpoint unreachable (check network, AWS_ENDPOINT_URL and region): {}",
                    crate::errors::chain(err)
                ),
            },
            SdkError::ResponseError(_) => Self {
                class: FailureClass::Throttled,
                code: None,
                detail: format!("unreadable response: {}", crate::errors::chain(err)),
            },
            other => Self {
                class: FailureClass::Other,
                code: None,
                detail: crate::errors::chain(other),
            },
        }
    }

    /// `hint: detail`, where `hint` says what to check; a call that got no
    /// answer already says to check the network and the endpoint.
    pub fn line(&self, hint: &str) -> String {
        match self.class {
            FailureClass::Unreachable => self.detail.clone(),
            _ => format!("{hint}: {}", self.detail),
        }
    }

    /// Whether the service answered with this error code.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// AWS's own words: the last link of an error's chain.
impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for AwsError {}

/// The class of an error code and HTTP status, as DynamoDB, Streams and KMS use them.
pub fn classify(code: Option<&str>, status: Option<u16>) -> FailureClass {
    match (code, status) {
        (Some("ExpiredIteratorException"), _) => FailureClass::Expired,
        (Some("TrimmedDataAccessException"), _) => FailureClass::Trimmed,
        (Some("ResourceNotFoundException" | "NotFoundException"), _) => FailureClass::NotFound,
        (
            Some(
                "LimitExceededException"
                | "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "KMSInternalException",
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            classify(Some("NotFoundException"), Some(400)),
            FailureClass::NotFound,
            "KMS says NotFoundException"
        );
    }
}
