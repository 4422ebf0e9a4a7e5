//! Leader election over a coordination.k8s.io/v1 Lease, so that two replicas
//! of `credsync run` are safe: only the leader writes Secrets.
//!
//! The Lease is the only shared state. Every write carries the
//! resourceVersion that was read, so when two replicas race for the same
//! Lease the API server accepts one write and answers the other with 409;
//! the loser re-reads and follows. A holder is presumed dead once its
//! `renewTime + leaseDurationSeconds` is in the past by the reader's clock.
//!
//! The leader renews every `renew_interval`. If it cannot renew, it steps
//! down after two thirds of the lease duration since its last successful
//! renewal, which is before any other replica may consider the Lease
//! expired. On shutdown it first stops leading, then clears
//! `holderIdentity`, so a follower can take over at its next poll instead of
//! waiting for the Lease to expire.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::describe_kube_error;
use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// How long a Lease stays valid without renewal, unless configured.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews and followers poll, unless configured.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// Field manager recorded on Lease writes.
const FIELD_MANAGER: &str = "credsync";
/// Longest wait between retries after a failed call, so a leader gets
/// several attempts before its step-down deadline.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Re-reads in a row after lost races before waiting a retry delay.
const MAX_IMMEDIATE_RETRIES: u32 = 3;
/// Upper bound on releasing the Lease at shutdown; past it the Lease
/// simply expires.
const MAX_RELEASE_TIME: Duration = Duration::from_secs(5);
/// Margin after a holder's expiry before a follower tries to take over, so
/// it does not read the Lease a moment too early.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Where the Lease lives and how this replica takes part in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Where the Lease lives (the pod's namespace).
    pub namespace: String,
    /// The Lease's name, e.g. "credsync".
    pub name: String,
    /// This replica (the pod name); must be unique among replicas.
    pub identity: String,
    pub lease_duration: Duration,
    /// Must be well below `lease_duration` (at most two thirds of it).
    pub renew_interval: Duration,
}

impl LeaseConfig {
    /// A config with the default durations.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_interval: DEFAULT_RENEW_INTERVAL,
        }
    }

    /// Rejects settings that would make the election unsafe, for callers
    /// that want to fail at start-up rather than run with corrected values.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let invalid = |why: &str| Err(LeaseError::Config(why.to_owned()));
        if self.namespace.is_empty() || self.name.is_empty() {
            return invalid("the Lease namespace and name must not be empty");
        }
        if self.identity.is_empty() {
            return invalid(
                "the replica identity must not be empty (an empty holder means a free Lease)",
            );
        }
        if self.lease_duration < Duration::from_secs(1) {
            return invalid("the lease duration must be at least 1 s");
        }
        if self.renew_interval.is_zero()
            || self.renew_interval >= renew_deadline(self.lease_duration)
        {
            return invalid(
                "the renew interval must be above zero and below two thirds of the lease duration",
            );
        }
        Ok(())
    }
}

/// This replica's role, as published on the watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    /// `holder` is the current leader when known (for 503 answers).
    Following {
        holder: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid leader election settings: {0}")]
    Config(String),
    #[error("Kubernetes API call failed while {doing}: {cause}")]
    Api {
        doing: String,
        /// The API server's words (see [`crate::cluster::ClusterError::Api`]).
        cause: String,
        #[source]
        error: kube::Error,
    },
}

/// Runs the election for one replica; see [`LeaderElector::run`].
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    metrics: Arc<Metrics>,
}

/// What one read-and-write round found.
enum Round {
    /// This replica holds the Lease; `renewed_at` is when it wrote the
    /// renewTime now stored, by the monotonic clock.
    Holding {
        lease: Box<Lease>,
        renewed_at: Instant,
    },
    /// Another replica holds a Lease that has not expired.
    Held {
        holder: String,
        expires_in: Duration,
    },
    /// A write lost a race (409, or the Lease vanished); read again.
    Raced,
}

