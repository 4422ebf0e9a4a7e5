//! The crate's one error type.

/// What can go wrong reading or writing a SOPS file. No message ever carries
/// a value or key material: only key names, paths and public recipients.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error(
        "MAC mismatch: the file was edited outside sops/credsync; restore it from git history or re-create it from the table"
    )]
    MacMismatch,
    #[error(
        "the value at {path} cannot be decrypted with the file's data key: the file was edited outside sops/credsync; restore it from git history"
    )]
    BadCiphertext { path: String },
    #[error(
        "none of the given age identities can decrypt this file{}; pass an identity (--age-identity) for one of them",
        encrypted_for(recipients)
    )]
    NoMatchingIdentity { recipients: Vec<String> },
    #[error(
        "bad age recipient '{0}': expected an age X25519 public key (age1...) or an ssh public key (ssh-ed25519 ... or ssh-rsa ..., at least 2048 bits)"
    )]
    BadRecipient(String),
    #[error("no age recipients given: pass at least one --age-recipient")]
    NoRecipients,
    #[error("age identity file {path}: {reason}")]
    BadIdentity { path: String, reason: String },
    #[error("not a SOPS file: it has no top-level `sops` metadata (was it encrypted with sops?)")]
    NotSops,
    #[error("malformed SOPS file: {0}")]
    Malformed(String),
    #[error("unsupported SOPS file: {0}")]
    Unsupported(String),
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// "; it is encrypted for: R1, R2", or nothing for a plain age file, which
/// does not name its recipients.
fn encrypted_for(recipients: &[String]) -> String {
    if recipients.is_empty() {
        String::new()
    } else {
        format!("; it is encrypted for: {}", recipients.join(", "))
    }
}
