//! `run`: the in-cluster loop, with the settings resolved once
//! (`--print-config` prints them and exits).

use anyhow::Result;

use super::Output;
use crate::cli::args::RunArgs;
use crate::cli::config::{RunSettings, run_config};
use crate::cli::settings::Settings;
use crate::context::Context;

/// `--print-config`: the settings `run` would use, without building anything.
pub(in crate::cli) fn print_config(settings: &Settings, args: &RunArgs) -> Result<u8> {
    println!("{}", RunSettings::resolve(settings, args)?.to_json());
    Ok(0)
}

pub(in crate::cli) async fn execute(
    settings: &Settings,
    args: RunArgs,
    context: Context,
    out: Output,
) -> Result<u8> {
    let run_settings = RunSettings::resolve(settings, &args)?;
    if let Some(snapshots) = &settings.snapshots {
        if snapshots.remote.is_some() && settings.identities.is_none() {
            tracing::warn!(
                "rollback requests are not followed: give --age-identity so their snapshot files can be checked"
            );
        }
        if snapshots.remote.is_some() && !snapshots.signing_key_given {
            tracing::warn!(
                "rollback requests are not followed: give --snapshot-signing-key, so credsync can tell its own snapshot commits from pushed ones"
            );
        }
        if !snapshots.signing_key_given {
            tracing::info!(
                "snapshot commits are not signed (no --snapshot-signing-key): a restart trusts only this clone's own cache, and a rollback only versions the source still holds"
            );
        }
    }
    let config = run_config(args, run_settings, settings.identities.clone())?;
    crate::daemon::run::run(context, config, out.heading).await?;
    Ok(0)
}
