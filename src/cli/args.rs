//! The flags, as clap parses them: low-level arguments, each with its
//! `CREDSYNC_*` variable. Nothing here reads the environment beyond clap's
//! own `env` fallbacks or builds anything; the `config` and `setup`
//! modules turn these into the settings that build the reconciler.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::manifest::KeyMapping;
use crate::manifest::{DEFAULT_NAMESPACE_EXCLUDE, SecretRef};
use crate::render::{Format, ListFormat};
use crate::secretsmanager::names::NameScheme;
use crate::telemetry::LogFormat;

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
    /// Where desired state comes from: credstash, secretsmanager, or both
    /// (repeat the flag); their keys merge, a key claimed by both is a conflict.
    #[arg(
        long = "source",
        global = true,
        env = "CREDSYNC_SOURCE",
        value_enum,
        value_delimiter = ',',
        default_value = "credstash"
    )]
    pub sources: Vec<SourceKind>,
    /// How Secrets Manager names map: `path` (ns/secret as a JSON object,
    /// ns/secret/KEY as one key) or `kiss` (k8s-secret_<ns>_<name>).
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_SM_NAMES",
        value_parser = one_of(SM_NAMES),
        default_value = "path"
    )]
    pub sm_names: NameScheme,
    /// Only Secrets Manager secrets whose name starts with this (stripped before mapping).
    #[arg(long, global = true, env = "CREDSYNC_SM_PREFIX", default_value = "")]
    pub sm_prefix: String,
    /// Only Secrets Manager secrets with this tag (k=v, repeatable: all must match).
    #[arg(long = "sm-tag", global = true, env = "CREDSYNC_SM_TAG", value_delimiter = ',', value_parser = parse_context)]
    pub sm_tags: Vec<(String, String)>,
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
    /// Restart the Deployments, StatefulSets and DaemonSets annotated
    /// `credsync.io/reload` (or `reload-secrets`, or EDSM's
    /// `eventdrivensecretsmanaged`) when a Secret they use changes.
    #[arg(long, global = true, env = "CREDSYNC_ROLLOUTS")]
    pub rollouts: bool,
    /// A rollout credsync started that is not done after this long has
    /// failed (a Deployment's own progressDeadlineSeconds may say so
    /// first): the later waves wait, and the Secret is reverted.
    #[arg(long, global = true, env = "CREDSYNC_ROLLOUT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub rollout_timeout: Duration,
    /// When a wave's rollout fails, put the Secret back to the content its
    /// workloads last rolled out and pin it until a newer version arrives
    /// (`--rollout-revert=false`: only report).
    #[arg(long, global = true, env = "CREDSYNC_ROLLOUT_REVERT", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub rollout_revert: bool,
    /// How a table name's KEY becomes a Secret key: `credsync` (upper-case,
    /// `.` and `-` to `_`) or `kubestash-v2` (upper-case, only `-` to `_`,
    /// as Kubestash-V2's code does; Secret names with a dot are skipped).
    /// Keep `kubestash-v2` on a cluster Kubestash-V2 fed, so no key changes
    /// its spelling.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_KEY_MAPPING",
        value_parser = one_of(KEY_MAPPINGS),
        default_value = "credsync"
    )]
    pub key_mapping: KeyMapping,
    /// Take over the Secrets Kubestash-V2 wrote (annotated `managedBy:
    /// kubestashV2`): the keys the table names become credsync's (a later
    /// deletion in the table removes them) and Kubestash-V2's annotations
    /// give way to credsync's. Without it such Secrets only get the table's
    /// changed keys, as Kubestash-V2 wrote them.
    #[arg(long, global = true, env = "CREDSYNC_ADOPT_KUBESTASH_V2")]
    pub adopt_kubestash_v2: bool,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "CREDSYNC_LOG_FORMAT",
        value_parser = one_of(LOG_FORMATS),
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Colour in plans, listings and logs: `auto` (on a terminal, unless
    /// NO_COLOR is set), `always` or `never`. Markdown and JSON never have any.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub color: ColorChoice,
    /// Debug logging for credsync itself (`-v` is `put`'s version, as in credstash).
    #[arg(long, global = true, env = "CREDSYNC_VERBOSE")]
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
    /// ed25519 ssh private key (unencrypted) that signs every snapshot commit;
    /// only files of signed commits are trusted as values (warm starts,
    /// rollback requests, versions the source no longer holds).
    #[arg(long, global = true, env = "CREDSYNC_SNAPSHOT_SIGNING_KEY")]
    pub snapshot_signing_key: Option<PathBuf>,
    /// ssh public key file(s) whose snapshot commits are trusted too (a key
    /// being rotated out; a reader that verifies without signing), repeatable.
    #[arg(
        long = "snapshot-trusted-key",
        global = true,
        env = "CREDSYNC_SNAPSHOT_TRUSTED_KEY",
        value_delimiter = ','
    )]
    pub snapshot_trusted_keys: Vec<PathBuf>,
}

