//! A real Kubernetes control plane for credsync's tests, demo and bench.
//!
//! [`ControlPlane`] starts etcd and kube-apiserver (and, when asked,
//! kube-controller-manager's workload controllers; built from upstream
//! source by `just control-plane`) on loopback ports with RBAC, token users,
//! service-account signing keys and an audit log, the way envtest does for
//! Go controllers; [`Kubelet`] plays the kubelet for their Pods. [`FaultProxy`] sits in front of it for the tests that need
//! a 500, a 409 storm or a concurrent edit a real server does not produce on
//! demand. [`AuditLog`] is how tests see what was written: the server's own
//! record, not ours.

mod audit;
mod binaries;
mod kubelet;
mod plane;
mod proxy;
mod target;

pub use audit::{AuditEvent, AuditLog, AuditMark};
pub use binaries::{bin_dir, kubernetes_version};
pub use kubelet::Kubelet;
pub use plane::{ControlPlane, NODE, Options, User};
pub use proxy::{ConcurrentEdit, Fault, FaultProxy};

use std::path::PathBuf;

/// What can go wrong bringing up the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is missing: run `just control-plane` (builds kube-apiserver, kube-controller-manager and etcd once per machine, ~8 min)"
    )]
    NotBuilt { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited before it was ready ({status}); its log ends:\n{log_tail}")]
    Exited {
        what: &'static str,
        status: std::process::ExitStatus,
        log_tail: String,
    },
    #[error("{what} was not ready within {seconds} s; its log ends:\n{log_tail}")]
    NotReady {
        what: &'static str,
        seconds: u64,
        log_tail: String,
    },
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

impl Error {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
