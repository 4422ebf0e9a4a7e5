//! The plan formats as users and programs read them: JSON against its
//! published schema, and no value in any format or log, even verbose.

mod support;

use std::process::Command;

use support::{StandIns, venv_tool};

/// Validates `document` against the schema shipped in src/render with the
/// reference Python implementation of JSON Schema.
fn validate_against_schema(document: &str) {
    let schema = support::project_dir().join("src/render/plan.schema.json");
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.Draft202012Validator(schema).validate(json.loads(sys.stdin.read()))",
        ])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(document.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "schema validation failed:\n{}\n{document}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
