//! kube-emu: a loopback Kubernetes API emulation for credsync's tests.
//!
//! It serves the small part of the API that credsync and kubectl use
//! (discovery, Secrets, ConfigMaps, Events, Leases, Namespaces) with real
//! semantics: resourceVersion conflicts, validation, label selectors, watch,
//! server-side dry-run. It writes a kubeconfig, prints `READY <url>`, and
//! exits when stdin closes, so it never outlives the test that spawned it.

mod api;
mod emu;
mod patch;
mod proto;
mod select;
mod store;
mod validate;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(version, about = "Loopback Kubernetes API emulation for tests")]
struct Args {
    /// Where to write the kubeconfig that points at this server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Namespaces to create at start-up (default, kube-system, kube-public
    /// and kube-node-lease always exist). Repeatable.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Bearer token the kubeconfig carries; a request with another token gets 401.
    #[arg(long, default_value = "kube-emu-token")]
    token: String,
    /// Watch events kept for resuming watches; older resourceVersions get 410.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 5)]
    bookmark_secs: u64,
    /// Keep running when stdin reaches EOF (for running it by hand in the background).
    #[arg(long)]
    ignore_stdin: bool,
    /// Log every request to stderr.
    #[arg(long, short)]
    verbose: bool,
}

/// Written atomically so a reader never sees half a file.
fn write_kubeconfig(path: &Path, url: &str, token: &str) -> std::io::Result<()> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-emu", "cluster": {"server": url}}],
        "users": [{"name": "kube-emu", "user": {"token": token}}],
        "contexts": [{"name": "kube-emu", "context": {"cluster": "kube-emu", "user": "kube-emu", "namespace": "default"}}],
        "current-context": "kube-emu",
        "preferences": {},
    });
    let text = serde_yaml::to_string(&config).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Resolves when the process should stop: stdin EOF, SIGTERM or SIGINT.
async fn shutdown_signal(watch_stdin: bool) {
    let stdin_closed = async {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = sigterm => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let filter = if args.verbose {
        "kube_emu=debug"
    } else {
        "kube_emu=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBE_EMU_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let address = listener.local_addr()?.to_string();
    let url = format!("http://{address}");

    let mut store = store::Store::new(args.history.max(1));
    let mut namespaces = vec![
        "default".to_string(),
        "kube-system".into(),
        "kube-public".into(),
        "kube-node-lease".into(),
    ];
    namespaces.extend(args.namespaces.iter().cloned());
    for ns in namespaces {
        let obj = json!({"metadata": {"name": ns}});
        match store.create(store::namespaces_resource(), "", obj, false) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(format!("cannot create namespace {ns:?}: {}", e.message).into()),
        }
    }
    let state = Arc::new(api::AppState {
        store: Mutex::new(store),
        emu: Mutex::new(emu::Emu::default()),
        token: args.token.clone(),
        bookmark_every: Duration::from_secs(args.bookmark_secs.max(1)),
        address,
    });

    write_kubeconfig(&args.kubeconfig, &url, &args.token)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {url}")?;
    out.flush()?;
    drop(out);

    let server = axum::serve(listener, api::router(state));
    tokio::select! {
        r = server => r?,
        _ = shutdown_signal(!args.ignore_stdin) => {}
    }
    Ok(())
}
