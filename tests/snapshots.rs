//! Snapshots end to end: credsync writes SOPS files into git before it
//! applies, the real sops, age and git read them, and rollback restores an
//! older commit and pins it.

mod support;

use std::path::{Path, PathBuf};

use support::path_str;
use support::snap::Snap;

#[tokio::test]
async fn sync_commits_a_snapshot_that_sops_decrypts_to_the_secret() {
    let s = Snap::start(&["team-a"]).await;
    s.env.put("team-a/db/user", "snap-user-value");
    s.env
        .put("team-a/db/password", "snap-pass-value\nwith newline $x");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("snapshot: "), "{}", run.stderr);

    let file = s.repo.join("test/team-a/db.yaml");
    let out = s.env.sops(&s.identity, &["-d", path_str(&file)]);
    support::assert_ok(&out, "sops -d");
    let manifest: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(manifest["kind"], "Secret");
    assert_eq!(manifest["metadata"]["namespace"], "team-a");
    assert_eq!(manifest["metadata"]["name"], "db");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let data = &manifest["data"];
    assert_eq!(
        b64.decode(data["USER"].as_str().unwrap()).unwrap(),
        b"snap-user-value"
    );
    assert_eq!(
        b64.decode(data["PASSWORD"].as_str().unwrap()).unwrap(),
        b"snap-pass-value\nwith newline $x"
    );
    let sources = manifest["metadata"]["annotations"]["credsync.io/sources"]
        .as_str()
        .unwrap();
    assert!(
        sources.contains("USER=team-a/db/user@0000000000000000001"),
        "{sources}"
    );

    // The live Secret equals what sops -d gives: the manifest applies as is.
    let live = s.env.secret_data("team-a", "db").await.unwrap();
    assert_eq!(live["USER"], b"snap-user-value");

    // Nothing changed: no new commit.
    let head = s.head();
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0);
    assert_eq!(s.head(), head, "no empty commits");
    let log = s.git(&["log", "--format=%s%n%b"]);
    assert!(
        log.contains("credsync: 1 created, 0 updated, 0 deleted"),
        "{log}"
    );
    assert!(log.contains("+ team-a/db: +PASSWORD +USER"), "{log}");
    s.env.assert_no_value_in(&log, "the commit messages");
}

