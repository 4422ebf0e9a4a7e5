//! `plan`: what a sync would change, against the table or a snapshot
//! revision; exit 2 with `--detailed-exitcode` when there are changes.

use anyhow::Result;

use super::Output;
use crate::cli::args::Common;
use crate::cli::setup::{required_identities, required_store};
use crate::reconcile::Reconciler;
use crate::render::{self, Format};

pub(in crate::cli) async fn execute(
    common: &Common,
    reconciler: &Reconciler,
    out: &Output,
    format: Format,
    detailed_exitcode: bool,
    from_snapshot: Option<String>,
) -> Result<u8> {
    let planned = match from_snapshot {
        Some(rev) => {
            let store = required_store(common)?;
            let commit = store.resolve(&rev)?;
            let secrets = store.desired(&commit.id, &[], &required_identities(common)?)?;
            reconciler.plan_snapshot(secrets).await?
        }
        None => reconciler.plan().await?,
    };
    let plan = &planned.plan;
    print!(
        "{}",
        render::render(plan, None, &out.heading, format, out.color)
    );
    Ok(if !plan.failures.is_empty() {
        1
    } else if detailed_exitcode && plan.has_changes() {
        2
    } else {
        0
    })
}
