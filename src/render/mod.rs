//! Plan and sync output: text for people, markdown for pull requests, JSON
//! for programs. Everything printed comes from a [`Plan`], which holds key
//! names only, so no format can show a value.

pub mod listing;
pub mod markdown;

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::cluster::apply::ApplyOutcome;
use crate::plan::{Action, Plan, RequestState, RequestView, SecretChange};
use crate::rollout_rules::{Restart, Wave, WorkloadRef};

/// Output of listings (`history`, `show`, `diff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    Text,
    Json,
}

/// The JSON plan's schema, shipped with the binary and documented in the README.
pub const PLAN_SCHEMA: &str = include_str!("plan.schema.json");
/// Bumped on any incompatible change to the JSON plan.
pub const PLAN_SCHEMA_ID: &str = "credsync.plan/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// What the plan was computed against, for its heading.
#[derive(Debug, Clone)]
pub struct Heading {
    pub table: String,
    pub region: String,
    pub cluster: String,
    /// The last snapshot commit, when there is a snapshot repository.
    pub snapshot: Option<String>,
}

/// A short id of what a plan would do and where: the same plan gets the
/// same id, so a pull request's comment can say whether anything moved.
pub fn plan_id(plan: &Plan, h: &Heading) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(plan_json(plan, h).to_string().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Renders a plan, and the result of applying it when there is one.
pub fn render(
    plan: &Plan,
    outcome: Option<(&ApplyOutcome, bool)>,
    heading: &Heading,
    format: Format,
    color: bool,
) -> String {
    match format {
        Format::Text => text(plan, outcome, heading, color),
        Format::Markdown => markdown::render(plan, outcome, heading, markdown::DEFAULT_MAX_BYTES),
        Format::Json => {
            let mut doc = plan_json(plan, heading);
            if let Some((outcome, dry_run)) = outcome {
                doc["result"] = json!({
                    "dry_run": dry_run,
                    "written": outcome.written.iter().map(change_json).collect::<Vec<_>>(),
                    "failed": outcome.failed,
                    "restarted": outcome.restarted,
                    "restart_failures": outcome.restart_failures,
                });
            }
            // Serializing a Value into a String cannot fail.
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
    }
}

fn summary(plan: &Plan) -> String {
    let mut s = format!(
        "{} to create, {} to update, {} to delete, {} unchanged",
        plan.count(Action::Create),
        plan.count(Action::Update),
        plan.count(Action::Delete),
        plan.unchanged
    );
    for (n, what) in [
        (plan.skipped.len(), "skipped"),
        (plan.conflicts.len(), "conflict(s)"),
        (plan.failures.len(), "failed item(s)"),
        (plan.pinned.len(), "pinned"),
        (plan.restarts.len(), "restart(s)"),
        (plan.rolling.len(), "wave(s) rolling"),
        (plan.failed_waves.len(), "failed wave(s)"),
        (plan.kubestash_v2.len(), "Kubestash-V2 Secret(s)"),
        (plan.respelled.len(), "respelled key warning(s)"),
        (
            plan.requests_in(RequestState::Pending),
            "rollback request(s) to apply",
        ),
        (
            plan.requests_in(RequestState::Applied),
            "rollback request(s) applied",
        ),
        (
            plan.requests_in(RequestState::Refused),
            "rollback request(s) refused",
        ),
    ] {
        if n > 0 {
            let _ = write!(s, "; {n} {what}");
        }
    }
    s
}

fn key_list(change: &SecretChange) -> String {
    crate::manifest::marked_keys(&change.added, &change.changed, &change.removed)
}

/// `s` in SGR colour `code` when `color`, else as it is: the one place
/// escape codes are made, so `--color never` and NO_COLOR reach all of them.
pub(crate) fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

fn text(plan: &Plan, outcome: Option<(&ApplyOutcome, bool)>, h: &Heading, color: bool) -> String {
    let paint = |code: &str, s: &str| paint(color, code, s);
    let mut out = format!(
        "credsync plan: table {} ({}) -> cluster {}\n\n",
        h.table, h.region, h.cluster
    );
    // One column for the subject, so key lists and reasons line up.
    let width = plan
        .changes
        .iter()
        .map(|c| c.secret.to_string().len() + if c.adopt { 8 } else { 0 })
        .chain(plan.skipped.iter().map(|s| s.subject.len()))
        .max()
        .unwrap_or(0)
        .min(48);
    for c in &plan.changes {
        let (mark, code) = match c.action {
            Action::Create => ("+ create ", "32"),
            Action::Update => ("~ update ", "33"),
            Action::Delete => ("- delete ", "31"),
        };
        let adopt = if c.adopt {
            " (adopt)"
        } else if c.merge_only {
            " (merge)"
        } else {
            ""
        };
        let subject = format!("{}{adopt}", c.secret);
        let _ = writeln!(
            out,
            "  {} {subject:width$}  {}",
            paint(code, mark),
            key_list(c)
        );
    }
    for s in &plan.skipped {
        let _ = writeln!(
            out,
            "  {} {:width$}  {}",
            paint("35", "! skip   "),
            s.subject,
            s.reason
        );
    }
    for c in &plan.conflicts {
        let sources: Vec<String> = c.sources.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {} {} key {}  claimed by {}; live value kept",
            paint("35", "! conflict"),
            c.secret,
            c.key,
            sources.join(", ")
        );
    }
    for p in &plan.pinned {
        let state = if p.differs_from_table {
            "table differs"
        } else {
            "table agrees"
        };
        let resume = match (&p.request, &p.held_out) {
            (Some(request), _) => format!(
                "remove {} (or revert its merge) to resume",
                request
                    .rsplit_once('@')
                    .map_or(request.as_str(), |(file, _)| file)
            ),
            (None, Some(held_out)) => format!(
                "reverted after a failed rollout; holds out {held_out} until a newer version or `credsync unpin {}`",
                p.secret
            ),
            (None, None) => format!("`credsync unpin {}` to resume", p.secret),
        };
        let _ = writeln!(
            out,
            "  {} {:width$}  rolled back to {}; {state}; {resume}",
            paint("36", "= pinned "),
            p.secret.to_string(),
            &p.commit[..p.commit.len().min(12)],
        );
    }
    // One line per finding: its mark, what it is about, what it means.
    let mut note = |mark: String, subject: String, text: String| {
        let _ = writeln!(out, "  {mark} {subject}  {text}");
    };
    for r in &plan.restarts {
        note(
            paint("36", "> restart"),
            restart_subject(r),
            restart_reason(r),
        );
    }
    for r in &plan.rolling {
        note(
            paint("36", "~ rolling"),
            r.secret.to_string(),
            format!("{}: {}", r.wave, workload_names(&r.workloads)),
        );
    }
    for f in &plan.failed_waves {
        let failed: Vec<WorkloadRef> = f.workloads.iter().map(|(w, _)| w.clone()).collect();
        note(
            paint("31;1", "x rollout failed"),
            f.secret.to_string(),
            format!(
                "{}: {}; later waves wait{}",
                f.wave,
                workload_names(&failed),
                if f.last_good.is_some() {
                    ", the last good content is known"
                } else {
                    ""
                }
            ),
        );
    }
    for k in &plan.kubestash_v2 {
        note(
            paint("36", "^ kubestash-v2"),
            k.secret.to_string(),
            kubestash_v2_note(k),
        );
    }
    for r in &plan.respelled {
        note(
            paint("33;1", "! spelling"),
            r.secret.to_string(),
            respelled_note(r),
        );
    }
    for r in &plan.requests {
        let (mark, code) = match r.state {
            RequestState::Pending => ("< request", "36"),
            RequestState::Applied => ("= request", "36"),
            RequestState::Refused => ("x request", "31;1"),
        };
        let _ = writeln!(
            out,
            "  {} {}  {}",
            paint(code, mark),
            r.file,
            request_note(r)
        );
        for c in &r.changes {
            let _ = writeln!(
                out,
                "      {} {}  {} (pinned)",
                paint("33", c.action.as_str()),
                c.secret,
                key_list(c)
            );
        }
    }
    for f in &plan.failures {
        let _ = writeln!(
            out,
            "  {} {}@{}  {}; live value kept",
            paint("31;1", "x failed "),
            f.item,
            f.version,
            f.reason
        );
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(out, "Plan: {}.", summary(plan));
    if let Some((outcome, dry_run)) = outcome {
        let verb = if dry_run {
            "Dry run (server-side), would write"
        } else {
            "Applied"
        };
        let _ = writeln!(out, "{verb}: {} Secret(s).", outcome.written.len());
        for f in &outcome.failed {
            let _ = writeln!(
                out,
                "  {} {}  {}",
                paint("31;1", "x not written"),
                f.secret,
                crate::errors::Chain(&f.reason)
            );
        }
        if !outcome.restarted.is_empty() {
            let verb = if dry_run {
                "Would restart"
            } else {
                "Restarted"
            };
            let _ = writeln!(out, "{verb}: {} workload(s).", outcome.restarted.len());
        }
        for f in &outcome.restart_failures {
            let _ = writeln!(
                out,
                "  {} {}  {}",
                paint("31;1", "x not restarted"),
                f.workload,
                f.reason
            );
        }
    }
    out
}

/// A rollback request in one line: its state, what it restores, who asked and why.
pub(crate) fn request_note(r: &RequestView) -> String {
    let secrets: Vec<String> = r.secrets.iter().map(ToString::to_string).collect();
    let revision = r
        .revision
        .as_deref()
        .map(|rev| &rev[..rev.len().min(12)])
        .unwrap_or("?");
    let who = format!(
        "requested by {} (as git claims) in {}",
        r.author,
        &r.commit[..r.commit.len().min(12)]
    );
    let why = if r.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.reason)
    };
    match (r.state, &r.refusal) {
        (RequestState::Refused, Some(refusal)) => {
            format!("refused, nothing applied: {refusal}; {who}")
        }
        (RequestState::Applied, _) => format!(
            "applied: {} pinned to {revision} until this file is removed; {who}{why}",
            secrets.join(", ")
        ),
        _ => format!(
            "to apply: restores {} from {revision} and pins them; {who}{why}",
            secrets.join(", ")
        ),
    }
}

