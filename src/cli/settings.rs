//! Raw flags -> settings, once (ripgrep's model): [`Settings::resolve`] is
//! the only reader of [`Common`]. Every check of a flag happens here, with
//! the flag (or variable) to fix in its message; commands and the builders
//! in `setup` take the resolved settings, never the flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sops_age::{Identities, Recipients};

use super::args::{ColorChoice, Command, Common, SourceKind};
use super::config::env_var;
use crate::cluster::apply::ApplyOptions;
use crate::credstash::SourceConfig;
use crate::manifest::{KeyMapping, NamespaceFilter};
use crate::plan::DiffOptions;
use crate::secretsmanager::SmConfig;
use crate::snapshot::remote::{RemoteConfig, RemoteUrl};
use crate::snapshot::signing::{CommitSigner, Signing, TrustedKeys};
use crate::telemetry::LogFormat;

/// Every command's settings.
pub(super) struct Settings {
    /// The Credstash table and how to read it.
    pub table: SourceConfig,
    /// Whether the table is a source (not with `--source secretsmanager` alone).
    pub reads_table: bool,
    pub secrets_manager: Option<SmConfig>,
    pub sources: Vec<SourceKind>,
    /// Connect and read timeout of every AWS and Kubernetes request.
    pub request_timeout: Duration,
    /// How long a one-shot command may take.
    pub timeout: Duration,
    pub filter: NamespaceFilter,
    /// `--namespace-exclude` and `--namespace-include` as given (for `--print-config`).
    pub namespace_exclude: String,
    pub namespace_include: Option<String>,
    pub apply: ApplyOptions,
    pub mapping: KeyMapping,
    pub cluster_name: String,
    /// The snapshot repository, if any.
    pub snapshots: Option<SnapshotSettings>,
    /// `--snapshot-remote`, credentials taken out (shown even without a repository).
    pub snapshot_remote_shown: Option<String>,
    /// `--age-identity`, read: to decrypt snapshots.
    pub identities: Option<Identities>,
    /// Whether `--age-identity` was given (read or not, see [`Needs::key_files`]).
    pub age_identity_given: bool,
    pub color: ColorChoice,
    pub log_format: LogFormat,
    pub verbose: bool,
    /// What this command needs built.
    pub needs: Needs,
}

/// Where snapshots go, as `SnapshotStore::open` takes it.
pub(super) struct SnapshotSettings {
    pub path: PathBuf,
    /// `--age-recipient`, as given and parsed (None: none given).
    pub recipient_texts: Vec<String>,
    pub recipients: Option<Recipients>,
    pub remote: Option<RemoteConfig>,
    pub signing: Signing,
    /// Which keys were given (for `--print-config` and warnings).
    pub signing_key_given: bool,
    pub trusted_key_files: Vec<PathBuf>,
}

/// What a command needs built, decided once from the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Needs {
    /// New snapshot files get written: recipients are required.
    pub recipients: bool,
    /// The long-lived daemon (`run`).
    pub daemon: bool,
    /// Reads the table: a warm start from the last snapshot pays off.
    pub warm_start: bool,
    /// Opens the key and token files the flags name. `run --print-config`
    /// only says whether each is set: it runs where the pod's mounts are not.
    pub key_files: bool,
}

impl Needs {
    fn of(command: &Command) -> Self {
        let daemon = matches!(command, Command::Run(_));
        let key_files = !matches!(command, Command::Run(args) if args.print_config);
        Self {
            recipients: daemon || matches!(command, Command::Sync { .. }),
            daemon,
            warm_start: daemon
                || matches!(
                    command,
                    Command::Sync { .. }
                        | Command::Plan {
                            from_snapshot: None,
                            ..
                        }
                ),
            key_files,
        }
    }
}

