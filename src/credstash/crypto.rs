//! Credstash's envelope format: HMAC-then-AES-256-CTR under a KMS data key.
//!
//! Kept free of I/O so the format can be tested against vectors made by the
//! credstash library itself. The HMAC is checked in constant time *before*
//! anything is decrypted: a tampered item must never yield plaintext.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// The 64 bytes KMS returns for an item: AES key, then HMAC key.
pub struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, CryptoError> {
        if bytes.len() != 64 {
            return Err(CryptoError::DataKeyLength(bytes.len()));
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    fn aes_key(&self) -> &[u8] {
        &self.0[..32]
    }

    fn hmac_key(&self) -> &[u8] {
        &self.0[32..]
    }
}

/// The digest credstash records per item (`SHA256` unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Md5,
}

impl Digest {
    /// Parses credstash's names for the digests it can write.
    pub fn from_credstash_name(name: &str) -> Result<Self, CryptoError> {
        Ok(match name {
            "SHA" => Self::Sha1,
            "SHA224" => Self::Sha224,
            "SHA256" => Self::Sha256,
            "SHA384" => Self::Sha384,
            "SHA512" => Self::Sha512,
            "MD5" => Self::Md5,
            other => return Err(CryptoError::UnknownDigest(other.to_owned())),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("KMS returned a {0}-byte data key, expected 64: the item was not written by credstash")]
    DataKeyLength(usize),
    #[error("unknown digest '{0}' (credstash writes SHA, SHA224, SHA256, SHA384, SHA512 or MD5)")]
    UnknownDigest(String),
    #[error("stored HMAC is not hex")]
    HmacNotHex,
    #[error("HMAC mismatch: the item's contents or hmac were altered")]
    HmacMismatch,
    #[error("plaintext is not UTF-8 text")]
    NotUtf8,
    #[error("the HMAC refused the data key's second half")]
    HmacKey,
}

/// An item's stored fields, decoded: what KMS and [`open`] need. Decoding
/// is apart from decrypting so that untrusted table contents are checked
/// (and fuzzed) without a KMS call.
pub struct Envelope {
    /// The KMS-wrapped data key.
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub hmac: Vec<u8>,
    pub digest: Digest,
}

impl Envelope {
    /// Decodes `key` and `contents` (base64), `hmac` (hex, as text or bytes)
    /// and the digest name; each failure names the field.
    pub fn decode(
        key: &str,
        contents: &str,
        hmac: &[u8],
        digest: &str,
    ) -> Result<Self, EnvelopeError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Self {
            wrapped_key: b64
                .decode(key.trim())
                .map_err(|_| EnvelopeError::NotBase64("key"))?,
            ciphertext: b64
                .decode(contents.trim())
                .map_err(|_| EnvelopeError::NotBase64("contents"))?,
            hmac: decode_hmac(hmac)?,
            digest: Digest::from_credstash_name(digest)?,
        })
    }

