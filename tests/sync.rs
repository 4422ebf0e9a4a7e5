//! End-to-end: items written by the real credstash CLI into moto, synced by
//! the credsync binary into a real kube-apiserver.

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::{Put, StandIns};

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[tokio::test]
async fn credstash_cli_items_decrypt_byte_exact() {
    let env = StandIns::start(&["team-a", "team-b"]).await;
    let big: String = "0123456789abcdef-big-value\n".repeat(100 * 1024 / 27 + 1);
    let values: Vec<(&str, String)> = vec![
        (
            "team-a/app/unicode",
            "pässwörd-ключ-密码-🔑-unicode".to_owned(),
        ),
        (
            "team-a/app/multi-line",
            "line-one-xyz\nline-two-xyz\n\nend-of-lines".to_owned(),
        ),
        (
            "team-a/app/dollar",
            "$HOME-${PATH}-$(echo no)-dollars".to_owned(),
        ),
        ("team-a/app/empty", String::new()),
        ("team-b/big/blob", big.clone()),
    ];
    for (name, value) in &values {
        env.put(name, value);
    }
    // Several versions: the greatest in string order wins.
    env.put("team-a/app/rotated", "rotated-version-one");
    env.put("team-a/app/rotated", "rotated-version-two");
    env.put("team-a/app/rotated", "rotated-version-three");
    // A custom, non-padded version: "zz-custom" sorts after the padded ones.
    env.put_with(
        "team-b/custom/token",
        "custom-padded-version",
        Put::default(),
    );
    env.put_with(
        "team-b/custom/token",
        "custom-unpadded-latest",
        Put {
            version: Some("zz-custom"),
            ..Put::default()
        },
    );
    env.put_with(
        "team-b/custom/sha512",
        "digest-sha512-value",
        Put {
            digest: Some("SHA512"),
            ..Put::default()
        },
    );

    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("3 to create"), "{}", run.stdout);

    let app = env
        .secret_data("team-a", "app")
        .await
        .expect("team-a/app created");
    assert_eq!(app["UNICODE"], bytes(&values[0].1));
    assert_eq!(app["MULTI_LINE"], bytes(&values[1].1));
    assert_eq!(app["DOLLAR"], bytes(&values[2].1));
    assert_eq!(app["EMPTY"], Vec::<u8>::new());
    assert_eq!(app["ROTATED"], bytes("rotated-version-three"));
    let blob = env.secret_data("team-b", "big").await.unwrap();
    assert_eq!(blob["BLOB"], bytes(&big));
    assert!(blob["BLOB"].len() >= 100 * 1024);
    let custom = env.secret_data("team-b", "custom").await.unwrap();
    assert_eq!(custom["TOKEN"], bytes("custom-unpadded-latest"));
    assert_eq!(custom["SHA512"], bytes("digest-sha512-value"));

    let secret = env.secret("team-a", "app").await.unwrap();
    let meta = secret.metadata;
    // The API server records credsync as the manager of the fields it wrote.
    let managers: Vec<_> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    assert_eq!(managers, ["credsync"], "{:#?}", meta.managed_fields);
    assert_eq!(
        meta.labels.unwrap()["app.kubernetes.io/managed-by"],
        "credsync"
    );
    let annotations = meta.annotations.unwrap();
    assert_eq!(
        annotations["credsync.io/managed-keys"],
        "DOLLAR,EMPTY,MULTI_LINE,ROTATED,UNICODE"
    );
    assert!(annotations["credsync.io/last-sync"].ends_with('Z'));
    assert!(annotations["credsync.io/fingerprint"].starts_with("sha256:"));
}

#[tokio::test]
async fn second_reconcile_makes_no_kms_calls_and_no_writes() {
    let env = StandIns::start(&["apps"]).await;
    for i in 0..5 {
        env.put(
            &format!("apps/svc-{i}/password"),
            &format!("password-value-{i}"),
        );
    }
    // A long-lived reconciler, as `credsync run` builds it.
    let (reconciler, m) = env.reconciler().await;
    let reconciler = reconciler.with_table_index();
    let first = reconciler.sync(false).await.unwrap();
    assert_eq!(first.outcome.written.len(), 5);
    assert_eq!(m.kms_calls(), 5);
    let (kms, writes) = (m.kms_calls(), m.kubernetes_writes());
    env.mark_requests();

    let second = reconciler.sync(false).await.unwrap();
    assert!(!second.plan.has_changes());
    assert_eq!(second.plan.unchanged, 5);
    assert_eq!(m.kms_calls() - kms, 0, "KMS calls on an unchanged table");
    assert_eq!(
        m.kubernetes_writes() - writes,
        0,
        "Kubernetes writes on an unchanged table"
    );
    assert!(env.secret_writes().is_empty(), "the API server saw writes");

    // A changed item is decrypted again (one call), and only it.
    env.put("apps/svc-2/password", "password-value-2-rotated");
    let third = reconciler.sync(false).await.unwrap();
    assert_eq!(m.kms_calls() - kms, 1);
    assert_eq!(third.outcome.written.len(), 1);
}

