//! Test hooks under /_emu/: request statistics, injected faults, and a
//! simulated concurrent edit that lands between a client's read and write.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Emu {
    requests: BTreeMap<String, u64>,
    dry_run: BTreeMap<String, u64>,
    /// Write requests (create/update/patch/delete), dry runs kept apart.
    writes: Vec<Value>,
    dry_run_writes: Vec<Value>,
    faults: Vec<Fault>,
    before_write: Vec<BeforeWrite>,
}

/// `{"verb": .., "resource": .., "status": 500, "times": N}` or `{"every": K, ..}`.
#[derive(Debug, Deserialize)]
pub struct Fault {
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub status: u16,
    pub times: Option<u64>,
    pub every: Option<u64>,
    pub message: Option<String>,
    #[serde(skip)]
    seen: u64,
}

/// `{"namespace": .., "name": .., "merge_patch": {..}}`: applied to that Secret
/// just before the next (non dry-run) update or patch of it.
#[derive(Debug, Clone, Deserialize)]
pub struct BeforeWrite {
    pub namespace: String,
    pub name: String,
    pub merge_patch: Value,
    #[serde(default = "secrets")]
    pub resource: String,
}

fn secrets() -> String {
    "secrets".into()
}

/// What one Kubernetes API request was, for stats and fault matching.
pub struct RequestInfo<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub dry_run: bool,
    pub content_type: &'a str,
    pub body: Option<Value>,
}

impl Emu {
    pub fn record(&mut self, r: &RequestInfo) {
        let counts = if r.dry_run {
            &mut self.dry_run
        } else {
            &mut self.requests
        };
        *counts.entry(r.verb.to_string()).or_default() += 1;
        if matches!(r.verb, "create" | "update" | "patch" | "delete") {
            let list = if r.dry_run {
                &mut self.dry_run_writes
            } else {
                &mut self.writes
            };
            list.push(json!({
                "verb": r.verb,
                "namespace": r.namespace,
                "name": r.name,
                "resource": r.resource,
                "content_type": r.content_type,
                "body": r.body.clone().unwrap_or(Value::Null),
            }));
        }
    }

    pub fn stats(&self) -> Value {
        json!({
            "requests": self.requests,
            "dry_run": self.dry_run,
            "writes": self.writes,
            "dry_run_writes": self.dry_run_writes,
        })
    }

    pub fn reset_stats(&mut self) {
        self.requests.clear();
        self.dry_run.clear();
        self.writes.clear();
        self.dry_run_writes.clear();
    }

    pub fn add_fault(&mut self, f: Fault) {
        self.faults.push(f);
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// The status (and optional message) to fail this request with, if any.
    pub fn fault_for(&mut self, verb: &str, resource: &str) -> Option<(u16, Option<String>)> {
        let mut hit = None;
        for f in &mut self.faults {
            let matches = f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource);
            if !matches || hit.is_some() {
                continue;
            }
            f.seen += 1;
            let fire = match (f.every, f.times) {
                (Some(k), _) => k > 0 && f.seen % k == 0,
                (None, Some(n)) => f.seen <= n,
                (None, None) => true,
            };
            if fire {
                hit = Some((f.status, f.message.clone()));
            }
        }
        // Drop `times` rules that are used up.
        self.faults
            .retain(|f| f.every.is_some() || f.times.is_none_or(|n| f.seen < n));
        hit
    }

    pub fn add_before_write(&mut self, b: BeforeWrite) {
        self.before_write.push(b);
    }

    pub fn take_before_write(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<BeforeWrite> {
        let i = self
            .before_write
            .iter()
            .position(|b| b.resource == resource && b.namespace == namespace && b.name == name)?;
        Some(self.before_write.remove(i))
    }
}
