//! `rollback` (restore Secrets from a snapshot revision and pin them) and
//! `unpin` (hand them back to the table).

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};

use super::Output;
use crate::cli::settings::Settings;
use crate::context::Context;
use crate::manifest::SecretRef;
use crate::plan::Plan;
use crate::render::{self, Format};
use crate::rollback_requests::plan_requests;
use crate::snapshot::request::RollbackRequest;
use crate::snapshot::store::{RollbackCause, SnapshotStore};

/// `rollback REV` (not `--propose`): what to restore and how to report it.
pub(in crate::cli) struct Rollback {
    pub rev: String,
    pub secrets: Vec<SecretRef>,
    pub dry_run: bool,
    pub format: Format,
}

/// The snapshot repository of a command that cannot work without it.
pub(in crate::cli) fn store_of(context: &Context) -> Result<&Arc<SnapshotStore>> {
    context
        .snapshots
        .as_ref()
        .context("this command needs --snapshot-repo (or CREDSYNC_SNAPSHOT_REPO)")
}

pub(in crate::cli) async fn execute(
    settings: &Settings,
    context: &Context,
    out: &Output,
    rollback: Rollback,
) -> Result<u8> {
    let Rollback {
        rev,
        secrets,
        dry_run,
        format,
    } = rollback;
    let reconciler = &context.reconciler;
    let store = store_of(context)?;
    let commit = store.resolve(&rev)?;
    // Decrypt (and check every MAC), then check every value against the
    // sources, before touching the cluster.
    let restored = store.desired(&commit.id, &secrets, settings.required_identities()?)?;
    let signed = store.authenticated(&commit.id)?;
    let verified = reconciler.verify_restore(restored, signed).await?;
    let report = reconciler
        .rollback(verified, &commit, dry_run, RollbackCause::ByHand)
        .await?;
    out.report(&report, dry_run, format);
    Ok(u8::from(!report.outcome.failed.is_empty()))
}

pub(in crate::cli) async fn unpin(context: &Context, secrets: &[SecretRef]) -> Result<u8> {
    let unpinned = context.cluster.unpin(secrets).await?;
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
            "not unpinned: {} (not pinned, not managed by credsync, or pinned by a reviewed rollback request: remove its file, or revert its merge, instead)",
            missing.join(", ")
        );
    }
    Ok(0)
}

/// `rollback --propose`'s request.
pub(in crate::cli) struct Proposal {
    pub rev: String,
    pub secrets: Vec<SecretRef>,
    pub branch: Option<String>,
    pub reason: String,
}

/// Writes a rollback request on a new branch, pushes it, and prints what
/// merging it would change (markdown, for the pull request). Every file it
/// restores is decrypted and its MAC checked first: a request that the
/// loop would refuse is not proposed.
pub(in crate::cli) async fn propose(
    settings: &Settings,
    context: &Context,
    out: &Output,
    proposal: Proposal,
) -> Result<u8> {
    let reconciler = &context.reconciler;
    let store = store_of(context)?;
    let identities = settings.required_identities()?;
    store.fetch()?;
    let commit = store.resolve(&proposal.rev)?;
    let restored = store.desired(&commit.id, &proposal.secrets, identities)?;
    let request = RollbackRequest {
        revision: commit.id.clone(),
        secrets: restored.keys().cloned().collect(),
        reason: proposal.reason.trim().to_owned(),
    };
    // The same checks the loop makes on the file it will read.
    let request = RollbackRequest::parse(&request.render())?;
    for secret in &request.secrets {
        if let Some(why) = reconciler.namespace_refusal(&secret.namespace) {
            bail!(
                "{secret} is outside the namespaces credsync writes ({why}): the loop would refuse this request"
            );
        }
    }
    let now = chrono::Utc::now();
    let branch = proposal.branch.unwrap_or_else(|| {
        format!(
            "credsync/rollback-{}-{}",
            &request.revision[..12],
            now.format("%Y%m%d%H%M%S")
        )
    });
    let proposed = store.propose(&request, &branch, &request.file_name(now))?;
    // Judged as the loop will judge it once merged, before anything is pushed.
    let judged = plan_requests(
        reconciler,
        &context.cluster,
        store.clone(),
        Some(proposed.commit.clone()),
        Some(identities.clone()),
    )
    .await
    .map_err(anyhow::Error::from)
    .and_then(|views| {
        let mine: Vec<_> = views
            .into_iter()
            .filter(|v| v.file == proposed.path)
            .collect();
        match mine.iter().find_map(|v| v.refusal.clone()) {
            Some(refusal) => {
                bail!("the loop would refuse this request, so it is not proposed: {refusal}")
            }
            None => Ok(mine),
        }
    });
    let published = judged.and_then(|views| {
        store.publish(&proposed)?;
        Ok(views)
    });
    let views = match published {
        Ok(views) => views,
        Err(err) => {
            // Nothing was pushed: leave no branch behind to trip the next try.
            if let Err(discard) = store.discard(&proposed) {
                tracing::warn!(error = %crate::errors::Chain(&discard), "the proposal's local branch was not deleted");
            }
            return Err(err);
        }
    };
    let plan = Plan {
        requests: views,
        ..Plan::default()
    };
    eprintln!(
        "pushed branch {} (request {}, commit {}) to {}; open a pull request into {}: once merged, the loop applies it",
        proposed.branch,
        proposed.path,
        &proposed.commit[..12],
        settings
            .snapshot_remote_shown
            .as_deref()
            .unwrap_or_default(),
        crate::snapshot::BRANCH,
    );
    out.print(&render::render(
        &plan,
        None,
        &out.heading,
        Format::Markdown,
        false,
    ));
    Ok(0)
}
