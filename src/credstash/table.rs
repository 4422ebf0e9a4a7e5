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

/// An item as stored: still encrypted. Every item of the table is held at
/// once while a Scan runs, so the stored fields are boxed (no spare
/// capacity, 16 bytes each instead of 24) and the usual digest takes no
/// allocation: at 100,000 items this was a third of the Scan's peak.
#[derive(Debug, Clone)]
pub struct RawItem {
    pub id: ItemId,
    /// base64 of the KMS-wrapped data key.
    pub key: Box<str>,
    /// base64 of the AES-CTR ciphertext.
    pub contents: Box<str>,
    /// ASCII hex of the HMAC (stored as S or as B).
    pub hmac: Box<[u8]>,
    /// The digest's name when it is not credstash's default.
    pub other_digest: Option<Box<str>>,
}

/// The digest credstash records when an item names none.
const DEFAULT_DIGEST: &str = "SHA256";

impl RawItem {
    /// The digest credstash recorded for the HMAC.
    pub fn digest(&self) -> &str {
        self.other_digest.as_deref().unwrap_or(DEFAULT_DIGEST)
    }
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
    let parts = try_join_all(
        (0..segments).map(|segment| scan_segment(client, table, segment, segments, metrics)),
    )
    .await?;
    // Each segment is already cut to its latest versions (DynamoDB keeps a
    // name's versions in one segment), so this copy holds each item once;
    // the second cut only matters if a store spreads a name over segments.
    let mut latest = Vec::with_capacity(parts.iter().map(|part| part.latest.len()).sum());
    let mut malformed = Vec::new();
    for part in parts {
        latest.extend(part.latest);
        malformed.extend(part.malformed);
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
) -> Result<Scanned, TableReadError> {
    let mut items = Vec::new();
    let mut malformed = Vec::new();
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
        for item in page.items.unwrap_or_default() {
            match RawItem::from_attributes(item) {
                Ok(raw) => items.push(raw),
                Err(failure) => malformed.push(failure),
            }
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start_key = Some(key),
            // Cut and shrunk here: the growth slack of every segment held
            // until all were read was half the Scan's item memory.
            _ => return Ok(keep_latest(items, malformed)),
        }
    }
}

impl RawItem {
    /// Reads an item as DynamoDB returned it (its strings move, boxed);
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
        key: key.ok_or_else(|| missing("key"))?.into_boxed_str(),
        contents: contents
            .ok_or_else(|| missing("contents"))?
            .into_boxed_str(),
        hmac: hmac.into_boxed_slice(),
        other_digest: digest
            .filter(|name| name != DEFAULT_DIGEST)
            .map(String::into_boxed_str),
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
            key: "".into(),
            contents: "".into(),
            hmac: Box::default(),
            other_digest: None,
        }
    }

    fn broken(name: &str, version: &str) -> ItemFailure {
        ItemFailure {
            id: item(name, version).id,
            reason: "item has no 'key' attribute".to_owned(),
        }
    }

    fn stored(digest: Option<&str>) -> HashMap<String, AttributeValue> {
        let mut item: HashMap<String, AttributeValue> = [
            ("name", "app.db"),
            ("version", "0000000000000000001"),
            ("key", "a2V5"),
            ("contents", "Y29udGVudHM="),
            ("hmac", "00ff"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), AttributeValue::S(v.to_owned())))
        .collect();
        if let Some(digest) = digest {
            item.insert("digest".to_owned(), AttributeValue::S(digest.to_owned()));
        }
        item
    }

    #[test]
    fn an_item_keeps_its_fields_and_names_a_digest_only_when_not_the_default()
    -> Result<(), ItemFailure> {
        let plain = RawItem::from_attributes(stored(None))?;
        assert_eq!(plain.id.to_string(), "app.db@0000000000000000001");
        assert_eq!((&*plain.key, &*plain.contents), ("a2V5", "Y29udGVudHM="));
        assert_eq!(&*plain.hmac, b"00ff");
        assert_eq!(plain.digest(), "SHA256");
        assert_eq!(plain.other_digest, None);
        let named_default = RawItem::from_attributes(stored(Some("SHA256")))?;
        assert_eq!(named_default.other_digest, None);
        let other = RawItem::from_attributes(stored(Some("SHA512")))?;
        assert_eq!(other.digest(), "SHA512");
        let mut no_key = stored(None);
        no_key.remove("key");
        let failure = RawItem::from_attributes(no_key).unwrap_err();
        assert!(failure.reason.contains("'key'"), "{}", failure.reason);
        Ok(())
    }

    #[test]
    fn cutting_each_segment_first_gives_what_one_cut_of_the_whole_table_gives() {
        // A name whose versions (and a newer broken one) sit in two
        // segments, as a store that spread them would return.
        let items = || {
            (
                vec![
                    item("a", "0000000000000000003"),
                    item("b", "0000000000000000001"),
                ],
                vec![
                    item("a", "0000000000000000001"),
                    item("b", "0000000000000000004"),
                ],
            )
        };
        let failures = || {
            (
                vec![broken("b", "0000000000000000002")],
                vec![
                    broken("a", "0000000000000000004"),
                    broken("c", "0000000000000000001"),
                ],
            )
        };
        let ids = |scanned: &Scanned| {
            let latest: Vec<String> = scanned.latest.iter().map(|i| i.id.to_string()).collect();
            let failed: Vec<String> = scanned.malformed.iter().map(|f| f.id.to_string()).collect();
            (latest, failed)
        };
        let ((first, second), (first_bad, second_bad)) = (items(), failures());
        let whole = keep_latest(
            first.into_iter().chain(second).collect(),
            first_bad.into_iter().chain(second_bad).collect(),
        );
        let ((first, second), (first_bad, second_bad)) = (items(), failures());
        let (one, two) = (
            keep_latest(first, first_bad),
            keep_latest(second, second_bad),
        );
        let merged = keep_latest(
            one.latest.into_iter().chain(two.latest).collect(),
            one.malformed.into_iter().chain(two.malformed).collect(),
        );
        assert_eq!(ids(&merged), ids(&whole));
        assert_eq!(
            ids(&whole),
            (
                vec![
                    "a@0000000000000000003".to_owned(),
                    "b@0000000000000000004".to_owned()
                ],
                vec![
                    "a@0000000000000000004".to_owned(),
                    "c@0000000000000000001".to_owned()
                ],
            )
        );
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
