//! Stream records to changed names: only `Keys["name"]` is ever read.

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use chrono::{DateTime, Utc};

/// The Credstash hash key: what a record's `Keys` names the item by.
pub(crate) const NAME_KEY: &str = "name";

/// What a page of stream records says: which names changed, the oldest
/// change, and where to resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecordsRead {
    pub names: Vec<String>,
    pub oldest: Option<DateTime<Utc>>,
    /// The last sequence number of the page, if any record had one.
    pub last_sequence: Option<String>,
    /// Records without a string `name` key (ignored).
    pub nameless: usize,
}

/// Reads one GetRecords page; records are untrusted input, so anything
/// missing or malformed is skipped, never a reason to stop.
pub fn read_records(records: &[Record]) -> RecordsRead {
    let mut read = RecordsRead::default();
    for record in records {
        if let Some(seq) = record.dynamodb().and_then(|d| d.sequence_number()) {
            read.last_sequence = Some(seq.to_owned());
        }
        match record_name(record) {
            Some(name) => read.names.push(name.to_owned()),
            None => read.nameless += 1,
        }
        if let Some(t) = record_time(record) {
            read.oldest = Some(read.oldest.map_or(t, |o| o.min(t)));
        }
    }
    read
}

/// The Credstash name of a record (`Keys["name"].S`); nothing else is read.
pub(crate) fn record_name(record: &Record) -> Option<&str> {
    match record.dynamodb()?.keys()?.get(NAME_KEY)? {
        AttributeValue::S(name) => Some(name),
        _ => None,
    }
}

pub(crate) fn record_time(record: &Record) -> Option<DateTime<Utc>> {
    let t = record.dynamodb()?.approximate_creation_date_time()?;
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_hash_key_only() {
        use aws_sdk_dynamodbstreams::types::StreamRecord;
        let record = Record::builder()
            .dynamodb(
                StreamRecord::builder()
                    .keys("name", AttributeValue::S("ns/app/key".into()))
                    .keys("version", AttributeValue::S("0000000000000000001".into()))
                    .new_image("contents", AttributeValue::S("ciphertext".into()))
                    .approximate_creation_date_time(aws_smithy_types::DateTime::from_secs(7))
                    .build(),
            )
            .build();
        assert_eq!(record_name(&record), Some("ns/app/key"));
        assert_eq!(record_time(&record), DateTime::from_timestamp(7, 0));
        let nameless = Record::builder()
            .dynamodb(
                StreamRecord::builder()
                    .keys("name", AttributeValue::N("1".into()))
                    .build(),
            )
            .build();
        assert_eq!(record_name(&nameless), None);
        assert_eq!(record_name(&Record::builder().build()), None);
    }
}
