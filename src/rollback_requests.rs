//! Reviewed rollback requests, judged: which request files of a snapshot
//! revision can be applied, which are refused and why, and what applying
//! each would write, for plans, `rollback --propose` and the daemon's
//! follower (`daemon::rollback_follower`).
//!
//! A request is applied once: the rollback commit it leads to carries its
//! key (`path@commit`) in a trailer, and the pins it sets carry it in an
//! annotation, so neither a restart nor a new leader applies it again.
//! Removing the file releases the pins; the next reconcile brings the
//! table's values back.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sops_age::Identities;

use crate::manifest::{DesiredSecret, NamespaceFilter, SecretRef};
use crate::plan::{RequestState, RequestView};
use crate::reconcile::{ReconcileError, Reconciler};
use crate::restore::Verified;
use crate::snapshot::request::RollbackRequest;
use crate::snapshot::store::{
    CommitInfo, FoundRequest, RequestOrigin, SnapshotError, SnapshotStore,
};

/// A request that passed every check, ready to apply.
pub struct Approved {
    pub origin: RequestOrigin,
    pub commit: CommitInfo,
    pub restored: BTreeMap<SecretRef, DesiredSecret>,
}

/// Every request of a revision, judged.
pub struct Assessment {
    pub views: Vec<RequestView>,
    /// The pending requests that can be applied, by index into `views`.
    pub approved: Vec<(usize, Approved)>,
}

/// What is known of the requests besides their files.
#[derive(Default, Clone)]
pub struct Known {
    /// Keys rollback commits name as applied.
    pub applied: HashSet<String>,
    /// Pinned Secret -> the request key its pin carries (None: pinned by hand).
    pub pins: BTreeMap<SecretRef, Option<String>>,
}

impl Known {
    /// Applied: a rollback commit names it, or it pins every Secret it names.
    fn is_applied(&self, key: &str, secrets: &[SecretRef]) -> bool {
        self.applied.contains(key)
            || secrets
                .iter()
                .all(|s| self.pins.get(s).and_then(Option::as_deref) == Some(key))
    }
}

/// Judges the requests in `found` (blocking: it reads and decrypts
/// snapshot files, checking every MAC). Without `identities` a pending
/// request is listed but not checked. A failure of the repository itself
/// (a lock, a libgit2 error) is an error, to retry: only what is wrong
/// with a request refuses it.
pub fn assess(
    store: &SnapshotStore,
    filter: &NamespaceFilter,
    found: Vec<FoundRequest>,
    known: &Known,
    identities: Option<&Identities>,
    tip: Option<&str>,
) -> Result<Assessment, SnapshotError> {
    let conflicts = conflicts(&found, known);
    let mut views = Vec::new();
    let mut approved = Vec::new();
    for (index, found) in found.into_iter().enumerate() {
        let origin = found.origin;
        let mut view = RequestView {
            file: origin.path.clone(),
            commit: origin.commit.clone(),
            author: origin.author.clone(),
            revision: None,
            secrets: Vec::new(),
            reason: String::new(),
            state: RequestState::Pending,
            refusal: None,
            changes: Vec::new(),
        };
        let request = match found.request {
            Ok(request) => request,
            Err(malformed) => {
                view.secrets = found.named;
                view.state = RequestState::Refused;
                view.refusal = Some(malformed.to_string());
                views.push(view);
                continue;
            }
        };
        view.revision = Some(request.revision.clone());
        view.secrets = request.secrets.clone();
        view.reason = request.reason.clone();
        let refusal = if known.is_applied(&origin.key(), &request.secrets) {
            view.state = RequestState::Applied;
            None
        } else if let Some(conflict) = conflicts.get(index).cloned().flatten() {
            Some(conflict)
        } else if let Some((secret, why)) = request
            .secrets
            .iter()
            .find_map(|s| Some((s, filter.reason_to_skip(&s.namespace)?)))
        {
            Some(format!(
                "{secret} is outside the namespaces credsync writes ({why})"
            ))
        } else {
            match identities.map(|ids| restore(store, &request, ids, tip)) {
                None => None,
                Some(Ok(Restorable::Files(commit, restored))) => {
                    approved.push((
                        views.len(),
                        Approved {
                            origin,
                            commit,
                            restored,
                        },
                    ));
                    None
                }
                Some(Ok(Restorable::Refused(refusal))) => Some(refusal),
                Some(Err(err)) if err.is_transient() => return Err(err),
                Some(Err(err)) => Some(crate::errors::chain(&err)),
            }
        };
        if let Some(refusal) = refusal {
            view.state = RequestState::Refused;
            view.refusal = Some(refusal);
        }
        views.push(view);
    }
    Ok(Assessment { views, approved })
}

