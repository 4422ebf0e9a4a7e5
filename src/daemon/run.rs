//! `credsync run`: the in-cluster loop, wiring triggers to one worker.
//!
//! Start-up order matters: the stream follower starts before the first full
//! reconcile, so nothing written during that reconcile is missed (an event
//! for an item the full read already saw costs one Query and no write).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cluster::lease::{LeaderElector, Leadership, LeaseConfig};
use crate::context::Context;
use crate::daemon::health::Health;
use crate::daemon::server::connections::{self, ConnectionLimits};
use crate::daemon::server::{self, Access, ServerState};
use crate::daemon::trigger::drift;
use crate::daemon::trigger::schedule::{self, Schedule};
use crate::daemon::trigger::stream::{StreamConfig, StreamFollower};
use crate::daemon::trigger::{ReconcileRequest, Sequencer, Trigger};
use crate::daemon::worker::{self, WorkerConfig};
use crate::render::Heading;

pub struct RunConfig {
    /// Values of `credsync_settings_info`'s labels, in `SETTINGS_LABELS` order.
    pub settings: Vec<String>,
    pub listen: SocketAddr,
    pub schedule: Option<Schedule>,
    /// None: schedule-only (no stream follower).
    pub stream: Option<StreamConfig>,
    pub worker: WorkerConfig,
    pub failure_limit: u32,
    pub access: Access,
    pub connections: ConnectionLimits,
    pub rate_window: Duration,
    pub lease: Option<LeaseConfig>,
    pub drift_repair: bool,
    /// How long in-flight work may take after SIGTERM.
    pub grace: Duration,
    /// SQS queues to take change events from.
    pub queues: Vec<crate::daemon::trigger::queue::QueueConfig>,
    /// None: the self-service API answers 404.
    pub self_service: Option<crate::daemon::server::credentials::SelfService>,
    /// Following the snapshot remote for reviewed rollback requests.
    pub requests: Option<crate::daemon::rollback_follower::FollowConfig>,
}

