//! `run`: the in-cluster loop, with the settings resolved once
//! (`--print-config` prints them and exits).

use anyhow::Result;

use super::Output;
use crate::cli::args::{Common, RunArgs};
use crate::cli::config::{Settings, run_config};
use crate::cli::setup::identities;
use crate::context::Context;

/// `--print-config`: the settings `run` would use, without building anything.
pub(in crate::cli) fn print_config(common: &Common, args: &RunArgs) -> Result<u8> {
    println!("{}", Settings::resolve(common, args)?.to_json());
    Ok(0)
}

pub(in crate::cli) async fn execute(
    common: &Common,
    args: RunArgs,
    context: Context,
    out: Output,
) -> Result<u8> {
    let settings = Settings::resolve(common, &args)?;
    if common.snapshot_remote.is_some() && common.age_identity.is_none() {
        tracing::warn!(
            "rollback requests are not followed: give --age-identity so their snapshot files can be checked"
        );
    }
    if common.snapshot_remote.is_some() && common.snapshot_signing_key.is_none() {
        tracing::warn!(
            "rollback requests are not followed: give --snapshot-signing-key, so credsync can tell its own snapshot commits from pushed ones"
        );
    }
    if common.snapshot_repo.is_some() && common.snapshot_signing_key.is_none() {
        tracing::info!(
            "snapshot commits are not signed (no --snapshot-signing-key): a restart trusts only this clone's own cache, and a rollback only versions the source still holds"
        );
    }
    let config = run_config(args, settings, identities(common)?)?;
    crate::daemon::run::run(context, config, out.heading).await?;
    Ok(0)
}
