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
use std::time::Duration;

use crate::cluster::{ApplyOptions, Cluster, DiffOptions};
use crate::credstash::{CredstashSource, SourceConfig};
use crate::manifest::SecretRef;
use crate::manifest::{DEFAULT_NAMESPACE_EXCLUDE, NamespaceFilter};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::render::ListFormat;
use crate::render::{self, Format, Heading, listing};
use crate::server::Access;
use crate::snapshot::remote::{RemoteConfig, RemoteUrl};
use crate::snapshot::store::{SnapshotStore, StoreConfig};
use crate::telemetry::{self, LogFormat};
use sops_age::{Identities, Recipients};
use zeroize::Zeroizing;

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
    /// Connect and read timeout of every AWS and Kubernetes request (AWS retries up to 3 times).
    #[arg(long, global = true, env = "CREDSYNC_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// A one-shot command (plan, sync, rollback, ...) that runs longer stops with an error; `run` has --reconcile-timeout.
    #[arg(long, global = true, env = "CREDSYNC_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
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
    /// The in-cluster loop: stream, schedule, drift and HTTP triggers.
    Run(Box<RunArgs>),
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address for /sync, /plan, /metrics, /healthz, /readyz.
    #[arg(long, env = "CREDSYNC_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Full reconcile every INTERVAL (e.g. 10m). CRON_HOURS=N means every N hours.
    #[arg(long, env = "CREDSYNC_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Full reconcile on a cron expression (5 or 6 fields, UTC); overrides --interval.
    #[arg(long, env = "CREDSYNC_SCHEDULE")]
    pub schedule: Option<String>,
    /// The table's stream (default: DescribeTable's latest stream).
    #[arg(long, env = "CREDSYNC_STREAM_ARN")]
    pub stream_arn: Option<String>,
    /// Do not follow the stream: schedule and HTTP only.
    #[arg(long, env = "CREDSYNC_NO_STREAM")]
    pub no_stream: bool,
    /// Quiet time after stream events before reconciling them (WAIT_TIME, in seconds, accepted).
    #[arg(long, env = "CREDSYNC_DEBOUNCE", default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,
    /// A reconcile running longer is cancelled and retried (CREDSTASH_SYNC_TIMEOUT_SECS accepted).
    #[arg(long, env = "CREDSYNC_RECONCILE_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub reconcile_timeout: Duration,
    /// Failed reconciles in a row after which /healthz fails.
    #[arg(long, env = "CREDSYNC_FAILURE_LIMIT", default_value_t = 5)]
    pub failure_limit: u32,
    /// File holding the bearer token for /sync and /plan (CREDSYNC_SYNC_TOKEN or FLASK_API_KEY also work).
    #[arg(long, env = "CREDSYNC_SYNC_TOKEN_FILE")]
    pub sync_token_file: Option<PathBuf>,
    /// Serve /sync and /plan to anyone who reaches the port, without a token (unsafe outside a test).
    #[arg(long, env = "CREDSYNC_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// HTTP connections served at once (a small overflow beyond it gets 1 s to send a request).
    #[arg(long, env = "CREDSYNC_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and to stay idle between requests.
    #[arg(long, env = "CREDSYNC_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,
    /// At most one accepted /sync per scope in this window; /plan is recomputed at most once in it.
    #[arg(long, env = "CREDSYNC_SYNC_RATE_LIMIT", default_value = "60s", value_parser = parse_duration)]
    pub sync_rate_limit: Duration,
    /// Elect a leader over a Lease so several replicas are safe.
    #[arg(long, env = "CREDSYNC_LEADER_ELECTION")]
    pub leader_election: bool,
    #[arg(long, env = "CREDSYNC_LEASE_NAME", default_value = "credsync")]
    pub lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "CREDSYNC_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    #[arg(long, env = "CREDSYNC_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease (default: POD_NAME, else HOSTNAME).
    #[arg(long, env = "CREDSYNC_IDENTITY")]
    pub identity: Option<String>,
    /// Do not watch managed Secrets to undo hand edits.
    #[arg(long, env = "CREDSYNC_NO_DRIFT_REPAIR")]
    pub no_drift_repair: bool,
    /// Server-side dry-run writes only.
    #[arg(long, env = "CREDSYNC_DRY_RUN")]
    pub dry_run: bool,
    /// Time in-flight work gets after SIGTERM.
    #[arg(long, env = "CREDSYNC_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Print the effective configuration (no secrets) and exit.
    #[arg(long)]
    pub print_config: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::trigger::schedule::parse_duration(text)
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
    ("stream_arn", "STREAM_ARN"),
    ("debounce", "WAIT_TIME"),
    ("interval", "CRON_HOURS"),
    ("reconcile_timeout", "CREDSTASH_SYNC_TIMEOUT_SECS"),
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
        // Only the matches that define `arg` may be asked where it came from.
        let Some(owner) = [sub, Some(&matches)]
            .into_iter()
            .flatten()
            .find(|m| m.try_get_raw(arg).is_ok())
        else {
            continue;
        };
        let source = owner.value_source(arg);
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
            "dry_run" => match &mut cli.command {
                Command::Sync { dry_run, .. } => *dry_run |= truthy,
                Command::Run(run) => run.dry_run |= truthy,
                _ => {}
            },
            "stream_arn" | "debounce" | "interval" | "reconcile_timeout" => {
                if let Command::Run(run) = &mut cli.command {
                    apply_legacy_run(run, arg, &value)?;
                }
            }
            _ => {}
        }
    }
    Ok(cli)
}

