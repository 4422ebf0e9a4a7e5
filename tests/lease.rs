//! Leader election over a coordination.k8s.io/v1 Lease, against a real
//! kube-apiserver: one leader, takeover on release and on crash,
//! stepping down when renewals fail, and no two leaders in a race.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use credsync::cluster::lease::{LeaderElector, Leadership, LeaseConfig};
use credsync::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::StandIns;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NS: &str = "ns";

/// One `credsync run` replica's elector, driven from the test.
struct Replica {
    rx: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn config(lease: &str, identity: &str, lease_ms: u64, renew_ms: u64) -> LeaseConfig {
    LeaseConfig {
        namespace: NS.to_owned(),
        name: lease.to_owned(),
        identity: identity.to_owned(),
        lease_duration: Duration::from_millis(lease_ms),
        renew_interval: Duration::from_millis(renew_ms),
    }
}

/// Starts an elector; with `gate`, it waits there first so several start together.
fn start(
    client: &kube::Client,
    config: LeaseConfig,
    gate: Option<Arc<tokio::sync::Barrier>>,
) -> Replica {
    let metrics = Arc::new(Metrics::new().unwrap());
    let (tx, rx) = watch::channel(Leadership::Following { holder: None });
    let shutdown = CancellationToken::new();
    let elector = LeaderElector::new(client.clone(), config, metrics.clone());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Some(gate) = gate {
            gate.wait().await;
        }
        elector.run(tx, token).await;
    });
    Replica {
        rx,
        shutdown,
        task,
        metrics,
    }
}

/// Waits until the replica's state matches; returns when that happened.
async fn wait_until(
    replica: &Replica,
    within: Duration,
    what: &str,
    pred: impl FnMut(&Leadership) -> bool,
) -> Instant {
    let mut rx = replica.rx.clone();
    let outcome = tokio::time::timeout(within, rx.wait_for(pred))
        .await
        .map(|r| r.is_ok());
    match outcome {
        Ok(true) => Instant::now(),
        Ok(false) => panic!("{what}: the elector stopped"),
        Err(_) => panic!(
            "{what}: not within {within:?}; state {:?}",
            *replica.rx.borrow()
        ),
    }
}

fn following(holder: &str) -> Leadership {
    Leadership::Following {
        holder: Some(holder.to_owned()),
    }
}

