//! Decrypted bytes that cannot leak through formatting.

use std::fmt;

use zeroize::Zeroizing;

/// A decrypted value: zeroized on drop; its Debug prints a fixed marker
/// (never the bytes, their length or a hash), and it has no Display.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes, for the caller that must use them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Moves the bytes out; this buffer is left empty.
    pub fn into_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plaintext(<redacted>)")
    }
}
