//! Migrating from Kubestash-V2: a cluster as Kubestash-V2 leaves it (its
//! annotations, keys spelt by its code, keys merged in and never removed),
//! read under both key mappings, then taken over.

mod support;

use serde_json::json;
use support::StandIns;

/// A Secret as Kubestash-V2 writes it: its two annotations, no label, and
/// the keys as given (its code upper-cases and turns `-` into `_`, `.` kept).
async fn kubestash_v2_secret(env: &StandIns, namespace: &str, name: &str, data: &[(&str, &str)]) {
    env.create_secret(namespace, name, "Opaque", data).await;
    let marks = json!({"metadata": {"annotations": {
        "managedBy": "kubestashV2",
        "changedAt": "28/Nov/2026 10:00:00 IST",
    }}});
    env.patch_secret(namespace, name, marks).await;
}

fn annotation(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn a_cluster_kubestash_v2_fed_migrates_without_surprises() {
    let env = StandIns::start(&["team-a"]).await;
    env.put("team-a/db/db.password", "kv2-db-password-value");
    env.put("team-a/db/db-user", "kv2-db-user-value");
    env.put("team-a/api/api.token", "kv2-api-token-value");
    // What Kubestash-V2 left: its spellings, and a key the table dropped long ago.
    kubestash_v2_secret(
        &env,
        "team-a",
        "db",
        &[
            ("DB.PASSWORD", "kv2-db-password-value"),
            ("DB_USER", "kv2-db-user-value"),
            ("LEGACY_KEY", "kv2-legacy-value"),
        ],
    )
    .await;
    kubestash_v2_secret(
        &env,
        "team-a",
        "api",
        &[("API.TOKEN", "kv2-api-token-value")],
    )
    .await;

    // Under credsync's mapping the plan warns about every dotted key, in every format.
    let plan = env.credsync(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    for (key, existing) in [("DB_PASSWORD", "DB.PASSWORD"), ("API_TOKEN", "API.TOKEN")] {
        let warning = format!("{key} would be added beside {existing}");
        assert!(
            plan.stdout.contains(&warning),
            "{warning}:\n{}",
            plan.stdout
        );
    }
    let markdown = env.credsync(&["plan", "--format", "markdown"]);
    assert!(
        markdown
            .stdout
            .contains("| `team-a/db` | `DB_PASSWORD` | `DB.PASSWORD` |"),
        "{}",
        markdown.stdout
    );
    let json_plan = env.credsync(&["plan", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json_plan.stdout).unwrap();
    let respelled: Vec<(String, String)> = doc["respelled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["existing"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        respelled,
        vec![
            ("API_TOKEN".to_owned(), "API.TOKEN".to_owned()),
            ("DB_PASSWORD".to_owned(), "DB.PASSWORD".to_owned())
        ]
    );
    assert_eq!(doc["summary"]["kubestash_v2"], 2);

    // Under Kubestash-V2's mapping the first sync writes nothing at all,
    // and the plan says what a take-over would do.
    let kv2 = ["--key-mapping", "kubestash-v2"];
    env.mark_requests();
    let run = env.credsync(&[&kv2[..], &["sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.secret_writes().is_empty(), "{:#?}", env.secret_writes());
    assert!(
        run.stdout
            .contains("--adopt-kubestash-v2 would make DB.PASSWORD, DB_USER credsync's"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("would be added beside"),
        "{}",
        run.stdout
    );

    // A rotation is merged in as Kubestash-V2 did: metadata untouched, nothing removed.
    env.put("team-a/db/db.password", "kv2-db-password-rotated");
    let run = env.credsync(&[&kv2[..], &["sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("team-a/db (merge)"), "{}", run.stdout);
    let db = env.secret("team-a", "db").await.unwrap();
    let data = env.secret_data("team-a", "db").await.unwrap();
    assert_eq!(data["DB.PASSWORD"], b"kv2-db-password-rotated");
    assert_eq!(data["LEGACY_KEY"], b"kv2-legacy-value");
    assert!(!data.contains_key("DB_PASSWORD"));
    assert_eq!(annotation(&db, "managedBy").as_deref(), Some("kubestashV2"));
    assert!(
        db.metadata.labels.unwrap_or_default().is_empty(),
        "not adopted"
    );

    // Taken over: credsync's marks replace Kubestash-V2's; the table's keys are owned.
    let run = env.credsync(&[&kv2[..], &["--adopt-kubestash-v2", "sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("taken over from Kubestash-V2"),
        "{}",
        run.stdout
    );
    let db = env.secret("team-a", "db").await.unwrap();
    assert_eq!(annotation(&db, "managedBy"), None);
    assert_eq!(annotation(&db, "changedAt"), None);
    assert_eq!(
        annotation(&db, "credsync.io/managed-keys").as_deref(),
        Some("DB.PASSWORD,DB_USER")
    );
    assert_eq!(
        db.metadata
            .labels
            .unwrap_or_default()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("credsync")
    );

    // A key deleted from the table is now removed; the key it never named stays.
    let out = env.credstash(&["delete", "team-a/db/db-user"]);
    support::assert_ok(&out, "credstash delete team-a/db/db-user");
    let run = env.credsync(&[&kv2[..], &["sync"]].concat());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let data = env.secret_data("team-a", "db").await.unwrap();
    assert!(!data.contains_key("DB_USER"), "pruned after the take-over");
    assert_eq!(data["LEGACY_KEY"], b"kv2-legacy-value");
    assert_eq!(data["DB.PASSWORD"], b"kv2-db-password-rotated");
    env.assert_no_value_in(&format!("{}{}", run.stdout, run.stderr), "the sync output");
}

#[tokio::test]
async fn the_kubestash_v2_mapping_skips_dotted_secret_names_as_kubestash_v2_did() {
    let env = StandIns::start(&["team-a"]).await;
    env.put("team-a/db.creds/password", "kv2-dotted-secret-value");
    let run = env.credsync(&["--key-mapping", "kubestash-v2", "plan"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("skipped by the kubestash-v2 mapping"),
        "{}",
        run.stdout
    );
    // credsync's own mapping writes it.
    let run = env.credsync(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stdout.contains("team-a/db.creds"), "{}", run.stdout);
}