impl LeaderElector {
    /// Durations that would make the election unsafe are corrected with a
    /// warning; use [`LeaseConfig::validate`] to reject them instead.
    pub fn new(client: kube::Client, config: LeaseConfig, metrics: Arc<Metrics>) -> Self {
        let mut config = config;
        if config.lease_duration < Duration::from_secs(1) {
            tracing::warn!(
                lease_duration = ?config.lease_duration,
                "lease duration below 1 s; using 1 s"
            );
            config.lease_duration = Duration::from_secs(1);
        }
        if config.renew_interval.is_zero()
            || config.renew_interval >= renew_deadline(config.lease_duration)
        {
            let corrected = config.lease_duration / 3;
            tracing::warn!(
                renew_interval = ?config.renew_interval,
                lease_duration = ?config.lease_duration,
                using = ?corrected,
                "renew interval must be below two thirds of the lease duration"
            );
            config.renew_interval = corrected;
        }
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            metrics,
        }
    }

    /// Tries to acquire, then renews; publishes every change on `state`
    /// (which should start as `Following { holder: None }`).
    ///
    /// On `shutdown`: publishes `Following` first (so this replica stops
    /// writing before anyone else can lead), releases the Lease if this
    /// replica may hold it, and returns.
    pub async fn run(self, state: watch::Sender<Leadership>, shutdown: CancellationToken) {
        self.publish(&state, Leadership::Following { holder: None }, "starting");
        if let Err(e) = self.config.validate() {
            // `new` corrected the durations: an empty identity, namespace or
            // name is left, and leading under an empty holder would be unsafe.
            tracing::error!(error = %crate::errors::Chain(&e), "leader election disabled; this replica will only follow");
            shutdown.cancelled().await;
            return;
        }
        let renew_deadline = renew_deadline(self.config.lease_duration);
        let retry_delay = self.config.renew_interval.min(MAX_RETRY_DELAY);
        // Jittered, so replicas that lost a race together do not retry in
        // lockstep; capped at retry_delay, which keeps a leader's retries
        // well inside its renew deadline.
        let mut retry = Backoff::new(retry_delay / 4, retry_delay);
        // While leading: when to step down if renewals keep failing.
        let mut step_down_at: Option<Instant> = None;
        // The Lease as this replica last wrote it, to renew without a read.
        let mut cached: Option<Lease> = None;
        let mut races = 0u32;
        loop {
            if step_down_at.is_some_and(|at| Instant::now() >= at) {
                step_down_at = None;
                cached = None;
                self.publish(
                    &state,
                    Leadership::Following { holder: None },
                    "could not renew the Lease before the renew deadline",
                );
            }
            // A hung call must not keep this replica leading past its deadline.
            let call_time = match step_down_at {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => self.config.lease_duration,
            };
            let round = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // The call in flight may have written this replica into the Lease.
                    self.shut_down(&state, None, true).await;
                    return;
                }
                round = tokio::time::timeout(call_time, self.round(cached.take())) => round,
            };
            let next = match round {
                Ok(Ok(Round::Holding { lease, renewed_at })) => {
                    races = 0;
                    retry.reset();
                    cached = Some(*lease);
                    step_down_at = Some(renewed_at + renew_deadline);
                    self.publish(&state, Leadership::Leading, "holding the Lease");
                    renewed_at + self.config.renew_interval
                }
                Ok(Ok(Round::Held { holder, expires_in })) => {
                    races = 0;
                    retry.reset();
                    step_down_at = None;
                    self.publish(
                        &state,
                        Leadership::Following {
                            holder: Some(holder),
                        },
                        "another replica holds the Lease",
                    );
                    // Poll at the renew interval, or just after the holder expires.
                    Instant::now() + self.config.renew_interval.min(expires_in + EXPIRY_MARGIN)
                }
                Ok(Ok(Round::Raced)) => {
                    races += 1;
                    if races <= MAX_IMMEDIATE_RETRIES {
                        continue;
                    }
                    races = 0;
                    Instant::now() + retry.next_delay()
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        lease = %self.lease_ref(),
                        leading = step_down_at.is_some(),
                        error = %crate::errors::Chain(&e),
                        "leader election call failed"
                    );
                    self.retry_at(step_down_at, retry.next_delay())
                }
                Err(_) => {
                    tracing::warn!(
                        lease = %self.lease_ref(),
                        leading = step_down_at.is_some(),
                        "leader election call timed out"
                    );
                    self.retry_at(step_down_at, retry.next_delay())
                }
            };
            // Never sleep past the step-down deadline.
            let wake = step_down_at.map_or(next, |at| next.min(at));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let leading = step_down_at.is_some();
                    self.shut_down(&state, cached, leading).await;
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// When to try again after a failed call: leaders soon, to renew before
    /// their deadline; followers at their usual poll.
    fn retry_at(&self, step_down_at: Option<Instant>, retry_delay: Duration) -> Instant {
        if step_down_at.is_some() {
            Instant::now() + retry_delay
        } else {
            Instant::now() + self.config.renew_interval
        }
    }

    /// Stops leading, then releases the Lease if this replica may hold it
    /// (`may_hold`: it leads, or a cancelled call may have taken the Lease).
    /// `cached` is the Lease this replica last wrote, if that is still current.
    async fn shut_down(
        &self,
        state: &watch::Sender<Leadership>,
        cached: Option<Lease>,
        may_hold: bool,
    ) {
        self.publish(
            state,
            Leadership::Following { holder: None },
            "shutting down",
        );
        if !may_hold {
            return;
        }
        match tokio::time::timeout(self.release_time(), self.release(cached)).await {
            Ok(Ok(true)) => {
                tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, "released the Lease")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.lease_ref(), error = %crate::errors::Chain(&e), "could not release the Lease; it will expire")
            }
            Err(_) => {
                tracing::warn!(lease = %self.lease_ref(), "releasing the Lease timed out; it will expire")
            }
        }
    }

    fn release_time(&self) -> Duration {
        self.config.lease_duration.min(MAX_RELEASE_TIME)
    }

    /// Clears `holderIdentity` if it names this replica. Returns whether it did.
    async fn release(&self, cached: Option<Lease>) -> Result<bool, LeaseError> {
        let mut current = cached;
        for _ in 0..=MAX_IMMEDIATE_RETRIES {
            let lease = match current.take() {
                Some(lease) => lease,
                None => match self.get().await? {
                    Some(lease) => lease,
                    None => return Ok(false),
                },
            };
            if holder_of(&lease) != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let mut released = lease;
            if let Some(spec) = released.spec.as_mut() {
                spec.holder_identity = None;
            }
            match self.replace(&released).await? {
                Some(_) => return Ok(true),
                None => continue,
            }
        }
        Ok(false)
    }

    /// Reads the Lease (unless `cached` is this replica's own last write),
    /// then creates, renews or takes it, or reports who holds it.
    async fn round(&self, cached: Option<Lease>) -> Result<Round, LeaseError> {
        let lease = match cached {
            Some(lease) => lease,
            None => match self.get().await? {
                Some(lease) => lease,
                None => return self.create().await,
            },
        };
        let renewed_at = Instant::now();
        let now = Timestamp::now();
        let holder = holder_of(&lease).map(str::to_owned);
        let mut next = lease;
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        match holder {
            Some(holder) if holder == self.config.identity => {
                if spec.acquire_time.is_none() {
                    spec.acquire_time = Some(MicroTime(now));
                }
            }
            Some(holder) if !expired(spec, now, self.config.lease_duration) => {
                let expires_in = expiry(spec, self.config.lease_duration)
                    .map(|at| signed_to_std(at.duration_since(now)))
                    .unwrap_or_default();
                return Ok(Round::Held { holder, expires_in });
            }
            // Free or expired: take it.
            _ => {
                spec.holder_identity = Some(self.config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(lease_seconds(self.config.lease_duration));
        Ok(match self.replace(&next).await? {
            Some(lease) => Round::Holding {
                lease: Box::new(lease),
                renewed_at,
            },
            None => Round::Raced,
        })
    }

    /// Creates the Lease held by this replica; a 409 means another replica
    /// created it first.
    async fn create(&self) -> Result<Round, LeaseError> {
        let renewed_at = Instant::now();
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(lease_seconds(self.config.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        self.count("create");
        match self.api.create(&post_params(), &lease).await {
            Ok(lease) => Ok(Round::Holding {
                lease: Box::new(lease),
                renewed_at,
            }),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Round::Raced),
            Err(e) => Err(self.api_error("creating", e)),
        }
    }

    async fn get(&self) -> Result<Option<Lease>, LeaseError> {
        self.count("get");
        self.api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error("reading", e))
    }

    /// PUT with the resourceVersion read; `None` when another write got
    /// there first (409) or the Lease was deleted (404).
    async fn replace(&self, lease: &Lease) -> Result<Option<Lease>, LeaseError> {
        self.count("update");
        match self
            .api
            .replace(&self.config.name, &post_params(), lease)
            .await
        {
            Ok(lease) => Ok(Some(lease)),
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => Ok(None),
            Err(e) => Err(self.api_error("updating", e)),
        }
    }

    /// Publishes `new` if it differs from the current state, keeping the
    /// metrics and the log in step with this replica's role.
    fn publish(&self, state: &watch::Sender<Leadership>, new: Leadership, why: &str) {
        let was_leading = *state.borrow() == Leadership::Leading;
        let leading = new == Leadership::Leading;
        state.send_if_modified(|current| {
            if *current == new {
                return false;
            }
            if let Leadership::Following {
                holder: Some(holder),
            } = &new
            {
                tracing::debug!(lease = %self.lease_ref(), %holder, "following");
            }
            *current = new;
            true
        });
        self.metrics.leader.set(i64::from(leading));
        if was_leading != leading {
            self.metrics.leader_transitions.inc();
            if leading {
                tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, "became the leader");
            } else {
                tracing::info!(lease = %self.lease_ref(), identity = %self.config.identity, reason = why, "stopped leading");
            }
        }
    }

    fn count(&self, verb: &str) {
        self.metrics
            .kubernetes_requests
            .with_label_values(&[verb])
            .inc();
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn api_error(&self, doing: &str, err: kube::Error) -> LeaseError {
        LeaseError::Api {
            doing: format!("{doing} Lease {}", self.lease_ref()),
            cause: describe_kube_error(&err),
            error: err,
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// How long a leader keeps leading without a successful renewal: well
/// inside the lease duration, leaving room for clock skew and latency.
fn renew_deadline(lease_duration: Duration) -> Duration {
    lease_duration * 2 / 3
}

/// The Lease's whole seconds, rounded up so others never expire it early.
fn lease_seconds(lease_duration: Duration) -> i32 {
    let secs = lease_duration
        .as_secs()
        .saturating_add(u64::from(lease_duration.subsec_nanos() > 0));
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// The holder, treating an empty string as no holder.
fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// When the holder's claim runs out: renewTime (or acquireTime) plus the
/// Lease's own duration (or ours when it has none).
fn expiry(spec: &LeaseSpec, default_duration: Duration) -> Option<Timestamp> {
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let duration = match spec.lease_duration_seconds {
        Some(secs) => SignedDuration::from_secs(i64::from(secs)),
        None => SignedDuration::try_from(default_duration).ok()?,
    };
    last.0.checked_add(duration).ok()
}

/// Whether the holder's claim has run out by this replica's clock; a
/// claim with no time at all cannot show the holder is alive.
fn expired(spec: &LeaseSpec, now: Timestamp, default_duration: Duration) -> bool {
    expiry(spec, default_duration).is_none_or(|at| at <= now)
}

fn signed_to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed_secs_ago: i64, duration: Option<i32>) -> (LeaseSpec, Timestamp) {
        let now = Timestamp::now();
        let renewed = now
            .checked_sub(SignedDuration::from_secs(renewed_secs_ago))
            .unwrap();
        (
            LeaseSpec {
                holder_identity: Some("a".into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            },
            now,
        )
    }

    #[test]
    fn expiry_uses_the_leases_own_duration() {
        let (s, now) = spec(10, Some(15));
        assert!(!expired(&s, now, Duration::from_secs(5)));
        let (s, now) = spec(20, Some(15));
        assert!(expired(&s, now, Duration::from_secs(60)));
        let (s, now) = spec(10, None);
        assert!(expired(&s, now, Duration::from_secs(5)));
        assert!(expired(&LeaseSpec::default(), now, Duration::from_secs(5)));
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(lease_seconds(Duration::from_secs(15)), 15);
        assert_eq!(lease_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(lease_seconds(Duration::from_millis(10)), 1);
    }

    #[test]
    fn validate_rejects_unsafe_settings() {
        assert!(
            LeaseConfig::new("ns", "credsync", "pod-a")
                .validate()
                .is_ok()
        );
        assert!(LeaseConfig::new("ns", "credsync", "").validate().is_err());
        let mut c = LeaseConfig::new("ns", "credsync", "pod-a");
        c.renew_interval = Duration::from_secs(12);
        assert!(c.validate().is_err());
    }

    #[test]
    fn micro_time_has_microseconds() {
        let t: Timestamp = "2024-05-01T10:20:30.123456789Z".parse().unwrap();
        let json = serde_json::to_string(&MicroTime(t)).unwrap();
        assert_eq!(json, "\"2024-05-01T10:20:30.123456Z\"");
    }
}