#[tokio::test]
async fn one_key_change_among_50_touches_one_file_and_only_its_lines() {
    let s = Snap::start(&["fleet"]).await;
    for i in 0..50 {
        s.env.put(
            &format!("fleet/svc-{i:02}/user"),
            &format!("snap-user-{i:02}"),
        );
        s.env.put(
            &format!("fleet/svc-{i:02}/password"),
            &format!("snap-password-{i:02}"),
        );
    }
    assert_eq!(s.run(&["sync"]).code, 0);
    s.env
        .put("fleet/svc-33/password", "snap-password-33-rotated");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let files = s.git(&["diff", "--name-only", "HEAD~1", "HEAD"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["test/fleet/svc-33.yaml"]
    );
    let diff = s.git(&["diff", "-U0", "HEAD~1", "HEAD"]);
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    let touches =
        |l: &&str| l.contains("PASSWORD") || l.contains("lastmodified:") || l.contains("mac:");
    assert!(
        changed.iter().all(touches),
        "unexpected lines changed:\n{diff}"
    );
    assert_eq!(
        changed.iter().filter(|l| l.contains("USER")).count(),
        0,
        "{diff}"
    );
    assert!(
        changed.iter().any(|l| l
            .trim_start_matches(['+', '-'])
            .trim_start()
            .starts_with("PASSWORD: ENC[")),
        "{diff}"
    );
    // The MAC covers every value, so it always changes; `lastmodified` has
    // one-second resolution and stays when both syncs fall in one second.
    assert!(changed.iter().any(|l| l.contains("mac:")), "{diff}");
}

/// A commit of more files than a targeted checkout takes is checked out on a
/// thread beside the writes to the cluster; the process still ends with the
/// work tree showing the commit, and the next commit's checkout follows it.
#[tokio::test]
async fn a_large_snapshot_still_leaves_a_whole_work_tree() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/seed/key", "wide-snapshot-value");
    let names: Vec<String> = (0..300).map(|i| format!("ns/app-{i:03}/key")).collect();
    s.env.copy_item("ns/seed/key", &names).await;
    // The cluster already right: the process ends as soon as it committed,
    // while its checkout may still run.
    let plain = s.env.credsync(&["--cluster-name", "test", "sync"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("snapshot committed"), "{}", run.stderr);
    assert_eq!(
        s.git(&["status", "--porcelain"]).trim(),
        "",
        "the work tree matches the commit"
    );
    let on_disk = std::fs::read_dir(s.repo.join("test/ns")).unwrap().count();
    assert_eq!(on_disk, 301, "one file per Secret in the work tree");

    // A process killed during that checkout leaves the index before it (and
    // some files): the next commit, of one file, checks out the whole tree.
    s.git(&["read-tree", "--empty"]);
    std::fs::remove_dir_all(s.repo.join("test")).unwrap();
    s.env.put("ns/app-007/key", "wide-snapshot-value-rotated");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(s.git(&["status", "--porcelain"]).trim(), "");
    assert_eq!(
        std::fs::read_dir(s.repo.join("test/ns")).unwrap().count(),
        301
    );
    let file = std::fs::read_to_string(s.repo.join("test/ns/app-007.yaml")).unwrap();
    assert_eq!(file, s.git(&["show", "HEAD:test/ns/app-007.yaml"]));
    assert_ne!(file, s.git(&["show", "HEAD~1:test/ns/app-007.yaml"]));
}

#[tokio::test]
async fn rollback_restores_pins_and_unpin_resumes() {
    let s = Snap::start(&["app"]).await;
    s.env.put("app/api/token", "token-version-one");
    s.env.put("app/api/url", "url-version-one");
    s.env.put("app/other/key", "other-version-one");
    assert_eq!(s.run(&["sync"]).code, 0);
    let v1 = s.head();
    s.env.put("app/api/token", "token-version-two");
    s.env.put("app/other/key", "other-version-two");
    assert_eq!(s.run(&["sync"]).code, 0);
    let v2 = s.head();
    assert_eq!(
        s.env.secret_data("app", "api").await.unwrap()["TOKEN"],
        b"token-version-two"
    );

    // Reviewers see which keys changed between snapshots, never values.
    let run = s.run(&["diff", &v1, &v2]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let squeezed = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(squeezed.contains("update app/api ~TOKEN"), "{}", run.stdout);
    assert!(squeezed.contains("update app/other ~KEY"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("URL"),
        "unchanged keys are not listed: {}",
        run.stdout
    );
    let run = s.run(&["history", "--format", "json"]);
    let history: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let ids: Vec<&str> = history["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [v2.as_str(), v1.as_str()]);
    let run = s.run(&["show", &v2, "--format", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        shown["secrets"][0]["keys"],
        serde_json::json!(["TOKEN", "URL"])
    );
    assert_eq!(
        shown["secrets"][0]["sources"]["TOKEN"],
        "app/api/token@0000000000000000002"
    );

    // What the rollback would do, as a plan.
    let run = s.run(&["plan", "--from-snapshot", &v1[..10]]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("~ update") && run.stdout.contains("~TOKEN"),
        "{}",
        run.stdout
    );

    let run = s.run(&["rollback", &v1, "--secret", "app/api"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        s.env.secret_data("app", "api").await.unwrap()["TOKEN"],
        b"token-version-one"
    );
    assert_eq!(
        s.env.secret_data("app", "other").await.unwrap()["KEY"],
        b"other-version-two",
        "only --secret is rolled back"
    );
    let message = s.git(&["log", "-1", "--format=%B"]);
    assert!(
        message.contains("roll back 1 Secret(s)")
            && message.contains(&v1[..12])
            && message.contains("app/api"),
        "{message}"
    );
    assert_ne!(s.head(), v2);
    let annotations = s
        .env
        .secret("app", "api")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(annotations["credsync.io/pinned"], v1);

    // The loop leaves the pinned Secret alone and says the table differs.
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("= pinned") && run.stdout.contains("table differs"),
        "{}",
        run.stdout
    );
    assert_eq!(
        s.env.secret_data("app", "api").await.unwrap()["TOKEN"],
        b"token-version-one"
    );

    let run = s.run(&["unpin", "app/other"]);
    assert_eq!(run.code, 1, "app/other is not pinned: {}", run.stdout);
    let run = s.run(&["unpin", "--all"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "unpinned app/api");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        s.env.secret_data("app", "api").await.unwrap()["TOKEN"],
        b"token-version-two"
    );
    assert!(!run.stdout.contains("pinned"), "{}", run.stdout);
}

#[tokio::test]
async fn unwritable_snapshot_repository_applies_nothing() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "unwritable-value");
    // A file where the repository should be.
    std::fs::write(&s.repo, "not a directory").unwrap();
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.error_line().contains("snapshot"), "{}", run.stderr);
    assert!(s.env.secret_writes().is_empty(), "nothing applied");

    // A repository whose objects cannot be written.
    std::fs::remove_file(&s.repo).unwrap();
    s.env
        .git(s.env.dir.path(), &["init", "-q", path_str(&s.repo)]);
    let objects = s.repo.join(".git/objects");
    let mut perms = std::fs::metadata(&objects).unwrap().permissions();
    use std::os::unix::fs::PermissionsExt;
    perms.set_mode(0o500);
    std::fs::set_permissions(&objects, perms.clone()).unwrap();
    let run = s.run(&["sync"]);
    perms.set_mode(0o755);
    std::fs::set_permissions(&objects, perms).unwrap();
    if nix_is_root() {
        // root ignores directory permissions; the first case covered it.
        return;
    }
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(s.env.secret_writes().is_empty(), "nothing applied");
}

fn nix_is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn tampered_snapshot_and_wrong_identity_are_refused() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "tamper-original-value");
    assert_eq!(s.run(&["sync"]).code, 0);
    let good = s.head();

    // Edit the ciphertext of a value and commit it as another writer would.
    let file = s.repo.join("test/ns/app.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find("KEY: ENC[AES256_GCM,data:").unwrap() + "KEY: ENC[AES256_GCM,data:".len();
    let mut bytes = text.into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, bytes).unwrap();
    s.git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qam",
        "hand edit",
    ]);
    s.env.put("ns/app/key", "tamper-newer-value");
    s.env.mark_requests();

    for command in [vec!["rollback", "HEAD"], vec!["show", "HEAD", "--reveal"]] {
        let run = s.run(&command);
        assert_eq!(run.code, 1, "{command:?}: {}", run.stdout);
        assert!(
            run.error_line()
                .contains("MAC mismatch in test/ns/app.yaml"),
            "{}",
            run.stderr
        );
    }
    assert!(s.env.secret_writes().is_empty(), "nothing applied");

    // An edited MAC is refused the same way.
    s.git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "revert",
        "--no-edit",
        "HEAD",
    ]);
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find("mac: ENC[AES256_GCM,data:").unwrap() + "mac: ENC[AES256_GCM,data:".len();
    let mut bytes = text.into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, bytes).unwrap();
    s.git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qam",
        "mac edit",
    ]);
    let run = s.run(&["rollback", "HEAD"]);
    assert_eq!(run.code, 1);
    assert!(
        run.error_line()
            .contains("MAC mismatch in test/ns/app.yaml"),
        "{}",
        run.stderr
    );
    assert!(s.env.secret_writes().is_empty(), "nothing applied");

    // The wrong identity: the error names the file's recipients.
    let (_, other) = s.env.age_identity("stranger");
    let run = s.env.credsync(&[
        "--cluster-name",
        "test",
        "--snapshot-repo",
        path_str(&s.repo),
        "--age-identity",
        path_str(&other),
        "show",
        &good,
        "--reveal",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains(&s.recipient), "{}", run.stderr);

    // Unknown and ambiguous revisions, and a bad recipient, fail before any work.
    let run = s.run(&["rollback", "no-such-rev"]);
    assert!(
        run.code == 1 && run.error_line().contains("unknown revision 'no-such-rev'"),
        "{}",
        run.stderr
    );
    let run = s.env.credsync(&[
        "--snapshot-repo",
        path_str(&s.repo),
        "--age-recipient",
        "age1notakey",
        "sync",
    ]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("age1notakey"), "{}", run.stderr);
}

