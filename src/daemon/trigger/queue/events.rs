//! What an SQS message body says changed. Bodies are untrusted: only the
//! fields named here are read, and nothing of a body is ever logged.
//!
//! Understood:
//! - a DynamoDB stream record, as EventBridge Pipes delivers it
//!   (`eventSource: aws:dynamodb`, the Credstash name in `dynamodb.Keys.name.S`);
//! - a Secrets Manager change, as EventBridge delivers CloudTrail's record
//!   (`source: aws.secretsmanager`; PutSecretValue, UpdateSecret,
//!   CreateSecret, DeleteSecret, RestoreSecret, RotationSucceeded);
//! - either inside an SNS notification (`Type: Notification`, the event as
//!   the `Message` string).

use serde_json::Value;

/// The Secrets Manager calls that change what a Secret should hold.
const SECRETS_MANAGER_EVENTS: [&str; 6] = [
    "PutSecretValue",
    "UpdateSecret",
    "CreateSecret",
    "DeleteSecret",
    "RestoreSecret",
    "RotationSucceeded",
];

/// A change one message announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A Credstash item changed: reconcile what its name maps to.
    Credstash(String),
    /// A Secrets Manager secret (by name or ARN) changed.
    SecretsManager(String),
}

/// Reads one message body; None if it is none of the understood shapes.
pub fn parse(body: &str) -> Option<Change> {
    let value: Value = serde_json::from_str(body).ok()?;
    parse_value(&value, 0)
}

fn parse_value(value: &Value, depth: u8) -> Option<Change> {
    // An SNS envelope holds the event as a string (once; never nested deeper).
    if value["Type"] == "Notification" && depth == 0 {
        let inner: Value = serde_json::from_str(value["Message"].as_str()?).ok()?;
        return parse_value(&inner, depth + 1);
    }
    if value["eventSource"] == "aws:dynamodb" {
        let name = value["dynamodb"]["Keys"]["name"]["S"].as_str()?;
        return Some(Change::Credstash(name.to_owned()));
    }
    if value["source"] == "aws.secretsmanager" {
        let detail = &value["detail"];
        let event = detail["eventName"].as_str()?;
        if !SECRETS_MANAGER_EVENTS.contains(&event) {
            return None;
        }
        let id = [
            &detail["requestParameters"]["secretId"],
            &detail["requestParameters"]["name"],
            &detail["additionalEventData"]["SecretId"],
            &detail["responseElements"]["arn"],
        ]
        .into_iter()
        .find_map(|v| v.as_str())?;
        return Some(Change::SecretsManager(id.to_owned()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cloudtrail(event: &str, detail: Value) -> Value {
        let mut detail = detail;
        detail["eventName"] = json!(event);
        detail["eventSource"] = json!("secretsmanager.amazonaws.com");
        json!({
            "version": "0",
            "detail-type": "AWS API Call via CloudTrail",
            "source": "aws.secretsmanager",
            "detail": detail,
        })
    }

    #[test]
    fn a_pipes_stream_record_names_the_credstash_item() {
        let record = json!({
            "eventName": "MODIFY",
            "eventSource": "aws:dynamodb",
            "dynamodb": {"Keys": {"name": {"S": "team-a/db/PASSWORD"}, "version": {"S": "0000000000000000002"}}},
        });
        assert_eq!(
            parse(&record.to_string()),
            Some(Change::Credstash("team-a/db/PASSWORD".into()))
        );
    }

    #[test]
    fn cloudtrail_events_name_the_secret_however_the_call_did() {
        let put = cloudtrail(
            "PutSecretValue",
            json!({"requestParameters": {"secretId": "team-a/db"}}),
        );
        assert_eq!(
            parse(&put.to_string()),
            Some(Change::SecretsManager("team-a/db".into()))
        );
        let create = cloudtrail(
            "CreateSecret",
            json!({"requestParameters": {"name": "team-a/api"}}),
        );
        assert_eq!(
            parse(&create.to_string()),
            Some(Change::SecretsManager("team-a/api".into()))
        );
        let rotated = json!({
            "detail-type": "AWS Service Event via CloudTrail",
            "source": "aws.secretsmanager",
            "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": "arn:aws:secretsmanager:us-east-1:1:secret:x"}},
        });
        assert_eq!(
            parse(&rotated.to_string()),
            Some(Change::SecretsManager(
                "arn:aws:secretsmanager:us-east-1:1:secret:x".into()
            ))
        );
        // Reads change nothing.
        let read = cloudtrail(
            "GetSecretValue",
            json!({"requestParameters": {"secretId": "team-a/db"}}),
        );
        assert_eq!(parse(&read.to_string()), None);
    }

    #[test]
    fn an_sns_envelope_is_opened_once() {
        let event = cloudtrail(
            "UpdateSecret",
            json!({"requestParameters": {"secretId": "team-a/db"}}),
        );
        let sns = json!({"Type": "Notification", "MessageId": "m-1", "Message": event.to_string()});
        assert_eq!(
            parse(&sns.to_string()),
            Some(Change::SecretsManager("team-a/db".into()))
        );
        let twice = json!({"Type": "Notification", "Message": sns.to_string()});
        assert_eq!(parse(&twice.to_string()), None);
    }

    #[test]
    fn anything_else_is_not_understood() {
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"eventSource":"aws:dynamodb"}"#,
            r#"{"Type":"Notification","Message":"{not json"}"#,
            r#"{"source":"aws.secretsmanager","detail":{"eventName":"PutSecretValue"}}"#,
        ] {
            assert_eq!(parse(body), None, "{body}");
        }
    }
}
