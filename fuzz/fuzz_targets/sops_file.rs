//! A snapshot file is read from a repository others can push to: the
//! outline (no identity) and the full decrypt with the MAC check must
//! refuse anything malformed without panicking.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use sops_age::{self as sops, Identities};
use libfuzzer_sys::fuzz_target;

static IDENTITY: LazyLock<Identities> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("identity.agekey");
    Identities::from_file(&path).expect("fuzz/identity.agekey")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let outline = sops::outline(&text);
    let opened = sops::open(&text, &IDENTITY);
    // A file that decrypts has an outline too, naming the same Secret.
    if let Ok(doc) = opened {
        let outline = outline.expect("a file that opens has an outline");
        assert_eq!(outline.namespace, doc.namespace);
        assert_eq!(outline.name, doc.name);
    }
});
