//! Secret bytes that cannot leak through formatting.
//!
//! Every decrypted value passes through [`SecretValue`]: its `Debug` and
//! `Display` print a fixed marker (never the bytes, their length or a hash),
//! and the buffer is zeroized when dropped, so a stray `{:?}` in a log line or
//! a panic message cannot reveal what credsync carries.

use std::fmt;
use zeroize::Zeroizing;

/// A Secret's keys and what each holds, as a sorted Vec: most Secrets have
/// one or a few keys, and a `BTreeMap` allocates a node of eleven entries
/// even for one (at 10,000 items the manifest's and the live Secrets' key
/// maps took 8 MiB, three quarters of it empty slots).
pub type KeyMap<V> = litemap::LiteMap<String, V>;

/// Key names alone, compact like [`KeyMap`].
pub type KeySet = litemap::LiteMap<String, ()>;

/// Kubernetes' limit on a Secret's data: no value larger can ever be written.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// A decrypted secret value. Cloning copies into another zeroizing buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The plaintext, for the few places that must write it (the API body).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time equality, so comparing against live data leaks no timing.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.len() == other.len() && bool::from(self.0.as_slice().ct_eq(other))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let v = SecretValue::new(b"hunter2-very-secret".to_vec());
        let shown = format!("{v} {v:?} {:?}", vec![v.clone()]);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("19"), "length leaked: {shown}");
    }

    #[test]
    fn equality_compares_bytes() {
        let v = SecretValue::new(b"abc".to_vec());
        assert!(v.ct_eq(b"abc"));
        assert!(!v.ct_eq(b"abd"));
        assert!(!v.ct_eq(b"ab"));
    }
}
