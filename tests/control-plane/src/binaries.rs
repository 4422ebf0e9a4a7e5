//! Where the pinned kube-apiserver and etcd live: built once per machine by
//! `just control-plane` from `tools/k8s`, outside the work tree.

use std::path::PathBuf;

use crate::Error;

/// The Kubernetes version `tools/k8s/go.mod` pins; the one place it is set.
pub fn kubernetes_version() -> &'static str {
    const GO_MOD: &str = include_str!("../../../tools/k8s/go.mod");
    GO_MOD
        .lines()
        .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
        .map(str::trim)
        .unwrap_or("unknown")
}

/// The directory holding `kube-apiserver` and `etcd`:
/// `$CREDSYNC_K8S_BIN_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/credsync/k8s-<version>`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CREDSYNC_K8S_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache
        .join("credsync")
        .join(format!("k8s-{}", kubernetes_version()))
}

/// One of the two binaries, or an error that says how to build them.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NotBuilt { path })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_comes_from_the_wrapper_module() {
        let v = super::kubernetes_version();
        assert!(v.starts_with("v1."), "{v}");
    }
}
