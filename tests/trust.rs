//! Attacks on the snapshot repository, replayed on the real API server with
//! the real sops, ssh-keygen and git: someone with push access (who has the
//! public age recipient, as every file names it) forges files. Nothing they
//! write reaches a Secret: not through a sync, a restart, a rollback, or a
//! path that disagrees with the file's metadata.

mod support;

use support::daemon::{eventually, reconciled};
use support::path_str;
use support::snap::Snap;

/// `kms_decrypt=N` of a one-shot command's summary line.
fn kms_calls(run: &support::Run) -> u32 {
    run.stderr
        .lines()
        .find_map(|l| l.split("kms_decrypt=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Writes `test/NS/NAME.yaml` as an attacker would: a Secret manifest with
/// the live file's labels and annotations (they are in clear; `sources`
/// rewrites the `credsync.io/sources` one), `data` set to `data`, `metadata`
/// naming `says` (namespace, name), sealed by the real sops for the public
/// recipient, and committed under credsync's name (anyone can set it).
fn forge(
    s: &Snap,
    file: &str,
    says: (&str, &str),
    data: &[(&str, &str)],
    sources: fn(&str) -> String,
) {
    use base64::Engine;
    let path = s.repo.join("test").join(file);
    let live: serde_yaml::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_yaml::from_str(&t).ok())
        .unwrap_or(serde_yaml::Value::Null);
    let mut metadata = serde_yaml::Mapping::new();
    metadata.insert("name".into(), says.1.into());
    metadata.insert("namespace".into(), says.0.into());
    for part in ["labels", "annotations"] {
        if let Some(v) = live.get("metadata").and_then(|m| m.get(part)) {
            metadata.insert(part.into(), v.clone());
        }
    }
    if let Some(serde_yaml::Value::Mapping(annotations)) = metadata.get_mut("annotations") {
        let key = serde_yaml::Value::from("credsync.io/sources");
        if let Some(text) = annotations.get(&key).and_then(|v| v.as_str()) {
            let rewritten = sources(text);
            annotations.insert(key, rewritten.into());
        }
    }
    let mut values = serde_yaml::Mapping::new();
    for (key, value) in data {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        values.insert((*key).into(), encoded.into());
    }
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "Secret".into());
    doc.insert("metadata".into(), metadata.into());
    doc.insert("type".into(), "Opaque".into());
    doc.insert("data".into(), values.into());
    let sealed =
        s.seal_with_sops(&serde_yaml::to_string(&serde_yaml::Value::Mapping(doc)).unwrap());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &sealed).unwrap();
    s.git(&["add", "-A"]);
    s.git(&[
        "-c",
        "user.name=credsync",
        "-c",
        "user.email=credsync@localhost",
        "commit",
        "-qm",
        "credsync: 0 created, 1 updated, 0 deleted",
    ]);
}

fn blob(s: &Snap, rev: &str, path: &str) -> String {
    s.git(&["rev-parse", &format!("{rev}:{path}")])
        .trim()
        .to_owned()
}

