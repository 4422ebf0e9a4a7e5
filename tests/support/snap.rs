//! A snapshot repository under test: stand-ins, a repository path and one
//! age identity, with the flags every snapshot command needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{StandIns, path_str};

/// Stand-ins plus a snapshot repository and one age identity.
pub struct Snap {
    pub env: Arc<StandIns>,
    pub repo: PathBuf,
    pub recipient: String,
    pub identity: PathBuf,
    /// The key every snapshot command signs commits with (ssh-keygen's).
    pub signing_key: PathBuf,
}

impl Snap {
    pub async fn start(namespaces: &[&str]) -> Self {
        Self::on(StandIns::start(namespaces).await)
    }

    /// [`Snap::start`] on stand-ins with workload controllers and a played kubelet.
    pub async fn start_with_workloads(namespaces: &[&str]) -> Self {
        Self::on(StandIns::start_with_workloads(namespaces).await)
    }

    fn on(env: Arc<StandIns>) -> Self {
        let (recipient, identity) = env.age_identity("reader");
        let repo = env.dir.path().join("snapshots");
        let (signing_key, _) = env.signing_key("credsync");
        Snap {
            env,
            repo,
            recipient,
            identity,
            signing_key,
        }
    }

    /// The flags of a signed run against the test's repository, `command` last.
    pub fn args<'a>(&'a self, command: &[&'a str]) -> Vec<&'a str> {
        self.args_for(&self.repo, true, command)
    }

    /// The flags of a run that holds no signing key (as before signing was set up).
    pub fn unsigned_args<'a>(&'a self, command: &[&'a str]) -> Vec<&'a str> {
        self.args_for(&self.repo, false, command)
    }

    /// The flags of a run against `repo` (a clone, say) with this test's
    /// recipient and identity, and its signing key when `signed`.
    pub fn args_for<'a>(
        &'a self,
        repo: &'a Path,
        signed: bool,
        command: &[&'a str],
    ) -> Vec<&'a str> {
        let mut args = vec![
            "--cluster-name",
            "test",
            "--snapshot-repo",
            path_str(repo),
            "--age-recipient",
            &self.recipient,
            "--age-identity",
            path_str(&self.identity),
        ];
        if signed {
            args.extend(["--snapshot-signing-key", path_str(&self.signing_key)]);
        }
        args.extend_from_slice(command);
        args
    }

    pub fn run(&self, command: &[&str]) -> super::Run {
        self.env.credsync(&self.args(command))
    }

    /// The signing key's public half (`ssh-keygen`'s `.pub`): what a
    /// reader that only verifies is given.
    pub fn trusted_key(&self) -> PathBuf {
        self.signing_key.with_extension("sshkey.pub")
    }

    /// `manifest` (a Secret's YAML) sealed by the real `sops -e` for the
    /// public recipient, as anyone holding it can: the file's bytes.
    pub fn seal_with_sops(&self, manifest: &str) -> Vec<u8> {
        let plain = self.env.write_file("to-seal.yaml", manifest);
        let out = self.env.sops(
            &self.identity,
            &[
                "-e",
                "--age",
                &self.recipient,
                "--encrypted-regex",
                "^(data|stringData)$",
                path_str(&plain),
            ],
        );
        std::fs::remove_file(&plain).unwrap();
        super::assert_ok(&out, "sops -e");
        out.stdout
    }

    pub fn git(&self, args: &[&str]) -> String {
        self.env.git(&self.repo, args)
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }
}
