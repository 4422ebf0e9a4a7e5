//! Snapshot listings: `history`, `show`, `diff`, and `show --reveal`.
//!
//! Only `reveal` prints values, and only to stdout when asked for.

use std::fmt::Write as _;

use serde_json::json;

use super::{ListFormat, paint};
use crate::snapshot::store::{CommitInfo, SecretDelta, SnapshotEntry};
use sops_age::SecretDocument;

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Green for what appears, yellow for what changes, red for what goes.
fn action_color(action: &str) -> &'static str {
    match action {
        "create" => "32",
        "delete" => "31",
        _ => "33",
    }
}

fn to_json(value: serde_json::Value) -> String {
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

pub fn history(commits: &[CommitInfo], format: ListFormat, color: bool) -> String {
    match format {
        ListFormat::Json => to_json(json!({ "commits": commits })),
        ListFormat::Text => {
            let mut out = String::new();
            for c in commits {
                let id = paint(color, "33", short(&c.id));
                // Only a signed commit vouches for its files (docs/snapshots.md).
                let mark = if c.signed { "signed  " } else { "unsigned" };
                let _ = writeln!(out, "{id}  {}  {mark}  {}", c.time, c.summary);
            }
            if commits.is_empty() {
                out.push_str("no snapshots yet\n");
            }
            out
        }
    }
}

pub fn show(commit: &CommitInfo, entries: &[SnapshotEntry], format: ListFormat) -> String {
    match format {
        ListFormat::Json => to_json(json!({
            "commit": commit.id,
            "time": commit.time,
            "secrets": entries.iter().map(|e| json!({
                "namespace": e.secret.namespace,
                "name": e.secret.name,
                "file": e.path,
                "keys": e.outline.keys,
                "sources": e.sources,
                "recipients": e.outline.recipients,
            })).collect::<Vec<_>>(),
        })),
        ListFormat::Text => {
            let mut out = format!(
                "snapshot {}  {}  {}\n",
                short(&commit.id),
                commit.time,
                commit.summary
            );
            for e in entries {
                let _ = writeln!(out, "\n{}  ({})", e.secret, e.path);
                for key in &e.outline.keys {
                    let source = e.sources.get(key).map(String::as_str).unwrap_or("-");
                    let _ = writeln!(out, "  {key:<24} {source}");
                }
            }
            out
        }
    }
}

pub fn diff(
    from: &CommitInfo,
    to: &CommitInfo,
    deltas: &[SecretDelta],
    format: ListFormat,
    color: bool,
) -> String {
    match format {
        ListFormat::Json => to_json(json!({ "from": from.id, "to": to.id, "changes": deltas })),
        ListFormat::Text => {
            let mut out = format!("{} -> {}\n", short(&from.id), short(&to.id));
            for d in deltas {
                let keys = crate::manifest::marked_keys(&d.added, &d.changed, &d.removed);
                let action = paint(color, action_color(d.action), &format!("{:<7}", d.action));
                let _ = writeln!(out, "  {action} {}  {keys}", d.secret);
            }
            if deltas.is_empty() {
                out.push_str("  no changes\n");
            }
            out
        }
    }
}

/// The decrypted Secrets as YAML manifests with `stringData`.
pub fn reveal(docs: &[SecretDocument]) -> anyhow::Result<String> {
    let mut out = String::new();
    for doc in docs {
        let string_data: std::collections::BTreeMap<&str, String> = doc
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.expose()).into_owned()))
            .collect();
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": doc.name, "namespace": doc.namespace, "annotations": doc.annotations },
            "type": "Opaque",
            "stringData": string_data,
        });
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&manifest)?);
    }
    Ok(out)
}