#[tokio::test]
async fn one_changed_key_among_50_secrets_is_one_write_of_that_key() {
    let env = StandIns::start(&["fleet"]).await;
    for i in 0..50 {
        env.put(
            &format!("fleet/svc-{i:02}/user"),
            &format!("user-of-svc-{i:02}"),
        );
        env.put(
            &format!("fleet/svc-{i:02}/password"),
            &format!("password-of-svc-{i:02}"),
        );
    }
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("50 to create"), "{}", run.stdout);

    env.put("fleet/svc-17/password", "password-of-svc-17-rotated");
    env.mark_requests();
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("0 to create, 1 to update, 0 to delete, 49 unchanged"),
        "{}",
        run.stdout
    );

    let writes = env.secret_writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let write = &writes[0];
    assert_eq!(
        (write.namespace(), write.name()),
        (Some("fleet"), Some("svc-17"))
    );
    let body = write
        .request_object
        .as_ref()
        .expect("the audit log holds the body");
    let data = body["data"].as_object().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["PASSWORD"],
        "the write carries only the changed key"
    );
    let body_keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(body_keys, ["data", "metadata"]);
    let live = env.secret_data("fleet", "svc-17").await.unwrap();
    assert_eq!(live["PASSWORD"], b"password-of-svc-17-rotated");
    assert_eq!(live["USER"], b"user-of-svc-17");

    // The write left an Event on the Secret naming the key, never its value.
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.kube().await, "fleet");
    let on_svc_17: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("svc-17")
                && e.reason.as_deref() == Some("Synced")
        })
        .collect();
    assert_eq!(on_svc_17.len(), 1, "{on_svc_17:#?}");
    let event = &on_svc_17[0];
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(event.reporting_controller.as_deref(), Some("credsync"));
    let note = event.note.as_deref().unwrap_or_default();
    assert!(note.contains("PASSWORD"), "{note}");
    assert!(!note.contains("rotated"), "{note}");
}

#[tokio::test]
async fn bad_names_are_skipped_with_reasons_and_the_rest_syncs() {
    let env = StandIns::start(&["good"]).await;
    env.put("good/app/ok-key", "valid-name-value");
    env.put("good/app", "two-segment-value");
    env.put("good/app/key/extra", "four-segment-value");
    env.put("Bad_NS/app/key", "bad-namespace-value");
    env.put("good/Bad_Name/key", "bad-secret-name-value");
    env.put("good/app/bad key!", "bad-key-chars-value");

    let run = env.credsync(&["sync"]);
    assert_eq!(
        run.code, 0,
        "skips are warnings: {}\n{}",
        run.stdout, run.stderr
    );
    for (name, reason) in [
        ("good/app ", "2 segment(s)"),
        ("good/app/key/extra", "4 segment(s)"),
        (
            "Bad_NS/app/key",
            "namespace 'Bad_NS' is not a DNS-1123 label",
        ),
        (
            "good/Bad_Name/key",
            "secret name 'Bad_Name' is not a DNS-1123 subdomain",
        ),
        (
            "good/app/bad key!",
            "key 'BAD KEY!' is not a valid Secret data key",
        ),
    ] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains("skip") && l.contains(name.trim_end()) && l.contains(reason));
        assert!(
            line.is_some(),
            "no skip line for {name} with {reason}:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("5 skipped"), "{}", run.stdout);
    let data = env.secret_data("good", "app").await.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["OK_KEY"]);
}

