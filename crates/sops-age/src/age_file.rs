//! Plain (binary) age files for the same recipients and identities as the
//! SOPS files: for data that travels with a snapshot but is not a Secret
//! manifest, such as credsync's local warm-start cache.

use std::io::{Read, Write};

use zeroize::Zeroizing;

use crate::SopsError;
use crate::keys::{Identities, Recipients};

/// Encrypts `plain` for every recipient as one binary age file.
pub fn seal_bytes(plain: &[u8], recipients: &Recipients) -> Result<Vec<u8>, SopsError> {
    let age_error = |e: &dyn std::fmt::Display| SopsError::Crypto(format!("age: {e}"));
    let encryptor = age::Encryptor::with_recipients(recipients.parsed.iter().map(|r| r.as_dyn()))
        .map_err(|e| age_error(&e))?;
    let mut out = Vec::with_capacity(plain.len() + 512);
    let mut writer = encryptor.wrap_output(&mut out).map_err(|e| age_error(&e))?;
    writer.write_all(plain).map_err(|e| age_error(&e))?;
    writer.finish().map_err(|e| age_error(&e))?;
    Ok(out)
}

/// Decrypts a binary age file. Every chunk is authenticated, so a file
/// that was cut short or altered is an error, never partial plaintext.
pub fn open_bytes(
    ciphertext: &[u8],
    identities: &Identities,
) -> Result<Zeroizing<Vec<u8>>, SopsError> {
    let decryptor = age::Decryptor::new(ciphertext)
        .map_err(|e| SopsError::Malformed(format!("not an age file: {e}")))?;
    let mut reader =
        decryptor
            .decrypt(identities.iter())
            .map_err(|_| SopsError::NoMatchingIdentity {
                recipients: Vec::new(),
            })?;
    let mut plain = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    reader
        .read_to_end(&mut plain)
        .map_err(|e| SopsError::Malformed(format!("the age file is damaged: {e}")))?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (Recipients, Identities) {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
        (
            Recipients::parse(&[recipient]).unwrap(),
            Identities::from_text(&secret, "test").unwrap(),
        )
    }

    #[test]
    fn round_trips_and_refuses_other_identities_and_damage() {
        let (recipients, identities) = keys();
        let sealed = seal_bytes(b"warm values", &recipients).unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"warm values"));
        assert_eq!(
            open_bytes(&sealed, &identities).unwrap().as_slice(),
            b"warm values"
        );

        let (_, other) = keys();
        assert!(matches!(
            open_bytes(&sealed, &other),
            Err(SopsError::NoMatchingIdentity { .. })
        ));
        let refused = open_bytes(&sealed, &other).unwrap_err().to_string();
        assert!(!refused.contains("encrypted for"), "{refused}");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open_bytes(&flipped, &identities).is_err());
        assert!(open_bytes(&sealed[..sealed.len() - 8], &identities).is_err());
        assert!(open_bytes(b"not age", &identities).is_err());
    }
}