/// What happens to a Secret Kubestash-V2 wrote, in one line.
fn kubestash_v2_note(k: &crate::plan::KubestashV2Secret) -> String {
    let keys = k.keys.join(", ");
    if k.taken_over {
        format!(
            "taken over from Kubestash-V2: {keys} become credsync's (a key deleted from the table is removed); its annotations are replaced"
        )
    } else {
        format!(
            "written by Kubestash-V2: table keys merged in as it did, none removed; --adopt-kubestash-v2 would make {keys} credsync's"
        )
    }
}

fn respelled_note(r: &crate::plan::Respelled) -> String {
    format!(
        "{} would be added beside {}: an application reading {} keeps the old value (a cluster Kubestash-V2 fed? see --key-mapping kubestash-v2)",
        r.key, r.existing, r.existing
    )
}

/// `deployment/web (app)`: as kubectl names it, with its namespace.
fn restart_subject(r: &Restart) -> String {
    format!(
        "{}/{} ({})",
        r.workload.kind.as_str(),
        r.workload.name,
        r.workload.namespace
    )
}

fn restart_reason(r: &Restart) -> String {
    let secrets: Vec<String> = r.secrets.iter().map(ToString::to_string).collect();
    match r.wave {
        Wave::Numbered(_) => format!("for {}, {}", secrets.join(", "), r.wave),
        Wave::Last => format!("for {}", secrets.join(", ")),
    }
}

