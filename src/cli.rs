//! The command line: flags, their environment variables, exit codes.
//!
//! Every flag has a `CREDSYNC_*` variable; Kubestash-V2's variable names are
//! accepted as fallbacks so its users can switch by changing the image.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use std::path::PathBuf;

use crate::cluster::{ApplyOptions, Cluster, DiffOptions};
use crate::credstash::{CredstashSource, SourceConfig};
use crate::manifest::SecretRef;
use crate::manifest::{DEFAULT_NAMESPACE_EXCLUDE, NamespaceFilter};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::render::{self, Format, Heading, listing};
use crate::snapshot::remote::RemoteConfig;
use crate::snapshot::sops::{Identities, Recipients};
use crate::snapshot::store::{SnapshotStore, StoreConfig};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "credsync",
    version,
    about = "Keep Kubernetes Secrets in step with a Credstash table"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Credstash table name.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_TABLE",
        default_value = "credential-store"
    )]
    pub table: String,
    /// AWS region of the table (default: the AWS configuration chain's).
    #[arg(long, global = true, env = "CREDSYNC_REGION")]
    pub region: Option<String>,
    /// KMS encryption context the items were written with (k=v, repeatable).
    #[arg(long = "context", global = true, env = "CREDSYNC_CONTEXT", value_delimiter = ',', value_parser = parse_context)]
    pub context: Vec<(String, String)>,
    /// Names the cluster in plans, logs and metrics.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_CLUSTER_NAME",
        default_value = "default"
    )]
    pub cluster_name: String,
    /// Namespaces never written to (`|`- or `,`-separated).
    #[arg(long, global = true, env = "CREDSYNC_NAMESPACE_EXCLUDE", default_value = DEFAULT_NAMESPACE_EXCLUDE)]
    pub namespace_exclude: String,
    /// If set, the only namespaces written to (`|`- or `,`-separated).
    #[arg(long, global = true, env = "CREDSYNC_NAMESPACE_INCLUDE")]
    pub namespace_include: Option<String>,
    /// KMS Decrypt calls in flight at once.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_KMS_CONCURRENCY",
        default_value_t = 32
    )]
    pub kms_concurrency: usize,
    /// Parallel DynamoDB Scan segments.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_SCAN_SEGMENTS",
        default_value_t = 4
    )]
    pub scan_segments: i32,
    /// Keep owned keys that the table no longer names.
    #[arg(long, global = true, env = "CREDSYNC_NO_PRUNE")]
    pub no_prune: bool,
    /// Keep Secrets credsync created even when they end up with no keys.
    #[arg(long, global = true, env = "CREDSYNC_KEEP_EMPTY")]
    pub keep_empty: bool,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Debug logging for credsync itself.
    #[arg(long, short, global = true, env = "CREDSYNC_VERBOSE")]
    pub verbose: bool,
    /// Local snapshot repository (created if absent); `sync` commits to it before applying.
    #[arg(long, global = true, env = "CREDSYNC_SNAPSHOT_REPO")]
    pub snapshot_repo: Option<PathBuf>,
    /// Who can read snapshots: age recipients (`age1...`, `ssh-ed25519 ...`), repeatable.
    #[arg(
        long = "age-recipient",
        global = true,
        env = "CREDSYNC_AGE_RECIPIENT",
        value_delimiter = ','
    )]
    pub age_recipients: Vec<String>,
    /// Remote to clone the snapshot repository from and push to (ssh or https).
    #[arg(long, global = true, env = "CREDSYNC_SNAPSHOT_REMOTE")]
    pub snapshot_remote: Option<String>,
    /// ssh private key for the snapshot remote.
    #[arg(long, global = true, env = "CREDSYNC_SNAPSHOT_SSH_KEY")]
    pub snapshot_ssh_key: Option<PathBuf>,
    /// File holding an https token for the snapshot remote (CREDSYNC_SNAPSHOT_TOKEN also works).
    #[arg(long, global = true, env = "CREDSYNC_SNAPSHOT_TOKEN_FILE")]
    pub snapshot_token_file: Option<PathBuf>,
    /// age identity file: for `show --reveal`, `rollback`, and minimal snapshot diffs.
    #[arg(long, global = true, env = "CREDSYNC_AGE_IDENTITY")]
    pub age_identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a sync would change; writes nothing.
    Plan {
        #[arg(long, env = "CREDSYNC_FORMAT", value_enum, default_value = "text")]
        format: Format,
        /// Exit 0 with no changes, 2 with changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan a snapshot instead of the table: what `rollback REV` would do.
        #[arg(long, value_name = "REV")]
        from_snapshot: Option<String>,
    },
    /// Reconcile once: plan, then write only what differs.
    Sync {
        /// Send server-side dry-run requests; nothing is stored.
        #[arg(long, env = "CREDSYNC_DRY_RUN")]
        dry_run: bool,
        #[arg(long, env = "CREDSYNC_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// List snapshot commits, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Secrets, keys and sources at a snapshot (values only with --reveal).
    Show {
        rev: String,
        #[arg(long = "secret", value_name = "NS/NAME")]
        secrets: Vec<SecretRef>,
        /// Print the values (needs --age-identity); to stdout only.
        #[arg(long)]
        reveal: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Key-level changes between two snapshots (never values).
    Diff {
        from: String,
        to: String,
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Apply a snapshot's Secrets and pin them until `unpin`.
    Rollback {
        rev: String,
        #[arg(long = "secret", value_name = "NS/NAME")]
        secrets: Vec<SecretRef>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "CREDSYNC_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Release rollback pins so sync manages the Secrets again.
    Unpin {
        #[arg(value_name = "NS/NAME", required_unless_present = "all")]
        secrets: Vec<SecretRef>,
        #[arg(long, conflicts_with = "secrets")]
        all: bool,
    },
}

/// Output of listings (`history`, `show`, `diff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

fn parse_context(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not k=v")),
    }
}

/// Kubestash-V2's variables, used when the credsync flag was left at its default.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("table", "DDB_TABLE"),
    ("region", "TABLE_REGION"),
    ("cluster_name", "CLUSTER_NAME"),
    ("namespace_exclude", "NAMESPACE_EXCLUDE_FILTER"),
    ("verbose", "VERBOSE"),
    ("dry_run", "DRY_RUN"),
];

/// Parses arguments, filling flags left at their default from Kubestash-V2's variables.
pub fn parse() -> Result<Cli> {
    parse_from(std::env::args_os(), |var| std::env::var(var).ok())
}

fn parse_from<I, T>(args: I, legacy_env: impl Fn(&str) -> Option<String>) -> Result<Cli>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let sub = matches.subcommand().map(|(_, m)| m);
    for (arg, var) in LEGACY_ENV {
        let Some(value) = legacy_env(var) else {
            continue;
        };
        let source = sub
            .and_then(|m| m.try_get_raw(arg).ok().flatten().and(m.value_source(arg)))
            .or_else(|| matches.value_source(arg));
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let truthy = matches!(
            value.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        );
        match *arg {
            "table" => cli.common.table = value,
            "region" => cli.common.region = Some(value),
            "cluster_name" => cli.common.cluster_name = value,
            "namespace_exclude" => cli.common.namespace_exclude = value,
            "verbose" => cli.common.verbose |= truthy,
            "dry_run" => {
                if let Command::Sync { dry_run, .. } = &mut cli.command {
                    *dry_run |= truthy;
                }
            }
            _ => {}
        }
    }
    Ok(cli)
}

