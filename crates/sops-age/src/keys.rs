//! Age recipients and identities, and the data key wrapped for them.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::SopsError;
use crate::cipher::{DATA_KEY_LEN, DataKey};

/// A parsed, validated list of age recipients; keeps the (trimmed) strings,
/// which are what the file records and what "unchanged recipients" compares.
#[derive(Clone)]
pub struct Recipients {
    pub(crate) strings: Vec<String>,
    pub(crate) parsed: Vec<AgeRecipient>,
}

#[derive(Clone)]
pub(crate) enum AgeRecipient {
    X25519(age::x25519::Recipient),
    Ssh(age::ssh::Recipient),
}

impl AgeRecipient {
    pub(crate) fn as_dyn(&self) -> &dyn age::Recipient {
        match self {
            AgeRecipient::X25519(r) => r,
            AgeRecipient::Ssh(r) => r,
        }
    }
}

impl Recipients {
    /// Parses `age1...` (X25519) and `ssh-ed25519 ...` / `ssh-rsa ...`
    /// recipients the way sops does (`age/keysource.go`, `parseRecipient`).
    /// Duplicates are dropped; the order is kept, since it is the file's order.
    pub fn parse(list: &[String]) -> Result<Self, SopsError> {
        let mut strings: Vec<String> = Vec::new();
        let mut parsed = Vec::new();
        for raw in list {
            let text = raw.trim();
            if strings.iter().any(|known| known == text) {
                continue;
            }
            parsed.push(parse_recipient(text)?);
            strings.push(text.to_owned());
        }
        if strings.is_empty() {
            return Err(SopsError::NoRecipients);
        }
        Ok(Self { strings, parsed })
    }

    pub fn as_strings(&self) -> &[String] {
        &self.strings
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recipients").field(&self.strings).finish()
    }
}

impl PartialEq for Recipients {
    fn eq(&self, other: &Self) -> bool {
        self.strings == other.strings
    }
}

pub(crate) fn parse_recipient(text: &str) -> Result<AgeRecipient, SopsError> {
    let parsed = if text.starts_with("age1") {
        // Bech32 never contains '1' after the separator: a second '1' means
        // an age plugin recipient (age1NAME1...), which credsync cannot run.
        if text.matches('1').count() > 1 {
            None
        } else {
            age::x25519::Recipient::from_str(text)
                .ok()
                .map(AgeRecipient::X25519)
        }
    } else if text.starts_with("ssh-") {
        age::ssh::Recipient::from_str(text)
            .ok()
            .map(AgeRecipient::Ssh)
    } else {
        None
    };
    parsed.ok_or_else(|| bad_recipient(text))
}

/// Names the bad recipient, unless it looks like a private key pasted by
/// mistake: that must not reach a log.
pub(crate) fn bad_recipient(text: &str) -> SopsError {
    let upper = text.to_ascii_uppercase();
    if upper.contains("SECRET-KEY")
        || upper.contains("PRIVATE KEY")
        || upper.starts_with("AGE-PLUGIN-")
    {
        SopsError::BadRecipient(
            "<an age/ssh private key, not shown: pass the public key instead>".to_owned(),
        )
    } else {
        SopsError::BadRecipient(text.to_owned())
    }
}

/// Private keys that can unwrap a file's data key.
#[derive(Clone)]
pub struct Identities {
    pub(crate) keys: Vec<AgeIdentity>,
}

#[derive(Clone)]
pub(crate) enum AgeIdentity {
    X25519(age::x25519::Identity),
    Ssh(age::ssh::Identity),
}

impl AgeIdentity {
    pub(crate) fn as_dyn(&self) -> &dyn age::Identity {
        match self {
            AgeIdentity::X25519(i) => i,
            AgeIdentity::Ssh(i) => i,
        }
    }
}

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines; empty lines
    /// and `#` comments allowed, as `age-keygen` writes them and sops reads
    /// them) or an unencrypted OpenSSH/PEM ssh private key (ed25519 or rsa).
    pub fn from_file(path: &Path) -> Result<Self, SopsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| SopsError::BadIdentity {
                path: shown.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
        Self::from_text(&text, &shown)
    }

    pub(crate) fn from_text(text: &str, origin: &str) -> Result<Self, SopsError> {
        let bad = |reason: String| SopsError::BadIdentity {
            path: origin.to_owned(),
            reason,
        };
        if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----")
            || text.contains("-----BEGIN RSA PRIVATE KEY-----")
        {
            let identity =
                age::ssh::Identity::from_buffer(text.as_bytes(), Some(origin.to_owned()))
                    .map_err(|_| bad("not a valid ssh private key".to_owned()))?;
            return match identity {
                age::ssh::Identity::Unencrypted(_) => Ok(Self {
                    keys: vec![AgeIdentity::Ssh(identity)],
                }),
                age::ssh::Identity::Encrypted(_) => Err(bad(
                    "the ssh key is passphrase-protected; credsync cannot prompt: use an unencrypted key or an age identity".to_owned(),
                )),
                age::ssh::Identity::Unsupported(_) => Err(bad(
                    "unsupported ssh key type: use ssh-ed25519, ssh-rsa or an age identity".to_owned(),
                )),
            };
        }
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-PLUGIN-") {
                return Err(bad(format!(
                    "line {}: age plugin identities are not supported",
                    number + 1
                )));
            }
            // The line is key material: say where, never what.
            let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                bad(format!(
                    "line {} is not an age identity (expected AGE-SECRET-KEY-1...)",
                    number + 1
                ))
            })?;
            keys.push(AgeIdentity::X25519(identity));
        }
        if keys.is_empty() {
            return Err(bad("it contains no identity".to_owned()));
        }
        Ok(Self { keys })
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(AgeIdentity::as_dyn)
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities(<{} redacted>)", self.keys.len())
    }
}

/// Unwraps the data key from one `enc` block; `None` when no identity fits.
pub(crate) fn unwrap_data_key(
    enc: &str,
    identities: &Identities,
) -> Result<Option<DataKey>, SopsError> {
    let armored = age::armor::ArmoredReader::new(enc.trim_start().as_bytes());
    let Ok(decryptor) = age::Decryptor::new(armored) else {
        return Ok(None);
    };
    let Ok(mut reader) = decryptor.decrypt(identities.iter()) else {
        return Ok(None);
    };
    let mut plain = Zeroizing::new(Vec::new());
    if reader.read_to_end(&mut plain).is_err() {
        return Ok(None);
    }
    let mut key: DataKey = Zeroizing::new([0; DATA_KEY_LEN]);
    if plain.len() != DATA_KEY_LEN {
        return Err(SopsError::Malformed(
            "the age-wrapped data key is not 32 bytes".to_owned(),
        ));
    }
    key.copy_from_slice(&plain);
    Ok(Some(key))
}

/// The data key as an ASCII-armored age file for one recipient, as sops
/// writes each `enc` (`age/keysource.go`, `Encrypt`).
pub(crate) fn wrap_data_key(key: &DataKey, recipient: &AgeRecipient) -> Result<String, SopsError> {
    let age_error = |e: &dyn fmt::Display| SopsError::Crypto(format!("age: {e}"));
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient.as_dyn()))
        .map_err(|e| age_error(&e))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| age_error(&e))?;
    let mut writer = encryptor.wrap_output(armor).map_err(|e| age_error(&e))?;
    writer
        .write_all(key.as_slice())
        .map_err(|e| age_error(&e))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|e| age_error(&e))?;
    String::from_utf8(out).map_err(|_| SopsError::Crypto("age armor is not text".to_owned()))
}