/// Kubestash-V2's run settings: WAIT_TIME and CREDSTASH_SYNC_TIMEOUT_SECS in
/// seconds, CRON_HOURS in hours.
fn apply_legacy_run(run: &mut RunArgs, arg: &str, value: &str) -> Result<()> {
    let number = |unit: u64| -> Result<Duration> {
        let n: u64 = value
            .trim()
            .parse()
            .with_context(|| format!("{arg}: '{value}' is not a whole number"))?;
        Ok(Duration::from_secs(n * unit))
    };
    match arg {
        "stream_arn" => run.stream_arn = Some(value.to_owned()),
        "debounce" => run.debounce = number(1)?,
        "interval" => run.interval = Some(number(3600)?),
        "reconcile_timeout" => run.reconcile_timeout = number(1)?,
        _ => {}
    }
    Ok(())
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
    match run_bounded(cli).await {
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
        url: RemoteUrl::parse(url),
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
        common.request_timeout,
        metrics.clone(),
    )
    .await;
    let filter = NamespaceFilter::parse(
        &common.namespace_exclude,
        common.namespace_include.as_deref(),
    );
    let cluster = Cluster::connect(common.request_timeout, metrics.clone())
        .await?
        .with_namespaces(filter.included());
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

/// One-shot commands end within `--timeout`; the loop runs until stopped.
async fn run_bounded(cli: Cli) -> Result<ExitCode> {
    if cli.common.timeout.is_zero() || cli.common.request_timeout.is_zero() {
        bail!("--timeout and --request-timeout must be more than 0");
    }
    if matches!(cli.command, Command::Run(_)) {
        return run(cli).await;
    }
    let limit = cli.common.timeout;
    match tokio::time::timeout(limit, run(cli)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "stopped after --timeout {:?}: AWS or the Kubernetes API did not answer in time \
             (check the endpoints, or raise --timeout); each Secret write is one request, \
             so none was left half-written, and a rerun finishes the work",
            limit
        ),
    }
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
    if let Command::Run(args) = &cli.command
        && args.print_config
    {
        println!("{}", print_config(common, args)?);
        return Ok(ExitCode::SUCCESS);
    }
    let needs_recipients = matches!(cli.command, Command::Sync { .. } | Command::Run(_));
    let store = snapshot_store(common, needs_recipients)?;
    let reconciler = build(common, store.clone()).await?;
    let reads_table = matches!(
        cli.command,
        Command::Sync { .. }
            | Command::Run(_)
            | Command::Plan {
                from_snapshot: None,
                ..
            }
    );
    if reads_table
        && store.is_some()
        && let Some(ids) = identities(common)?
    {
        reconciler.warm_start(ids).await;
    }
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
        Command::Run(args) => {
            let config = run_config(common, *args)?;
            crate::run::run(reconciler, config, heading).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::History { .. } | Command::Show { .. } | Command::Diff { .. } => 0,
    };
    tracing::info!(calls = %reconciler.metrics().call_summary(), "done");
    Ok(ExitCode::from(code))
}

