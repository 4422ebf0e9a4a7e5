//! `history`, `show` and `diff`: they read the snapshot repository only,
//! no AWS and no cluster.

use anyhow::Result;

use crate::cli::args::{Command, Common};
use crate::cli::setup::{required_identities, required_store};
use crate::render::listing;

/// Runs a listing command; `None` when `command` is not one.
/// `color`: whether text listings may carry colour (a terminal, no NO_COLOR).
pub(in crate::cli) fn execute(
    common: &Common,
    command: &Command,
    color: bool,
) -> Result<Option<u8>> {
    match command {
        Command::History { limit, format } => {
            let store = required_store(common)?;
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
            let store = required_store(common)?;
            let commit = store.resolve(rev)?;
            if *reveal {
                let docs = store.documents(&commit.id, secrets, &required_identities(common)?)?;
                print!("{}", listing::reveal(&docs)?);
            } else {
                let entries = store.entries(&commit.id, secrets)?;
                print!("{}", listing::show(&commit, &entries, *format));
            }
        }
        Command::Diff { from, to, format } => {
            let store = required_store(common)?;
            let (from, to) = (store.resolve(from)?, store.resolve(to)?);
            let deltas = store.diff(&from.id, &to.id)?;
            print!("{}", listing::diff(&from, &to, &deltas, *format, color));
        }
        _ => return Ok(None),
    }
    Ok(Some(0))
}
