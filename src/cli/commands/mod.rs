//! One module per command. Each takes what `cli` resolved (the flags, the
//! reconciler, the plan heading) and returns the process exit code.

pub(super) mod listings;
pub(super) mod plan;
pub(super) mod rollback;
pub(super) mod run;
pub(super) mod sync;

use crate::render::Heading;

/// What every command that prints a plan needs.
pub(super) struct Output {
    pub heading: Heading,
    /// Colour only on a terminal.
    pub color: bool,
}
