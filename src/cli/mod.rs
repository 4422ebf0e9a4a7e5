//! The command line: flags, their environment variables, exit codes.
//!
//! Every flag has a `CREDSYNC_*` variable; Kubestash-V2's variable names are
//! accepted as fallbacks so its users can switch by changing the image.

mod args;
mod commands;
mod config;
mod legacy;
mod progress;
mod setup;
mod terminal;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

pub use args::{Cli, Command, Common, PutArgs, RunArgs};
pub use legacy::parse;

use crate::render::Heading;
use crate::telemetry;
use setup::{build, identities, snapshot_store};

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
            eprintln!("error: {}", crate::errors::chain(err.as_ref()));
            return ExitCode::from(1);
        }
    };
    let terminal = terminal::Terminal::resolve(cli.common.color, cli.common.log_format);
    telemetry::init(
        cli.common.log_format,
        cli.common.verbose,
        terminal.color_stderr,
    );
    match run_bounded(cli, terminal).await {
        Ok(code) => code,
        Err(err) => {
            // One line on stderr, whatever the log format.
            eprintln!("error: {}", crate::errors::chain(err.as_ref()));
            ExitCode::from(1)
        }
    }
}

/// One-shot commands end within `--timeout`; the loop runs until stopped.
async fn run_bounded(cli: Cli, terminal: terminal::Terminal) -> Result<ExitCode> {
    if cli.common.timeout.is_zero() || cli.common.request_timeout.is_zero() {
        bail!("--timeout and --request-timeout must be more than 0");
    }
    if matches!(cli.command, Command::Run(_)) {
        return run(cli, terminal).await;
    }
    let limit = cli.common.timeout;
    match tokio::time::timeout(limit, run(cli, terminal)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "stopped after --timeout {:?}: AWS or the Kubernetes API did not answer in time \
             (check the endpoints, or raise --timeout); each Secret write is one request, \
             so none was left half-written, and a rerun finishes the work",
            limit
        ),
    }
}

async fn run(cli: Cli, terminal: terminal::Terminal) -> Result<ExitCode> {
    let common = &cli.common;
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "credsync", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .context("writing the man page to stdout")?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Some(code) = commands::listings::execute(common, &cli.command, terminal.color_stdout)? {
        return Ok(ExitCode::from(code));
    }
    // Writes to the table need neither the cluster nor a snapshot store.
    match &cli.command {
        Command::Put(args) => return commands::put::put(common, args).await.map(ExitCode::from),
        Command::Delete { name, through } => {
            return commands::put::delete(common, name, through)
                .await
                .map(ExitCode::from);
        }
        _ => {}
    }
    if let Command::Run(args) = &cli.command
        && args.print_config
    {
        return commands::run::print_config(common, args).map(ExitCode::from);
    }
    let needs_recipients = matches!(cli.command, Command::Sync { .. } | Command::Run(_));
    let store = snapshot_store(common, needs_recipients)?;
    let daemon = matches!(cli.command, Command::Run(_));
    let context = build(common, store.clone(), daemon, terminal.progress).await?;
    let reconciler = &context.reconciler;
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
    let out = commands::Output {
        heading: Heading {
            table: context.table.table().to_owned(),
            region: context.table.region().to_owned(),
            cluster: common.cluster_name.clone(),
            // The daemon's plans are computed later, against later commits.
            snapshot: match (&cli.command, &store) {
                (Command::Run(_), _) | (_, None) => None,
                (_, Some(store)) => store
                    .history(1)
                    .ok()
                    .and_then(|h| h.first().map(|c| c.id.clone())),
            },
        },
        color: terminal.color_stdout,
        progress: context.progress.clone(),
    };
    let code = match cli.command {
        Command::Plan {
            format,
            detailed_exitcode,
            from_snapshot,
            max_bytes,
            output,
        } => {
            let options = commands::plan::PlanOptions {
                format,
                detailed_exitcode,
                from_snapshot,
                max_bytes,
                output,
            };
            commands::plan::execute(common, &context, &out, options).await?
        }
        Command::Sync { dry_run, format } => {
            commands::sync::execute(reconciler, &out, dry_run, format).await?
        }
        Command::Rollback {
            rev,
            secrets,
            propose: true,
            branch,
            reason,
            ..
        } => {
            let proposal = commands::rollback::Proposal {
                rev,
                secrets,
                branch,
                reason,
            };
            commands::rollback::propose(common, &context, &out, proposal).await?
        }
        Command::Rollback {
            rev,
            secrets,
            dry_run,
            format,
            ..
        } => {
            commands::rollback::execute(common, reconciler, &out, &rev, &secrets, dry_run, format)
                .await?
        }
        Command::Unpin { secrets, all: _ } => commands::rollback::unpin(&context, &secrets).await?,
        Command::Run(args) => {
            commands::run::execute(common, *args, context, out).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::History { .. }
        | Command::Show { .. }
        | Command::Diff { .. }
        | Command::Put(_)
        | Command::Delete { .. }
        | Command::Completions { .. }
        | Command::Man => 0,
    };
    tracing::info!(calls = %context.metrics.call_summary(), "done");
    Ok(ExitCode::from(code))
}