async fn get_lease(client: &kube::Client, name: &str) -> Lease {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// The Lease as the API server stores it, to check the wire format.
async fn raw_lease(client: &kube::Client, name: &str) -> Value {
    let req = http::Request::get(format!(
        "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{name}"
    ))
    .body(Vec::new())
    .unwrap();
    serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap()
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn transitions(lease: &Lease) -> Option<i32> {
    lease.spec.as_ref().and_then(|s| s.lease_transitions)
}

/// RFC 3339 in UTC with exactly six fractional digits, as MicroTime is.
fn assert_micro_time(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} missing: {value}"));
    let b = text.as_bytes();
    assert!(
        b.len() == 27
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[20..26].iter().all(u8::is_ascii_digit)
            && b[26] == b'Z',
        "{what} is not a MicroTime: {text}"
    );
}

#[tokio::test]
async fn one_leader_and_a_follower_naming_it() {
    let env = StandIns::start(&[NS]).await;
    let client = env.kube().await;
    let a = start(&client, config("credsync", "pod-a", 2000, 500), None);
    wait_until(&a, Duration::from_secs(5), "pod-a leads", |s| {
        *s == Leadership::Leading
    })
    .await;
    let b = start(&client, config("credsync", "pod-b", 2000, 500), None);
    wait_until(&b, Duration::from_secs(5), "pod-b follows pod-a", |s| {
        *s == following("pod-a")
    })
    .await;

    // Over two lease durations the leader keeps renewing and nothing changes.
    let mut b_rx = b.rx.clone();
    let mut a_rx = a.rx.clone();
    b_rx.mark_unchanged();
    a_rx.mark_unchanged();
    let before = raw_lease(&client, "credsync").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!a_rx.has_changed().unwrap(), "{:?}", *a_rx.borrow());
    assert!(!b_rx.has_changed().unwrap(), "{:?}", *b_rx.borrow());
    let after = raw_lease(&client, "credsync").await;

    let spec = &after["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 2);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_micro_time(&spec["renewTime"], "renewTime");
    assert_micro_time(&spec["acquireTime"], "acquireTime");
    assert_eq!(spec["acquireTime"], before["spec"]["acquireTime"]);
    assert_ne!(
        spec["renewTime"], before["spec"]["renewTime"],
        "not renewed"
    );

    assert_eq!(a.metrics.leader.get(), 1);
    assert_eq!(a.metrics.leader_transitions.get(), 1);
    assert_eq!(b.metrics.leader.get(), 0);
    assert_eq!(b.metrics.leader_transitions.get(), 0);
    assert_eq!(a.metrics.kubernetes_calls("create"), 1);
    let renewals = a.metrics.kubernetes_calls("update");
    assert!((6..=14).contains(&renewals), "{renewals} renewals");
    // The leader renews from its own last write, without reading first.
    assert!(a.metrics.kubernetes_calls("get") <= 2);
    // The follower only reads while the Lease is held.
    assert!(b.metrics.kubernetes_calls("get") >= 4);
    assert_eq!(b.metrics.kubernetes_writes(), 0);
    let patches: Vec<_> = env
        .credsync_requests()
        .into_iter()
        .filter(|e| e.verb == "patch")
        .collect();
    assert!(patches.is_empty(), "{patches:#?}");
}

#[tokio::test]
async fn shutdown_releases_the_lease_for_an_immediate_takeover() {
    let env = StandIns::start(&[NS]).await;
    let client = env.kube().await;
    // A long lease, so only the release can explain a quick takeover.
    let a = start(&client, config("credsync", "pod-a", 10_000, 500), None);
    wait_until(&a, Duration::from_secs(5), "pod-a leads", |s| {
        *s == Leadership::Leading
    })
    .await;
    let b = start(&client, config("credsync", "pod-b", 10_000, 500), None);
    wait_until(&b, Duration::from_secs(5), "pod-b follows", |s| {
        *s == following("pod-a")
    })
    .await;

    let cancelled = Instant::now();
    a.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), a.task)
        .await
        .expect("pod-a returns after shutdown")
        .unwrap();
    assert_eq!(*a.rx.borrow(), Leadership::Following { holder: None });
    assert_eq!(a.metrics.leader.get(), 0);
    assert_eq!(a.metrics.leader_transitions.get(), 2);

    let took_over = wait_until(&b, Duration::from_secs(3), "pod-b takes over", |s| {
        *s == Leadership::Leading
    })
    .await;
    let after = took_over - cancelled;
    assert!(
        after < Duration::from_millis(1500),
        "took {after:?} with a 500 ms renew interval"
    );
    let lease = get_lease(&client, "credsync").await;
    assert_eq!(holder(&lease).as_deref(), Some("pod-b"));
    assert_eq!(transitions(&lease), Some(1));
    assert_eq!(b.metrics.leader.get(), 1);

    // A follower's shutdown writes nothing.
    let c = start(&client, config("credsync", "pod-c", 10_000, 500), None);
    wait_until(&c, Duration::from_secs(5), "pod-c follows", |s| {
        *s == following("pod-b")
    })
    .await;
    c.shutdown.cancel();
    c.task.await.unwrap();
    assert_eq!(c.metrics.kubernetes_writes(), 0);
    assert_eq!(
        holder(&get_lease(&client, "credsync").await).as_deref(),
        Some("pod-b")
    );
    b.shutdown.cancel();
    b.task.await.unwrap();
    assert_eq!(holder(&get_lease(&client, "credsync").await), None);
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_within_the_lease_duration() {
    let env = StandIns::start(&[NS]).await;
    let client = env.kube().await;
    let a = start(&client, config("credsync", "pod-a", 2000, 500), None);
    wait_until(&a, Duration::from_secs(5), "pod-a leads", |s| {
        *s == Leadership::Leading
    })
    .await;
    let b = start(&client, config("credsync", "pod-b", 2000, 500), None);
    wait_until(&b, Duration::from_secs(5), "pod-b follows", |s| {
        *s == following("pod-a")
    })
    .await;
    // Let a renewal or two happen, then crash: no release.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.task.abort();
    let crashed = Instant::now();
    assert!(a.task.await.unwrap_err().is_cancelled());

    let took_over = wait_until(&b, Duration::from_secs(4), "pod-b takes over", |s| {
        *s == Leadership::Leading
    })
    .await;
    let after = took_over - crashed;
    // Not before the crashed leader's last renewal expired (it renewed at
    // most one interval before the crash), and within the lease duration.
    assert!(
        after >= Duration::from_millis(1400),
        "took over early: {after:?}"
    );
    assert!(after <= Duration::from_millis(2500), "took {after:?}");
    let lease = get_lease(&client, "credsync").await;
    assert_eq!(holder(&lease).as_deref(), Some("pod-b"));
    assert_eq!(transitions(&lease), Some(1));
    assert_eq!(b.metrics.leader_transitions.get(), 1);
}