#[tokio::test]
async fn normalized_name_conflict_keeps_the_live_value() {
    let env = StandIns::start(&["ns"]).await;
    env.create_secret("ns", "app", "Opaque", &[("DB_PASS", "live-db-pass-value")])
        .await;
    env.put("ns/app/db.pass", "table-db-pass-lower");
    env.put("ns/app/DB_PASS", "table-db-pass-upper");
    env.put("ns/app/user", "table-user-value");

    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("conflict"), "{}", run.stdout);
    assert!(
        run.stdout.contains("ns/app/db.pass@") && run.stdout.contains("ns/app/DB_PASS@"),
        "{}",
        run.stdout
    );
    let data = env.secret_data("ns", "app").await.unwrap();
    assert_eq!(data["DB_PASS"], b"live-db-pass-value");
    assert_eq!(data["USER"], b"table-user-value");

    // The conflict is reported on every run until the table resolves it.
    let run = env.credsync(&["plan", "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["summary"]["conflicts"], 1);
    env.credstash(&["delete", "ns/app/DB_PASS"]);
    let run = env.credsync(&["sync"]);
    assert!(!run.stdout.contains("conflict"), "{}", run.stdout);
    assert_eq!(
        env.secret_data("ns", "app").await.unwrap()["DB_PASS"],
        b"table-db-pass-lower"
    );
}

#[tokio::test]
async fn undecryptable_items_are_reported_and_keep_live_values() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/tampered", "tampered-original-value");
    env.put("ns/app/context", "context-original-value");
    env.put("ns/app/refused", "refused-original-value");
    env.put("ns/app/fine", "fine-original-value");
    assert_eq!(env.credsync(&["sync"]).code, 0);

    // Tampered contents: flip a byte of the ciphertext.
    env.put("ns/app/tampered", "tampered-new-value");
    let ddb = env.dynamodb().await;
    let item = ddb
        .get_item()
        .table_name(&env.table)
        .key(
            "name",
            aws_sdk_dynamodb::types::AttributeValue::S("ns/app/tampered".into()),
        )
        .key(
            "version",
            aws_sdk_dynamodb::types::AttributeValue::S("0000000000000000002".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut contents = b64.decode(item["contents"].as_s().unwrap()).unwrap();
    contents[0] ^= 0x55;
    let mut tampered = item.clone();
    tampered.insert(
        "contents".into(),
        aws_sdk_dynamodb::types::AttributeValue::S(b64.encode(contents)),
    );
    ddb.put_item()
        .table_name(&env.table)
        .set_item(Some(tampered))
        .send()
        .await
        .unwrap();

    // Written with an encryption context credsync is not given.
    env.put_with(
        "ns/app/context",
        "context-new-value",
        Put {
            context: &[("team", "payments")],
            ..Put::default()
        },
    );

    // Wrapped by a key KMS will not use here: made in another region, copied in.
    env.create_kms_key("alias/credstash", "eu-west-1").await;
    let setup = env.credstash_in("eu-west-1", "other-region", &["setup"]);
    assert!(setup.status.success());
    let put = env.credstash_in(
        "eu-west-1",
        "other-region",
        &[
            "put",
            "-v",
            "0000000000000000002",
            "ns/app/refused",
            "refused-new-value",
        ],
    );
    support::assert_ok(&put, "put");
    let eu = aws_sdk_dynamodb::Client::new(&env.sdk_config("eu-west-1").await);
    let copied = eu
        .scan()
        .table_name("other-region")
        .send()
        .await
        .unwrap()
        .items
        .unwrap()
        .remove(0);
    ddb.put_item()
        .table_name(&env.table)
        .set_item(Some(copied))
        .send()
        .await
        .unwrap();

    env.put("ns/app/fine", "fine-new-value");
    env.put("ns/other/unaffected", "unaffected-new-value");

    let run = env.credsync(&["sync"]);
    assert_eq!(
        run.code, 1,
        "item failures exit 1:\n{}\n{}",
        run.stdout, run.stderr
    );
    for (item, reason) in [
        ("ns/app/tampered@0000000000000000002", "HMAC mismatch"),
        (
            "ns/app/context@0000000000000000002",
            "wrong encryption context",
        ),
        (
            "ns/app/refused@0000000000000000002",
            "KMS refused the data key",
        ),
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains(item) && l.contains(reason)),
            "{item} not reported with {reason}:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("Plan:"), "the plan still prints");
    let data = env.secret_data("ns", "app").await.unwrap();
    assert_eq!(data["TAMPERED"], b"tampered-original-value");
    assert_eq!(data["CONTEXT"], b"context-original-value");
    assert_eq!(data["REFUSED"], b"refused-original-value");
    assert_eq!(data["FINE"], b"fine-new-value");
    assert_eq!(
        env.secret_data("ns", "other").await.unwrap()["UNAFFECTED"],
        b"unaffected-new-value"
    );

    // With the right context the context item syncs; the others still fail.
    let run = env.credsync(&["sync", "--context", "team=payments"]);
    assert_eq!(run.code, 1);
    let data = env.secret_data("ns", "app").await.unwrap();
    assert_eq!(data["CONTEXT"], b"context-new-value");
}

#[tokio::test]
async fn oversized_secret_is_reported_and_not_written() {
    let env = StandIns::start(&["ns"]).await;
    // Five items of 250 KiB: each fits DynamoDB, together they pass 1 MiB.
    for i in 0..5 {
        env.put(
            &format!("ns/huge/part-{i}"),
            &format!("{i}").repeat(250 * 1024),
        );
    }
    env.put("ns/small/key", "small-secret-value");
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("ns/huge") && run.stdout.contains("1 MiB"),
        "{}",
        run.stdout
    );
    assert!(env.secret("ns", "huge").await.is_none());
    assert_eq!(
        env.secret_data("ns", "small").await.unwrap()["KEY"],
        b"small-secret-value"
    );
}

#[tokio::test]
async fn table_level_errors_are_one_clear_line_and_write_nothing() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/key", "never-written-value");

    let run = env.credsync(&["sync", "--table", "no-such-table"]);
    assert_eq!(run.code, 1);
    let line = run.error_line();
    assert!(
        line.contains("'no-such-table'") && line.contains("us-east-1"),
        "{line}"
    );
    assert!(line.contains("table not found"), "{line}");

    let run = env.credsync_env(&["sync"], &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")]);
    assert_eq!(run.code, 1);
    let line = run.error_line();
    assert!(
        line.contains("'credential-store'") && line.contains("endpoint unreachable"),
        "{line}"
    );

    // moto checks credentials when told to: a second moto with auth enforced.
    let (mut strict, port) = support::start_moto(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = env.credsync_env(&["sync"], &[("AWS_ENDPOINT_URL", &endpoint)]);
    let _ = strict.kill();
    let _ = strict.wait();
    assert_eq!(run.code, 1);
    let line = run.error_line();
    assert!(
        line.contains("'credential-store'") && line.contains("access denied"),
        "{line}"
    );

    assert!(env.secret_writes().is_empty(), "nothing may be written");
    assert!(env.secret("ns", "app").await.is_none());
}

#[tokio::test]
async fn other_secret_types_and_missing_namespaces_are_reported_untouched() {
    let env = StandIns::start(&["ns"]).await;
    env.create_secret(
        "ns",
        "tls",
        "kubernetes.io/tls",
        &[("tls.crt", "crt-data"), ("tls.key", "key-data")],
    )
    .await;
    env.put("ns/tls/extra", "extra-value-for-tls");
    env.put("ghost/app/key", "ghost-namespace-value");
    env.put("ns/fine/key", "fine-value-here");

    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("ns/tls") && l.contains("kubernetes.io/tls")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("ghost/app/key") && l.contains("namespace 'ghost' does not exist")),
        "{}",
        run.stdout
    );
    let tls = env.secret("ns", "tls").await.unwrap();
    assert_eq!(
        tls.data.unwrap().keys().collect::<Vec<_>>(),
        ["tls.crt", "tls.key"]
    );
    assert!(
        tls.metadata
            .labels
            .is_none_or(|l| !l.contains_key("app.kubernetes.io/managed-by"))
    );
    assert!(env.secret("ns", "fine").await.is_some());
}

