//! `rollback` (restore Secrets from a snapshot revision and pin them) and
//! `unpin` (hand them back to the table).

use anyhow::{Result, bail};

use super::Output;
use crate::cli::args::Common;
use crate::cli::setup::{required_identities, required_store};
use crate::manifest::SecretRef;
use crate::reconcile::Reconciler;
use crate::render::Format;

pub(in crate::cli) async fn execute(
    common: &Common,
    reconciler: &Reconciler,
    out: &Output,
    rev: &str,
    secrets: &[SecretRef],
    dry_run: bool,
    format: Format,
) -> Result<u8> {
    let store = required_store(common)?;
    let commit = store.resolve(rev)?;
    // Decrypt (and check every MAC) before touching the cluster.
    let restored = store.desired(&commit.id, secrets, &required_identities(common)?)?;
    let report = reconciler
        .rollback(restored, &commit, dry_run, None)
        .await?;
    out.report(&report, dry_run, format);
    Ok(u8::from(!report.outcome.failed.is_empty()))
}

pub(in crate::cli) async fn unpin(reconciler: &Reconciler, secrets: &[SecretRef]) -> Result<u8> {
    let unpinned = reconciler.cluster().unpin(secrets).await?;
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
    Ok(0)
}