/// `git verify-commit` with an allowed-signers file holding credsync's key:
/// what a reviewer runs, with no credsync at hand.
fn git_verifies(s: &Snap, rev: &str) -> bool {
    let allowed = s.env.write_file(
        "allowed_signers",
        &format!(
            "credsync {}\n",
            std::fs::read_to_string(s.trusted_key()).unwrap().trim()
        ),
    );
    std::process::Command::new("git")
        .arg("-C")
        .arg(&s.repo)
        .args([
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("gpg.ssh.allowedSignersFile={}", path_str(&allowed)),
            "verify-commit",
            rev,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn a_forged_file_at_the_live_version_reaches_no_secret() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/token", "trust-real-token");
    s.env.put("ns/app/user", "trust-real-user");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let signed = s.head();
    assert!(git_verifies(&s, &signed), "git checks credsync's signature");
    let own = blob(&s, "HEAD", "test/ns/app.yaml");

    // The attacker keeps `credsync.io/sources` (TOKEN and USER at their live
    // versions) and seals their own TOKEN, as if pulled from the remote.
    let forged_value = "trust-forged-token";
    let forge_token = |sources: fn(&str) -> String| {
        forge(
            &s,
            "ns/app.yaml",
            ("ns", "app"),
            &[("TOKEN", forged_value), ("USER", "trust-real-user")],
            sources,
        )
    };
    forge_token(str::to_owned);
    let forging = s.head();
    assert!(!git_verifies(&s, &forging), "a forged commit is not signed");

    // 1. Rollback to it: refused, naming the file and why, nothing written.
    s.env.mark_requests();
    let run = s.run(&["rollback", "HEAD", "--secret", "ns/app"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().contains("test/ns/app.yaml: key TOKEN:")
            && run.error_line().contains("not the one ns/app/token@"),
        "{}",
        run.stderr
    );
    assert!(s.env.secret_writes().is_empty(), "no Secret write");

    // 2. A new sync process (a warm start from HEAD): the forged file is
    //    not read, its items cost a KMS call, and the commit puts
    //    credsync's own file back.
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        kms_calls(&run),
        2,
        "both items of the forged file decrypted: {}",
        run.stderr
    );
    assert!(run.stderr.contains("untrusted=1"), "{}", run.stderr);
    let data = s.env.secret_data("ns", "app").await.unwrap();
    assert_eq!(data["TOKEN"], b"trust-real-token");
    let message = s.git(&["log", "-1", "--format=%B"]);
    assert!(
        message.contains("Restored 1 file(s) changed by commits credsync did not sign")
            && message.contains("restored test/ns/app.yaml"),
        "{message}"
    );
    assert_eq!(blob(&s, "HEAD", "test/ns/app.yaml"), own);
    assert!(git_verifies(&s, "HEAD"));

    // 3. A restart of `run` after another forged push: the same.
    forge_token(str::to_owned);
    let mut args = s.args(&["--no-stream", "--no-drift-repair", "--insecure-no-auth"]);
    args.retain(|a| *a != "sync");
    let daemon = s.env.daemon(&args, &[]);
    assert!(
        reconciled(daemon.port).await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    let log = s.env.daemon_log(&daemon);
    assert!(log.contains("untrusted=1"), "{log}");
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            blob(&s, "HEAD", "test/ns/app.yaml") == own
        })
        .await,
        "the loop's commit restores credsync's file: {log}"
    );
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["TOKEN"],
        b"trust-real-token"
    );
    let loop_log = s.env.daemon_log(&daemon);
    drop(daemon);

    // 4. A file naming another Secret's item (to copy it into a Secret its
    //    author can read) is refused by the mapping, before any read.
    forge_token(|text| text.replace("TOKEN=ns/app/token@", "TOKEN=ns/other/token@"));
    let run = s.run(&["rollback", "HEAD", "--secret", "ns/app"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().contains("it names ns/other/token@")
            && run.error_line().contains("maps to ns/other key TOKEN"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(forged_value));
    s.env.assert_no_value_in(&run.stderr, "the refusal");
    s.env.assert_no_value_in(&loop_log, "the loop's log");
    assert!(!loop_log.contains(forged_value));
}

#[tokio::test]
async fn a_file_whose_metadata_names_another_secret_is_refused() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/token", "mismatch-real-token");
    assert_eq!(s.run(&["sync"]).code, 0);
    // The path says ns/app (inside the namespace filter), the metadata
    // kube-system/app (excluded by default).
    forge(
        &s,
        "ns/app.yaml",
        ("kube-system", "app"),
        &[("TOKEN", "mismatch-real-token")],
        str::to_owned,
    );
    let run = s.run(&["rollback", "HEAD", "--secret", "ns/app"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().contains(
            "snapshot file test/ns/app.yaml names the Secret kube-system/app in its metadata"
        ),
        "{}",
        run.stderr
    );
    assert!(s.env.secret("kube-system", "app").await.is_none());
    // The same file never feeds a warm start either.
    let run = s.run(&["plan"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("untrusted=1"), "{}", run.stderr);
}

#[tokio::test]
async fn a_version_the_source_lost_is_restored_only_from_a_signed_commit() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/token", "lost-version-one");
    assert_eq!(s.run(&["sync"]).code, 0);
    let v1 = s.head();
    s.env.put("ns/app/token", "lost-version-two");
    assert_eq!(s.run(&["sync"]).code, 0);
    // Version one leaves the table (as `credstash` never does by itself).
    let dynamodb = s.env.dynamodb().await;
    let items = dynamodb
        .scan()
        .table_name("credential-store")
        .send()
        .await
        .unwrap();
    let first = items
        .items()
        .iter()
        .filter_map(|i| i.get("version")?.as_s().ok().cloned())
        .min()
        .unwrap();
    dynamodb
        .delete_item()
        .table_name("credential-store")
        .key(
            "name",
            aws_sdk_dynamodb::types::AttributeValue::S("ns/app/token".into()),
        )
        .key("version", aws_sdk_dynamodb::types::AttributeValue::S(first))
        .send()
        .await
        .unwrap();

    // Without the key, nothing vouches for it: refused.
    let unsigned = [
        "--cluster-name",
        "test",
        "--snapshot-repo",
        path_str(&s.repo),
        "--age-identity",
        path_str(&s.identity),
        "rollback",
        &v1,
    ];
    let run = s.env.credsync(&unsigned);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line()
            .contains("the source no longer holds ns/app/token@"),
        "{}",
        run.stderr
    );
    // A reader holding only the public key verifies it: the plan shows it.
    let mut reader = unsigned.to_vec();
    reader.truncate(6);
    let trusted = s.trusted_key();
    reader.extend([
        "--snapshot-trusted-key",
        path_str(&trusted),
        "plan",
        "--from-snapshot",
        &v1,
    ]);
    let run = s.env.credsync(&reader);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("ns/app"), "{}", run.stdout);
    // With the signing key: credsync signed it, so its value is restored.
    let run = s.run(&["rollback", &v1]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["TOKEN"],
        b"lost-version-one"
    );
}

