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
    let mut latest: Vec<RawItem> = Vec::with_capacity(pages.iter().map(Vec::len).sum());
    let mut malformed = Vec::new();
    for page in pages {
        for item in page {
            match item {
                Ok(raw) => latest.push(raw),
                Err(failure) => malformed.push(failure),
            }
        }
    }
    Ok(keep_latest(latest, malformed))
}

/// Each name's greatest version (DynamoDB's string order, as `credstash
/// get`), and the malformed items that are not older than a good one.
fn keep_latest(mut latest: Vec<RawItem>, mut malformed: Vec<ItemFailure>) -> Scanned {
    // Sorted by name, newest first, and cut to each name's first: the items
    // are moved, never copied, and no name is held twice (a map by name
    // took a copy of every name beside the items).
    latest.sort_unstable_by(|a, b| {
        a.id.name
            .cmp(&b.id.name)
            .then_with(|| b.id.version.cmp(&a.id.version))
    });
    latest.dedup_by(|later, first| later.id.name == first.id.name);
    latest.shrink_to_fit();
    // A malformed old version does not matter if a newer good one exists.
    malformed.retain(|f| {
        match latest.binary_search_by(|item| item.id.name.as_str().cmp(&f.id.name)) {
            Ok(good) => latest[good].id.version < f.id.version,
            Err(_) => true,
        }
    });
    Scanned { latest, malformed }
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
        .into_iter()
        .next()
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
    Ok(out.item.map(RawItem::from_attributes))
}

async fn scan_segment(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    segment: i32,
    total: i32,
    metrics: &Metrics,
) -> Result<Vec<Result<RawItem, ItemFailure>>, TableReadError> {
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
        // Each page is read into items as it arrives: a segment's worth of
        // the SDK's attribute maps held until the Scan ended was 6.3 MiB
        // of a 14.6 MiB heap peak at 10,000 items.
        items.extend(
            page.items
                .unwrap_or_default()
                .into_iter()
                .map(RawItem::from_attributes),
        );
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            _ => return Ok(items),
        }
    }
}

impl RawItem {
    /// Reads an item as DynamoDB returned it (its strings move, not copied);
    /// anything credstash would not have written is an [`ItemFailure`]
    /// naming the missing attribute.
    pub fn from_attributes(item: HashMap<String, AttributeValue>) -> Result<Self, ItemFailure> {
        parse_item(item)
    }
}

fn parse_item(mut item: HashMap<String, AttributeValue>) -> Result<RawItem, ItemFailure> {
    let mut text = |name: &str| match item.remove(name) {
        Some(AttributeValue::S(text)) => Some(text),
        _ => None,
    };
    let (name, version) = (text("name"), text("version"));
    let (key, contents, digest) = (text("key"), text("contents"), text("digest"));
    let absent = match (&name, &version) {
        (None, _) => Some("name"),
        (_, None) => Some("version"),
        _ => None,
    };
    let id = ItemId {
        name: name.unwrap_or_else(|| "<no name>".to_owned()),
        version: version.unwrap_or_else(|| "<no version>".to_owned()),
    };
    let missing = |what: &str| ItemFailure {
        id: id.clone(),
        reason: format!("item has no '{what}' attribute: not written by credstash"),
    };
    if let Some(what) = absent {
        return Err(missing(what));
    }
    let hmac = match item.remove("hmac") {
        Some(AttributeValue::S(s)) => s.into_bytes(),
        Some(AttributeValue::B(b)) => b.into_inner(),
        _ => return Err(missing("hmac")),
    };
    Ok(RawItem {
        key: key.ok_or_else(|| missing("key"))?,
        contents: contents.ok_or_else(|| missing("contents"))?,
        hmac,
        digest: digest.unwrap_or_else(|| "SHA256".to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, version: &str) -> RawItem {
        RawItem {
            id: ItemId {
                name: name.to_owned(),
                version: version.to_owned(),
            },
            key: String::new(),
            contents: String::new(),
            hmac: Vec::new(),
            digest: "SHA256".to_owned(),
        }
    }

    fn broken(name: &str, version: &str) -> ItemFailure {
        ItemFailure {
            id: item(name, version).id,
            reason: "item has no 'key' attribute".to_owned(),
        }
    }

    #[test]
    fn each_name_keeps_its_greatest_version_and_only_newer_failures() {
        let scanned = keep_latest(
            vec![
                item("b", "0000000000000000001"),
                item("a", "0000000000000000002"),
                item("b", "0000000000000000003"),
                item("a", "0000000000000000001"),
                item("c", "0000000000000000001"),
            ],
            vec![
                broken("a", "0000000000000000001"),
                broken("c", "0000000000000000002"),
                broken("d", "0000000000000000001"),
            ],
        );
        let ids: Vec<String> = scanned.latest.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "a@0000000000000000002",
                "b@0000000000000000003",
                "c@0000000000000000001"
            ]
        );
        let failed: Vec<String> = scanned.malformed.iter().map(|f| f.id.to_string()).collect();
        assert_eq!(failed, ["c@0000000000000000002", "d@0000000000000000001"]);
    }
}