/// A source of desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Credstash,
    Secretsmanager,
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a sync would change; writes nothing.
    Plan {
        #[arg(long, env = "CREDSYNC_FORMAT", value_parser = one_of(FORMATS), default_value = "text")]
        format: Format,
        /// Exit 0 with no changes, 2 with changes, 1 on error.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan a snapshot instead of the table: what `rollback REV` would do.
        #[arg(long, value_name = "REV")]
        from_snapshot: Option<String>,
        /// Markdown plans stop their details before this many bytes (a
        /// GitHub comment takes 65,536 characters) and say what they left out.
        #[arg(long, value_name = "BYTES", default_value_t = crate::render::markdown::DEFAULT_MAX_BYTES)]
        max_bytes: usize,
        /// Also write the whole plan (never cut) to FILE, in the same format.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Reconcile once: plan, then write only what differs.
    Sync {
        /// Send server-side dry-run requests; nothing is stored.
        #[arg(long, env = "CREDSYNC_DRY_RUN")]
        dry_run: bool,
        #[arg(long, env = "CREDSYNC_FORMAT", value_parser = one_of(FORMATS), default_value = "text")]
        format: Format,
    },
    /// The in-cluster loop: stream, schedule, drift and HTTP triggers.
    Run(Box<RunArgs>),
    /// List snapshot commits, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_parser = one_of(LIST_FORMATS), default_value = "text")]
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
        #[arg(long, value_parser = one_of(LIST_FORMATS), default_value = "text")]
        format: ListFormat,
    },
    /// Key-level changes between two snapshots (never values).
    Diff {
        from: String,
        to: String,
        #[arg(long, value_parser = one_of(LIST_FORMATS), default_value = "text")]
        format: ListFormat,
    },
    /// Apply a snapshot's Secrets and pin them until `unpin`; or, with
    /// --propose, push a rollback request for review instead.
    Rollback {
        rev: String,
        #[arg(long = "secret", value_name = "NS/NAME")]
        secrets: Vec<SecretRef>,
        #[arg(long, conflicts_with = "propose")]
        dry_run: bool,
        /// Apply nothing: write a rollback request on a new branch, push it
        /// to --snapshot-remote and print its plan (markdown) for the pull
        /// request. Merged, the loop (`run`) applies it.
        #[arg(long)]
        propose: bool,
        /// The new branch (default: credsync/rollback-<revision>-<time>).
        #[arg(long, requires = "propose")]
        branch: Option<String>,
        /// Why, in one line: kept in the request, its commit and the rollback commit.
        #[arg(long, requires = "propose", default_value = "")]
        reason: String,
        #[arg(long, env = "CREDSYNC_FORMAT", value_parser = one_of(FORMATS), default_value = "text")]
        format: Format,
    },
    /// Write a value to the table as `credstash put` does.
    ///
    /// Give the value as VALUE, or as `-` to read it from stdin, or with
    /// -f FILE. Prefer stdin or -f: a VALUE on the command line is visible to
    /// other users in the process list; from a file or stdin it never
    /// appears in argv. The bytes are stored exactly as read (a trailing
    /// newline included).
    Put(PutArgs),
    /// Delete every version of a name from the table, as `credstash delete` does.
    Delete {
        /// Credstash name (`namespace/secret/KEY`).
        name: String,
        #[command(flatten)]
        through: ThroughServer,
    },
    /// Print a shell completion script: `source <(credsync completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `credsync man > credsync.1 && man ./credsync.1`.
    Man,
    /// Release rollback pins so sync manages the Secrets again.
    Unpin {
        #[arg(value_name = "NS/NAME", required_unless_present = "all")]
        secrets: Vec<SecretRef>,
        #[arg(long, conflicts_with = "secrets")]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Credstash name (`namespace/secret/KEY` for a Secret key).
    pub name: String,
    /// The value, or `-` for stdin (a value here shows in the process list).
    #[arg(
        value_name = "VALUE",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub value: Option<String>,
    /// Read the value from FILE.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Write this version (default 1, as credstash).
    #[arg(
        short = 'v',
        long = "version",
        value_name = "VERSION",
        conflicts_with = "autoversion"
    )]
    pub version: Option<u64>,
    /// Write the version after the latest (1 for a new name).
    #[arg(short = 'a', long = "autoversion")]
    pub autoversion: bool,
    /// KMS key for the data key: alias, key id or ARN.
    #[arg(short = 'k', long = "key-id", env = "CREDSYNC_KEY_ID", default_value = crate::credstash::DEFAULT_KEY_ID)]
    pub key_id: String,
    #[command(flatten)]
    pub through: ThroughServer,
}

