//! The value cipher: AES-256-GCM `ENC[...]` strings (`aes/cipher.go`).

use std::collections::BTreeMap;

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::generic_array::ArrayLength;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AesGcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::SopsError;

pub(crate) const IV_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;
pub(crate) const DATA_KEY_LEN: usize = 32;

pub(crate) type DataKey = Zeroizing<[u8; DATA_KEY_LEN]>;
/// Additional data (`data:KEY:`) -> (plaintext, its `ENC[...]` string).
pub(crate) type Ciphertexts = BTreeMap<String, (Zeroizing<Vec<u8>>, String)>;

pub(crate) enum ValueError {
    NotEnc,
    Unsupported(&'static str),
    Auth,
}

/// `aes/cipher.go`, `Decrypt`: `""` is the empty string; anything else must
/// be `ENC[AES256_GCM,data:B64,iv:B64,tag:B64,type:T]`.
pub(crate) fn decrypt_value(
    key: &DataKey,
    enc: &str,
    aad: &str,
) -> Result<(Zeroizing<Vec<u8>>, String), ValueError> {
    if enc.is_empty() {
        return Ok((Zeroizing::new(Vec::new()), "str".to_owned()));
    }
    let EncParts {
        data,
        iv,
        tag,
        kind,
    } = parse_enc(enc).ok_or(ValueError::NotEnc)?;
    let mut sealed = data;
    sealed.extend_from_slice(&tag);
    let plain = match iv.len() {
        IV_LEN => gcm_open::<U32>(key, &iv, &sealed, aad),
        12 => gcm_open::<U12>(key, &iv, &sealed, aad),
        _ => {
            return Err(ValueError::Unsupported(
                "an IV that is neither 32 nor 12 bytes",
            ));
        }
    }?;
    Ok((plain, kind))
}

pub(crate) fn gcm_open<N: ArrayLength<u8>>(
    key: &DataKey,
    iv: &[u8],
    sealed: &[u8],
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    let cipher = AesGcm::<aes_gcm::aes::Aes256, N>::new_from_slice(key.as_slice())
        .map_err(|_| ValueError::Auth)?;
    cipher
        .decrypt(
            Nonce::<N>::from_slice(iv),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| ValueError::Auth)
}

/// The decoded parts of an `ENC[AES256_GCM,...]` string.
pub(crate) struct EncParts {
    pub(crate) data: Vec<u8>,
    pub(crate) iv: Vec<u8>,
    pub(crate) tag: Vec<u8>,
    pub(crate) kind: String,
}

/// Splits an ENC string into data, iv, tag (decoded) and type.
pub(crate) fn parse_enc(enc: &str) -> Option<EncParts> {
    let rest = enc.strip_prefix("ENC[AES256_GCM,data:")?;
    let (data, rest) = rest.split_once(",iv:")?;
    let (iv, rest) = rest.split_once(",tag:")?;
    let (tag, rest) = rest.split_once(",type:")?;
    let kind = rest.strip_suffix(']')?;
    if kind.is_empty() || tag.is_empty() || iv.is_empty() {
        return None;
    }
    let tag = STANDARD.decode(tag).ok()?;
    if tag.len() != TAG_LEN {
        return None;
    }
    Some(EncParts {
        data: STANDARD.decode(data).ok()?,
        iv: STANDARD.decode(iv).ok()?,
        tag,
        kind: kind.to_owned(),
    })
}

/// `aes/cipher.go`, `Encrypt`: a random 32-byte IV per value, the tag split
/// off the end; an empty value is written as `""`, unencrypted.
pub(crate) fn encrypt_value(key: &DataKey, plain: &[u8], aad: &str) -> Result<String, SopsError> {
    if plain.is_empty() {
        return Ok(String::new());
    }
    let cipher = AesGcm::<aes_gcm::aes::Aes256, U32>::new_from_slice(key.as_slice())
        .map_err(|_| SopsError::Crypto("bad AES key length".to_owned()))?;
    let mut iv = [0u8; IV_LEN];
    OsRng
        .try_fill_bytes(&mut iv)
        .map_err(|e| SopsError::Crypto(format!("no randomness for an IV: {e}")))?;
    let sealed = cipher
        .encrypt(
            Nonce::<U32>::from_slice(&iv),
            Payload {
                msg: plain,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| SopsError::Crypto("AES-GCM encryption failed".to_owned()))?;
    let (data, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:str]",
        STANDARD.encode(data),
        STANDARD.encode(iv),
        STANDARD.encode(tag)
    ))
}

pub(crate) fn fresh_data_key() -> Result<DataKey, SopsError> {
    let mut key: DataKey = Zeroizing::new([0; DATA_KEY_LEN]);
    OsRng
        .try_fill_bytes(key.as_mut_slice())
        .map_err(|e| SopsError::Crypto(format!("no randomness for a data key: {e}")))?;
    Ok(key)
}
