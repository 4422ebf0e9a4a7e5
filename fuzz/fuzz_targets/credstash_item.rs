//! Credstash items come from a table anyone with write access can fill:
//! reading the attributes, decoding the envelope and checking the HMAC must
//! refuse anything malformed without panicking, and never yield plaintext
//! for a wrong HMAC.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use credsync::credstash::RawItem;
use credsync::credstash::crypto::{DataKey, Envelope};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Attr {
    S(String),
    B(Vec<u8>),
    N(String),
    Bool(bool),
}

impl Attr {
    fn value(self) -> AttributeValue {
        match self {
            Attr::S(s) => AttributeValue::S(s),
            Attr::B(b) => AttributeValue::B(Blob::new(b)),
            Attr::N(n) => AttributeValue::N(n),
            Attr::Bool(b) => AttributeValue::Bool(b),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Item {
    name: Option<Attr>,
    version: Option<Attr>,
    key: Option<Attr>,
    contents: Option<Attr>,
    hmac: Option<Attr>,
    digest: Option<Attr>,
    data_key: [u8; 64],
}

fuzz_target!(|item: Item| {
    let mut attributes = HashMap::new();
    for (name, attr) in [
        ("name", item.name),
        ("version", item.version),
        ("key", item.key),
        ("contents", item.contents),
        ("hmac", item.hmac),
        ("digest", item.digest),
    ] {
        if let Some(attr) = attr {
            attributes.insert(name.to_owned(), attr.value());
        }
    }
    let Ok(raw) = RawItem::from_attributes(attributes) else {
        return;
    };
    let Ok(envelope) = Envelope::decode(&raw.key, &raw.contents, &raw.hmac, raw.digest()) else {
        return;
    };
    let key = DataKey::new(item.data_key.to_vec()).expect("64 bytes");
    let _ = envelope.open(&key);
});
