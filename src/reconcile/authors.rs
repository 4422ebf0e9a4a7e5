//! Who wrote what through the self-service API, kept until the snapshot
//! commit that carries the change names them.

use std::collections::BTreeSet;

use super::Reconciler;
use crate::manifest::{Manifest, SecretRef};
use crate::source::ItemId;

/// Who wrote an item through the self-service API, until a snapshot commit names them.
pub(super) struct Authored {
    item: ItemId,
    /// A delete of every version of `item.name`.
    deleted: bool,
    who: String,
}

/// Authors remembered at most; the oldest go first (a write whose reconcile
/// never commits must not grow the daemon's memory).
pub(super) const MAX_PENDING_AUTHORS: usize = 1024;

impl Reconciler {
    /// Remembers who wrote `item` (or deleted every version of its name),
    /// so the snapshot commit that carries the change names them.
    pub fn note_author(&self, item: ItemId, deleted: bool, who: String) {
        if let Ok(mut authors) = self.authors.lock() {
            if authors.len() >= MAX_PENDING_AUTHORS {
                authors.remove(0);
            }
            authors.push(Authored { item, deleted, who });
        }
    }

    /// The "written by" lines of the writes `manifest` carries (a put whose
    /// item is a key's source; a delete whose Secret is in scope and keeps
    /// no key from the name), taken out of the pending list.
    pub(super) fn authors_in(
        &self,
        manifest: &Manifest,
        scope: Option<&BTreeSet<SecretRef>>,
    ) -> String {
        let Ok(mut authors) = self.authors.lock() else {
            return String::new();
        };
        let sources = || {
            manifest
                .secrets
                .values()
                .flat_map(|d| d.keys.values().map(|k| &k.source))
        };
        let mut lines = String::new();
        authors.retain(|a| {
            let carried = if a.deleted {
                self.mapping.map(&a.item.name).is_ok_and(|t| {
                    scope.is_none_or(|s| s.contains(&t.secret))
                        && !sources().any(|s| s.name == a.item.name)
                })
            } else {
                sources().any(|s| *s == a.item)
            };
            // A user name is the API server's word (an OIDC claim, say):
            // one escaped line, so it can write no trailer of its own.
            let who = crate::text::one_line(&a.who, 200);
            if carried && a.deleted {
                lines.push_str(&format!(
                    "deleted by {who}: {} (every version)\n",
                    a.item.name
                ));
            } else if carried {
                lines.push_str(&format!("put by {who}: {}\n", a.item));
            }
            !carried
        });
        lines
    }
}