#[tokio::test]
async fn concurrent_edit_between_read_and_write_is_not_lost() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/token", "token-value-one");
    assert_eq!(env.credsync(&["sync"]).code, 0);
    env.put("ns/app/token", "token-value-two");
    // Another writer edits the Secret just before credsync's write lands.
    env.faults().await.edit_before_next_write_json(json!({"namespace": "ns", "name": "app", "merge_patch": {"data": {"HAND_ADDED": "aGFuZA=="}}}));
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let data = env.secret_data("ns", "app").await.unwrap();
    assert_eq!(data["HAND_ADDED"], b"hand", "the concurrent edit survived");
    assert_eq!(
        data["TOKEN"], b"token-value-two",
        "credsync's change landed"
    );
    let patches = env
        .secret_writes()
        .into_iter()
        .filter(|w| w.verb == "patch")
        .count();
    assert!(patches >= 2, "the stale write was refused and retried");
}

#[tokio::test]
async fn adoption_pruning_and_deletion_follow_ownership() {
    let env = StandIns::start(&["ns"]).await;
    env.create_secret(
        "ns",
        "shared",
        "Opaque",
        &[("THEIRS", "not-ours-value"), ("A", "stale-a")],
    )
    .await;
    env.put("ns/shared/a", "table-a-value");
    env.put("ns/owned/x", "owned-x-value");
    env.put("ns/owned/y", "owned-y-value");
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("ns/shared (adopt)"), "{}", run.stdout);
    let shared = env.secret_data("ns", "shared").await.unwrap();
    assert_eq!(
        shared,
        BTreeMap::from([
            ("A".into(), bytes("table-a-value")),
            ("THEIRS".into(), bytes("not-ours-value"))
        ])
    );

    // A removed key goes only if credsync owns it; an emptied Secret it created goes too.
    env.credstash(&["delete", "ns/owned/y"]);
    env.credstash(&["delete", "ns/shared/a"]);
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        env.secret_data("ns", "owned")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["X"]
    );
    assert_eq!(
        env.secret_data("ns", "shared")
            .await
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["THEIRS"]
    );
    env.credstash(&["delete", "ns/owned/x"]);
    let run = env.credsync(&["sync"]);
    assert!(run.stdout.contains("- delete  ns/owned"), "{}", run.stdout);
    assert!(env.secret("ns", "owned").await.is_none());
    assert!(
        env.secret("ns", "shared").await.is_some(),
        "an adopted Secret is never deleted"
    );
}

