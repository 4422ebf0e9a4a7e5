//! Go's formatting and parsing where sops' output depends on it.

use chrono::DateTime;

use crate::SopsError;

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round-trip digits,
/// never an exponent (Rust's `Display` for f64 does the same).
pub(crate) fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        f.to_string()
    }
}

/// Go's `strconv.ParseBool`.
pub(crate) fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The MAC's additional data: sops parses `lastmodified` and formats it
/// again with Go's `time.RFC3339` (no fraction; `Z` for UTC).
pub(crate) fn go_rfc3339(text: &str) -> Result<String, SopsError> {
    let time = DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
        SopsError::Malformed("sops.lastmodified is not an RFC 3339 time".to_owned())
    })?;
    Ok(if time.offset().local_minus_utc() == 0 {
        time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    })
}