#[tokio::test]
async fn files_from_real_sops_are_shown_but_never_rolled_back() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/seed/key", "seed-value-for-repo");
    assert_eq!(s.run(&["sync"]).code, 0);
    // A Secret written by hand with the real sops, committed into the repo.
    let sealed = s.seal_with_sops(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: handmade\n  namespace: ns\ntype: Opaque\ndata:\n  TOKEN: aGFuZG1hZGUtdG9rZW4tdmFsdWU=\n",
    );
    let target = s.repo.join("test/ns/handmade.yaml");
    std::fs::write(&target, &sealed).unwrap();
    s.git(&["add", "."]);
    s.git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "handmade by sops",
    ]);

    let run = s.run(&["show", "HEAD", "--secret", "ns/handmade", "--reveal"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // --reveal is the one place a value may be printed: on stdout, when asked.
    assert!(
        run.stdout.contains("TOKEN: handmade-token-value"),
        "{}",
        run.stdout
    );
    // Anyone with the public recipient can write such a file: it names no
    // source version and no credsync signature vouches for it, so it is
    // never written into a Secret.
    let run = s.run(&["rollback", "HEAD", "--secret", "ns/handmade"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.error_line()
            .contains("test/ns/handmade.yaml: key TOKEN:")
            && run.error_line().contains("nothing was restored"),
        "{}",
        run.stderr
    );
    assert!(s.env.secret("ns", "handmade").await.is_none());
    assert!(!format!("{}{}", run.stdout, run.stderr).contains("handmade-token-value"));
}

#[tokio::test]
async fn no_plaintext_value_is_written_to_disk() {
    let s = Snap::start(&["ns"]).await;
    let values = ["disk-scan-value-one", "disk-scan-value-two"];
    s.env.put("ns/app/one", values[0]);
    s.env.put("ns/app/two", values[1]);
    let tmp = s.env.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let args = s.args(&["sync"]);
    let run = s.env.credsync_env(&args, &[("TMPDIR", path_str(&tmp))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    s.env.put("ns/app/one", "disk-scan-value-three");
    assert_eq!(
        s.env
            .credsync_env(&args, &[("TMPDIR", path_str(&tmp))])
            .code,
        0
    );

    // Every object in the repository, decompressed, and every file on disk.
    let objects = std::process::Command::new("git")
        .arg("-C")
        .arg(&s.repo)
        .args(["cat-file", "--batch-all-objects", "--batch"])
        .output()
        .unwrap();
    let mut everything = String::from_utf8_lossy(&objects.stdout).into_owned();
    for dir in [&s.repo, &tmp] {
        for file in walk(dir) {
            everything.push_str(&String::from_utf8_lossy(&std::fs::read(&file).unwrap()));
        }
    }
    assert!(
        everything.contains("ENC[AES256_GCM"),
        "the scan saw the snapshot files"
    );
    for value in values.iter().chain(&["disk-scan-value-three"]) {
        assert!(!everything.contains(value), "a plaintext value is on disk");
    }
    s.env
        .assert_no_value_in(&everything, "the snapshot repository and temp dir");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_lock_left_by_a_killed_git_is_recovered_and_a_live_one_refused() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "lock-test-value-one");
    assert_eq!(s.run(&["sync"]).code, 0);
    let head = s.head();
    s.env.put("ns/app/key", "lock-test-value-two");
    let lock = s.repo.join(".git/index.lock");

    std::fs::write(&lock, "").unwrap();
    s.env.mark_requests();
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.error_line().contains("index.lock"), "{}", run.stderr);
    assert_eq!(s.head(), head, "no commit while locked");
    assert!(s.env.secret_writes().is_empty(), "nothing applied");

    // The same lock, two hours old: a killed process left it.
    let status = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(status.success());
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(s.head(), head);
    assert!(!lock.exists());
    assert_eq!(
        s.git(&["status", "--porcelain"]).trim(),
        "",
        "the work tree matches the commit"
    );
}

#[tokio::test]
async fn snapshots_are_pushed_and_a_moved_remote_is_replayed() {
    let s = Snap::start(&["ns"]).await;
    let dir = s.env.dir.path();
    let remote = dir.join("remote.git");
    s.env.git(
        dir,
        &["init", "-q", "--bare", "-b", "main", path_str(&remote)],
    );
    let with_remote = |command: &[&str]| {
        let mut args = vec!["--snapshot-remote", path_str(&remote)];
        args.extend_from_slice(command);
        s.run(&args)
    };
    let remote_log = || s.env.git(&remote, &["log", "--format=%s", "main"]);
    let commit = [
        "-c",
        "user.name=other",
        "-c",
        "user.email=o@o",
        "commit",
        "-qam",
    ];

    // credsync clones the empty remote and pushes its first snapshot.
    s.env.put("ns/app/key", "remote-value-one");
    let run = with_remote(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(remote_log().lines().count(), 1, "{}", remote_log());

    // Another writer pushes under another cluster's directory.
    let other = dir.join("other");
    s.env
        .git(dir, &["clone", "-q", path_str(&remote), path_str(&other)]);
    std::fs::create_dir_all(other.join("elsewhere")).unwrap();
    std::fs::write(other.join("elsewhere/x.yaml"), "kind: Secret\n").unwrap();
    s.env.git(&other, &["add", "."]);
    s.env
        .git(&other, &[&commit[..], &["other cluster"]].concat());
    s.env.git(&other, &["push", "-q", "origin", "main"]);

    // credsync's next snapshot is replayed on top of it and pushed.
    s.env.put("ns/app/key", "remote-value-two");
    let run = with_remote(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log = remote_log();
    assert_eq!(log.lines().count(), 3, "{log}");
    let files = s
        .env
        .git(&remote, &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("elsewhere/x.yaml") && files.contains("test/ns/app.yaml"),
        "{files}"
    );
    let pushed = s.env.git(&remote, &["show", "main:test/ns/app.yaml"]);
    assert!(
        pushed.contains("KEY=ns/app/key@0000000000000000002"),
        "{pushed}"
    );

    // A real conflict: credsync holds a commit the remote has not seen (made
    // while the remote was not configured, as when it is unreachable), and
    // meanwhile the other writer edits this cluster's file.
    s.env.put("ns/app/key", "remote-value-three");
    assert_eq!(s.run(&["sync"]).code, 0);
    s.env
        .git(&other, &["pull", "-q", "--rebase", "origin", "main"]);
    let file = other.join("test/ns/app.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("# edited by hand\n{text}")).unwrap();
    s.env
        .git(&other, &[&commit[..], &["hand edit of our file"]].concat());
    s.env.git(&other, &["push", "-q", "origin", "main"]);
    let run = with_remote(&["sync"]);
    assert_eq!(
        run.code, 0,
        "the snapshot is committed locally, so the sync applies: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("kept the local commit"),
        "{}",
        run.stderr
    );
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["KEY"],
        b"remote-value-three"
    );
    let unpushed = s.git(&["rev-list", "--count", "origin/main..main"]);
    assert_eq!(unpushed.trim(), "1", "the local commit stays");

    // Once the other writer takes its edit back, the next sync pushes.
    s.env.git(
        &other,
        &[
            "-c",
            "user.name=o",
            "-c",
            "user.email=o@o",
            "revert",
            "--no-edit",
            "HEAD",
        ],
    );
    s.env.git(&other, &["push", "-q", "origin", "main"]);
    let run = with_remote(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pushed = s.env.git(&remote, &["show", "main:test/ns/app.yaml"]);
    assert!(
        pushed.contains("KEY=ns/app/key@0000000000000000003"),
        "{pushed}"
    );
}