pub async fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(err) if err.downcast_ref::<clap::Error>().is_some() => {
            // Help and version print as clap formats them and exit 0; usage
            // errors exit 1, since 2 means "changes" under --detailed-exitcode.
            let clap_err = err.downcast_ref::<clap::Error>();
            let _ = clap_err.map(clap::Error::print);
            let is_error = clap_err.is_some_and(clap::Error::use_stderr);
            return ExitCode::from(u8::from(is_error));
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(1);
        }
    };
    telemetry::init(cli.common.log_format, cli.common.verbose);
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // One line on stderr, whatever the log format.
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn identities(common: &Common) -> Result<Option<Identities>> {
    common
        .age_identity
        .as_deref()
        .map(|path| {
            Identities::from_file(path)
                .with_context(|| format!("reading age identity {}", path.display()))
        })
        .transpose()
}

/// Opens the snapshot repository; recipients are checked here, before any work.
fn snapshot_store(common: &Common, need_recipients: bool) -> Result<Option<Arc<SnapshotStore>>> {
    let Some(path) = &common.snapshot_repo else {
        return Ok(None);
    };
    if need_recipients && common.age_recipients.is_empty() {
        bail!(
            "--age-recipient is required with --snapshot-repo: snapshots are encrypted for their readers"
        );
    }
    let recipients = match common.age_recipients.is_empty() {
        true => None,
        false => Some(Recipients::parse(&common.age_recipients).context("--age-recipient")?),
    };
    let token = match &common.snapshot_token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --snapshot-token-file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("CREDSYNC_SNAPSHOT_TOKEN").ok(),
    };
    let remote = common.snapshot_remote.as_ref().map(|url| RemoteConfig {
        url: url.clone(),
        ssh_key: common.snapshot_ssh_key.clone(),
        token,
    });
    let store = SnapshotStore::open(StoreConfig {
        path: path.clone(),
        cluster: common.cluster_name.clone(),
        recipients,
        identities: identities(common)?,
        remote,
    })?;
    Ok(Some(Arc::new(store)))
}

