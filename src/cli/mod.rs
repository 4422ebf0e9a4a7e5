//! The command line: flags, their environment variables, exit codes.
//!
//! Every flag has a `CREDSYNC_*` variable; Kubestash-V2's variable names are
//! accepted as fallbacks so its users can switch by changing the image.

mod args;
mod config;
mod legacy;
mod setup;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Result, bail};

pub use args::{Cli, Command, Common, RunArgs};
pub use legacy::parse;

use crate::render::{self, Heading, listing};
use crate::telemetry;
use config::{Settings, run_config};
use setup::{build, identities, required_identities, required_store, snapshot_store};

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
        println!("{}", Settings::resolve(common, args)?.to_json());
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
            let settings = Settings::resolve(common, &args)?;
            let config = run_config(*args, settings)?;
            crate::run::run(reconciler, config, heading).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::History { .. } | Command::Show { .. } | Command::Diff { .. } => 0,
    };
    tracing::info!(calls = %reconciler.metrics().call_summary(), "done");
    Ok(ExitCode::from(code))
}