/// Sending a write through a running `credsync run` instead of to AWS.
#[derive(Debug, Args)]
pub struct ThroughServer {
    /// Send the write to this credsync's self-service API (`https://...`)
    /// with the current kubeconfig context's token: no AWS credentials needed.
    #[arg(long, value_name = "URL", env = "CREDSYNC_SERVER")]
    pub server: Option<String>,
    /// Do not verify --server's TLS certificate (whoever sits between could
    /// read your token). Only on the command line: a kubeconfig's
    /// `insecure-skip-tls-verify` is never carried over to --server.
    #[arg(long, requires = "server")]
    pub insecure_skip_tls_verify: bool,
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
    /// SQS queue to take change events from (repeatable): DynamoDB stream
    /// records (EventBridge Pipes), Secrets Manager CloudTrail events, either
    /// inside SNS notifications. For many clusters on one table.
    #[arg(
        long = "events-queue",
        env = "CREDSYNC_EVENTS_QUEUE",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub events_queues: Vec<String>,
    /// Do not follow the stream: schedule and HTTP only.
    #[arg(long, env = "CREDSYNC_NO_STREAM")]
    pub no_stream: bool,
    /// Quiet time after stream events before reconciling them (WAIT_TIME, in seconds, accepted).
    #[arg(long, env = "CREDSYNC_DEBOUNCE", default_value = "1s", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Poll interval of a stream shard idle for 30 s (active shards: 250 ms). Up to this much
    /// latency is added to the first change after a quiet spell; 250ms keeps every shard fast.
    #[arg(long, env = "CREDSYNC_STREAM_IDLE_POLL", default_value = "3s", value_parser = parse_duration)]
    pub stream_idle_poll: Duration,
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
    /// How often the snapshot remote is fetched for reviewed rollback
    /// requests (with --snapshot-remote and --age-identity); 0s: never.
    #[arg(long, env = "CREDSYNC_REQUEST_POLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub request_poll_interval: Duration,
    /// Do not watch managed Secrets to undo hand edits.
    #[arg(long, env = "CREDSYNC_NO_DRIFT_REPAIR")]
    pub no_drift_repair: bool,
    /// Server-side dry-run writes only.
    #[arg(long, env = "CREDSYNC_DRY_RUN")]
    pub dry_run: bool,
    /// Time in-flight work gets after SIGTERM.
    #[arg(long, env = "CREDSYNC_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Serve the self-service API (PUT/DELETE /v1/secrets/NS/SECRET/KEY,
    /// GET /v1/secrets/NS): callers write their namespaces' secrets with
    /// their own Kubernetes token, checked by TokenReview and RBAC.
    #[arg(long, env = "CREDSYNC_SELF_SERVICE")]
    pub self_service: bool,
    /// The namespaces this cluster's self-service API writes for, and no
    /// other (required with --self-service): with one table for many
    /// clusters, a grant in this cluster is a grant in every cluster on the
    /// table, so list only the namespaces this cluster is the authority for.
    #[arg(
        long = "self-service-namespaces",
        env = "CREDSYNC_SELF_SERVICE_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS"
    )]
    pub self_service_namespaces: Vec<String>,
    /// KMS key of the data keys the self-service API writes with.
    #[arg(long, env = "CREDSYNC_KEY_ID", default_value = crate::credstash::DEFAULT_KEY_ID)]
    pub key_id: String,
    /// Largest value the self-service API accepts, in bytes.
    #[arg(long, env = "CREDSYNC_SELF_SERVICE_MAX_BYTES", default_value_t = 65536)]
    pub self_service_max_bytes: usize,
    /// Print the effective configuration (no secrets) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A domain type's names, for its flag: the domain knows nothing of clap.
const KEY_MAPPINGS: &[(&str, KeyMapping)] = &[
    ("credsync", KeyMapping::Credsync),
    ("kubestash-v2", KeyMapping::KubestashV2),
];
const SM_NAMES: &[(&str, NameScheme)] = &[("path", NameScheme::Path), ("kiss", NameScheme::Kiss)];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const FORMATS: &[(&str, Format)] = &[
    ("text", Format::Text),
    ("markdown", Format::Markdown),
    ("json", Format::Json),
];
const LIST_FORMATS: &[(&str, ListFormat)] =
    &[("text", ListFormat::Text), ("json", ListFormat::Json)];

/// A flag that takes one of `choices` by name (listed in help and
/// completions, as a derived value enum would be).
fn one_of<T: Copy + Send + Sync + 'static>(
    choices: &'static [(&'static str, T)],
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(choices.iter().map(|(name, _)| *name)).map(
        move |name| {
            // PossibleValuesParser let through only these names.
            choices
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(choices[0].1, |(_, value)| *value)
        },
    )
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::daemon::trigger::schedule::parse_duration(text).map_err(|e| e.to_string())
}

fn parse_context(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("'{s}' is not k=v")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn context_pairs_parse_and_bad_ones_are_refused() {
        let cli =
            Cli::try_parse_from(["credsync", "plan", "--context", "a=b", "--context", "c=d=e"])
                .unwrap();
        assert_eq!(
            cli.common.context,
            [("a".into(), "b".into()), ("c".into(), "d=e".into())]
        );
        assert!(Cli::try_parse_from(["credsync", "plan", "--context", "novalue"]).is_err());
    }
}