/// Who may call /sync and /plan, resolved once from, in order,
/// `--sync-token-file`, `CREDSYNC_SYNC_TOKEN` and Kubestash-V2's
/// `FLASK_API_KEY`. A token source that is given but empty is an error, not
/// a reason to look further or to run open; no token at all closes the
/// endpoints unless `--insecure-no-auth` opens them.
fn sync_access(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<Access> {
    let (token, from) = if let Some(file) = &args.sync_token_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading --sync-token-file {}", file.display()))?;
        (Some(text), format!("--sync-token-file {}", file.display()))
    } else if let Some(value) = env("CREDSYNC_SYNC_TOKEN") {
        (Some(value), "CREDSYNC_SYNC_TOKEN".to_owned())
    } else if let Some(value) = env("FLASK_API_KEY") {
        (Some(value), "FLASK_API_KEY".to_owned())
    } else {
        (None, String::new())
    };
    let token = token.map(Zeroizing::new);
    match (token, args.insecure_no_auth) {
        (Some(_), true) => bail!(
            "{from} gives a sync token and --insecure-no-auth asks for none: drop one of them"
        ),
        (Some(token), false) => {
            let trimmed = Zeroizing::new(token.trim().to_owned());
            if trimmed.is_empty() {
                bail!(
                    "{from} is empty: put the sync token in it, or unset it \
                     (with --insecure-no-auth to serve /sync and /plan without a token)"
                );
            }
            Ok(Access::Token(trimmed))
        }
        (None, true) => Ok(Access::Open),
        (None, false) => Ok(Access::Unconfigured),
    }
}

fn run_config(common: &Common, args: RunArgs) -> Result<crate::run::RunConfig> {
    use crate::cluster::lease::LeaseConfig;
    use crate::trigger::schedule::Schedule;
    let schedule = match (&args.schedule, args.interval) {
        (Some(cron), _) => Some(Schedule::cron(cron).map_err(anyhow::Error::msg)?),
        (None, Some(every)) if every.is_zero() => bail!("--interval must be more than 0"),
        (None, Some(every)) => Some(Schedule::Every(every)),
        (None, None) => None,
    };
    if args.max_connections == 0 || args.http_header_timeout.is_zero() {
        bail!("--max-connections and --http-header-timeout must be more than 0");
    }
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("credsync-{}", std::process::id()));
    let lease = args.leader_election.then(|| LeaseConfig {
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned()),
        name: args.lease_name.clone(),
        identity,
        lease_duration: args.lease_duration,
        renew_interval: args.lease_duration / 3,
    });
    let settings = vec![
        common.table.clone(),
        common.region.clone().unwrap_or_default(),
        common.cluster_name.clone(),
        common.namespace_exclude.clone(),
        args.dry_run.to_string(),
        (!args.no_stream).to_string(),
        args.leader_election.to_string(),
    ];
    Ok(crate::run::RunConfig {
        settings,
        listen: args.listen,
        schedule,
        stream: (!args.no_stream).then(|| crate::trigger::stream::StreamConfig {
            table: String::new(),
            stream_arn: args.stream_arn.clone(),
            debounce: args.debounce,
            poll_interval: Duration::from_millis(250),
        }),
        worker: crate::worker::WorkerConfig {
            timeout: args.reconcile_timeout,
            dry_run: args.dry_run,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        },
        failure_limit: args.failure_limit,
        access: sync_access(&args, |var| std::env::var(var).ok())?,
        connections: crate::server::connections::ConnectionLimits {
            max_connections: args.max_connections,
            header_timeout: args.http_header_timeout,
        },
        rate_window: args.sync_rate_limit,
        lease,
        drift_repair: !args.no_drift_repair,
        grace: args.grace,
    })
}

