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

use crate::cluster::{ApplyOptions, Cluster, DiffOptions};
use crate::credstash::{CredstashSource, SourceConfig};
use crate::manifest::{DEFAULT_NAMESPACE_EXCLUDE, NamespaceFilter};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::render::{self, Format, Heading};
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
    },
    /// Reconcile once: plan, then write only what differs.
    Sync {
        /// Send server-side dry-run requests; nothing is stored.
        #[arg(long, env = "CREDSYNC_DRY_RUN")]
        dry_run: bool,
        #[arg(long, env = "CREDSYNC_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
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

async fn build(common: &Common) -> Result<Reconciler> {
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
    Ok(Reconciler::new(source, cluster, filter, apply, metrics))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let reconciler = build(&cli.common).await?;
    let heading = Heading {
        table: reconciler.source().table().to_owned(),
        region: reconciler.source().region().to_owned(),
        cluster: cli.common.cluster_name.clone(),
    };
    let color = std::io::stdout().is_terminal();
    let code = match cli.command {
        Command::Plan {
            format,
            detailed_exitcode,
        } => {
            let planned = reconciler.plan().await?;
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
            u8::from(report.has_errors())
        }
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
