//! The markdown plan, sized for a pull-request comment (as Atlantis and
//! tfcmt post theirs): a hidden marker a bot finds its own comment by, a
//! header saying what the plan was computed against, the summary and the
//! counts per namespace first, then the details folded per namespace. Past
//! `max_bytes` the details end with how many changes were left out; a cut
//! never falls inside a table row or between an opening and a closing tag.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Heading, kubestash_v2_note, summary};
use crate::cluster::apply::ApplyOutcome;
use crate::plan::{Action, Plan, SecretChange};

/// A GitHub comment takes 65,536 characters; this leaves room for a bot's
/// own words around the plan.
pub const DEFAULT_MAX_BYTES: usize = 60_000;

/// Room always kept for the closing tags and the "not shown" line.
const RESERVE: usize = 400;

/// Text for a markdown table cell: one line, and no link, image, HTML or
/// cell break of its own (a git author or a request's reason could
/// otherwise add them to a pull-request comment).
pub(super) fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::text::one_line(s, 2000).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\''),
            '\\' | '|' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub(super) fn md_code(s: &str) -> String {
    let one = crate::text::one_line(s, 2000);
    format!("`{}`", one.replace('|', "\\|").replace('`', "'"))
}

/// Text inside an HTML tag such as `<summary>`, where markdown is not read.
fn html_escape(s: &str) -> String {
    crate::text::one_line(s, 2000)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The marker line a bot looks for to update its own comment for a cluster.
pub fn marker(cluster: &str) -> String {
    format!(
        "<!-- credsync-plan cluster=\"{}\" -->",
        cluster.replace("--", "- -")
    )
}

/// Output that stops taking blocks once the next one would not fit.
struct Budget {
    out: String,
    limit: usize,
    full: bool,
    /// Entries (table rows) left out once full.
    left_out: usize,
    changes_left_out: usize,
}

impl Budget {
    /// Appends `block` whole if it fits (keeping `also` bytes free for what
    /// must follow it), else nothing and the budget is full from then on.
    fn take(&mut self, block: &str, also: usize) -> bool {
        if !self.full && self.out.len() + block.len() + also + RESERVE <= self.limit {
            self.out.push_str(block);
            true
        } else {
            self.full = true;
            false
        }
    }

    /// A titled table: the rows that fit, the table closed, the rest counted.
    fn table(&mut self, open: &str, rows: Vec<String>, close: &str, changes: bool) {
        let first = rows.first().map_or(0, String::len);
        if rows.is_empty() || !self.take(open, first + close.len()) {
            self.count(rows.len(), changes);
            return;
        }
        let total = rows.len();
        let mut shown = 0;
        for row in rows {
            if !self.take(&row, close.len()) {
                break;
            }
            shown += 1;
        }
        self.out.push_str(close);
        self.count(total - shown, changes);
    }

    fn count(&mut self, n: usize, changes: bool) {
        if n > 0 {
            self.full = true;
            self.left_out += n;
            if changes {
                self.changes_left_out += n;
            }
        }
    }
}

fn row(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

fn keys(ks: &[String]) -> String {
    ks.iter().map(|k| md_code(k)).collect::<Vec<_>>().join(", ")
}

fn change_row(c: &SecretChange) -> String {
    let note = if c.adopt {
        " (adopt)"
    } else if c.merge_only {
        " (merge)"
    } else {
        ""
    };
    row(&[
        format!("{}{note}", c.action.as_str()),
        md_code(&c.secret.to_string()),
        keys(&c.added),
        keys(&c.changed),
        keys(&c.removed),
    ])
}

/// Counts of "1 to create, 2 to update" for one namespace's changes.
fn counts(changes: &[&SecretChange]) -> String {
    let n = |a| changes.iter().filter(|c| c.action == a).count();
    let parts: Vec<String> = [
        (n(Action::Create), "to create"),
        (n(Action::Update), "to update"),
        (n(Action::Delete), "to delete"),
    ]
    .iter()
    .filter(|(count, _)| *count > 0)
    .map(|(count, what)| format!("{count} {what}"))
    .collect();
    parts.join(", ")
}

/// The markdown plan within `max_bytes` (and the result of a sync, if any).
pub fn render(
    plan: &Plan,
    outcome: Option<(&ApplyOutcome, bool)>,
    h: &Heading,
    max_bytes: usize,
) -> String {
    let mut b = Budget {
        out: String::new(),
        limit: max_bytes.max(RESERVE * 4),
        full: false,
        left_out: 0,
        changes_left_out: 0,
    };
    let _ = writeln!(b.out, "{}", marker(&h.cluster));
    let _ = write!(
        b.out,
        "### credsync plan: {} ({}) → {}\n\n",
        md_code(&h.table),
        md_escape(&h.region),
        md_code(&h.cluster)
    );
    let snapshot = h
        .snapshot
        .as_deref()
        .map(|c| format!(", snapshot {}", md_code(&c[..c.len().min(12)])))
        .unwrap_or_default();
    let _ = write!(
        b.out,
        "<sub>Computed against table {} ({}), cluster {}{snapshot}; credsync {}; plan id {}.</sub>\n\n",
        md_code(&h.table),
        md_escape(&h.region),
        md_code(&h.cluster),
        env!("CARGO_PKG_VERSION"),
        md_code(&super::plan_id(plan, h)),
    );
    if !plan.has_changes() && plan.failures.is_empty() && plan.conflicts.is_empty() {
        let _ = writeln!(b.out, "**No changes.** {}.", summary(plan));
        if !plan.requests.is_empty() {
            b.out.push('\n');
            requests(&mut b, plan);
        }
    } else {
        let _ = write!(b.out, "**{}**\n\n", summary(plan));
        requests(&mut b, plan);
        changes(&mut b, plan);
    }
    findings(&mut b, plan);
    if let Some((outcome, dry_run)) = outcome {
        result(&mut b, outcome, dry_run);
    }
    if b.left_out > 0 {
        let others = b.left_out - b.changes_left_out;
        let _ = write!(
            b.out,
            "\n_{} more change(s){} not shown: past {max_bytes} bytes. The whole plan: `credsync plan --format markdown --output FILE`._\n",
            b.changes_left_out,
            if others > 0 {
                format!(" and {others} other entr(ies)")
            } else {
                String::new()
            },
        );
    }
    b.out
}

/// Rollback requests first: in a pull request that adds one, they are
/// what the reviewers are asked about.
fn requests(b: &mut Budget, plan: &Plan) {
    let rows = plan
        .requests
        .iter()
        .map(|r| {
            let secrets: Vec<String> = r.secrets.iter().map(|s| md_code(&s.to_string())).collect();
            let state = match (&r.refusal, r.state) {
                (Some(refusal), _) => format!("**refused**: {}", md_escape(refusal)),
                (None, state) => state.as_str().to_owned(),
            };
            row(&[
                md_code(&r.file),
                state,
                secrets.join(", "),
                r.revision
                    .as_deref()
                    .map(|rev| md_code(&rev[..rev.len().min(12)]))
                    .unwrap_or_default(),
                format!(
                    "{} in {}",
                    md_escape(&r.author),
                    md_code(&r.commit[..r.commit.len().min(12)])
                ),
                md_escape(&r.reason),
            ])
        })
        .collect();
    b.table(
        "**Rollback requests** (restored from a snapshot and pinned while the file stays):\n\n| Request | State | Secrets | Revision | Requested by (git author, unverified) | Why |\n|---|---|---|---|---|---|\n",
        rows,
        "\n",
        false,
    );
    for r in plan.requests.iter().filter(|r| !r.changes.is_empty()) {
        let open = format!(
            "<details><summary>What <code>{}</code> writes: {}</summary>\n\n| Action | Secret | Added | Changed | Removed |\n|---|---|---|---|---|\n",
            html_escape(&r.file),
            counts(&r.changes.iter().collect::<Vec<_>>())
        );
        b.table(
            &open,
            r.changes.iter().map(change_row).collect(),
            "\n</details>\n\n",
            true,
        );
    }
}

/// The counts per namespace, then each namespace's changes folded.
fn changes(b: &mut Budget, plan: &Plan) {
    let mut by_namespace: BTreeMap<&str, Vec<&SecretChange>> = BTreeMap::new();
    for c in &plan.changes {
        by_namespace.entry(&c.secret.namespace).or_default().push(c);
    }
    if by_namespace.is_empty() {
        return;
    }
    let rows = by_namespace
        .iter()
        .map(|(ns, cs)| {
            let n = |a| cs.iter().filter(|c| c.action == a).count().to_string();
            row(&[
                md_code(ns),
                n(Action::Create),
                n(Action::Update),
                n(Action::Delete),
            ])
        })
        .collect();
    b.table(
        "| Namespace | Create | Update | Delete |\n|---|---|---|---|\n",
        rows,
        "\n",
        false,
    );
    for (ns, cs) in &by_namespace {
        let open = format!(
            "<details><summary><code>{}</code>: {}</summary>\n\n| Action | Secret | Added | Changed | Removed |\n|---|---|---|---|---|\n",
            html_escape(ns),
            counts(cs)
        );
        b.table(
            &open,
            cs.iter().map(|c| change_row(c)).collect(),
            "\n</details>\n\n",
            true,
        );
    }
}

/// Everything that is not a change: warnings first, skips last (folded).
fn findings(b: &mut Budget, plan: &Plan) {
    let failures = plan
        .failures
        .iter()
        .map(|f| row(&[md_code(&f.item), md_code(&f.version), md_escape(&f.reason)]))
        .collect();
    b.table(
        "**Failed items** (live values kept):\n\n| Item | Version | Reason |\n|---|---|---|\n",
        failures,
        "\n",
        false,
    );
    let conflicts = plan
        .conflicts
        .iter()
        .map(|c| {
            let sources: Vec<String> = c.sources.iter().map(|s| md_code(&s.to_string())).collect();
            row(&[
                md_code(&c.secret.to_string()),
                md_code(&c.key),
                sources.join(", "),
            ])
        })
        .collect();
    b.table(
        "**Conflicts** (live values kept):\n\n| Secret | Key | Claimed by |\n|---|---|---|\n",
        conflicts,
        "\n",
        false,
    );
    let respelled = plan
        .respelled
        .iter()
        .map(|r| {
            row(&[
                md_code(&r.secret.to_string()),
                md_code(&r.key),
                md_code(&r.existing),
            ])
        })
        .collect();
    b.table(
        "**Warning: keys added beside another spelling** (the old key keeps its old value):\n\n| Secret | Added | Existing |\n|---|---|---|\n",
        respelled,
        "\n",
        false,
    );
    let pinned = plan
        .pinned
        .iter()
        .map(|p| {
            let state = match (p.differs_from_table, &p.held_out) {
                (_, Some(held_out)) => {
                    format!("reverted rotation; holds out {}", md_code(held_out))
                }
                (true, None) => "differs".to_owned(),
                (false, None) => "agrees".to_owned(),
            };
            row(&[md_code(&p.secret.to_string()), md_code(&p.commit), state])
        })
        .collect();
    b.table(
        "**Pinned by a rollback** (left alone until `credsync unpin`, or until the rollback request that pinned it is removed):\n\n| Secret | Snapshot | Table |\n|---|---|---|\n",
        pinned,
        "\n",
        false,
    );
    let kubestash = plan
        .kubestash_v2
        .iter()
        .map(|k| {
            row(&[
                md_code(&k.secret.to_string()),
                md_escape(&kubestash_v2_note(k)),
            ])
        })
        .collect();
    b.table(
        "**Secrets Kubestash-V2 wrote**:\n\n| Secret | |\n|---|---|\n",
        kubestash,
        "\n",
        false,
    );
    let restarts = plan
        .restarts
        .iter()
        .map(|r| {
            let secrets: Vec<String> = r.secrets.iter().map(|s| md_code(&s.to_string())).collect();
            let wave = match r.wave {
                crate::rollout_rules::Wave::Numbered(n) => n.to_string(),
                crate::rollout_rules::Wave::Last => "last".to_owned(),
            };
            row(&[
                md_code(&format!("{}/{}", r.workload.kind.as_str(), r.workload.name)),
                md_code(&r.workload.namespace),
                secrets.join(", "),
                wave,
            ])
        })
        .collect();
    b.table(
        "**Restarts** (after the Secret writes; a wave waits for the one before it):\n\n| Workload | Namespace | For | Wave |\n|---|---|---|---|\n",
        restarts,
        "\n",
        false,
    );
    let failed = plan
        .failed_waves
        .iter()
        .map(|f| {
            let workloads: Vec<String> = f
                .workloads
                .iter()
                .map(|(w, _)| md_code(&w.to_string()))
                .collect();
            row(&[
                md_code(&f.secret.to_string()),
                f.wave.to_string(),
                workloads.join(", "),
            ])
        })
        .collect();
    b.table(
        "**Failed rollouts** (later waves wait; the Secret is reverted):\n\n| Secret | Wave | Workloads |\n|---|---|---|\n",
        failed,
        "\n",
        false,
    );
    let skipped = plan
        .skipped
        .iter()
        .map(|s| row(&[md_code(&s.subject), md_escape(&s.reason)]))
        .collect();
    b.table(
        &format!(
            "<details><summary>Skipped ({})</summary>\n\n| Name | Reason |\n|---|---|\n",
            plan.skipped.len()
        ),
        skipped,
        "\n</details>\n",
        false,
    );
}

fn result(b: &mut Budget, outcome: &ApplyOutcome, dry_run: bool) {
    let verb = if dry_run {
        "Dry run: would write"
    } else {
        "Applied"
    };
    let _ = writeln!(b.out, "\n{verb} {} Secret(s).", outcome.written.len());
    let not_written = outcome
        .failed
        .iter()
        .map(|f| (f.secret.to_string(), crate::errors::chain(&f.reason)));
    b.table("", bullets("not written", not_written), "", false);
    if !outcome.restarted.is_empty() {
        let verb = if dry_run {
            "Would restart"
        } else {
            "Restarted"
        };
        let _ = writeln!(b.out, "\n{verb} {} workload(s).", outcome.restarted.len());
    }
    let not_restarted = outcome
        .restart_failures
        .iter()
        .map(|f| (f.workload.to_string(), f.reason.clone()));
    b.table("", bullets("not restarted", not_restarted), "", false);
}

/// `- WHAT `subject`: reason` lines.
fn bullets(what: &str, items: impl Iterator<Item = (String, String)>) -> Vec<String> {
    items
        .map(|(subject, reason)| {
            format!("- {what} {}: {}\n", md_code(&subject), md_escape(&reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SecretRef;

    fn big_plan(n: usize) -> Plan {
        let changes = (0..n)
            .map(|i| SecretChange {
                secret: SecretRef::new(format!("team-{:02}", i % 20), format!("app-{i:05}")),
                action: if i % 3 == 0 {
                    Action::Create
                } else {
                    Action::Update
                },
                adopt: false,
                added: vec!["PASSWORD".into(), "USERNAME".into()],
                changed: vec!["API_TOKEN".into()],
                removed: vec![],
                merge_only: false,
            })
            .collect();
        Plan {
            changes,
            ..Plan::default()
        }
    }

    fn heading() -> Heading {
        Heading {
            table: "credential-store".into(),
            region: "us-east-1".into(),
            cluster: "prod-eu".into(),
            snapshot: Some("0123456789abcdef0123".into()),
        }
    }

    /// `<details>` opened and closed, as a markdown parser sees the HTML.
    fn details_balance(text: &str) -> (usize, usize) {
        let (mut open, mut close) = (0, 0);
        for event in pulldown_cmark::Parser::new(text) {
            if let pulldown_cmark::Event::Html(html) | pulldown_cmark::Event::InlineHtml(html) =
                event
            {
                open += html.matches("<details>").count();
                close += html.matches("</details>").count();
            }
        }
        (open, close)
    }

    #[test]
    fn ten_thousand_changes_fit_a_comment_and_say_what_they_leave_out() {
        let plan = big_plan(10_000);
        let cut = render(&plan, None, &heading(), DEFAULT_MAX_BYTES);
        assert!(cut.len() <= DEFAULT_MAX_BYTES, "{} bytes", cut.len());
        assert!(cut.starts_with("<!-- credsync-plan cluster=\"prod-eu\" -->\n"));
        assert!(cut.contains("snapshot `0123456789ab`"), "{}", &cut[..600]);
        let (open, close) = details_balance(&cut);
        assert!(
            open > 0 && open == close,
            "{open} <details>, {close} </details>"
        );
        // Whole rows only: every table line is closed.
        for line in cut.lines().filter(|l| l.starts_with("| ")) {
            assert!(line.ends_with(" |"), "a cut row: {line}");
        }
        let shown = cut
            .lines()
            .filter(|l| l.starts_with("| create") || l.starts_with("| update"))
            .count();
        let note = format!("_{} more change(s) not shown", 10_000 - shown);
        assert!(
            cut.contains(&note),
            "{note} in:\n{}",
            &cut[cut.len() - 400..]
        );
        // The summary and the per-namespace counts come first, whole.
        assert!(cut.contains("**3334 to create, 6666 to update, 0 to delete, 0 unchanged**"));
        assert!(
            cut.contains("| `team-19` | 167 | 333 | 0 |"),
            "{}",
            &cut[..3000]
        );

        let whole = render(&plan, None, &heading(), usize::MAX);
        let rows = whole
            .lines()
            .filter(|l| l.starts_with("| create") || l.starts_with("| update"))
            .count();
        assert_eq!(rows, 10_000);
        assert!(!whole.contains("not shown"));
        assert_eq!(details_balance(&whole), (20, 20));
    }

    #[test]
    fn no_changes_is_one_line_and_the_id_follows_the_plan() {
        let empty = Plan {
            unchanged: 7,
            ..Plan::default()
        };
        let text = render(&empty, None, &heading(), DEFAULT_MAX_BYTES);
        assert!(
            text.contains("**No changes.** 0 to create, 0 to update, 0 to delete, 7 unchanged."),
            "{text}"
        );
        let one = big_plan(1);
        let id = |p: &Plan| super::super::plan_id(p, &heading());
        assert_eq!(id(&one), id(&big_plan(1)));
        assert_ne!(id(&one), id(&empty));
    }
}
