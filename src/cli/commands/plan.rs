//! `plan`: what a sync would change, against the table or a snapshot
//! revision; exit 2 with `--detailed-exitcode` when there are changes.
//! In GitHub Actions it also fills the step summary and the step outputs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::Output;
use super::rollback::store_of;
use crate::cli::settings::Settings;
use crate::context::Context;
use crate::plan::{Action, Plan, RequestState};
use crate::render::{self, Format, Heading, markdown};
use crate::rollback_requests::plan_requests;

/// The `plan` command's own flags.
pub(in crate::cli) struct PlanOptions {
    pub format: Format,
    pub detailed_exitcode: bool,
    pub from_snapshot: Option<String>,
    pub max_bytes: usize,
    pub output: Option<PathBuf>,
}

pub(in crate::cli) async fn execute(
    settings: &Settings,
    context: &Context,
    out: &Output,
    options: PlanOptions,
) -> Result<u8> {
    let reconciler = &context.reconciler;
    let planned = match &options.from_snapshot {
        Some(rev) => {
            let store = store_of(context)?;
            let commit = store.resolve(rev)?;
            let secrets = store.desired(&commit.id, &[], settings.required_identities()?)?;
            // What `rollback REV` would refuse is refused here too.
            let signed = store.authenticated(&commit.id)?;
            let verified = reconciler.verify_restore(secrets, signed).await?;
            reconciler.plan_snapshot(verified.into_secrets()).await?
        }
        None => {
            let mut planned = reconciler.plan().await?;
            // A checkout holding rollback requests: what merging them does.
            if let Some(store) = &context.snapshots {
                planned.plan.requests = plan_requests(
                    reconciler,
                    &context.cluster,
                    store.clone(),
                    None,
                    settings.identities.clone(),
                )
                .await?;
            }
            planned
        }
    };
    let plan = &planned.plan;
    let sized = |max_bytes| match options.format {
        Format::Markdown => markdown::render(plan, None, &out.heading, max_bytes),
        format => render::render(
            plan,
            None,
            &out.heading,
            format,
            out.color && max_bytes != usize::MAX,
        ),
    };
    out.print(&sized(options.max_bytes));
    if let Some(path) = &options.output {
        std::fs::write(path, sized(usize::MAX))
            .with_context(|| format!("writing the whole plan to {}", path.display()))?;
    }
    github(plan, &out.heading, options.max_bytes)?;
    Ok(if !plan.failures.is_empty() {
        1
    } else if options.detailed_exitcode && plan.has_changes() {
        2
    } else {
        0
    })
}

/// GitHub Actions' conventions: the markdown plan appended to the job's
/// summary (`GITHUB_STEP_SUMMARY`), and `has_changes`, `plan_id` and the
/// counts (rollback requests too) as step outputs (`GITHUB_OUTPUT`).
/// Nothing outside Actions.
fn github(plan: &Plan, heading: &Heading, max_bytes: usize) -> Result<()> {
    if let Some(path) = env_path("GITHUB_STEP_SUMMARY") {
        let text = markdown::render(plan, None, heading, max_bytes);
        append(&path, &format!("{text}\n"))?;
    }
    if let Some(path) = env_path("GITHUB_OUTPUT") {
        let outputs = format!(
            "has_changes={}\nplan_id={}\ncreate={}\nupdate={}\ndelete={}\nunchanged={}\nfailed={}\nrequests_pending={}\nrequests_refused={}\n",
            plan.has_changes(),
            render::plan_id(plan, heading),
            plan.count(Action::Create),
            plan.count(Action::Update),
            plan.count(Action::Delete),
            plan.unchanged,
            plan.failures.len(),
            plan.requests_in(RequestState::Pending),
            plan.requests_in(RequestState::Refused),
        );
        append(&path, &outputs)?;
    }
    Ok(())
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn append(path: &Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}
