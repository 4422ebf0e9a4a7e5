//! Where a workload's rollout stands, read from its status the way
//! `kubectl rollout status` reads it: done once every replica runs the
//! current pod template and is available; failed when a Deployment's
//! controller reports `ProgressDeadlineExceeded`, or when the rollout credsync
//! started is older than `--rollout-timeout` (StatefulSets and DaemonSets
//! have no deadline of their own).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;

use crate::rollout_rules::{Progress, RESTARTED_AT_ANNOTATION};

/// Counts a rollout compares, all from the object's spec and status.
struct Counts {
    /// `metadata.generation` seen by the controller (`observedGeneration`).
    observed: bool,
    done: bool,
}

/// The part of the decision every kind shares: not seen by its controller
/// yet, done, past credsync's timeout, or still rolling.
fn decide(
    counts: Counts,
    deadline_exceeded: Option<String>,
    restarted_at: Option<&String>,
    timeout: Duration,
    now: Timestamp,
) -> Progress {
    if counts.observed && counts.done {
        return Progress::Done;
    }
    if let Some(why) = deadline_exceeded {
        return Progress::Failed(why);
    }
    let started = restarted_at.and_then(|t| t.parse::<Timestamp>().ok());
    let elapsed = started.and_then(|t| Duration::try_from(now.duration_since(t)).ok());
    match elapsed {
        Some(elapsed) if elapsed > timeout => Progress::Failed(format!(
            "not rolled out within --rollout-timeout ({}s)",
            timeout.as_secs()
        )),
        _ => Progress::Rolling,
    }
}

/// Pods of an `OnDelete` workload change only when someone deletes them:
/// nothing to follow.
fn on_delete(strategy: Option<&str>) -> bool {
    strategy == Some("OnDelete")
}

fn observed(generation: Option<i64>, observed: Option<i64>) -> bool {
    matches!((generation, observed), (Some(g), Some(o)) if o >= g)
}

fn restarted_at(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Option<&String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
}

pub fn deployment(object: &Deployment, timeout: Duration, now: Timestamp) -> Progress {
    let spec = &object.spec;
    let status = object.status.clone().unwrap_or_default();
    let wanted = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let counts = Counts {
        observed: observed(object.metadata.generation, status.observed_generation),
        done: updated == wanted
            && status.replicas.unwrap_or(0) == updated
            && status.available_replicas.unwrap_or(0) == updated,
    };
    let exceeded = status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| match c.message.as_deref() {
            Some(message) => format!("ProgressDeadlineExceeded: {message}"),
            None => "ProgressDeadlineExceeded".to_owned(),
        });
    decide(counts, exceeded, restarted_at(&spec.template), timeout, now)
}

pub fn stateful_set(object: &StatefulSet, timeout: Duration, now: Timestamp) -> Progress {
    let spec = &object.spec;
    let strategy = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref());
    if on_delete(strategy) {
        return Progress::Done;
    }
    let status = object.status.clone().unwrap_or_default();
    let wanted = spec.replicas.unwrap_or(1);
    let counts = Counts {
        observed: observed(object.metadata.generation, status.observed_generation),
        done: status.updated_replicas.unwrap_or(0) == wanted
            && status.ready_replicas.unwrap_or(0) == wanted
            && status.update_revision.is_some()
            && status.current_revision == status.update_revision,
    };
    decide(counts, None, restarted_at(&spec.template), timeout, now)
}

pub fn daemon_set(object: &DaemonSet, timeout: Duration, now: Timestamp) -> Progress {
    let spec = &object.spec;
    let strategy = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref());
    if on_delete(strategy) {
        return Progress::Done;
    }
    let status = object.status.clone().unwrap_or_default();
    let wanted = status.desired_number_scheduled;
    let counts = Counts {
        observed: observed(object.metadata.generation, status.observed_generation),
        done: status.updated_number_scheduled.unwrap_or(0) == wanted
            && status.number_available.unwrap_or(0) == wanted,
    };
    decide(counts, None, restarted_at(&spec.template), timeout, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TIMEOUT: Duration = Duration::from_secs(600);

    fn now() -> Timestamp {
        "2026-12-07T10:00:00Z".parse().unwrap()
    }

    fn deployment_with(status: serde_json::Value, restarted_at: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 2},
            "spec": {
                "replicas": 2,
                "selector": {},
                "template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: restarted_at}}},
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_deployment_is_done_when_every_replica_is_updated_and_available() {
        let done = deployment_with(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            "2026-12-07T09:59:00Z",
        );
        assert_eq!(deployment(&done, TIMEOUT, now()), Progress::Done);
        // An old replica still running: rolling.
        let rolling = deployment_with(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
            "2026-12-07T09:59:00Z",
        );
        assert_eq!(deployment(&rolling, TIMEOUT, now()), Progress::Rolling);
        // Status of the previous generation: not seen yet, whatever it says.
        let unseen = deployment_with(
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            "2026-12-07T09:59:00Z",
        );
        assert_eq!(deployment(&unseen, TIMEOUT, now()), Progress::Rolling);
    }

    #[test]
    fn a_deployment_fails_on_its_deadline_or_on_credsyncs_timeout() {
        let exceeded = deployment_with(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                   "message": "ReplicaSet \"web-1\" has timed out progressing."}]}),
            "2026-12-07T09:59:00Z",
        );
        let Progress::Failed(why) = deployment(&exceeded, TIMEOUT, now()) else {
            panic!("a deadline exceeded is a failure");
        };
        assert!(
            why.starts_with("ProgressDeadlineExceeded: ReplicaSet"),
            "{why}"
        );
        let slow = deployment_with(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}),
            "2026-12-07T09:49:00Z",
        );
        let Progress::Failed(why) = deployment(&slow, TIMEOUT, now()) else {
            panic!("past --rollout-timeout is a failure");
        };
        assert!(why.contains("--rollout-timeout (600s)"), "{why}");
    }

    #[test]
    fn stateful_and_daemon_sets_follow_their_own_counts() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "queue", "generation": 3},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "q", "template": {}},
            "status": {"replicas": 1, "observedGeneration": 3, "updatedReplicas": 1, "readyReplicas": 1,
                       "currentRevision": "queue-2", "updateRevision": "queue-2"},
        }))
        .unwrap();
        assert_eq!(stateful_set(&sts, TIMEOUT, now()), Progress::Done);
        let mut moving = sts.clone();
        moving.status.as_mut().unwrap().current_revision = Some("queue-1".into());
        assert_eq!(stateful_set(&moving, TIMEOUT, now()), Progress::Rolling);

        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "generation": 1},
            "spec": {"selector": {}, "template": {}, "updateStrategy": {"type": "RollingUpdate"}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                       "numberMisscheduled": 0, "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1},
        }))
        .unwrap();
        assert_eq!(daemon_set(&ds, TIMEOUT, now()), Progress::Rolling);
        let on_delete: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {}, "template": {}, "updateStrategy": {"type": "OnDelete"}},
        }))
        .unwrap();
        assert_eq!(daemon_set(&on_delete, TIMEOUT, now()), Progress::Done);
    }
}
