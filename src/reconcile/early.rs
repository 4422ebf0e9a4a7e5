//! Decryption with the writes beside it: Secrets whose items are all
//! decrypted are written in rounds while KMS works on the others, so a cold
//! reconcile's writes hide behind its KMS calls instead of following them.
//!
//! Only when nothing must come first: with snapshots the commit precedes
//! every write, so there the writes wait for the whole plan (with
//! `--rollouts` too, see `Reconciler::sync`). And only Secrets whose change
//! needs nothing but their own content ([`plan::plain_change`]); the apply
//! that follows writes the rest (a last part round among them) with the
//! whole plan, and skips what was written here.

use std::pin::pin;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};

use crate::cluster::apply::{ApplyOptions, EarlyWrites};
use crate::cluster::{Cluster, ClusterError};
use crate::manifest::{Assembly, Manifest};
use crate::plan::{self, LiveState};
use crate::source::{Credential, ItemFailure};

/// What a reconcile read, and what it wrote while reading.
pub(super) struct Read {
    pub manifest: Manifest,
    pub live: Result<LiveState, ClusterError>,
    pub early: EarlyWrites,
}

/// Builds `assembly` from `decrypted` while `live` is read. With `write`,
/// Secrets whose items are all in are written a round (the apply's
/// concurrency) at a time for as long as decryption goes on; what is still
/// waiting when the last item arrives is left to the apply.
pub(super) async fn decrypt_and_write(
    cluster: &Cluster,
    mut assembly: Assembly,
    decrypted: impl Stream<Item = Result<Credential, ItemFailure>>,
    live: impl Future<Output = Result<LiveState, ClusterError>>,
    write: Option<&ApplyOptions>,
) -> Read {
    let early = EarlyWrites::default();
    let mut whole = match write {
        Some(_) => assembly.whole(),
        None => Vec::new(),
    };
    let mut live_state: Option<Result<LiveState, ClusterError>> = None;
    let mut writes = FuturesUnordered::new();
    let mut decrypted = pin!(decrypted);
    let mut live = pin!(live);
    let mut decrypting = true;
    loop {
        if let (Some(Ok(state)), Some(options), true) = (&live_state, write, decrypting) {
            // In rounds of the apply's concurrency, each started once the
            // last is done and a whole round is waiting: etcd commits a
            // round together, while the same writes one by one cost the API
            // server and etcd half again as much CPU (taken from KMS).
            let round = options.concurrency.max(1);
            if writes.is_empty() && whole.len() >= round {
                for secret in whole.drain(whole.len() - round..) {
                    let desired = assembly.secret(&secret);
                    let current = state.secrets.get(&secret);
                    if let Some(change) =
                        plan::plain_change(&secret, desired, current, options.diff)
                    {
                        writes.push(cluster.write_early(
                            change,
                            desired.cloned().unwrap_or_default(),
                            current.cloned(),
                            options,
                            &early,
                        ));
                    }
                }
            }
        }
        tokio::select! {
            read = &mut live, if live_state.is_none() => live_state = Some(read),
            next = decrypted.next(), if decrypting => match next {
                Some(item) => {
                    let now_whole = assembly.add(item);
                    if write.is_some() {
                        whole.extend(now_whole);
                    }
                }
                None => decrypting = false,
            },
            Some(()) = writes.next(), if !writes.is_empty() => {}
            else => break,
        }
    }
    drop(writes);
    let live = match live_state {
        Some(read) => read,
        // Not reached (the loop ends once the live state is in), but
        // awaiting it is right whatever the loop did.
        None => live.await,
    };
    if !early.is_empty() {
        tracing::debug!(
            secrets = early.len(),
            "Secrets written while the others were decrypted"
        );
    }
    Read {
        manifest: assembly.finish(),
        live,
        early,
    }
}
