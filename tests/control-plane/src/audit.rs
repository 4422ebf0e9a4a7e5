//! The API server's audit log (JSON lines, written before each response in
//! blocking mode): what tests read to see which requests really reached the
//! server and what they carried.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The audit policy: metadata of every request a client makes, nothing of
/// the server's own loopback traffic or of health probes. With
/// `secret_bodies`, also the bodies of Secret writes, so a test can check a
/// write carries only the changed keys: those hold secret values, so only
/// tests (whose log lives and dies in their temp dir) ask for them.
pub fn policy(secret_bodies: bool) -> String {
    let bodies = if secret_bodies {
        r#"  - level: Request
    resources: [{group: "", resources: ["secrets"]}]
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
"#
    } else {
        ""
    };
    format!(
        r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:apiserver"]
  - level: None
    nonResourceURLs: ["/*"]
{bodies}  - level: Metadata
"#
    )
}

/// A position in the log: events after it are the ones a test caused.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditMark(u64);

#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
}

/// One request as the server recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditEvent {
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: AuditUser,
    #[serde(rename = "objectRef", default)]
    pub object: Option<ObjectRef>,
    #[serde(rename = "responseStatus", default)]
    pub response: Option<ResponseStatus>,
    #[serde(rename = "requestObject", default)]
    pub request_object: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    pub fn resource(&self) -> &str {
        self.object.as_ref().map_or("", |o| o.resource.as_str())
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object.as_ref().and_then(|o| o.namespace.as_deref())
    }

    /// The object's name; for a create, read from the body when the
    /// server left it out of the reference.
    pub fn name(&self) -> Option<&str> {
        self.object
            .as_ref()
            .and_then(|o| o.name.as_deref())
            .or_else(|| self.request_object.as_ref()?["metadata"]["name"].as_str())
    }

    pub fn code(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.code)
    }

    pub fn dry_run(&self) -> bool {
        self.request_uri.contains("dryRun=All")
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

impl AuditLog {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The end of the log now.
    pub fn mark(&self) -> AuditMark {
        AuditMark(std::fs::metadata(&self.path).map_or(0, |m| m.len()))
    }

    /// Every event recorded after `mark`.
    pub fn since(&self, mark: AuditMark) -> Vec<AuditEvent> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let start = usize::try_from(mark.0)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..])
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Every event since the server started.
    pub fn all(&self) -> Vec<AuditEvent> {
        self.since(AuditMark::default())
    }
}