/// What a request's revision gives: its Secrets, or why it is refused.
enum Restorable {
    Files(CommitInfo, BTreeMap<SecretRef, DesiredSecret>),
    Refused(String),
}

/// What `request` restores, decrypted with every MAC checked; a refusal
/// when its revision is not a signed commit in the followed branch's history.
fn restore(
    store: &SnapshotStore,
    request: &RollbackRequest,
    identities: &Identities,
    tip: Option<&str>,
) -> Result<Restorable, SnapshotError> {
    let commit = store.resolve(&request.revision)?;
    if !store.in_history(&commit.id, tip)? {
        return Ok(Restorable::Refused(format!(
            "revision {} is not in the history of the branch credsync follows: pick one `credsync history` lists",
            &commit.id[..commit.id.len().min(12)]
        )));
    }
    if !store.authenticated(&commit.id)? {
        return Ok(Restorable::Refused(format!(
            "revision {} is not a snapshot commit credsync signed: a request may only restore what credsync itself recorded (pick one `credsync history` marks as signed)",
            &commit.id[..commit.id.len().min(12)]
        )));
    }
    let restored = store.desired(&commit.id, &request.secrets, identities)?;
    Ok(Restorable::Files(commit, restored))
}

/// A request whose files were checked against the sources too.
pub struct Checked {
    pub origin: RequestOrigin,
    pub commit: CommitInfo,
    pub restored: Verified,
}

/// Checks every approved request's files against the sources (see
/// [`crate::restore`]): one whose content the sources do not vouch for is
/// refused in its view; a source that cannot be read is an error, to retry.
pub async fn check_sources(
    reconciler: &Reconciler,
    assessment: Assessment,
) -> Result<(Vec<RequestView>, Vec<(usize, Checked)>), ReconcileError> {
    let mut views = assessment.views;
    let mut checked = Vec::new();
    for (index, approved) in assessment.approved {
        // The revision is signed: assess refuses any other.
        match reconciler.verify_restore(approved.restored, true).await {
            Ok(restored) => checked.push((
                index,
                Checked {
                    origin: approved.origin,
                    commit: approved.commit,
                    restored,
                },
            )),
            Err(err) if err.is_transient() => return Err(ReconcileError::Restore(err)),
            Err(err) => {
                views[index].state = RequestState::Refused;
                views[index].refusal = Some(crate::errors::chain(&err));
            }
        }
    }
    Ok((views, checked))
}

/// Why each not-yet-applied request clashes with another, by index: two
/// requests naming one Secret are both refused (which one wins is for the
/// reviewers to say), and a Secret another request pins stays its own.
fn conflicts(found: &[FoundRequest], known: &Known) -> Vec<Option<String>> {
    let parsed: Vec<Option<(String, &[SecretRef])>> = found
        .iter()
        .map(|f| {
            f.request
                .as_ref()
                .ok()
                .map(|r| (f.origin.key(), r.secrets.as_slice()))
        })
        .collect();
    parsed
        .iter()
        .enumerate()
        .map(|(index, this)| {
            let (key, secrets) = this.as_ref()?;
            if known.is_applied(key, secrets) {
                return None;
            }
            secrets.iter().find_map(|secret| {
                match known.pins.get(secret) {
                    Some(None) => {
                        return Some(format!(
                            "{secret} is pinned by a `credsync rollback` run by hand: `credsync unpin {secret}` first"
                        ));
                    }
                    Some(Some(pinned_by)) if pinned_by != key => {
                        return Some(format!(
                            "{secret} is pinned by request {pinned_by}: remove that file first"
                        ));
                    }
                    _ => {}
                }
                let other = parsed.iter().enumerate().find_map(|(i, other)| {
                    let (_, theirs) = other.as_ref()?;
                    (i != index && theirs.contains(secret)).then(|| &found[i].origin.path)
                })?;
                Some(format!(
                    "{secret} is also named by {other}: one request per Secret"
                ))
            })
        })
        .collect()
}