#[tokio::test]
async fn dry_run_writes_nothing_and_plan_exit_codes_follow_changes() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/key", "dry-run-value");
    let run = env.credsync(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    let run = env.credsync(&["plan"]);
    assert_eq!(run.code, 0);
    let run = env.credsync(&["sync", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("would write: 1 Secret"),
        "{}",
        run.stdout
    );
    assert!(
        env.secret("ns", "app").await.is_none(),
        "dry run stored nothing"
    );
    let dry_creates = env
        .credsync_requests()
        .into_iter()
        .filter(|e| e.resource() == "secrets" && e.verb == "create" && e.dry_run())
        .count();
    assert_eq!(dry_creates, 1, "the server saw one dry-run create");
    assert_eq!(env.credsync(&["sync"]).code, 0);
    assert_eq!(env.credsync(&["plan", "--detailed-exitcode"]).code, 0);
}

#[tokio::test]
async fn an_include_list_confines_reads_and_writes_to_those_namespaces() {
    let env = StandIns::start(&["ns-a", "ns-b"]).await;
    env.put("ns-a/app/key", "included-namespace-value");
    env.put("ns-b/app/key", "excluded-namespace-value");
    let run = env.credsync(&["sync", "--namespace-include", "ns-a"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("namespace is not included"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.secret_data("ns-a", "app").await.unwrap()["KEY"],
        b"included-namespace-value"
    );
    assert!(env.secret("ns-b", "app").await.is_none());
    // A second run reads the managed Secrets of ns-a only, and finds them in step.
    let run = env.credsync(&["plan", "--namespace-include", "ns-a", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[tokio::test]
async fn a_first_sync_of_many_secrets_lists_names_once_instead_of_a_get_each() {
    let env = StandIns::start(&["bulk"]).await;
    env.put("bulk/seed/key", "bulk-seed-value");
    let names: Vec<String> = (0..100).map(|i| format!("bulk/app-{i:03}/key")).collect();
    env.copy_item("bulk/seed/key", &names).await;
    // Two exist already, made by hand: adopted, their own keys kept.
    for name in ["app-007", "app-042"] {
        env.create_secret("bulk", name, "Opaque", &[("OTHER", "hand-made")])
            .await;
    }
    env.mark_requests();
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("99 to create, 2 to update"),
        "{}",
        run.stdout
    );
    let gets = env
        .credsync_requests()
        .iter()
        .filter(|e| e.resource() == "secrets" && e.verb == "get")
        .count();
    assert_eq!(gets, 2, "a GET only for the Secrets that exist");
    let adopted = env.secret_data("bulk", "app-042").await.unwrap();
    assert_eq!(adopted["OTHER"], b"hand-made");
    assert_eq!(adopted["KEY"], b"bulk-seed-value");
    assert!(env.secret_data("bulk", "app-099").await.is_some());
}

/// Eight Secrets of one item each and a ninth, `zz-held`, whose Decrypt a
/// relay holds back (one KMS call at a time, in Secret order: the ninth
/// call is its item). Returns the Secrets that exist `grace` after the
/// hold began (as soon as all eight do, without `grace`), whether `zz-held`
/// did, and the finished run.
async fn written_while_the_last_item_is_held(
    env: &std::sync::Arc<StandIns>,
    flags: &[&str],
    grace: Option<std::time::Duration>,
) -> (Vec<(String, BTreeMap<String, Vec<u8>>)>, bool, support::Run) {
    let early: Vec<String> = (1..=8).map(|i| format!("app-{i}")).collect();
    for name in &early {
        env.put(
            &format!("team-a/{name}/token"),
            &format!("early-{name}-value"),
        );
    }
    env.put("team-a/zz-held/token", "held-token-value");
    let hold = support::kms_hold::KmsHold::start(&env.aws_endpoint, 9);
    let run = {
        let (env, kms) = (env.clone(), hold.url.clone());
        let mut args = vec!["--kms-concurrency".to_owned(), "1".to_owned()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.push("sync".to_owned());
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.credsync_env(&args, &[("AWS_ENDPOINT_URL_KMS", &kms)])
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !hold.holding() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ninth Decrypt never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let wait_until = match grace {
        Some(grace) => std::time::Instant::now() + grace,
        None => deadline,
    };
    let mut written = Vec::new();
    loop {
        written.clear();
        for name in &early {
            if let Some(data) = env.secret_data("team-a", name).await {
                written.push((name.clone(), data));
            }
        }
        let enough = grace.is_none() && written.len() == early.len();
        if enough || std::time::Instant::now() > wait_until {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let held_meanwhile = env.secret_data("team-a", "zz-held").await.is_some();
    hold.release();
    let run = run.await.unwrap();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    (written, held_meanwhile, run)
}

/// Without a snapshot to commit first, Secrets are written as soon as
/// their items are decrypted (in rounds of the apply's 8 writes): the
/// writes of a cold sync hide behind the KMS calls of the other Secrets
/// instead of waiting for the last one.
#[tokio::test]
async fn secrets_are_written_while_another_is_still_with_kms() {
    let env = StandIns::start(&["team-a"]).await;
    let (written, held_meanwhile, run) = written_while_the_last_item_is_held(&env, &[], None).await;
    assert_eq!(
        written.len(),
        8,
        "every Secret whose item was decrypted is written while the last item is with KMS"
    );
    for (name, data) in &written {
        assert_eq!(data["TOKEN"], bytes(&format!("early-{name}-value")));
    }
    assert!(
        !held_meanwhile,
        "zz-held written before its value was decrypted"
    );
    let held = env.secret_data("team-a", "zz-held").await.unwrap();
    assert_eq!(held["TOKEN"], bytes("held-token-value"));
    // Each is reported, and written, once.
    assert!(run.stdout.contains("9 to create"), "{}", run.stdout);
    let writes: Vec<String> = env
        .secret_writes()
        .iter()
        .map(|w| format!("{} {}", w.verb, w.request_uri))
        .collect();
    assert_eq!(writes.len(), 9, "{writes:?}");
}

/// With `--rollouts`, nothing is written before the whole plan: a sync cut
/// short after an early write would leave the Secret written and its
/// workloads never restarted.
#[tokio::test]
async fn with_rollouts_nothing_is_written_before_the_last_item_is_decrypted() {
    let env = StandIns::start(&["team-a"]).await;
    let (written, held_meanwhile, run) = written_while_the_last_item_is_held(
        &env,
        &["--rollouts"],
        Some(std::time::Duration::from_secs(2)),
    )
    .await;
    let names: Vec<&String> = written.iter().map(|(name, _)| name).collect();
    assert!(names.is_empty() && !held_meanwhile, "{names:?}");
    assert!(run.stdout.contains("9 to create"), "{}", run.stdout);
    assert_eq!(env.secret_writes().len(), 9);
}