fn required_store(common: &Common) -> Result<Arc<SnapshotStore>> {
    snapshot_store(common, false)?
        .context("this command needs --snapshot-repo (or CREDSYNC_SNAPSHOT_REPO)")
}

fn required_identities(common: &Common) -> Result<Identities> {
    identities(common)?.context(
        "this command needs --age-identity (or CREDSYNC_AGE_IDENTITY) to decrypt the snapshot",
    )
}

async fn build(common: &Common, snapshots: Option<Arc<SnapshotStore>>) -> Result<Reconciler> {
    if common.kms_concurrency == 0 {
        bail!("--kms-concurrency must be at least 1");
    }
    if !(1..=1_000_000).contains(&common.scan_segments) {
        bail!("--scan-segments must be between 1 and 1000000");
    }
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let source = CredstashSource::connect(
        SourceConfig {
            table: common.table.clone(),
            region: common.region.clone(),
            context: common.context.iter().cloned().collect::<BTreeMap<_, _>>(),
            kms_concurrency: common.kms_concurrency,
            scan_segments: common.scan_segments,
        },
        metrics.clone(),
    )
    .await;
    let cluster = Cluster::connect(metrics.clone()).await?;
    let filter = NamespaceFilter::parse(
        &common.namespace_exclude,
        common.namespace_include.as_deref(),
    );
    let apply = ApplyOptions {
        diff: DiffOptions {
            prune_keys: !common.no_prune,
            delete_empty: !common.keep_empty,
        },
        ..ApplyOptions::default()
    };
    let reconciler = Reconciler::new(source, cluster, filter, apply, metrics);
    Ok(match snapshots {
        Some(store) => reconciler.with_snapshots(store),
        None => reconciler,
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let common = &cli.common;
    let color = std::io::stdout().is_terminal();
    // Listings read the snapshot repository only: no AWS, no cluster.
    match &cli.command {
        Command::History { limit, format } => {
            let store = required_store(common)?;
            print!("{}", listing::history(&store.history(*limit)?, *format));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Show {
            rev,
            secrets,
            reveal,
            format,
        } => {
            let store = required_store(common)?;
            let commit = store.resolve(rev)?;
            if *reveal {
                let docs = store.documents(&commit.id, secrets, &required_identities(common)?)?;
                print!("{}", listing::reveal(&docs)?);
            } else {
                print!(
                    "{}",
                    listing::show(&commit, &store.entries(&commit.id, secrets)?, *format)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Diff { from, to, format } => {
            let store = required_store(common)?;
            let (from, to) = (store.resolve(from)?, store.resolve(to)?);
            print!(
                "{}",
                listing::diff(&from, &to, &store.diff(&from.id, &to.id)?, *format)
            );
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let needs_recipients = matches!(cli.command, Command::Sync { .. });
    let store = snapshot_store(common, needs_recipients)?;
    let reconciler = build(common, store.clone()).await?;
    let heading = Heading {
        table: reconciler.source().table().to_owned(),
        region: reconciler.source().region().to_owned(),
        cluster: common.cluster_name.clone(),
    };
    let code = match cli.command {
        Command::Plan {
            format,
            detailed_exitcode,
            from_snapshot,
        } => {
            let planned = match from_snapshot {
                Some(rev) => {
                    let store = required_store(common)?;
                    let commit = store.resolve(&rev)?;
                    let docs = store.documents(&commit.id, &[], &required_identities(common)?)?;
                    reconciler.plan_documents(docs).await?
                }
                None => reconciler.plan().await?,
            };
            let plan = &planned.plan;
            print!("{}", render::render(plan, None, &heading, format, color));
            if !plan.failures.is_empty() {
                1
            } else if detailed_exitcode && plan.has_changes() {
                2
            } else {
                0
            }
        }
        Command::Sync { dry_run, format } => {
            let report = reconciler.sync(dry_run).await?;
            let outcome = Some((&report.outcome, dry_run));
            print!(
                "{}",
                render::render(&report.plan, outcome, &heading, format, color)
            );
            if let Some(commit) = &report.snapshot {
                eprintln!("snapshot: {} {}", &commit.id[..12], commit.summary);
            }
            u8::from(report.has_errors())
        }
        Command::Rollback {
            rev,
            secrets,
            dry_run,
            format,
        } => {
            let store = required_store(common)?;
            let commit = store.resolve(&rev)?;
            // Decrypt (and check every MAC) before touching the cluster.
            let docs = store.documents(&commit.id, &secrets, &required_identities(common)?)?;
            let report = reconciler.rollback(docs, &commit, dry_run).await?;
            let outcome = Some((&report.outcome, dry_run));
            print!(
                "{}",
                render::render(&report.plan, outcome, &heading, format, color)
            );
            if let Some(recorded) = &report.snapshot {
                eprintln!("snapshot: {} {}", &recorded.id[..12], recorded.summary);
            }
            u8::from(!report.outcome.failed.is_empty())
        }
        Command::Unpin { secrets, all: _ } => {
            let unpinned = reconciler.cluster().unpin(&secrets).await?;
            for secret in &unpinned {
                println!("unpinned {secret}");
            }
            let missing: Vec<String> = secrets
                .iter()
                .filter(|s| !unpinned.contains(s))
                .map(ToString::to_string)
                .collect();
            if !missing.is_empty() {
                bail!(
                    "not pinned (or not managed by credsync): {}",
                    missing.join(", ")
                );
            }
            0
        }
        Command::History { .. } | Command::Show { .. } | Command::Diff { .. } => 0,
    };
    tracing::info!(calls = %reconciler.metrics().call_summary(), "done");
    Ok(ExitCode::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn kubestash_variables_fill_unset_flags() {
        let env = legacy(&[
            ("DDB_TABLE", "legacy-table"),
            ("TABLE_REGION", "eu-west-1"),
            ("CLUSTER_NAME", "prod"),
            ("NAMESPACE_EXCLUDE_FILTER", "a|b"),
            ("VERBOSE", "true"),
            ("DRY_RUN", "1"),
        ]);
        let cli = parse_from(["credsync", "sync"], env).unwrap();
        assert_eq!(cli.common.table, "legacy-table");
        assert_eq!(cli.common.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cli.common.cluster_name, "prod");
        assert_eq!(cli.common.namespace_exclude, "a|b");
        assert!(cli.common.verbose);
        assert!(matches!(cli.command, Command::Sync { dry_run: true, .. }));
    }

    #[test]
    fn flags_win_over_kubestash_variables() {
        let env = legacy(&[("DDB_TABLE", "legacy-table"), ("DRY_RUN", "false")]);
        let cli = parse_from(["credsync", "--table", "mine", "sync"], env).unwrap();
        assert_eq!(cli.common.table, "mine");
        assert!(matches!(cli.command, Command::Sync { dry_run: false, .. }));
    }

    #[test]
    fn context_pairs_parse_and_bad_ones_are_refused() {
        let cli = parse_from(
            ["credsync", "plan", "--context", "a=b", "--context", "c=d=e"],
            legacy(&[]),
        )
        .unwrap();
        assert_eq!(
            cli.common.context,
            [("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
        assert!(parse_from(["credsync", "plan", "--context", "novalue"], legacy(&[])).is_err());
    }
}