fn workload_names(workloads: &[WorkloadRef]) -> String {
    let names: Vec<String> = workloads.iter().map(ToString::to_string).collect();
    names.join(", ")
}

fn change_json(c: &SecretChange) -> Value {
    let mut out = json!({
        "action": c.action,
        "namespace": c.secret.namespace,
        "name": c.secret.name,
        "adopt": c.adopt,
        "keys": { "added": c.added, "changed": c.changed, "removed": c.removed },
    });
    if c.merge_only {
        out["merge_only"] = Value::Bool(true);
    }
    out
}

fn plan_json(plan: &Plan, h: &Heading) -> Value {
    json!({
        "schema": PLAN_SCHEMA_ID,
        "table": h.table,
        "region": h.region,
        "cluster": h.cluster,
        "summary": {
            "create": plan.count(Action::Create),
            "update": plan.count(Action::Update),
            "delete": plan.count(Action::Delete),
            "unchanged": plan.unchanged,
            "skipped": plan.skipped.len(),
            "conflicts": plan.conflicts.len(),
            "failed": plan.failures.len(),
            "pinned": plan.pinned.len(),
            "restarts": plan.restarts.len(),
            "rolling": plan.rolling.len(),
            "failed_waves": plan.failed_waves.len(),
            "kubestash_v2": plan.kubestash_v2.len(),
            "respelled": plan.respelled.len(),
            "requests": plan.requests.len(),
            "has_changes": plan.has_changes(),
        },
        "changes": plan.changes.iter().map(change_json).collect::<Vec<_>>(),
        "skipped": plan.skipped,
        "conflicts": plan.conflicts.iter().map(|c| json!({
            "namespace": c.secret.namespace,
            "name": c.secret.name,
            "key": c.key,
            "sources": c.sources,
        })).collect::<Vec<_>>(),
        "failed": plan.failures,
        "pinned": plan.pinned.iter().map(|p| json!({
            "namespace": p.secret.namespace,
            "name": p.secret.name,
            "commit": p.commit,
            "differs_from_table": p.differs_from_table,
            "request": p.request,
            "held_out": p.held_out,
        })).collect::<Vec<_>>(),
        "restarts": plan.restarts,
        "rolling": plan.rolling,
        "failed_waves": plan.failed_waves,
        "kubestash_v2": plan.kubestash_v2.iter().map(|k| json!({
            "namespace": k.secret.namespace,
            "name": k.secret.name,
            "taken_over": k.taken_over,
            "keys": k.keys,
        })).collect::<Vec<_>>(),
        "respelled": plan.respelled.iter().map(|r| json!({
            "namespace": r.secret.namespace,
            "name": r.secret.name,
            "key": r.key,
            "existing": r.existing,
        })).collect::<Vec<_>>(),
        "requests": plan.requests.iter().map(|r| json!({
            "file": r.file,
            "commit": r.commit,
            "author": r.author,
            "revision": r.revision,
            "secrets": r.secrets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "reason": r.reason,
            "state": r.state,
            "refusal": r.refusal,
            "changes": r.changes.iter().map(change_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Conflict, SecretRef, Skip};
    use crate::plan::FailedItem;
    use crate::plan::Pinned;
    use crate::source::ItemId;

    fn sample() -> Plan {
        Plan {
            changes: vec![
                SecretChange {
                    secret: SecretRef::new("team-a", "db"),
                    action: Action::Create,
                    adopt: false,
                    added: vec!["PASSWORD".into(), "USER".into()],
                    changed: vec![],
                    removed: vec![],
                    merge_only: false,
                },
                SecretChange {
                    secret: SecretRef::new("team-b", "api"),
                    action: Action::Update,
                    adopt: true,
                    added: vec![],
                    changed: vec!["TOKEN".into()],
                    removed: vec!["OLD".into()],
                    merge_only: false,
                },
            ],
            unchanged: 3,
            skipped: vec![Skip {
                subject: "a/b".into(),
                reason: "name has 2 segment(s)".into(),
            }],
            conflicts: vec![Conflict {
                secret: SecretRef::new("ns", "app"),
                key: "DB_PASS".into(),
                sources: vec![
                    ItemId {
                        name: "ns/app/db.pass".into(),
                        version: "1".into(),
                    },
                    ItemId {
                        name: "ns/app/DB_PASS".into(),
                        version: "1".into(),
                    },
                ],
            }],
            failures: vec![FailedItem {
                item: "ns/app/x".into(),
                version: "2".into(),
                reason: "HMAC mismatch".into(),
            }],
            pinned: vec![Pinned {
                secret: SecretRef::new("ns", "rolled"),
                commit: "0123456789abcdef".into(),
                differs_from_table: true,
                request: None,
                held_out: None,
            }],
            restarts: vec![],
            kubestash_v2: vec![crate::plan::KubestashV2Secret {
                secret: SecretRef::new("ns", "legacy"),
                taken_over: false,
                keys: vec!["DB.PASSWORD".into()],
            }],
            respelled: vec![crate::plan::Respelled {
                secret: SecretRef::new("ns", "legacy"),
                key: "DB_PASSWORD".into(),
                existing: "DB.PASSWORD".into(),
            }],
            requests: vec![
                RequestView {
                    file: "demo/.requests/r1.yaml".into(),
                    commit: "feedface".repeat(5),
                    author: "Ada <ada@example.com>".into(),
                    revision: Some("0123456789abcdef".repeat(2) + "01234567"),
                    secrets: vec![SecretRef::new("team-c", "db")],
                    reason: "bad rotation".into(),
                    state: RequestState::Pending,
                    refusal: None,
                    changes: vec![SecretChange {
                        secret: SecretRef::new("team-c", "db"),
                        action: Action::Update,
                        adopt: false,
                        added: vec![],
                        changed: vec!["PASSWORD".into()],
                        removed: vec![],
                        merge_only: false,
                    }],
                },
                RequestView {
                    file: "demo/.requests/r2.yaml".into(),
                    commit: "c0ffee00".repeat(5),
                    author: "Bob <bob@example.com>".into(),
                    revision: None,
                    secrets: vec![],
                    reason: String::new(),
                    state: RequestState::Refused,
                    refusal: Some("malformed rollback request: it names no Secret".into()),
                    changes: vec![],
                },
            ],
            ..Plan::default()
        }
    }

    fn heading() -> Heading {
        Heading {
            table: "credential-store".into(),
            region: "us-east-1".into(),
            cluster: "demo".into(),
            snapshot: None,
        }
    }

    #[test]
    fn text_lists_every_entry_and_summary_without_color_off_tty() {
        let out = render(&sample(), None, &heading(), Format::Text, false);
        let squeezed = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squeezed.contains("+ create team-a/db +PASSWORD +USER"),
            "{out}"
        );
        assert!(
            squeezed.contains("~ update team-b/api (adopt) ~TOKEN -OLD"),
            "{out}"
        );
        assert!(out.contains("ns/app/x@2  HMAC mismatch"), "{out}");
        assert!(
            squeezed.contains("= pinned ns/rolled rolled back to 0123456789ab; table differs"),
            "{out}"
        );
        assert!(out.contains("Plan: 1 to create, 1 to update, 0 to delete, 3 unchanged; 1 skipped; 1 conflict(s); 1 failed item(s); 1 pinned; 1 Kubestash-V2 Secret(s); 1 respelled key warning(s); 1 rollback request(s) to apply; 1 rollback request(s) refused."), "{out}");
        assert!(
            squeezed.contains("< request demo/.requests/r1.yaml to apply: restores team-c/db from 0123456789ab and pins them; requested by Ada <ada@example.com> (as git claims) in feedfacefeed (bad rotation)"),
            "{out}"
        );
        assert!(
            squeezed.contains("update team-c/db ~PASSWORD (pinned)"),
            "{out}"
        );
        assert!(
            squeezed.contains("x request demo/.requests/r2.yaml refused, nothing applied: malformed rollback request: it names no Secret"),
            "{out}"
        );
        assert!(
            squeezed.contains("! spelling ns/legacy DB_PASSWORD would be added beside DB.PASSWORD"),
            "{out}"
        );
        assert!(
            squeezed.contains("^ kubestash-v2 ns/legacy written by Kubestash-V2"),
            "{out}"
        );
        assert!(!out.contains('\x1b'));
        assert!(render(&sample(), None, &heading(), Format::Text, true).contains("\x1b[32m"));
    }

    #[test]
    fn markdown_is_a_table_with_escaped_cells() {
        let mut plan = sample();
        plan.skipped[0].subject = "a|b`c".into();
        let out = render(&plan, None, &heading(), Format::Markdown, false);
        assert!(
            out.contains("| create | `team-a/db` | `PASSWORD`, `USER` |  |  |"),
            "{out}"
        );
        assert!(out.contains("`a\\|b'c`"), "{out}");
        assert!(
            out.contains("| `demo/.requests/r1.yaml` | pending | `team-c/db` | `0123456789ab` | Ada &lt;ada@example.com&gt; in `feedfacefeed` | bad rotation |"),
            "{out}"
        );
        // What a pull request's author writes cannot add a link, an image,
        // a line or a cell to the comment.
        let mut hostile = sample();
        hostile.requests[0].author = "Eve [click](https://evil.example) ![x](https://evil.example/x.png) <img src=x>\n| injected |".into();
        hostile.requests[0].reason = "why\r\n**row** | cell".into();
        let out = render(&hostile, None, &heading(), Format::Markdown, false);
        let row = out
            .lines()
            .find(|l| l.contains("demo/.requests/r1.yaml") && l.contains("pending"))
            .unwrap_or_default();
        assert!(
            row.contains("Eve \\[click\\](https://evil.example)"),
            "{row}"
        );
        assert!(row.contains("&lt;img src=x&gt;"), "{row}");
        assert!(
            !row.contains("](https") || row.contains("\\](https"),
            "{row}"
        );
        assert!(
            !out.contains("| injected |") && !out.contains("\n**row**"),
            "{out}"
        );
        assert_eq!(row.matches(" | ").count(), 5, "one row of six cells: {row}");
        assert!(
            out.contains("| `demo/.requests/r2.yaml` | **refused**: malformed rollback request: it names no Secret |"),
            "{out}"
        );
        assert!(
            out.contains(
                "<summary>What <code>demo/.requests/r1.yaml</code> writes: 1 to update</summary>"
            ),
            "{out}"
        );
        assert!(
            out.contains("| `ns/legacy` | `DB_PASSWORD` | `DB.PASSWORD` |"),
            "{out}"
        );
    }

    #[test]
    fn json_carries_schema_id_and_counts() {
        let out = render(&sample(), None, &heading(), Format::Json, false);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["schema"], PLAN_SCHEMA_ID);
        assert_eq!(v["summary"]["update"], 1);
        assert_eq!(v["changes"][1]["keys"]["removed"][0], "OLD");
        assert_eq!(v["conflicts"][0]["sources"][1]["name"], "ns/app/DB_PASS");
        assert_eq!(v["respelled"][0]["existing"], "DB.PASSWORD");
        assert_eq!(v["kubestash_v2"][0]["taken_over"], false);
        assert_eq!(v["requests"][0]["state"], "pending");
        assert_eq!(v["requests"][0]["secrets"][0], "team-c/db");
        assert_eq!(
            v["requests"][0]["changes"][0]["keys"]["changed"][0],
            "PASSWORD"
        );
        assert_eq!(
            v["requests"][1]["refusal"],
            "malformed rollback request: it names no Secret"
        );
        assert_eq!(v["summary"]["requests"], 2);
        let schema: Value = serde_json::from_str(PLAN_SCHEMA).unwrap();
        assert_eq!(schema["properties"]["schema"]["const"], PLAN_SCHEMA_ID);
    }
}
