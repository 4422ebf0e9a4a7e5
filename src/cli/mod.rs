//! The command line: flags, their environment variables, exit codes.
//!
//! Every flag has a `CREDSYNC_*` variable; Kubestash-V2's variable names are
//! accepted as fallbacks so its users can switch by changing the image.

mod args;
mod commands;
mod config;
mod legacy;
mod progress;
mod settings;
mod setup;
mod terminal;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

pub use args::{Cli, Command, Common, PutArgs, RunArgs};
pub use legacy::parse;

use crate::render::Heading;
use crate::telemetry;
use settings::Settings;
use setup::{build, snapshot_store};

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
        Err(err) => return fail(&err),
    };
    // Raw flags -> settings, once: every later step takes these.
    let settings = match Settings::resolve(&cli.common, &cli.command) {
        Ok(settings) => settings,
        Err(err) => return fail(&err),
    };
    let terminal = terminal::Terminal::resolve(settings.color, settings.log_format);
    telemetry::init(settings.log_format, settings.verbose, terminal.color_stderr);
    match run_bounded(cli.command, settings, terminal).await {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

/// One line on stderr, whatever the log format.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", crate::errors::chain(err.as_ref()));
    ExitCode::from(1)
}

/// One-shot commands end within `--timeout`; the loop runs until stopped.
async fn run_bounded(
    command: Command,
    settings: Settings,
    terminal: terminal::Terminal,
) -> Result<ExitCode> {
    if settings.needs.daemon {
        return run(command, settings, terminal).await;
    }
    let limit = settings.timeout;
    match tokio::time::timeout(limit, run(command, settings, terminal)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "stopped after --timeout {:?}: AWS or the Kubernetes API did not answer in time \
             (check the endpoints, or raise --timeout); each Secret write is one request, \
             so none was left half-written, and a rerun finishes the work",
            limit
        ),
    }
}

/// Dispatches `command` with what it needs built.
async fn run(
    command: Command,
    settings: Settings,
    terminal: terminal::Terminal,
) -> Result<ExitCode> {
    let color = terminal.color_stdout;
    // Commands that need no context: generated text, the snapshot
    // repository alone, writes to the table.
    match &command {
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
        Command::History { .. } | Command::Show { .. } | Command::Diff { .. } => {
            return commands::listings::execute(&settings, &command, color).map(ExitCode::from);
        }
        Command::Put(args) => {
            return commands::put::put(&settings, args)
                .await
                .map(ExitCode::from);
        }
        Command::Delete { name, through } => {
            return commands::put::delete(&settings, name, through)
                .await
                .map(ExitCode::from);
        }
        Command::Run(args) if args.print_config => {
            return commands::run::print_config(&settings, args).map(ExitCode::from);
        }
        _ => {}
    }
    let store = snapshot_store(&settings)?;
    let context = build(&settings, store, terminal.progress).await?;
    if settings.needs.warm_start
        && let Some(ids) = &settings.identities
    {
        context.reconciler.warm_start(ids.clone()).await;
    }
    let out = commands::Output {
        heading: Heading {
            table: context.table.table().to_owned(),
            region: context.table.region().to_owned(),
            cluster: settings.cluster_name.clone(),
            // The daemon's plans are computed later, against later commits.
            snapshot: match (&context.snapshots, settings.needs.daemon) {
                (Some(store), false) => store
                    .history(1)
                    .ok()
                    .and_then(|h| h.first().map(|c| c.id.clone())),
                _ => None,
            },
        },
        color,
        progress: context.progress.clone(),
    };
    let code = match command {
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
            commands::plan::execute(&settings, &context, &out, options).await?
        }
        Command::Sync { dry_run, format } => {
            commands::sync::execute(&context.reconciler, &out, dry_run, format).await?
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
            commands::rollback::propose(&settings, &context, &out, proposal).await?
        }
        Command::Rollback {
            rev,
            secrets,
            dry_run,
            format,
            ..
        } => {
            let rollback = commands::rollback::Rollback {
                rev,
                secrets,
                dry_run,
                format,
            };
            commands::rollback::execute(&settings, &context, &out, rollback).await?
        }
        Command::Unpin { secrets, all: _ } => commands::rollback::unpin(&context, &secrets).await?,
        Command::Run(args) => {
            commands::run::execute(&settings, *args, context, out).await?;
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
