//! `POST /sync?namespace=..&secret=..` from anyone who reaches the port:
//! decoded as axum decodes it, then checked. A scope that is accepted must
//! be one credsync can map names into.
#![no_main]

use std::collections::HashMap;

use credsync::manifest::map_name;
use credsync::daemon::server::parse_scope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = serde_urlencoded::from_bytes::<HashMap<String, String>>(data) else {
        return;
    };
    if let Ok(Some((namespace, secret))) = parse_scope(&query) {
        let probe = format!("{namespace}/{}/KEY", secret.as_deref().unwrap_or("probe"));
        assert!(map_name(&probe).is_ok(), "{probe}");
    }
});
