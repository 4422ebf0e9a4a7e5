//! `history`, `show` and `diff`: they read the snapshot repository only,
//! no AWS and no cluster.

use anyhow::Result;

use crate::cli::args::Command;
use crate::cli::settings::Settings;
use crate::cli::setup::required_store;
use crate::render::listing;

/// Runs a listing command (`history`, `show` or `diff`; any other does
/// nothing). `color`: whether text listings may carry colour.
pub(in crate::cli) fn execute(settings: &Settings, command: &Command, color: bool) -> Result<u8> {
    match command {
        Command::History { limit, format } => {
            let store = required_store(settings)?;
            print!(
                "{}",
                listing::history(&store.history(*limit)?, *format, color)
            );
        }
        Command::Show {
            rev,
            secrets,
            reveal,
            format,
        } => {
            let store = required_store(settings)?;
            let commit = store.resolve(rev)?;
            if *reveal {
                let docs = store.documents(&commit.id, secrets, settings.required_identities()?)?;
                print!("{}", listing::reveal(&docs)?);
            } else {
                let entries = store.entries(&commit.id, secrets)?;
                print!("{}", listing::show(&commit, &entries, *format));
            }
        }
        Command::Diff { from, to, format } => {
            let store = required_store(settings)?;
            let (from, to) = (store.resolve(from)?, store.resolve(to)?);
            let deltas = store.diff(&from.id, &to.id)?;
            print!("{}", listing::diff(&from, &to, &deltas, *format, color));
        }
        _ => {}
    }
    Ok(0)
}