#[tokio::test]
async fn a_fresh_clone_warm_starts_from_signed_commits_only() {
    let s = Snap::start(&["ns"]).await;
    for i in 0..3 {
        s.env.put(
            &format!("ns/app-{i}/key"),
            &format!("fresh-clone-value-{i}"),
        );
    }
    assert_eq!(s.run(&["sync"]).code, 0);
    // A new pod: an empty clone of the repository, no warm-start cache.
    let clone = |name: &str| {
        let path = s.env.dir.path().join(name);
        s.env.git(
            s.env.dir.path(),
            &["clone", "-q", path_str(&s.repo), path_str(&path)],
        );
        path
    };
    let fresh = clone("fresh");
    let with_repo =
        |repo: &std::path::Path, signed: bool| s.env.credsync(&s.args_for(repo, signed, &["sync"]));
    // Signed: the files are credsync's own, so no KMS call.
    let run = with_repo(&fresh, true);
    assert_eq!((run.code, kms_calls(&run)), (0, 0), "{}", run.stderr);
    // Without a key nothing in the repository counts: every item decrypted.
    let run = with_repo(&clone("unsigned"), false);
    assert_eq!((run.code, kms_calls(&run)), (0, 3), "{}", run.stderr);
    assert!(run.stderr.contains("untrusted=3"), "{}", run.stderr);
}

/// The `ENC[...]` line of `key` in a snapshot file's text.
fn enc_line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}: ENC[")))
        .unwrap_or_default()
}

#[tokio::test]
async fn pushed_shapes_and_unsigned_history_are_put_right_and_never_lend_a_key() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/token", "shape-token-one");
    s.env.put("ns/app/user", "shape-user-one");
    // Written before signing: no signed commit yet, and no data key reuse
    // (a rotation seals the whole file anew).
    let unsigned = |command: &str| s.env.credsync(&s.unsigned_args(&[command]));
    assert_eq!(unsigned("sync").code, 0);
    let before = std::fs::read_to_string(s.repo.join("test/ns/app.yaml")).unwrap();
    s.env.put("ns/app/token", "shape-token-two");
    assert_eq!(unsigned("sync").code, 0);
    let after = std::fs::read_to_string(s.repo.join("test/ns/app.yaml")).unwrap();
    assert_ne!(
        enc_line(&before, "USER"),
        enc_line(&after, "USER"),
        "without a signing key no file lends its data key"
    );
    assert!(!git_verifies(&s, "HEAD"));

    // A pushed file where the namespace directory was, and a directory
    // where a file was: the first signed sync still commits and applies.
    forge(
        &s,
        "ns/app.yaml",
        ("ns", "app"),
        &[("TOKEN", "shape-forged"), ("USER", "shape-user-one")],
        str::to_owned,
    );
    std::fs::remove_file(s.repo.join("test/ns/app.yaml")).unwrap();
    std::fs::create_dir_all(s.repo.join("test/ns/app.yaml")).unwrap();
    std::fs::write(s.repo.join("test/ns/app.yaml/inner"), "x").unwrap();
    s.git(&["add", "-A"]);
    s.git(&[
        "-c",
        "user.name=m",
        "-c",
        "user.email=m@m",
        "commit",
        "-qm",
        "a directory",
    ]);
    s.env.put("ns/app/token", "shape-token-three");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The first signed commit rewrote every file from the source.
    assert!(git_verifies(&s, "HEAD"));
    let message = s.git(&["log", "-1", "--format=%B"]);
    assert!(
        message.contains("changed by commits credsync did not sign"),
        "{message}"
    );
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["TOKEN"],
        b"shape-token-three"
    );
    let text = s.git(&["show", "HEAD:test/ns/app.yaml"]);
    assert!(text.contains("TOKEN=ns/app/token@"), "{text}");

    // A file with no key at all passes no check: refused, nothing emptied.
    forge(&s, "ns/app.yaml", ("ns", "app"), &[], str::to_owned);
    let run = s.run(&["rollback", "HEAD", "--secret", "ns/app"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().contains("the file holds no key"),
        "{}",
        run.stderr
    );
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["TOKEN"],
        b"shape-token-three"
    );
}
