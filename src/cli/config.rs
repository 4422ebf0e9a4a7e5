//! The `run` daemon's settings, resolved once from the flags and the
//! environment (the pod's name and namespace, the sync token variables):
//! what `run` uses, what `--print-config` prints, what the settings metric
//! reports.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use super::args::{RunArgs, SourceKind};
use super::settings::Settings;
use crate::daemon::server::Access;
use crate::secretsmanager::names::NameScheme;

/// The one reader of the process environment beyond clap's `env` fallbacks
/// and Kubestash-V2's variables (`legacy`): the pod's identity from the
/// downward API, and the secrets given as variables.
pub(super) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The pod's name (downward API), else the host name: names the replica in
/// the Lease and in the Events it records.
pub(super) fn pod_name() -> Option<String> {
    env_var("POD_NAME").or_else(|| env_var("HOSTNAME"))
}

/// Who may call /sync and /plan, resolved once from, in order,
/// `--sync-token-file`, `CREDSYNC_SYNC_TOKEN` and Kubestash-V2's
/// `FLASK_API_KEY`. A token source that is given but empty is an error, not
/// a reason to look further or to run open; no token at all closes the
/// endpoints unless `--insecure-no-auth` opens them.
pub(super) fn sync_access(args: &RunArgs, env: impl Fn(&str) -> Option<String>) -> Result<Access> {
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

pub(super) fn run_config(
    args: RunArgs,
    settings: RunSettings,
    identities: Option<sops_age::Identities>,
) -> Result<crate::daemon::run::RunConfig> {
    use crate::cluster::lease::LeaseConfig;
    use crate::daemon::trigger::schedule::Schedule;
    let schedule = match (&args.schedule, args.interval) {
        (Some(cron), _) => Some(Schedule::cron(cron)?),
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
        .or_else(pod_name)
        .unwrap_or_else(|| format!("credsync-{}", std::process::id()));
    let lease = args.leader_election.then(|| LeaseConfig {
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| env_var("POD_NAMESPACE"))
            .unwrap_or_else(|| "default".to_owned()),
        name: args.lease_name.clone(),
        identity,
        lease_duration: args.lease_duration,
        renew_interval: args.lease_duration / 3,
    });
    Ok(crate::daemon::run::RunConfig {
        settings: settings.metric_labels(),
        listen: args.listen,
        schedule,
        // The stream is the table's: no table, no stream.
        stream: (!args.no_stream && settings.sources.contains(&SourceKind::Credstash)).then(|| {
            crate::daemon::trigger::stream::StreamConfig {
                table: String::new(),
                stream_arn: args.stream_arn.clone(),
                debounce: args.debounce,
                poll_interval: Duration::from_millis(250),
                idle_poll_interval: args.stream_idle_poll,
            }
        }),
        worker: crate::daemon::worker::WorkerConfig {
            timeout: args.reconcile_timeout,
            dry_run: args.dry_run,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        },
        failure_limit: args.failure_limit,
        access: settings.access,
        connections: crate::daemon::server::connections::ConnectionLimits {
            max_connections: args.max_connections,
            header_timeout: args.http_header_timeout,
        },
        rate_window: args.sync_rate_limit,
        lease,
        drift_repair: !args.no_drift_repair,
        grace: args.grace,
        queues: args
            .events_queues
            .iter()
            .map(|url| crate::daemon::trigger::queue::QueueConfig {
                url: url.clone(),
                debounce: args.debounce,
            })
            .collect(),
        self_service: args
            .self_service
            .then(|| crate::daemon::server::credentials::SelfService {
                key_id: args.key_id.clone(),
                max_value_bytes: args.self_service_max_bytes,
                namespaces: settings.self_service_namespaces.iter().cloned().collect(),
                memory: Default::default(),
            }),
        requests: settings
            .request_poll_interval
            .zip(identities)
            .map(
                |(interval, identities)| crate::daemon::rollback_follower::FollowConfig {
                    interval,
                    identities,
                },
            ),
    })
}

/// What `run` uses, resolved once from the flags and the environment:
/// `--print-config` prints it, and `credsync_settings_info` takes its labels
/// from it. Secrets appear only as "set"/"unset", URLs without credentials.
#[derive(serde::Serialize)]
pub(super) struct RunSettings {
    sources: Vec<SourceKind>,
    sm_names: NameScheme,
    sm_prefix: String,
    sm_tag_keys: Vec<String>,
    events_queues: Vec<String>,
    table: String,
    region: Option<String>,
    context_keys: Vec<String>,
    cluster_name: String,
    namespace_exclude: String,
    namespace_include: Option<String>,
    kms_concurrency: usize,
    scan_segments: i32,
    prune_keys: bool,
    delete_empty: bool,
    rollouts: bool,
    #[serde(serialize_with = "as_debug")]
    rollout_timeout: Duration,
    rollout_revert: bool,
    key_mapping: &'static str,
    adopt_kubestash_v2: bool,
    snapshot_repo: Option<std::path::PathBuf>,
    snapshot_remote: Option<String>,
    age_recipients: Vec<String>,
    age_identity: &'static str,
    snapshot_signing_key: &'static str,
    snapshot_trusted_keys: Vec<std::path::PathBuf>,
    #[serde(serialize_with = "as_debug")]
    request_timeout: Duration,
    listen: String,
    #[serde(serialize_with = "as_debug_opt")]
    interval: Option<Duration>,
    schedule: Option<String>,
    /// "off", the stream ARN, or "from DescribeTable".
    stream: String,
    #[serde(serialize_with = "as_debug")]
    debounce: Duration,
    #[serde(serialize_with = "as_debug")]
    stream_idle_poll: Duration,
    #[serde(serialize_with = "as_debug")]
    reconcile_timeout: Duration,
    failure_limit: u32,
    sync_token: &'static str,
    sync_auth: String,
    max_connections: usize,
    #[serde(serialize_with = "as_debug")]
    http_header_timeout: Duration,
    #[serde(serialize_with = "as_debug")]
    sync_rate_limit: Duration,
    leader_election: bool,
    lease_name: String,
    #[serde(serialize_with = "as_debug")]
    lease_duration: Duration,
    drift_repair: bool,
    dry_run: bool,
    self_service: bool,
    self_service_namespaces: Vec<String>,
    key_id: String,
    self_service_max_bytes: usize,
    #[serde(serialize_with = "as_debug")]
    grace: Duration,
    /// How often the remote is read for rollback requests; None: not followed.
    #[serde(serialize_with = "as_debug_opt")]
    request_poll_interval: Option<Duration>,
    /// Who may call /sync and /plan; never printed.
    #[serde(skip)]
    access: Access,
}

/// `--self-service-namespaces`, checked: required with `--self-service`
/// (secure by default: no list, no API), each a namespace name.
fn self_service_namespaces(args: &RunArgs) -> Result<Vec<String>> {
    let mut namespaces: Vec<String> = args
        .self_service_namespaces
        .iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    if let Some(bad) = namespaces
        .iter()
        .find(|ns| !crate::manifest::is_dns1123_label(ns))
    {
        bail!("--self-service-namespaces: '{bad}' is not a namespace name (a DNS-1123 label)");
    }
    if args.self_service && namespaces.is_empty() {
        bail!(
            "--self-service needs --self-service-namespaces (or CREDSYNC_SELF_SERVICE_NAMESPACES):              the namespaces this cluster is the authority for. With one table for many clusters,              a grant in this cluster would otherwise be a grant in all of them"
        );
    }
    namespaces.sort();
    namespaces.dedup();
    Ok(namespaces)
}

fn as_debug<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{d:?}"))
}

