//! One module per command. Each takes what `cli` resolved (the flags, the
//! reconciler, the plan heading) and returns the process exit code.

pub(super) mod listings;
pub(super) mod plan;
pub(super) mod put;
pub(super) mod rollback;
pub(super) mod run;
pub(super) mod sync;

use std::sync::Arc;

use crate::progress::Progress;
use crate::reconcile::SyncReport;
use crate::render::{self, Format, Heading};

/// What every command that prints a plan needs.
pub(super) struct Output {
    pub heading: Heading,
    /// Colour only on a terminal.
    pub color: bool,
    /// The progress line of the same terminal: cleared before anything is printed.
    pub progress: Arc<dyn Progress>,
}

impl Output {
    /// Prints `text` on stdout once the progress line is gone.
    fn print(&self, text: &str) {
        self.progress.finish();
        print!("{text}");
    }

    /// A sync's or rollback's plan and what was applied on stdout, the
    /// snapshot commit it recorded on stderr.
    fn report(&self, report: &SyncReport, dry_run: bool, format: Format) {
        let outcome = Some((&report.outcome, dry_run));
        self.print(&render::render(
            &report.plan,
            outcome,
            &self.heading,
            format,
            self.color,
        ));
        if let Some(commit) = &report.snapshot {
            eprintln!("snapshot: {} {}", &commit.id[..12], commit.summary);
        }
    }
}
