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
    let max_connections = fit_to_file_limit(limits.max_connections);
    let normal = Arc::new(Semaphore::new(max_connections));
    let overflow = Arc::new(Semaphore::new(overflow_slots(max_connections)));
    // Past the cap, only the probes and metrics are served: anything else
    // gets 503 at once, so the overflow is always free for the kubelet.
    let probes = router.clone().layer(axum::middleware::from_fn(probes_only));
    let graceful = GracefulShutdown::new();
    loop {
        // A slot first, then the connection: when every slot is taken, new
        // connections wait in the kernel's queue (holding no file
        // descriptor) and are taken in order as slots free up, instead of
        // being accepted and dropped. Normal slots first; past the cap, the
        // overflow, whose connections end within a second.
        let (permit, header_timeout, keep_alive, router) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = normal.clone().acquire_owned() => match permit {
                Ok(permit) => (permit, limits.header_timeout, true, &router),
                Err(_) => break,
            },
            permit = overflow.clone().acquire_owned() => match permit {
                Ok(permit) => (permit, OVERFLOW_HEADER_TIMEOUT, false, &probes),
                Err(_) => break,
            },
        };
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
        let connection = graceful.watch(connection(stream, router, header_timeout, keep_alive));
        tokio::spawn(finish(connection, permit));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The router as hyper serves it.
type Service = TowerToHyperService<
    tower::util::MapRequest<Router, fn(hyper::Request<Incoming>) -> axum::extract::Request>,
>;
type Connection = hyper::server::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Service>;

fn to_axum(request: hyper::Request<Incoming>) -> axum::extract::Request {
    request.map(Body::new)
}

/// One HTTP/1 connection serving `router`.
fn connection(
    stream: tokio::net::TcpStream,
    router: &Router,
    header_timeout: Duration,
    keep_alive: bool,
) -> Connection {
    let to_axum: fn(hyper::Request<Incoming>) -> axum::extract::Request = to_axum;
    let service = TowerToHyperService::new(router.clone().map_request(to_axum));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(keep_alive);
    builder.serve_connection(TokioIo::new(stream), service)
}

/// Runs a connection to its end, then frees its slot.
async fn finish(
    connection: impl std::future::Future<Output = Result<(), hyper::Error>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // A timed-out or reset client is routine, not worth a log line.
    if let Err(err) = connection.await {
        tracing::debug!(error = %err, "HTTP connection ended with an error");
    }
    drop(permit);
}

/// What an overflow connection may ask for.
async fn probes_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match request.uri().path() {
        "/healthz" | "/readyz" | "/metrics" => next.run(request).await,
        _ => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::CONNECTION, "close")],
            "too many connections: retry in a moment\n",
        )
            .into_response(),
    }
}

/// Connections served past the cap (probes only).
fn overflow_slots(max_connections: usize) -> usize {
    (max_connections / 4).max(8)
}

/// File descriptors kept for everything but HTTP: AWS and Kubernetes
/// clients, watches, the snapshot repository, logs.
const RESERVED_FILES: u64 = 128;

/// The connection cap the file limit allows. The soft limit is raised to
/// the hard one first (a server's usual start); if the cap and its overflow
/// would still not fit beside [`RESERVED_FILES`], the cap is lowered, and
/// said so: otherwise `accept` fails with "Too many open files" and the
/// probes are refused with everyone else.
pub fn fit_to_file_limit(wanted: usize) -> usize {
    let wanted = wanted.max(1);
    let Some(limit) = raise_file_limit() else {
        return wanted;
    };
    let budget = usize::try_from(limit.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    let fits = |cap: usize| cap + overflow_slots(cap) <= budget;
    if fits(wanted) {
        tracing::info!(
            max_connections = wanted,
            overflow = overflow_slots(wanted),
            file_limit = limit,
            "HTTP connection limits"
        );
        return wanted;
    }
    let mut cap = wanted;
    while cap > 1 && !fits(cap) {
        cap -= 1;
    }
    tracing::warn!(
        max_connections = cap,
        asked = wanted,
        file_limit = limit,
        "--max-connections lowered to what the open-file limit allows (raise `ulimit -n` to serve more)"
    );
    cap
}

/// Raises the soft open-file limit to the hard one; the limit in force.
fn raise_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
