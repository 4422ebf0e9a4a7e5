//! What the commands and the daemon work with, built once from the resolved
//! settings (`cli`): the reconciler, and the adapters beside it that the
//! triggers, the server and the rollback follower use directly, so nothing
//! reaches through the reconciler for an adapter.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::credstash::CredstashSource;
use crate::manifest::KeyMapping;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::reconcile::Reconciler;
use crate::snapshot::store::SnapshotStore;

pub struct Context {
    pub reconciler: Arc<Reconciler>,
    /// The API server, as credsync's identity.
    pub cluster: Cluster,
    /// The Credstash table (the self-service API writes it).
    pub table: Arc<CredstashSource>,
    /// The AWS configuration every client is built from (SQS, the stream).
    pub aws: aws_config::SdkConfig,
    pub metrics: Arc<Metrics>,
    pub snapshots: Option<Arc<SnapshotStore>>,
    /// How table names become Secrets and keys (`--key-mapping`).
    pub mapping: KeyMapping,
    /// Where a long command shows its steps (a terminal's progress line).
    pub progress: Arc<dyn Progress>,
}
