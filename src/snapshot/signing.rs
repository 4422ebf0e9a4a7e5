//! Snapshot commits credsync can prove it wrote: git's own SSH commit
//! signatures (`gpg.format=ssh`), made with an ed25519 key only the
//! credsync pod holds.
//!
//! Why a signature and not the SOPS MAC: a SOPS file is sealed for public
//! age recipients and its MAC is keyed by its own data key, so anyone who
//! can push to the repository can write a file credsync opens without a
//! complaint. Anyone can also set a commit's author. Only a signature by a
//! key outside the repository tells credsync's commits from the rest.
//!
//! Why SSH signatures: they are git's native format, so a reviewer checks
//! the same commits with `git log --show-signature` and an allowed-signers
//! file, with no credsync at hand; they are verified offline (no KMS call
//! per commit) and work the same with either source.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const NAMESPACE: &str = "git";

/// Why a signing or trusted key cannot be used: start-up stops on it.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("cannot read {what} {}: {source}; check the path and that credsync may read it", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is not an OpenSSH {kind}: {source} (make one with `ssh-keygen -t ed25519 -N '' -f FILE`)", path.display())]
    Malformed {
        what: &'static str,
        kind: &'static str,
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("{what} {} is {problem}: credsync signs with an unencrypted ed25519 key (`ssh-keygen -t ed25519 -N '' -f FILE`)", path.display())]
    Unsupported {
        what: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
}

/// Why a commit could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing the snapshot commit: {0}")]
pub struct SignError(#[source] ssh_key::Error);

/// The key credsync signs its snapshot commits with.
#[derive(Clone)]
pub struct CommitSigner {
    key: PrivateKey,
}

impl CommitSigner {
    /// Reads an unencrypted OpenSSH ed25519 private key.
    pub fn from_file(path: &Path) -> Result<Self, SigningKeyError> {
        const WHAT: &str = "--snapshot-signing-key";
        let text = std::fs::read_to_string(path).map_err(|source| SigningKeyError::Unreadable {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?;
        let key =
            PrivateKey::from_openssh(text.trim()).map_err(|source| SigningKeyError::Malformed {
                what: WHAT,
                kind: "private key",
                path: path.to_owned(),
                source,
            })?;
        let unsupported = |problem| SigningKeyError::Unsupported {
            what: WHAT,
            path: path.to_owned(),
            problem,
        };
        if key.is_encrypted() {
            return Err(unsupported("encrypted with a passphrase"));
        }
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(unsupported("not an ed25519 key"));
        }
        Ok(Self { key })
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// An armored SSH signature of `data` (a commit's bytes), as git
    /// stores it in the commit's `gpgsig` header.
    pub fn sign(&self, data: &[u8]) -> Result<String, SignError> {
        self.key
            .sign(NAMESPACE, HashAlg::Sha512, data)
            .and_then(|sig| sig.to_pem(LineEnding::LF))
            .map_err(SignError)
    }
}

/// The public keys whose signatures credsync trusts: its own signing key's,
/// and any given with `--snapshot-trusted-key` (a key being rotated out,
/// or the key of a credsync that only reads, such as a CI plan job).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// Reads OpenSSH public keys, one per line (`ssh-ed25519 AAAA... comment`);
    /// blank lines and `#` comments are skipped.
    pub fn from_file(path: &Path) -> Result<Vec<PublicKey>, SigningKeyError> {
        const WHAT: &str = "--snapshot-trusted-key";
        let text = std::fs::read_to_string(path).map_err(|source| SigningKeyError::Unreadable {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?;
        let keys: Vec<PublicKey> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                PublicKey::from_openssh(line).map_err(|source| SigningKeyError::Malformed {
                    what: WHAT,
                    kind: "public key",
                    path: path.to_owned(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Err(SigningKeyError::Unsupported {
                what: WHAT,
                path: path.to_owned(),
                problem: "empty",
            });
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` (armored) is a valid signature of `data` by one
    /// of these keys. Anything else (no signature, a GPG one, another key,
    /// a damaged one) is simply not credsync's.
    pub fn verify(&self, signature: &str, data: &[u8]) -> bool {
        let Ok(sig) = SshSig::from_pem(signature.trim()) else {
            return false;
        };
        if sig.namespace() != NAMESPACE {
            return false;
        }
        self.keys
            .iter()
            .filter(|key| key.key_data() == sig.public_key())
            .any(|key| key.verify(NAMESPACE, data, &sig).is_ok())
    }

    /// SHA-256 fingerprints, for the start-up log and `print-config`.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
            .collect()
    }
}

/// What credsync signs with and trusts, resolved once at start-up.
#[derive(Clone, Default)]
pub struct Signing {
    /// None: commits are written unsigned (and nothing unsigned is trusted).
    pub signer: Option<CommitSigner>,
    pub trusted: TrustedKeys,
}

impl Signing {
    /// `signer` and the extra `trusted` keys; the signer's own public key is
    /// always trusted.
    pub fn new(signer: Option<CommitSigner>, mut trusted: Vec<PublicKey>) -> Self {
        if let Some(signer) = &signer {
            trusted.insert(0, signer.public_key().clone());
        }
        Self {
            signer,
            trusted: TrustedKeys::new(trusted),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed ed25519 key for tests (never used anywhere else).
    pub(crate) fn test_signer() -> CommitSigner {
        let key = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[7u8; 32]));
        CommitSigner { key }
    }

    #[test]
    fn a_signature_verifies_only_for_its_data_and_trusted_keys() {
        let signer = test_signer();
        let signature = signer.sign(b"tree abc\n\nmessage\n").unwrap();
        assert!(signature.starts_with("-----BEGIN SSH SIGNATURE-----"));
        let trusted = TrustedKeys::new(vec![signer.public_key().clone()]);
        assert!(trusted.verify(&signature, b"tree abc\n\nmessage\n"));
        assert!(!trusted.verify(&signature, b"tree abd\n\nmessage\n"));
        assert!(!trusted.verify("not a signature", b"tree abc\n\nmessage\n"));
        let other = PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[8u8; 32]));
        let others = TrustedKeys::new(vec![other.public_key().clone()]);
        assert!(!others.verify(&signature, b"tree abc\n\nmessage\n"));
        assert!(!TrustedKeys::default().verify(&signature, b"tree abc\n\nmessage\n"));
    }
}
