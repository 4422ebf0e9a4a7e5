//! `sync`: plan, record the snapshot, apply (server-side dry-run with
//! `--dry-run`); exit 1 when anything was not written.

use anyhow::Result;

use super::Output;
use crate::reconcile::Reconciler;
use crate::render::Format;

pub(in crate::cli) async fn execute(
    reconciler: &Reconciler,
    out: &Output,
    dry_run: bool,
    format: Format,
) -> Result<u8> {
    let report = reconciler.sync(dry_run).await?;
    out.report(&report, dry_run, format);
    Ok(u8::from(report.has_errors()))
}
