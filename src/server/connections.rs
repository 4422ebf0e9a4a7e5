//! Accepting HTTP connections without letting slow or idle clients starve
//! the health probes.
//!
//! axum's own `serve` waits for request headers forever and accepts without
//! limit, so a few hundred half-open connections hold every file descriptor
//! and `/healthz` stops answering: anyone who reaches the port can get the
//! pod restarted. Here every connection has a deadline for its request
//! headers (also between keep-alive requests), the connections served
//! normally are capped, and past the cap a small overflow is served with a
//! one-second deadline and no keep-alive, so a probe still gets through
//! while the normal slots are held.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a connection may take to send a request's headers, and how
/// long it may sit idle between requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served with keep-alive and the full header deadline.
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Deadline for a connection accepted past `max_connections`: long enough
/// for a probe on loopback or in the pod network, too short to hold.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown`, then lets the requests in
/// flight finish (the caller bounds that with its grace period).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let normal = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new((limits.max_connections / 4).max(8)));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors or a connection reset before
                // accept: wait a moment instead of spinning.
                tracing::warn!(error = %err, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, header_timeout, keep_alive) = match normal.clone().try_acquire_owned() {
            Ok(permit) => (permit, limits.header_timeout, true),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => (permit, OVERFLOW_HEADER_TIMEOUT, false),
                Err(_) => {
                    tracing::debug!("HTTP connection limit reached; closing a new connection");
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(keep_alive);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A timed-out or reset client is routine, not worth a log line.
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
