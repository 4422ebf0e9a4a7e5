//! The progress bar on a terminal: one line on stderr that says which step
//! a reconcile is in, with counts, redrawn in place and cleared at the end.
//! Only when stderr is a terminal, logs are text and colour is allowed (a
//! redrawn line needs escape codes, which NO_COLOR and `--color never`
//! rule out); pipes, CI logs and JSON logs never see it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::Metrics;
use crate::progress::{Progress, Step};

/// Draws [`Step`]s; done-so-far counts are read from the metrics.
pub(super) struct TerminalProgress {
    bar: ProgressBar,
    metrics: Arc<Metrics>,
    /// The step shown and the counter's value when it began.
    current: Mutex<Option<(Step, u64)>>,
    /// Off after the first `finish`: later reconciles of `run` stay quiet.
    finished: AtomicBool,
}

impl TerminalProgress {
    pub(super) fn start(metrics: Arc<Metrics>) -> Arc<Self> {
        // 60 redraws a second at most: every step is drawn even when steps
        // follow each other within milliseconds (a burst is allowed).
        let target = ProgressDrawTarget::term(console::Term::buffered_stderr(), 60);
        let bar = ProgressBar::with_draw_target(None, target);
        let progress = Arc::new(Self {
            bar,
            metrics,
            current: Mutex::new(None),
            finished: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&progress);
        // Counts move as the metrics do; a weak handle ends the thread with the bar.
        std::thread::spawn(move || {
            while let Some(progress) = weak.upgrade() {
                if progress.finished.load(Ordering::Relaxed) {
                    return;
                }
                progress.refresh();
                drop(progress);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        progress
    }

    /// What the current step's counter says now.
    fn count(&self, step: Step) -> u64 {
        match step {
            Step::Scanning => self.metrics.dynamodb_calls("Scan"),
            Step::Decrypting { .. } => self.metrics.kms_calls(),
            Step::Writing { .. } => self.metrics.kubernetes_writes(),
            Step::ReadingCluster | Step::Committing { .. } => 0,
        }
    }

    fn refresh(&self) {
        let Ok(current) = self.current.lock() else {
            return;
        };
        if let Some((step, base)) = *current {
            let done = self.count(step).saturating_sub(base);
            self.bar.set_position(done);
            if let Step::Scanning = step {
                self.bar
                    .set_message(format!("scanning the table: {done} page(s) read"));
            }
        }
    }
}

/// A command that ends in an error clears the line too: the error message
/// must not land in the middle of it.
impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Progress for TerminalProgress {
    fn step(&self, step: Step) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let (message, total) = match step {
            Step::Scanning => ("scanning the table".to_owned(), None),
            Step::Decrypting { items } => ("decrypting (KMS calls)".to_owned(), Some(items)),
            Step::ReadingCluster => ("reading the cluster's Secrets".to_owned(), None),
            Step::Committing { secrets } => (
                format!("committing the snapshot ({secrets} Secret(s) changed)"),
                None,
            ),
            Step::Writing { secrets } => ("writing Secrets".to_owned(), Some(secrets)),
        };
        let style = match total {
            Some(_) => ProgressStyle::with_template("{spinner} {msg} {pos}/{len} [{elapsed}]"),
            None => ProgressStyle::with_template("{spinner} {msg} [{elapsed}]"),
        };
        if let Ok(style) = style {
            self.bar.set_style(style);
        }
        self.bar.set_length(total.unwrap_or(0));
        self.bar.set_position(0);
        self.bar.set_message(message);
        self.bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut current) = self.current.lock() {
            *current = Some((step, self.count(step)));
        }
    }

    fn finish(&self) {
        if !self.finished.swap(true, Ordering::Relaxed) {
            self.bar.finish_and_clear();
        }
    }
}