/// Runs until SIGTERM/SIGINT, then stops taking triggers, lets the
/// in-flight write finish (or abandons it between requests), releases the
/// Lease and returns.
pub async fn run(context: Context, config: RunConfig, heading: Heading) -> Result<()> {
    let context = Arc::new(context);
    let reconciler = context.reconciler.clone();
    let metrics = context.metrics.clone();
    let labels: Vec<&str> = config.settings.iter().map(String::as_str).collect();
    if labels.len() == crate::metrics::SETTINGS_LABELS.len() {
        metrics.settings.with_label_values(&labels).set(1);
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    let (requests, queue) = mpsc::channel::<ReconcileRequest>(1024);
    let health = Health::new(config.failure_limit);
    let mut tasks = tokio::task::JoinSet::new();

    let (leadership_tx, leadership) = watch::channel(match config.lease {
        Some(_) => Leadership::Following { holder: None },
        None => Leadership::Leading,
    });
    match config.lease {
        Some(lease) => {
            let elector =
                LeaderElector::new(context.cluster.client().clone(), lease, metrics.clone());
            tasks.spawn(elector.run(leadership_tx, shutdown.clone()));
        }
        None => metrics.leader.set(1),
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        %address,
        sync_and_plan = config.access.describe(),
        self_service = config.self_service.is_some(),
        "serving /sync, /plan, /metrics, /healthz, /readyz, and /v1/secrets with --self-service"
    );
    match config.access {
        Access::Unconfigured => tracing::warn!(
            "no sync token configured: /sync and /plan refuse every call; give --sync-token-file, \
             or --insecure-no-auth to open them to anyone"
        ),
        Access::Open => tracing::warn!(
            "--insecure-no-auth: /sync and /plan are open to anyone who reaches {address}"
        ),
        Access::Token(_) => {}
    }
    let state = Arc::new(ServerState {
        context: context.clone(),
        health: health.clone(),
        access: config.access,
        requests: requests.clone(),
        leadership: leadership.clone(),
        heading,
        rate_window: config.rate_window,
        last_accepted: Mutex::new(Default::default()),
        last_plan: Default::default(),
        self_service: config.self_service,
    });
    tasks.spawn(connections::serve(
        listener,
        server::router(state),
        config.connections,
        shutdown.clone(),
    ));

    match config.stream {
        Some(mut stream_config) => {
            stream_config.table = context.table.table().to_owned();
            match StreamFollower::connect(&context.aws, stream_config, metrics.clone()).await {
                Ok(Some(follower)) => {
                    tracing::info!(stream = %follower.stream_arn(), "following the table's DynamoDB Stream");
                    let (changes_tx, mut changes) = mpsc::channel(256);
                    tasks.spawn(follower.run(changes_tx, shutdown.clone()));
                    let requests = requests.clone();
                    tasks.spawn(async move {
                        while let Some(batch) = changes.recv().await {
                            let mut request =
                                ReconcileRequest::names(Trigger::Stream, Some(batch.names));
                            request.oldest_event = batch.oldest_record;
                            if requests.send(request).await.is_err() {
                                return;
                            }
                        }
                    });
                }
                Ok(None) => {
                    metrics.stream_enabled.set(0);
                    tracing::warn!(
                        "DynamoDB Streams are not enabled on the table: schedule-only mode"
                    );
                }
                Err(err) => {
                    metrics.stream_enabled.set(0);
                    tracing::warn!(error = %crate::errors::Chain(&err), "cannot follow the table's stream: schedule-only mode");
                }
            }
        }
        None => metrics.stream_enabled.set(0),
    }

    // Restarted with the last snapshot: its values are loaded, so once the
    // API server answers, this process is as ready as a cache-synced
    // controller. The first table read (a Scan of the whole table) goes on
    // behind it and repairs whatever changed while no process ran.
    if let Some(commit) = reconciler.warm_commit() {
        match context.cluster.can_list_secrets().await {
            Ok(()) => {
                health.set_ready();
                tracing::info!(%commit, "ready from the last snapshot; the first table read follows");
            }
            Err(err) => {
                tracing::warn!(error = %crate::errors::Chain(&err), "not ready from the snapshot: the API server did not answer; ready after the first reconcile")
            }
        }
    }
    requests
        .send(ReconcileRequest::full(Trigger::Startup))
        .await
        .context("queueing the first reconcile")?;
    let (finished_tx, finished) = watch::channel(None);
    let sequencer = Sequencer::default();
    for queue_config in config.queues {
        let client = aws_sdk_sqs::Client::new(&context.aws);
        tracing::info!(queue = %queue_config.url, "following an events queue");
        tasks.spawn(crate::daemon::trigger::queue::run(
            client,
            queue_config,
            crate::daemon::trigger::queue::QueueLinks {
                requests: requests.clone(),
                sequencer: sequencer.clone(),
                finished: finished.clone(),
                leadership: leadership.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            },
        ));
    }
    tasks.spawn(worker::run(
        reconciler.clone(),
        metrics.clone(),
        config.worker,
        health,
        worker::WorkerLinks {
            requests: queue,
            retry: requests.clone(),
            leadership: leadership.clone(),
            finished: finished_tx,
            shutdown: shutdown.clone(),
        },
    ));
    if let Some(schedule) = config.schedule {
        tasks.spawn(schedule::run(schedule, requests.clone(), shutdown.clone()));
    }
    if let Some(follow) = config.requests {
        tracing::info!(every = ?follow.interval, "following the snapshot remote for rollback requests");
        tasks.spawn(crate::daemon::rollback_follower::follow(
            context.clone(),
            follow,
            requests.clone(),
            leadership.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(crate::daemon::rollout_follower::follow(
        reconciler.clone(),
        leadership.clone(),
        shutdown.clone(),
    ));
    if config.drift_repair {
        tasks.spawn(drift::run(
            context.clone(),
            requests.clone(),
            shutdown.clone(),
        ));
    }
    drop(requests);

    shutdown.cancelled().await;
    tracing::info!(grace = ?config.grace, "shutting down");
    let drained = tokio::time::timeout(config.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; abandoning what is left");
        tasks.abort_all();
    }
    Ok(())
}

fn spawn_signal_handler(shutdown: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        shutdown.cancel();
    });
    Ok(())
}