impl Settings {
    /// Checks and resolves every flag `command` runs with.
    pub(super) fn resolve(common: &Common, command: &Command) -> Result<Self> {
        if common.rollout_timeout.is_zero() {
            bail!("--rollout-timeout must be more than 0");
        }
        if common.timeout.is_zero() || common.request_timeout.is_zero() {
            bail!("--timeout and --request-timeout must be more than 0");
        }
        if common.kms_concurrency == 0 {
            bail!("--kms-concurrency must be at least 1");
        }
        if !(1..=1_000_000).contains(&common.scan_segments) {
            bail!("--scan-segments must be between 1 and 1000000");
        }
        if common.sources.is_empty() {
            bail!("--source needs at least one of credstash, secretsmanager");
        }
        let mut sources = common.sources.clone();
        sources.sort();
        sources.dedup();
        match command {
            Command::Put(args)
                if args.through.server.is_some()
                    && (args.version.is_some() || args.autoversion) =>
            {
                bail!("--server always writes the next version: leave out -v and -a");
            }
            Command::Rollback { propose: true, .. } if common.snapshot_remote.is_none() => {
                bail!(
                    "--propose pushes a branch for review: give --snapshot-remote (or CREDSYNC_SNAPSHOT_REMOTE)"
                );
            }
            _ => {}
        }
        let needs = Needs::of(command);
        let identities = common
            .age_identity
            .as_deref()
            .filter(|_| needs.key_files)
            .map(|path| {
                Identities::from_file(path)
                    .with_context(|| format!("reading age identity {}", path.display()))
            })
            .transpose()?;
        Ok(Self {
            table: SourceConfig {
                table: common.table.clone(),
                region: common.region.clone(),
                context: common.context.iter().cloned().collect::<BTreeMap<_, _>>(),
                kms_concurrency: common.kms_concurrency,
                scan_segments: common.scan_segments,
            },
            reads_table: sources.contains(&SourceKind::Credstash),
            secrets_manager: sources
                .contains(&SourceKind::Secretsmanager)
                .then(|| SmConfig {
                    names: common.sm_names,
                    prefix: common.sm_prefix.clone(),
                    tags: common.sm_tags.clone(),
                }),
            sources,
            request_timeout: common.request_timeout,
            timeout: common.timeout,
            filter: NamespaceFilter::parse(
                &common.namespace_exclude,
                common.namespace_include.as_deref(),
            ),
            namespace_exclude: common.namespace_exclude.clone(),
            namespace_include: common.namespace_include.clone(),
            apply: ApplyOptions {
                diff: DiffOptions {
                    prune_keys: !common.no_prune,
                    delete_empty: !common.keep_empty,
                    adopt_kubestash_v2: common.adopt_kubestash_v2,
                },
                rollouts: common.rollouts,
                rollout_timeout: common.rollout_timeout,
                rollout_revert: common.rollout_revert,
                ..ApplyOptions::default()
            },
            mapping: common.key_mapping,
            cluster_name: common.cluster_name.clone(),
            snapshots: snapshot_settings(common, needs)?,
            snapshot_remote_shown: common
                .snapshot_remote
                .as_deref()
                .map(|url| RemoteUrl::parse(url).to_string()),
            identities,
            age_identity_given: common.age_identity.is_some(),
            color: common.color,
            log_format: common.log_format,
            verbose: common.verbose,
            needs,
        })
    }

    /// `--age-identity`, for a command that cannot work without it.
    pub(super) fn required_identities(&self) -> Result<&Identities> {
        self.identities.as_ref().context(
            "this command needs --age-identity (or CREDSYNC_AGE_IDENTITY) to decrypt the snapshot",
        )
    }
}

/// The snapshot repository's settings: recipients parsed, keys and tokens
/// read, so a bad one stops the command before any work.
fn snapshot_settings(common: &Common, needs: Needs) -> Result<Option<SnapshotSettings>> {
    let Some(path) = &common.snapshot_repo else {
        return Ok(None);
    };
    if needs.recipients && common.age_recipients.is_empty() {
        bail!(
            "--age-recipient is required with --snapshot-repo: snapshots are encrypted for their readers"
        );
    }
    let recipients = match common.age_recipients.is_empty() {
        true => None,
        false => Some(Recipients::parse(&common.age_recipients).context("--age-recipient")?),
    };
    let token = match common
        .snapshot_token_file
        .as_ref()
        .filter(|_| needs.key_files)
    {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --snapshot-token-file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        None => env_var("CREDSYNC_SNAPSHOT_TOKEN"),
    };
    let remote = common.snapshot_remote.as_ref().map(|url| RemoteConfig {
        url: RemoteUrl::parse(url),
        ssh_key: common.snapshot_ssh_key.clone(),
        token,
    });
    let signer = common
        .snapshot_signing_key
        .as_deref()
        .filter(|_| needs.key_files)
        .map(CommitSigner::from_file)
        .transpose()?;
    let mut trusted = Vec::new();
    for file in common
        .snapshot_trusted_keys
        .iter()
        .filter(|_| needs.key_files)
    {
        trusted.extend(TrustedKeys::from_file(file)?);
    }
    Ok(Some(SnapshotSettings {
        path: path.clone(),
        recipient_texts: common.age_recipients.clone(),
        recipients,
        remote,
        signing: Signing::new(signer, trusted),
        signing_key_given: common.snapshot_signing_key.is_some(),
        trusted_key_files: common.snapshot_trusted_keys.clone(),
    }))
}