fn as_debug_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => as_debug(d, s),
        None => s.serialize_none(),
    }
}

impl RunSettings {
    /// Resolves `run`'s own settings beside the common ones; a bad token
    /// source fails here, for `--print-config` as for `run`.
    pub(super) fn resolve(settings: &Settings, args: &RunArgs) -> Result<Self> {
        let set = |present: bool| if present { "set" } else { "unset" };
        let access = sync_access(args, env_var)?;
        let snapshots = settings.snapshots.as_ref();
        let signing_key = snapshots.is_some_and(|s| s.signing_key_given);
        let sm = settings.secrets_manager.as_ref();
        Ok(Self {
            sources: settings.sources.clone(),
            sm_names: sm.map_or(NameScheme::Path, |sm| sm.names),
            sm_prefix: sm.map(|sm| sm.prefix.clone()).unwrap_or_default(),
            sm_tag_keys: sm
                .map(|sm| sm.tags.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default(),
            events_queues: args.events_queues.clone(),
            table: settings.table.table.clone(),
            region: settings.table.region.clone(),
            context_keys: settings.table.context.keys().cloned().collect(),
            cluster_name: settings.cluster_name.clone(),
            namespace_exclude: settings.namespace_exclude.clone(),
            namespace_include: settings.namespace_include.clone(),
            kms_concurrency: settings.table.kms_concurrency,
            scan_segments: settings.table.scan_segments,
            prune_keys: settings.apply.diff.prune_keys,
            delete_empty: settings.apply.diff.delete_empty,
            rollouts: settings.apply.rollouts,
            rollout_timeout: settings.apply.rollout_timeout,
            rollout_revert: settings.apply.rollout_revert,
            key_mapping: settings.mapping.as_str(),
            adopt_kubestash_v2: settings.apply.diff.adopt_kubestash_v2,
            snapshot_repo: snapshots.map(|s| s.path.clone()),
            snapshot_remote: settings.snapshot_remote_shown.clone(),
            age_recipients: snapshots
                .map(|s| s.recipient_texts.clone())
                .unwrap_or_default(),
            age_identity: set(settings.age_identity_given),
            snapshot_signing_key: set(signing_key),
            snapshot_trusted_keys: snapshots
                .map(|s| s.trusted_key_files.clone())
                .unwrap_or_default(),
            request_timeout: settings.request_timeout,
            listen: args.listen.to_string(),
            interval: args.interval,
            schedule: args.schedule.clone(),
            stream: if args.no_stream {
                "off".to_owned()
            } else {
                args.stream_arn
                    .clone()
                    .unwrap_or_else(|| "from DescribeTable".to_owned())
            },
            debounce: args.debounce,
            stream_idle_poll: args.stream_idle_poll,
            reconcile_timeout: args.reconcile_timeout,
            failure_limit: args.failure_limit,
            sync_token: set(matches!(access, Access::Token(_))),
            sync_auth: access.describe().to_owned(),
            max_connections: args.max_connections,
            http_header_timeout: args.http_header_timeout,
            sync_rate_limit: args.sync_rate_limit,
            leader_election: args.leader_election,
            lease_name: args.lease_name.clone(),
            lease_duration: args.lease_duration,
            drift_repair: !args.no_drift_repair,
            dry_run: args.dry_run,
            self_service: args.self_service,
            self_service_namespaces: self_service_namespaces(args)?,
            key_id: args.key_id.clone(),
            self_service_max_bytes: args.self_service_max_bytes,
            grace: args.grace,
            // A dry run writes nothing, so it applies no request either;
            // without a signing key no revision can be authenticated.
            request_poll_interval: (snapshots.is_some_and(|s| s.remote.is_some())
                && settings.age_identity_given
                && signing_key
                && !args.dry_run
                && !args.request_poll_interval.is_zero())
            .then_some(args.request_poll_interval),
            access,
        })
    }

    /// `--print-config`'s output (keys sorted, as a JSON object's are).
    pub(super) fn to_json(&self) -> String {
        serde_json::to_value(self)
            .and_then(|value| serde_json::to_string_pretty(&value))
            .unwrap_or_default()
    }

    /// Values of `credsync_settings_info`'s labels, in `SETTINGS_LABELS`
    /// order, read from the same fields `--print-config` prints.
    fn metric_labels(&self) -> Vec<String> {
        vec![
            self.table.clone(),
            self.region.clone().unwrap_or_default(),
            self.cluster_name.clone(),
            self.namespace_exclude.clone(),
            self.dry_run.to_string(),
            // Whether the stream is followed at all, not which one.
            (self.stream != "off").to_string(),
            self.leader_election.to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    #[test]
    fn the_settings_metric_has_a_value_for_each_label() {
        let cli = Cli::try_parse_from(["credsync", "run", "--no-stream"]).unwrap();
        let common = Settings::resolve(&cli.common, &cli.command).unwrap();
        let settings = RunSettings::resolve(&common, &run_args(&["--no-stream"])).unwrap();
        let labels = settings.metric_labels();
        assert_eq!(labels.len(), crate::metrics::SETTINGS_LABELS.len());
        assert_eq!(labels[5], "false", "stream: followed or not");
    }

    /// An environment holding only `vars`.
    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut args = vec!["credsync", "run"];
        args.extend(extra);
        match Cli::try_parse_from(args).unwrap().command {
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
            let err = sync_access(&args, env_of(&[("FLASK_API_KEY", "legacy")]))
                .err()
                .unwrap();
            assert!(err.to_string().contains("is empty"), "{err}");
        }
        let file = dir.path().join("token");
        std::fs::write(&file, " t0ken \n").unwrap();
        let args = run_args(&["--sync-token-file", file.to_str().unwrap()]);
        assert_eq!(token_of(sync_access(&args, env_of(&[])).unwrap()), "t0ken");
    }

    #[test]
    fn an_empty_token_variable_neither_hides_nor_opens() {
        let args = run_args(&[]);
        let err = sync_access(
            &args,
            env_of(&[("CREDSYNC_SYNC_TOKEN", ""), ("FLASK_API_KEY", "legacy")]),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("CREDSYNC_SYNC_TOKEN is empty"),
            "{err}"
        );
        let legacy_only = sync_access(&args, env_of(&[("FLASK_API_KEY", "legacy")])).unwrap();
        assert_eq!(token_of(legacy_only), "legacy");
        let err = sync_access(&args, env_of(&[("FLASK_API_KEY", " ")]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("FLASK_API_KEY is empty"), "{err}");
    }

    #[test]
    fn no_token_is_closed_unless_insecure_mode_is_asked_for() {
        let closed = sync_access(&run_args(&[]), env_of(&[])).unwrap();
        assert!(matches!(closed, Access::Unconfigured));
        let open = sync_access(&run_args(&["--insecure-no-auth"]), env_of(&[])).unwrap();
        assert!(matches!(open, Access::Open));
        let both = sync_access(
            &run_args(&["--insecure-no-auth"]),
            env_of(&[("CREDSYNC_SYNC_TOKEN", "t")]),
        );
        assert!(both.is_err());
    }
}