/// The requests at `rev` (HEAD when None) with what applying each would
/// write, for `plan` and `rollback --propose`.
pub async fn plan_requests(
    reconciler: &Reconciler,
    cluster: &crate::cluster::Cluster,
    store: Arc<SnapshotStore>,
    rev: Option<String>,
    identities: Option<Identities>,
) -> Result<Vec<RequestView>, ReconcileError> {
    // Most plans find no request: the cluster's pins are read only for one.
    let at = rev.clone();
    let found = store
        .blocking(move |store| store.requests(at.as_deref()))
        .await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let pins = cluster.pins().await?.by_secret();
    let filter = reconciler.namespace_filter().clone();
    let assessment = store
        .blocking(move |store| {
            let (applied, _) = store.applied_requests(None)?;
            let known = Known { applied, pins };
            let tip = rev.as_deref();
            assess(store, &filter, found, &known, identities.as_ref(), tip)
        })
        .await?;
    let (mut views, checked) = check_sources(reconciler, assessment).await?;
    for (index, checked) in checked {
        let planned = reconciler
            .plan_rollback(checked.restored.into_secrets())
            .await?;
        views[index].changes = planned.plan.changes;
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::request::MalformedRequest;

    fn found(file: &str, secrets: &[&str]) -> FoundRequest {
        FoundRequest {
            origin: RequestOrigin {
                path: format!("prod/.requests/{file}"),
                commit: "c".repeat(40),
                author: "A <a@x>".to_owned(),
            },
            request: Ok(RollbackRequest {
                revision: "a".repeat(40),
                secrets: secrets.iter().map(|s| s.parse().unwrap()).collect(),
                reason: String::new(),
            }),
            named: Vec::new(),
        }
    }

    #[test]
    fn two_requests_for_one_secret_are_both_refused_and_named() {
        let all = [
            found("one.yaml", &["app/db"]),
            found("two.yaml", &["app/api", "app/db"]),
            found("three.yaml", &["app/web"]),
        ];
        let out = conflicts(&all, &Known::default());
        assert_eq!(
            out[0].as_deref(),
            Some("app/db is also named by prod/.requests/two.yaml: one request per Secret")
        );
        assert_eq!(
            out[1].as_deref(),
            Some("app/db is also named by prod/.requests/one.yaml: one request per Secret")
        );
        assert_eq!(out[2], None);
    }

    #[test]
    fn a_secret_another_request_pins_is_refused_and_the_applied_one_stands() {
        let applied = found("old.yaml", &["app/db"]);
        let newer = found("new.yaml", &["app/db"]);
        let known = Known {
            applied: HashSet::from([applied.origin.key()]),
            pins: BTreeMap::from([("app/db".parse().unwrap(), Some(applied.origin.key()))]),
        };
        let out = conflicts(&[applied.clone(), newer], &known);
        assert_eq!(out[0], None, "the applied request is not in conflict");
        assert!(
            out[1].as_deref().is_some_and(
                |r| r.starts_with("app/db is pinned by request prod/.requests/old.yaml@")
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_secret_pinned_by_hand_is_not_taken_over() {
        let known = Known {
            pins: BTreeMap::from([("app/db".parse().unwrap(), None)]),
            ..Known::default()
        };
        let out = conflicts(&[found("new.yaml", &["app/db"])], &known);
        assert_eq!(
            out[0].as_deref(),
            Some(
                "app/db is pinned by a `credsync rollback` run by hand: `credsync unpin app/db` first"
            )
        );
    }

    #[test]
    fn a_malformed_request_clashes_with_nothing() {
        let mut bad = found("bad.yaml", &["app/db"]);
        bad.request = Err(MalformedRequest::new("nope"));
        let out = conflicts(&[bad, found("ok.yaml", &["app/db"])], &Known::default());
        assert_eq!(out, vec![None, None]);
    }

    #[test]
    fn applied_means_named_in_a_commit_or_pinning_every_secret() {
        let secrets: Vec<SecretRef> = vec!["a/x".parse().unwrap(), "a/y".parse().unwrap()];
        let mut known = Known::default();
        known.pins.insert(secrets[0].clone(), Some("k".to_owned()));
        assert!(!known.is_applied("k", &secrets), "one pin of two: not yet");
        known.pins.insert(secrets[1].clone(), Some("k".to_owned()));
        assert!(known.is_applied("k", &secrets));
        assert!(!known.is_applied("other", &secrets));
        known.applied.insert("other".to_owned());
        assert!(known.is_applied("other", &secrets));
    }
}
