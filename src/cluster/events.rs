//! Events: what credsync changed, restarted or refused, recorded on the
//! object it is about, key names only, cut to the API server's limit.
//!
//! Created directly rather than through kube's `Recorder`, which keeps
//! every Event it sent for six minutes to merge repeats into a series:
//! 17 MiB after a first sync of 5000 Secrets, for repeats that do not
//! happen (each write is a different change).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;

use super::{Cluster, ClusterError, api_error};
use crate::labels::MANAGED_BY_VALUE;
use crate::manifest::SecretRef;
use crate::plan::{Action, SecretChange};
use crate::rollout_rules::{WorkloadKind, WorkloadRef};

/// An Event's type: Normal for what credsync did, Warning for what it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// The API server refuses an `events.k8s.io/v1` note over this many bytes.
const EVENT_NOTE_LIMIT: usize = 1024;

/// "credsync updated 3 keys: +A ~B -C", cut to fit [`EVENT_NOTE_LIMIT`]
/// with "(+N more)" for the keys left out. Key names only, never values.
pub(crate) fn event_note(change: &SecretChange) -> String {
    let verb = match change.action {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Delete => "deleted",
    };
    let marks: Vec<String> =
        crate::manifest::key_marks(&change.added, &change.changed, &change.removed).collect();
    if marks.is_empty() {
        return format!("credsync {verb} the Secret");
    }
    let mut note = format!("credsync {verb} {} key(s):", marks.len());
    // Room kept for the longest possible tail.
    let tail_room = format!(" (+{} more)", marks.len()).len();
    for (shown, mark) in marks.iter().enumerate() {
        let left = marks.len() - shown;
        let tail = if left > 1 { tail_room } else { 0 };
        if note.len() + 1 + mark.len() + tail > EVENT_NOTE_LIMIT {
            note.push_str(&format!(" (+{left} more)"));
            return note;
        }
        note.push(' ');
        note.push_str(mark);
    }
    note
}

/// Events the API server refused during one apply: logged once at warn,
/// with the count and the first refusal, not once per Secret.
#[derive(Default)]
pub(super) struct RefusedEvents {
    count: std::sync::atomic::AtomicUsize,
    first: std::sync::Mutex<Option<(SecretRef, ClusterError)>>,
}

impl RefusedEvents {
    pub(super) fn note(&self, secret: &SecretRef, error: ClusterError) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert_with(|| (secret.clone(), error));
        }
    }

    pub(super) fn log_once(&self) {
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed);
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        if let Some((secret, error)) = first {
            tracing::warn!(
                refused = count,
                first = %secret,
                error = %crate::errors::Chain(&error),
                "the API server refused Events about credsync's writes (the writes themselves succeeded); check RBAC for events.k8s.io create"
            );
        }
    }
}

impl Cluster {
    /// An Event about `secret` (which need not exist yet). `note` must
    /// hold names only, never a value; it is cut to the API's limit.
    pub async fn event_on_secret(
        &self,
        secret: &SecretRef,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), ClusterError> {
        let regarding = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Secret".to_owned()),
            namespace: Some(secret.namespace.clone()),
            name: Some(secret.name.clone()),
            ..ObjectReference::default()
        };
        self.event(regarding, type_, reason, action, note)
            .await
            .map_err(|err| api_error(&format!("recording an Event on Secret {secret}"), err))
    }

    /// An Event about a workload credsync restarted or watched.
    pub async fn event_on_workload(
        &self,
        workload: &WorkloadRef,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), ClusterError> {
        let kind = match workload.kind {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        };
        let regarding = ObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: Some(kind.to_owned()),
            namespace: Some(workload.namespace.clone()),
            name: Some(workload.name.clone()),
            ..ObjectReference::default()
        };
        self.event(regarding, type_, reason, action, note)
            .await
            .map_err(|err| api_error(&format!("recording an Event on {workload}"), err))
    }

    async fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        mut note: String,
    ) -> Result<(), kube::Error> {
        if note.len() > EVENT_NOTE_LIMIT {
            let mut cut = EVENT_NOTE_LIMIT;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let name = regarding.name.clone().unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now();
        // `<object>.<nanoseconds, hex>`, as kubectl and client-go name
        // Events; the prefix is cut so the name stays within 253 characters.
        let prefix: String = name.chars().take(220).collect();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{prefix}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(type_.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            action: Some(action.to_owned()),
            note: Some(note),
            regarding: Some(regarding),
            reporting_controller: Some(MANAGED_BY_VALUE.to_owned()),
            reporting_instance: Some(self.reporting_instance.clone()),
            ..Event::default()
        };
        self.count("event");
        let events: kube::Api<Event> = kube::Api::namespaced(self.client.clone(), &namespace);
        events
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(added: usize, changed: usize) -> SecretChange {
        let keys = |prefix: &str, n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("{prefix}_A_RATHER_LONG_KEY_NAME_{i:05}"))
                .collect()
        };
        SecretChange {
            secret: SecretRef::new("app", "db"),
            action: Action::Update,
            adopt: false,
            added: keys("NEW", added),
            changed: keys("CHANGED", changed),
            removed: vec!["OLD".to_owned()],
            merge_only: false,
        }
    }

    #[test]
    fn a_short_event_note_lists_every_key() {
        assert_eq!(
            event_note(&change(1, 1)),
            "credsync updated 3 key(s): +NEW_A_RATHER_LONG_KEY_NAME_00000 \
             ~CHANGED_A_RATHER_LONG_KEY_NAME_00000 -OLD"
        );
    }

    #[test]
    fn a_long_event_note_stays_within_the_api_servers_limit() {
        for (added, changed) in [(3000, 0), (20, 20), (25, 5), (0, 31), (1, 3000)] {
            let note = event_note(&change(added, changed));
            assert!(
                note.len() <= EVENT_NOTE_LIMIT,
                "{} bytes: {note}",
                note.len()
            );
            let total = added + changed + 1;
            let shown = note
                .split(' ')
                .filter(|w| w.starts_with(['+', '~', '-']))
                .count();
            let more: usize = note
                .rsplit_once("(+")
                .map(|(_, tail)| tail.trim_end_matches(" more)").parse().unwrap())
                .unwrap_or(0);
            assert_eq!(shown + more, total, "{note}");
            assert!(note.starts_with(&format!("credsync updated {total} key(s): ")));
        }
    }
}
