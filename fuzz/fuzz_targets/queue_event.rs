//! SQS message bodies, from whoever can send to the queue: whatever the
//! bytes, parsing ends, and a change it finds names something non-empty.
#![no_main]

use credsync::daemon::trigger::queue::events::{Change, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match parse(body) {
        Some(Change::Credstash(name)) | Some(Change::SecretsManager(name)) => {
            let _ = name.len();
        }
        None => {}
    }
});
