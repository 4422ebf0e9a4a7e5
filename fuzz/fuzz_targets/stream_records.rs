//! DynamoDB Stream records: credsync reads the `name` key, the time and the
//! sequence number of each; anything missing or of another type is skipped,
//! and every record is either a name or counted as nameless.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, StreamRecord};
use aws_smithy_types::{Blob, DateTime};
use credsync::daemon::trigger::stream::read_records;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    S(String),
    N(String),
    B(Vec<u8>),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Rec {
    name: Name,
    other_keys: Vec<(String, String)>,
    seconds: Option<i64>,
    nanos: u32,
    sequence: Option<String>,
    no_dynamodb: bool,
}

fuzz_target!(|records: Vec<Rec>| {
    let built: Vec<Record> = records
        .iter()
        .map(|rec| {
            if rec.no_dynamodb {
                return Record::builder().build();
            }
            let mut keys: HashMap<String, AttributeValue> = rec
                .other_keys
                .iter()
                .map(|(k, v)| (k.clone(), AttributeValue::S(v.clone())))
                .collect();
            match &rec.name {
                Name::S(s) => keys.insert("name".into(), AttributeValue::S(s.clone())),
                Name::N(n) => keys.insert("name".into(), AttributeValue::N(n.clone())),
                Name::B(b) => keys.insert("name".into(), AttributeValue::B(Blob::new(b.clone()))),
                Name::Missing => keys.remove("name"),
            };
            let mut stream = StreamRecord::builder().set_keys(Some(keys));
            if let Some(seconds) = rec.seconds {
                stream = stream.approximate_creation_date_time(DateTime::from_secs_and_nanos(
                    seconds,
                    rec.nanos % 1_000_000_000,
                ));
            }
            if let Some(seq) = &rec.sequence {
                stream = stream.sequence_number(seq.clone());
            }
            Record::builder().dynamodb(stream.build()).build()
        })
        .collect();
    let read = read_records(&built);
    assert_eq!(read.names.len() + read.nameless, built.len());
});