#[tokio::test]
async fn electors_started_together_never_both_lead() {
    let env = StandIns::start(&[NS]).await;
    let client = env.kube().await;
    // Half the races are over a Lease that does not exist yet (both
    // create), half over an expired one left by a dead replica (both update).
    let api = Api::<Lease>::namespaced(client.clone(), NS);
    let stale = MicroTime(
        Timestamp::now()
            .checked_sub(SignedDuration::from_secs(60))
            .unwrap(),
    );
    for i in 0..3 {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": format!("expired-{i}"), "namespace": NS},
            "spec": {
                "holderIdentity": "dead-pod",
                "leaseDurationSeconds": 2,
                "renewTime": stale,
                "acquireTime": stale,
                "leaseTransitions": 4,
            },
        }))
        .unwrap();
        api.create(&PostParams::default(), &lease).await.unwrap();
    }
    let names: Vec<String> = (0..3)
        .map(|i| format!("absent-{i}"))
        .chain((0..3).map(|i| format!("expired-{i}")))
        .collect();
    let mut pairs = Vec::new();
    for name in &names {
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let a = start(
            &client,
            config(name, "pod-a", 2000, 500),
            Some(gate.clone()),
        );
        let b = start(&client, config(name, "pod-b", 2000, 500), Some(gate));
        pairs.push((name, a, b));
    }

    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0u64;
    while Instant::now() < until {
        for (name, a, b) in &pairs {
            let (sa, sb) = (a.rx.borrow().clone(), b.rx.borrow().clone());
            assert!(
                !(sa == Leadership::Leading && sb == Leadership::Leading),
                "{name}: both lead"
            );
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(samples > 100, "only {samples} samples");

    let mut raced = 0;
    for (name, a, b) in &pairs {
        let (leader, loser, leader_id) = if *a.rx.borrow() == Leadership::Leading {
            (a, b, "pod-a")
        } else {
            (b, a, "pod-b")
        };
        assert_eq!(*leader.rx.borrow(), Leadership::Leading, "{name}");
        assert_eq!(*loser.rx.borrow(), following(leader_id), "{name}");
        // A loser that wrote at all lost a write race (409) to the leader.
        raced += usize::from(loser.metrics.kubernetes_writes() > 0);
        // The loser never led, not even for a moment.
        assert_eq!(loser.metrics.leader_transitions.get(), 0, "{name}");
        assert_eq!(leader.metrics.leader_transitions.get(), 1, "{name}");
        let lease = get_lease(&client, name).await;
        assert_eq!(holder(&lease).as_deref(), Some(leader_id), "{name}");
        let want = if name.starts_with("expired") { 5 } else { 0 };
        assert_eq!(transitions(&lease), Some(want), "{name}");
    }
    // The gate makes both replicas read before either writes, so the
    // writes really race (not just a follower seeing a held Lease).
    assert!(raced > 0, "no pair raced for the Lease");
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let env = StandIns::start(&[NS]).await;
    let faults = env.faults().await;
    let client = env.kube().await;
    let a = start(&client, config("credsync", "pod-a", 3000, 500), None);
    wait_until(&a, Duration::from_secs(5), "pod-a leads", |s| {
        *s == Leadership::Leading
    })
    .await;
    faults.inject_json(json!({"verb": "update", "resource": "leases", "status": 500}));
    wait_until(&a, Duration::from_secs(3), "pod-a steps down", |s| {
        *s == Leadership::Following { holder: None }
    })
    .await;
    let stepped_down = Timestamp::now();
    assert_eq!(a.metrics.leader.get(), 0);

    // Others would see the Lease expire only later.
    let lease = get_lease(&client, "credsync").await;
    let spec = lease.spec.unwrap();
    let expires = spec
        .renew_time
        .unwrap()
        .0
        .checked_add(SignedDuration::from_secs(i64::from(
            spec.lease_duration_seconds.unwrap(),
        )))
        .unwrap();
    let margin = expires.duration_since(stepped_down);
    assert!(
        margin >= SignedDuration::from_millis(500),
        "stepped down only {margin:?} before the Lease expired"
    );
    assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));

    // Once the API accepts writes again, it leads again.
    faults.clear_faults();
    wait_until(&a, Duration::from_secs(3), "pod-a leads again", |s| {
        *s == Leadership::Leading
    })
    .await;
    assert_eq!(a.metrics.leader_transitions.get(), 3);
}

#[tokio::test]
async fn a_concurrent_write_to_the_lease_makes_the_leader_reread_and_follow() {
    let env = StandIns::start(&[NS]).await;
    let faults = env.faults().await;
    let client = env.kube().await;
    let a = start(&client, config("credsync", "pod-a", 2000, 500), None);
    wait_until(&a, Duration::from_secs(5), "pod-a leads", |s| {
        *s == Leadership::Leading
    })
    .await;
    // Another client takes the Lease between pod-a's renewals; pod-a's
    // next write carries a stale resourceVersion and gets 409.
    faults.edit_before_next_write_json(json!({
        "namespace": NS,
        "name": "credsync",
        "resource": "leases",
        "merge_patch": {"spec": {
            "holderIdentity": "intruder",
            "renewTime": MicroTime(Timestamp::now()),
            "leaseDurationSeconds": 2,
        }},
    }));
    wait_until(
        &a,
        Duration::from_secs(2),
        "pod-a follows the intruder",
        |s| *s == following("intruder"),
    )
    .await;
    assert_eq!(
        holder(&get_lease(&client, "credsync").await).as_deref(),
        Some("intruder")
    );
    // The intruder never renews, so pod-a takes the Lease back once it expires.
    wait_until(&a, Duration::from_secs(4), "pod-a leads again", |s| {
        *s == Leadership::Leading
    })
    .await;
    let lease = get_lease(&client, "credsync").await;
    assert_eq!(holder(&lease).as_deref(), Some("pod-a"));
    assert_eq!(transitions(&lease), Some(1));
}
