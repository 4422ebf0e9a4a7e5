//! What a long reconcile is doing, for someone watching a terminal.
//!
//! The reconcile names its steps; how they are shown (a bar on stderr, or
//! nothing in pipes, CI logs and JSON mode) is the command line's business.
//! Counts come from the reconcile (totals) and from the metrics it already
//! keeps (done so far), so no adapter needs to know about progress.

/// A step of a reconcile, with what it will count to when that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The table (and Secrets Manager) being read.
    Scanning,
    /// Items decrypted with KMS (values known already cost no call).
    Decrypting { items: u64 },
    /// The live Secrets being read.
    ReadingCluster,
    /// The snapshot being sealed and committed.
    Committing { secrets: u64 },
    /// Secrets being written.
    Writing { secrets: u64 },
}

/// Where steps go.
pub trait Progress: Send + Sync {
    fn step(&self, step: Step);
    /// The command's work is over: whatever was shown is cleared.
    fn finish(&self);
}

/// Shows nothing: the default, and what pipes and the daemon's later
/// reconciles get.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: Step) {}
    fn finish(&self) {}
}
