//! What a Kubernetes API request is about: the verb RBAC and audit use, the
//! resource, namespace and name, read from the method and path alone.

use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub dry_run: bool,
}

impl Target {
    /// `None` for non-resource paths (/version, /readyz, discovery).
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, resource, rest @ ..] => (Some((*ns).to_owned()), {
                let mut v = vec![*resource];
                v.extend_from_slice(rest);
                v
            }),
            other => (None, other.to_vec()),
        };
        let (resource, name) = match rest.as_slice() {
            [resource] => ((*resource).to_owned(), None),
            [resource, name, ..] => ((*resource).to_owned(), Some((*name).to_owned())),
            _ => return None,
        };
        let params: Vec<(&str, &str)> = query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let has = |key: &str, values: &[&str]| {
            params.iter().any(|(k, v)| *k == key && values.contains(v))
        };
        let verb = match (method.as_str(), name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if has("watch", &["true", "1"]) => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        Some(Self {
            verb,
            group,
            resource,
            namespace,
            name,
            dry_run: has("dryRun", &["All"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_core_group_and_named_group_paths() {
        let t = Target::parse(
            &Method::PATCH,
            "/api/v1/namespaces/ns/secrets/app",
            Some("dryRun=All&fieldManager=credsync"),
        )
        .unwrap();
        assert_eq!(
            (
                t.verb,
                t.resource.as_str(),
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.dry_run
            ),
            ("patch", "secrets", Some("ns"), Some("app"), true)
        );
        let t = Target::parse(
            &Method::GET,
            "/apis/coordination.k8s.io/v1/namespaces/x/leases",
            Some("watch=true"),
        )
        .unwrap();
        assert_eq!(
            (t.verb, t.group.as_str(), t.resource.as_str()),
            ("watch", "coordination.k8s.io", "leases")
        );
        let t = Target::parse(&Method::GET, "/api/v1/namespaces", None).unwrap();
        assert_eq!(
            (t.verb, t.resource.as_str(), t.namespace),
            ("list", "namespaces", None)
        );
        assert!(Target::parse(&Method::GET, "/version", None).is_none());
        assert!(Target::parse(&Method::GET, "/apis/events.k8s.io/v1", None).is_none());
    }
}