/// The effective configuration as JSON, with secrets reduced to "set"/"unset".
/// What it reports is what `run` would use: the same token resolution (so
/// a bad token source fails here too) and URLs without their credentials.
fn print_config(common: &Common, args: &RunArgs) -> Result<String> {
    let set = |present: bool| if present { "set" } else { "unset" };
    let access = sync_access(args, |var| std::env::var(var).ok())?;
    let token_set = matches!(access, Access::Token(_));
    let config = serde_json::json!({
        "table": common.table,
        "region": common.region,
        "context_keys": common.context.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "cluster_name": common.cluster_name,
        "namespace_exclude": common.namespace_exclude,
        "namespace_include": common.namespace_include,
        "kms_concurrency": common.kms_concurrency,
        "scan_segments": common.scan_segments,
        "prune_keys": !common.no_prune,
        "delete_empty": !common.keep_empty,
        "snapshot_repo": common.snapshot_repo,
        "snapshot_remote": common.snapshot_remote.as_deref().map(|url| RemoteUrl::parse(url).to_string()),
        "age_recipients": common.age_recipients,
        "age_identity": set(common.age_identity.is_some()),
        "request_timeout": format!("{:?}", common.request_timeout),
        "listen": args.listen.to_string(),
        "interval": args.interval.map(|d| format!("{d:?}")),
        "schedule": args.schedule,
        "stream": if args.no_stream { "off".to_owned() } else { args.stream_arn.clone().unwrap_or_else(|| "from DescribeTable".to_owned()) },
        "debounce": format!("{:?}", args.debounce),
        "reconcile_timeout": format!("{:?}", args.reconcile_timeout),
        "failure_limit": args.failure_limit,
        "sync_token": set(token_set),
        "sync_auth": access.describe(),
        "max_connections": args.max_connections,
        "http_header_timeout": format!("{:?}", args.http_header_timeout),
        "sync_rate_limit": format!("{:?}", args.sync_rate_limit),
        "leader_election": args.leader_election,
        "lease_name": args.lease_name,
        "lease_duration": format!("{:?}", args.lease_duration),
        "drift_repair": !args.no_drift_repair,
        "dry_run": args.dry_run,
        "grace": format!("{:?}", args.grace),
    });
    Ok(serde_json::to_string_pretty(&config).unwrap_or_default())
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

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut args = vec!["credsync", "run"];
        args.extend(extra);
        match parse_from(args, legacy(&[])).unwrap().command {
            Command::Run(run) => *run,
            other => panic!("parsed {other:?}"),
        }
    }

    fn token_of(access: Access) -> String {
        match access {
            Access::Token(token) => token.to_string(),
            Access::Unconfigured => "<unconfigured>".to_owned(),
            Access::Open => "<open>".to_owned(),
        }
    }

    #[test]
    fn an_empty_token_file_stops_start_up() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["", "  \n\t\n"] {
            let file = dir.path().join("token");
            std::fs::write(&file, content).unwrap();
            let args = run_args(&["--sync-token-file", file.to_str().unwrap()]);
            let err = sync_access(&args, legacy(&[("FLASK_API_KEY", "legacy")]))
                .err()
                .unwrap();
            assert!(err.to_string().contains("is empty"), "{err}");
        }
        let file = dir.path().join("token");
        std::fs::write(&file, " t0ken \n").unwrap();
        let args = run_args(&["--sync-token-file", file.to_str().unwrap()]);
        assert_eq!(token_of(sync_access(&args, legacy(&[])).unwrap()), "t0ken");
    }

    #[test]
    fn an_empty_token_variable_neither_hides_nor_opens() {
        let args = run_args(&[]);
        let err = sync_access(
            &args,
            legacy(&[("CREDSYNC_SYNC_TOKEN", ""), ("FLASK_API_KEY", "legacy")]),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("CREDSYNC_SYNC_TOKEN is empty"),
            "{err}"
        );
        let legacy_only = sync_access(&args, legacy(&[("FLASK_API_KEY", "legacy")])).unwrap();
        assert_eq!(token_of(legacy_only), "legacy");
        let err = sync_access(&args, legacy(&[("FLASK_API_KEY", " ")]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("FLASK_API_KEY is empty"), "{err}");
    }

    #[test]
    fn no_token_is_closed_unless_insecure_mode_is_asked_for() {
        let closed = sync_access(&run_args(&[]), legacy(&[])).unwrap();
        assert!(matches!(closed, Access::Unconfigured));
        let open = sync_access(&run_args(&["--insecure-no-auth"]), legacy(&[])).unwrap();
        assert!(matches!(open, Access::Open));
        let both = sync_access(
            &run_args(&["--insecure-no-auth"]),
            legacy(&[("CREDSYNC_SYNC_TOKEN", "t")]),
        );
        assert!(both.is_err());
    }
}