    /// Checks the HMAC with `key`, then decrypts.
    pub fn open(&self, key: &DataKey) -> Result<SecretValue, CryptoError> {
        open(key, &self.ciphertext, &self.hmac, self.digest)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("'{0}' is not base64")]
    NotBase64(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Verifies `expected_hmac` over `ciphertext`, then decrypts it.
pub fn open(
    key: &DataKey,
    ciphertext: &[u8],
    expected_hmac: &[u8],
    digest: Digest,
) -> Result<SecretValue, CryptoError> {
    let hmac_ok = match digest {
        Digest::Sha1 => verify::<Hmac<sha1::Sha1>>(key.hmac_key(), ciphertext, expected_hmac),
        Digest::Sha224 => verify::<Hmac<sha2::Sha224>>(key.hmac_key(), ciphertext, expected_hmac),
        Digest::Sha256 => verify::<Hmac<sha2::Sha256>>(key.hmac_key(), ciphertext, expected_hmac),
        Digest::Sha384 => verify::<Hmac<sha2::Sha384>>(key.hmac_key(), ciphertext, expected_hmac),
        Digest::Sha512 => verify::<Hmac<sha2::Sha512>>(key.hmac_key(), ciphertext, expected_hmac),
        Digest::Md5 => verify::<Hmac<md5::Md5>>(key.hmac_key(), ciphertext, expected_hmac),
    };
    if !hmac_ok {
        return Err(CryptoError::HmacMismatch);
    }
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    // credstash's "legacy nonce": the initial counter block is 1.
    let mut iv = [0u8; 16];
    iv[15] = 1;
    let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new(key.aes_key().into(), &iv.into());
    cipher.apply_keystream(&mut plaintext);
    if std::str::from_utf8(&plaintext).is_err() {
        return Err(CryptoError::NotUtf8);
    }
    Ok(SecretValue::new(std::mem::take(&mut *plaintext)))
}

/// Encrypts `plaintext` as credstash does (AES-256-CTR from counter 1,
/// then HMAC-SHA256 over the ciphertext): the ciphertext and the lowercase
/// hex HMAC, ready to store.
pub fn seal(key: &DataKey, plaintext: &[u8]) -> Result<(Vec<u8>, String), CryptoError> {
    let mut ciphertext = plaintext.to_vec();
    let mut iv = [0u8; 16];
    iv[15] = 1;
    let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new(key.aes_key().into(), &iv.into());
    cipher.apply_keystream(&mut ciphertext);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.hmac_key())
        .map_err(|_| CryptoError::HmacKey)?;
    mac.update(&ciphertext);
    Ok((ciphertext, hex::encode(mac.finalize().into_bytes())))
}

/// Decodes the stored hex HMAC (credstash 1.17 stores the ASCII hex as bytes).
pub fn decode_hmac(stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
    hex::decode(stored.trim_ascii()).map_err(|_| CryptoError::HmacNotHex)
}

fn verify<M: Mac + hmac::digest::KeyInit>(
    hmac_key: &[u8],
    ciphertext: &[u8],
    expected: &[u8],
) -> bool {
    let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(hmac_key) else {
        return false;
    };
    mac.update(ciphertext);
    // verify_slice compares in constant time.
    mac.verify_slice(expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    // Vectors made with credstash 1.17.1's own `_seal_aes_ctr`, key = bytes 0..64.
    const PLAINTEXT: &str = "héllo\nwörld $x";
    const CIPHERTEXT_B64: &str = "mJ7fwibWlZJlQOldLOISRQ==";
    const VECTORS: &[(&str, &str)] = &[
        (
            "SHA256",
            "faf6392c78cb10dfb2714de340c0e54fc599e3cd0f0cf3a4f5cb0c03feb96991",
        ),
        ("SHA", "f5046d2c919bb2dda03ea848383bcbb5c1d044bc"),
        (
            "SHA512",
            "0b256166cb8f0e5000e4e3112fd25904981e62d01d52d6642db8f576d3c8a37a01892e7574160680e5799b1677db0209fd263b85a9e3697ff7ed855f5b7f0aa8",
        ),
        ("MD5", "5d630cc056f7422b91dc4453c67bbe29"),
    ];

    fn key() -> DataKey {
        DataKey::new((0u8..64).collect()).unwrap()
    }

    fn ciphertext() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(CIPHERTEXT_B64)
            .unwrap()
    }

    #[test]
    fn opens_credstash_vectors_for_every_digest() {
        for (digest, hmac_hex) in VECTORS {
            let digest = Digest::from_credstash_name(digest).unwrap();
            let hmac = decode_hmac(hmac_hex.as_bytes()).unwrap();
            let value = open(&key(), &ciphertext(), &hmac, digest).unwrap();
            assert_eq!(value.expose(), PLAINTEXT.as_bytes(), "{digest:?}");
        }
    }

    #[test]
    fn sealing_gives_credstashs_own_bytes_and_opens_again() {
        let (ciphertext, hmac) = seal(&key(), PLAINTEXT.as_bytes()).unwrap();
        assert_eq!(ciphertext, super::tests::ciphertext());
        assert_eq!(hmac, VECTORS[0].1);
        let value = open(
            &key(),
            &ciphertext,
            &decode_hmac(hmac.as_bytes()).unwrap(),
            Digest::Sha256,
        )
        .unwrap();
        assert_eq!(value.expose(), PLAINTEXT.as_bytes());
    }

    #[test]
    fn tampered_ciphertext_is_refused_before_decryption() {
        let mut ct = ciphertext();
        ct[0] ^= 1;
        let hmac = decode_hmac(VECTORS[0].1.as_bytes()).unwrap();
        assert_eq!(
            open(&key(), &ct, &hmac, Digest::Sha256).unwrap_err(),
            CryptoError::HmacMismatch
        );
    }

    #[test]
    fn wrong_digest_and_truncated_hmac_are_refused() {
        let hmac = decode_hmac(VECTORS[0].1.as_bytes()).unwrap();
        assert!(open(&key(), &ciphertext(), &hmac, Digest::Sha512).is_err());
        assert!(open(&key(), &ciphertext(), &hmac[..16], Digest::Sha256).is_err());
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        assert_eq!(
            Digest::from_credstash_name("WHIRLPOOL").unwrap_err(),
            CryptoError::UnknownDigest("WHIRLPOOL".into())
        );
        assert_eq!(decode_hmac(b"zz").unwrap_err(), CryptoError::HmacNotHex);
        assert!(matches!(
            DataKey::new(vec![0; 32]),
            Err(CryptoError::DataKeyLength(32))
        ));
    }
}
