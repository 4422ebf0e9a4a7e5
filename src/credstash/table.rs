//! Reading the Credstash table: a parallel segmented Scan, latest version per name.

use std::collections::HashMap;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::scan::ScanError;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::try_join_all;

use crate::aws_error::{AwsError, FailureClass};
use crate::metrics::Metrics;
use crate::source::{ItemFailure, ItemId};

/// An item as stored: still encrypted.
#[derive(Debug, Clone)]
pub struct RawItem {
    pub id: ItemId,
    /// base64 of the KMS-wrapped data key.
    pub key: String,
    /// base64 of the AES-CTR ciphertext.
    pub contents: String,
    /// ASCII hex of the HMAC (stored as S or as B).
    pub hmac: Vec<u8>,
    pub digest: String,
}

/// The latest version of every name, and the items too broken to read.
#[derive(Debug, Default)]
pub struct Scanned {
    pub latest: Vec<RawItem>,
    pub malformed: Vec<ItemFailure>,
}

/// Scans every segment in parallel and keeps the greatest version of each
/// name in DynamoDB's string order, as `credstash get` does.
pub(super) async fn scan_latest(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    segments: i32,
    metrics: &Metrics,
) -> Result<Scanned, TableReadError> {
    let segments = segments.max(1);
    let pages = try_join_all(
        (0..segments).map(|segment| scan_segment(client, table, segment, segments, metrics)),
    )
    .await?;
    let mut latest: HashMap<String, RawItem> = HashMap::new();
    let mut malformed = Vec::new();
    for item in pages.into_iter().flatten() {
        match RawItem::from_attributes(&item) {
            Ok(raw) => match latest.get(&raw.id.name) {
                Some(seen) if seen.id.version >= raw.id.version => {}
                _ => {
                    latest.insert(raw.id.name.clone(), raw);
                }
            },
            Err(failure) => malformed.push(failure),
        }
    }
    // A malformed old version does not matter if a newer good one exists.
    malformed.retain(|f| {
        latest
            .get(&f.id.name)
            .is_none_or(|good| good.id.version < f.id.version)
    });
    Ok(Scanned {
        latest: latest.into_values().collect(),
        malformed,
    })
}

/// The latest version of one name: a Query, newest first, one item. No Scan.
pub(super) async fn query_latest(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    name: &str,
    metrics: &Metrics,
) -> Result<Option<Result<RawItem, ItemFailure>>, TableReadError> {
    metrics
        .dynamodb_requests
        .with_label_values(&["Query"])
        .inc();
    let out = client
        .query()
        .table_name(table)
        .key_condition_expression("#n = :name")
        .expression_attribute_names("#n", "name")
        .expression_attribute_values(":name", AttributeValue::S(name.to_owned()))
        .scan_index_forward(false)
        .limit(1)
        .send()
        .await
        .map_err(|err| {
            describe_table_error(
                &AwsError::from_sdk(&err),
                "access denied (the credentials need dynamodb:Query on the table)",
                "DynamoDB Query failed",
            )
        })?;
    Ok(out
        .items
        .unwrap_or_default()
        .first()
        .map(RawItem::from_attributes))
}

/// One stored version of `name`: a consistent GetItem (None: not stored).
pub(super) async fn get_version(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    id: &ItemId,
    metrics: &Metrics,
) -> Result<Option<Result<RawItem, ItemFailure>>, TableReadError> {
    metrics
        .dynamodb_requests
        .with_label_values(&["GetItem"])
        .inc();
    let out = client
        .get_item()
        .table_name(table)
        .key("name", AttributeValue::S(id.name.clone()))
        .key("version", AttributeValue::S(id.version.clone()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|err| {
            describe_table_error(
                &AwsError::from_sdk(&err),
                "access denied (restoring needs dynamodb:GetItem on the table)",
                "DynamoDB GetItem failed",
            )
        })?;
    Ok(out.item.as_ref().map(RawItem::from_attributes))
}

async fn scan_segment(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    segment: i32,
    total: i32,
    metrics: &Metrics,
) -> Result<Vec<HashMap<String, AttributeValue>>, TableReadError> {
    let mut items = Vec::new();
    let mut start_key = None;
    loop {
        metrics.dynamodb_requests.with_label_values(&["Scan"]).inc();
        let page = client
            .scan()
            .table_name(table)
            .segment(segment)
            .total_segments(total)
            .set_exclusive_start_key(start_key)
            .send()
            .await
            .map_err(describe_scan_error)?;
        items.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            _ => return Ok(items),
        }
    }
}

impl RawItem {
    /// Reads an item as DynamoDB returned it; anything credstash would not
    /// have written is an [`ItemFailure`] naming the missing attribute.
    pub fn from_attributes(item: &HashMap<String, AttributeValue>) -> Result<Self, ItemFailure> {
        parse_item(item)
    }
}

fn parse_item(item: &HashMap<String, AttributeValue>) -> Result<RawItem, ItemFailure> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let id = ItemId {
        name: text("name").unwrap_or_else(|| "<no name>".to_owned()),
        version: text("version").unwrap_or_else(|| "<no version>".to_owned()),
    };
    let missing = |what: &str| ItemFailure {
        id: id.clone(),
        reason: format!("item has no '{what}' attribute: not written by credstash"),
    };
    if text("name").is_none() {
        return Err(missing("name"));
    }
    if text("version").is_none() {
        return Err(missing("version"));
    }
    let hmac = match item.get("hmac") {
        Some(AttributeValue::S(s)) => s.as_bytes().to_vec(),
        Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
        _ => return Err(missing("hmac")),
    };
    Ok(RawItem {
        key: text("key").ok_or_else(|| missing("key"))?,
        contents: text("contents").ok_or_else(|| missing("contents"))?,
        hmac,
        digest: text("digest").unwrap_or_else(|| "SHA256".to_owned()),
        id,
    })
}

/// A failed read of the table: what to check, and the AWS error it came
/// from, read into its class and code.
#[derive(Debug)]
pub(super) struct TableReadError {
    pub hint: String,
    pub aws: AwsError,
}

/// One line naming the cause of a failed DynamoDB call and what to do.
fn describe_scan_error(err: SdkError<ScanError, HttpResponse>) -> TableReadError {
    describe_table_error(
        &AwsError::from_sdk(&err),
        "access denied (the credentials need dynamodb:Scan and dynamodb:Query on the table)",
        "DynamoDB Scan failed",
    )
}

/// A table read's failure: a missing table, missing rights (`denied`
/// names the actions), or `otherwise`.
fn describe_table_error(err: &AwsError, denied: &str, otherwise: &str) -> TableReadError {
    let hint = match err.class {
        FailureClass::NotFound => "table not found (check --table and --region)",
        FailureClass::Denied => denied,
        _ => otherwise,
    };
    TableReadError {
        hint: hint.to_owned(),
        aws: err.clone(),
    }
}
