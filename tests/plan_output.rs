//! The plan formats as users and programs read them: JSON against its
//! published schema, and no value in any format or log, even verbose.

mod support;

use support::{StandIns, validate_against_schema};

/// A table that exercises every section of the plan.
async fn busy_table() -> std::sync::Arc<StandIns> {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/user", "schema-user-value");
    env.put("ns/app/password", "schema-password-value");
    env.put("ns/old/key", "schema-old-value");
    assert_eq!(env.credsync(&["sync"]).code, 0);
    env.credstash(&["delete", "ns/old/key"]);
    env.put("ns/app/password", "schema-password-rotated");
    env.put("ns/new/key", "schema-new-value");
    env.put("ns/new/Key", "schema-new-conflict");
    env.put("ns/new/other", "schema-new-other");
    env.put("not/enough", "schema-skipped-value");
    env.put_with(
        "ns/app/ctx",
        "schema-context-value",
        support::Put {
            context: &[("k", "v")],
            ..Default::default()
        },
    );
    env
}

#[tokio::test]
async fn json_plan_and_sync_output_match_the_published_schema() {
    let env = busy_table().await;
    let run = env.credsync(&["plan", "--format", "json"]);
    assert_eq!(run.code, 1, "a failed item exits 1: {}", run.stderr);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    for section in ["changes", "skipped", "conflicts", "failed"] {
        assert!(
            !plan[section].as_array().unwrap().is_empty(),
            "{section} empty: {plan:#}"
        );
    }
    let actions: Vec<&str> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["update", "create", "delete"], "{plan:#}");
    validate_against_schema(&run.stdout);

    let run = env.credsync(&["sync", "--format", "json"]);
    let synced: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(synced["result"]["written"].as_array().unwrap().len(), 3);
    validate_against_schema(&run.stdout);

    // The validator does reject a document that breaks the schema.
    let broken = run
        .stdout
        .replacen("\"schema\": \"credsync.plan/v1\"", "\"schema\": \"v0\"", 1);
    let result = std::panic::catch_unwind(|| validate_against_schema(&broken));
    assert!(result.is_err(), "a wrong schema id must fail validation");
}

#[tokio::test]
async fn no_format_or_log_level_ever_prints_a_value() {
    let env = busy_table().await;
    let mut everything = String::new();
    for format in ["text", "markdown", "json"] {
        for log in ["text", "json"] {
            for command in ["plan", "sync"] {
                let args = [
                    command,
                    "--format",
                    format,
                    "--log-format",
                    log,
                    "--verbose",
                    "--dry-run",
                ];
                let args = if command == "plan" {
                    &args[..6]
                } else {
                    &args[..]
                };
                let run = env.credsync(args);
                assert!(
                    run.stdout.len() > 100,
                    "{args:?} printed too little: {}",
                    run.stdout
                );
                everything.push_str(&run.stdout);
                everything.push_str(&run.stderr);
            }
        }
    }
    assert!(
        everything.contains("DEBUG") || everything.contains("\"level\":\"DEBUG\""),
        "verbose logs were captured"
    );
    // Every captured output of this test, and of every other test through
    // the same harness, is checked for the seeded values and their base64.
    env.assert_no_value_in(&everything, "all formats and log levels");
    let captured = env.captured.lock().unwrap().join("\n");
    env.assert_no_value_in(&captured, "everything captured");
}

#[tokio::test]
async fn a_pull_request_plan_is_cut_to_size_and_github_gets_its_summary_and_outputs() {
    let env = StandIns::start(&["ns", "web"]).await;
    for i in 0..30 {
        let ns = if i % 2 == 0 { "ns" } else { "web" };
        env.put(
            &format!("{ns}/app-{i:02}/password"),
            &format!("pr-plan-value-{i}"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("plan.md");
    let summary = dir.path().join("step-summary.md");
    let outputs = dir.path().join("outputs.txt");
    let whole_arg = whole.to_str().unwrap();
    let run = env.credsync_env(
        &[
            "plan",
            "--format",
            "markdown",
            "--max-bytes",
            "2000",
            "--output",
            whole_arg,
        ],
        &[
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
            ("GITHUB_OUTPUT", outputs.to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.len() <= 2000,
        "{} bytes:\n{}",
        run.stdout.len(),
        run.stdout
    );
    assert!(
        run.stdout
            .starts_with("<!-- credsync-plan cluster=\"default\" -->"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("more change(s) not shown"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches("<details>").count(),
        run.stdout.matches("</details>").count()
    );
    // The whole plan, in the file: every Secret.
    let full = std::fs::read_to_string(&whole).unwrap();
    for i in 0..30 {
        assert!(
            full.contains(&format!("/app-{i:02}`")),
            "app-{i:02} missing from the file"
        );
    }
    assert!(!full.contains("not shown"));
    // The step summary gets the plan as printed; the outputs the counts and the id.
    assert_eq!(
        std::fs::read_to_string(&summary).unwrap(),
        format!("{}\n", run.stdout)
    );
    let outputs = std::fs::read_to_string(&outputs).unwrap();
    assert!(outputs.contains("has_changes=true\n"), "{outputs}");
    assert!(
        outputs.contains("create=30\n") && outputs.contains("update=0\n"),
        "{outputs}"
    );
    let id = outputs
        .lines()
        .find_map(|l| l.strip_prefix("plan_id="))
        .expect("plan_id");
    assert_eq!(id.len(), 12);
    assert!(
        run.stdout.contains(&format!("plan id `{id}`")),
        "{}",
        run.stdout
    );

    // In step: one line, and has_changes=false.
    assert_eq!(env.credsync(&["sync"]).code, 0);
    let outputs2 = dir.path().join("outputs2.txt");
    let run = env.credsync_env(
        &["plan", "--format", "markdown"],
        &[("GITHUB_OUTPUT", outputs2.to_str().unwrap())],
    );
    assert!(run.stdout.contains("**No changes.**"), "{}", run.stdout);
    assert!(
        std::fs::read_to_string(&outputs2)
            .unwrap()
            .contains("has_changes=false\n")
    );
}
