//! Which namespaces credsync writes: `--namespace-exclude` and
//! `--namespace-include`, as Kubestash-V2 read them.

use std::collections::BTreeSet;

/// Which namespaces credsync may write to.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    exclude: BTreeSet<String>,
    include: Option<BTreeSet<String>>,
}

/// Kubestash-V2's default: never touch the cluster's own namespaces.
pub const DEFAULT_NAMESPACE_EXCLUDE: &str = "kube-system|kube-public|kube-node-lease";

impl NamespaceFilter {
    /// The include list, if one is set: credsync then reads Secrets only in
    /// those namespaces, so namespaced RBAC (Roles) is enough.
    pub fn included(&self) -> Option<Vec<String>> {
        self.include
            .as_ref()
            .map(|set| set.iter().cloned().collect())
    }

    /// Lists are `|`- or `,`-separated; an empty include list means "all".
    pub fn parse(exclude: &str, include: Option<&str>) -> Self {
        let split = |s: &str| -> BTreeSet<String> {
            s.split(['|', ','])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Self {
            exclude: split(exclude),
            include: include.map(split).filter(|set| !set.is_empty()),
        }
    }

    /// Why credsync does not write to `namespace`, if it does not.
    pub fn reason_to_skip(&self, namespace: &str) -> Option<&'static str> {
        if self.exclude.contains(namespace) {
            Some("namespace is excluded (--namespace-exclude)")
        } else if self
            .include
            .as_ref()
            .is_some_and(|include| !include.contains(namespace))
        {
            Some("namespace is not included (--namespace-include)")
        } else {
            None
        }
    }
}
