//! `control-plane`: a real kube-apiserver and etcd on loopback for the demo
//! and the bench. Writes a kubeconfig (a `system:masters` token), creates the
//! namespaces asked for, prints `READY <url>`, and stops both servers when
//! stdin closes or on SIGTERM/SIGINT, so it never outlives its caller.

use std::path::PathBuf;

use clap::Parser;
use control_plane::{ControlPlane, Options};
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A real kube-apiserver and etcd on loopback, for tests"
)]
struct Args {
    /// Where to write the kubeconfig that reaches the server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Namespaces to create once the server is ready. Repeatable.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Where to copy the server's audit log path (one line) for callers that count requests.
    #[arg(long)]
    audit_log_path_file: Option<PathBuf>,
    /// Run the workload controllers and play the kubelet for these
    /// namespaces' Pods (Ready unless a Secret they read is missing).
    #[arg(long)]
    workloads: bool,
    /// With --workloads: a Pod that starts while a Secret it reads holds
    /// this value never turns Ready (a bad password). Repeatable.
    #[arg(long = "bad-value")]
    bad_values: Vec<String>,
    /// Keep running when stdin reaches EOF (for running it by hand in the background).
    #[arg(long)]
    ignore_stdin: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let plane = ControlPlane::start(Options {
        namespaces: args.namespaces.clone(),
        users: Vec::new(),
        audit_secret_bodies: false,
        controllers: args.workloads,
    })
    .await?;
    let _kubelet = match args.workloads {
        true => {
            let kubelet =
                control_plane::Kubelet::start(plane.admin_client().await?, args.namespaces.clone());
            for value in &args.bad_values {
                kubelet.mark_bad(value.as_bytes());
            }
            Some(kubelet)
        }
        false => None,
    };
    plane.write_kubeconfig(&args.kubeconfig, &plane.admin().token)?;
    if let Some(file) = &args.audit_log_path_file {
        std::fs::write(file, plane.audit().path().display().to_string())?;
    }
    println!("READY {}", plane.url());
    let stdin_closed = async {
        if args.ignore_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = stdin_closed => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(plane);
    Ok(())
}
