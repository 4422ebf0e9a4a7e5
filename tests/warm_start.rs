//! Restarts with the last snapshot: values come from the snapshot (no KMS
//! call for an unchanged item), read through the warm-start cache where it
//! holds a file, and `credsync run` is ready before its first table read.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use support::daemon::{http, ready};
use support::path_str;
use support::snap::Snap;

fn kms_calls(run: &support::Run) -> u32 {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("kms_decrypt="))
        .unwrap_or_default();
    let after = line.split("kms_decrypt=").nth(1).unwrap_or_default();
    after
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or(u32::MAX)
}

/// `files=N from_cache=M` of the warm-start log line.
fn warm_line(run: &support::Run) -> (u32, u32) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("warm start from the last snapshot"))
        .unwrap_or_default();
    let field = |name: &str| -> u32 {
        line.split(&format!(" {name}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (field("files"), field("from_cache"))
}

fn segments(s: &Snap) -> Vec<PathBuf> {
    let dir = s.repo.join(".git/credsync/warm/test");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|x| x == "age"));
    out.sort();
    out
}

#[tokio::test]
async fn a_restart_with_the_snapshot_and_an_identity_skips_kms_for_unchanged_items() {
    let s = Snap::start(&["ns"]).await;
    for i in 0..5 {
        s.env
            .put(&format!("ns/app/key-{i}"), &format!("warm-start-value-{i}"));
    }
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 5), "{}", run.stderr);

    // A new process, nothing changed: every value comes from the snapshot.
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 0), "{}", run.stderr);

    // One item changed: one KMS call, for it only.
    s.env.put("ns/app/key-3", "warm-start-value-3-rotated");
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 1), "{}", run.stderr);
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["KEY_3"],
        b"warm-start-value-3-rotated"
    );

    // Without an identity the restart is cold, and still correct.
    let args = [
        "--cluster-name",
        "test",
        "--snapshot-repo",
        path_str(&s.repo),
        "--age-recipient",
        &s.recipient,
        "sync",
    ];
    let run = s.env.credsync(&args);
    assert_eq!((run.code, kms_calls(&run)), (0, 5), "{}", run.stderr);
}

#[tokio::test]
async fn the_warm_start_cache_answers_for_unchanged_files_and_a_damaged_one_is_dropped() {
    let s = Snap::start(&["ns"]).await;
    for i in 0..4 {
        s.env
            .put(&format!("ns/app-{i}/key"), &format!("warm-cache-value-{i}"));
    }
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The commit left one segment, readable by its owner only.
    let written = segments(&s);
    assert_eq!(written.len(), 1, "{written:?}");
    let mode = std::fs::metadata(&written[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "segment mode {mode:o}");
    assert!(
        s.git(&["status", "--porcelain", "--ignored"])
            .trim()
            .is_empty(),
        "the cache is not in the work tree"
    );

    // A restart reads every file's values from the cache: no file opened, no KMS call.
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 0), "{}", run.stderr);
    assert_eq!(warm_line(&run), (4, 4), "{}", run.stderr);

    // One rotated item: its file is new; the segment for it is added.
    s.env.put("ns/app-2/key", "warm-cache-value-2-rotated");
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 1), "{}", run.stderr);
    assert_eq!(segments(&s).len(), 2);
    let run = s.run(&["sync"]);
    assert_eq!(warm_line(&run), (4, 4), "{}", run.stderr);
    // That start folded the two segments into one.
    assert_eq!(segments(&s).len(), 1);

    // A damaged segment is dropped, not half-read: the files are opened
    // (MAC checked) and the cache is written again.
    let segment = segments(&s).remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&segment, bytes).unwrap();
    let run = s.run(&["sync"]);
    assert_eq!((run.code, kms_calls(&run)), (0, 0), "{}", run.stderr);
    assert_eq!(warm_line(&run), (4, 0), "{}", run.stderr);
    assert!(run.stderr.contains("segment unusable"), "{}", run.stderr);
    let run = s.run(&["sync"]);
    assert_eq!(warm_line(&run), (4, 4), "{}", run.stderr);
    assert_eq!(
        s.env.secret_data("ns", "app-2").await.unwrap()["KEY"],
        b"warm-cache-value-2-rotated"
    );

    // A file changed in git by someone else has a new blob: it is opened,
    // not answered from the cache. Here: app-0's file becomes app-1's.
    let app1 = std::fs::read(s.repo.join("test/ns/app-1.yaml")).unwrap();
    std::fs::write(s.repo.join("test/ns/app-0.yaml"), app1).unwrap();
    s.git(&["commit", "-qam", "hand edit"]);
    let run = s.run(&["plan"]);
    assert_eq!(
        warm_line(&run),
        (4, 4),
        "same blob as app-1: {}",
        run.stderr
    );
}

#[tokio::test]
async fn run_is_ready_from_the_last_snapshot_before_its_first_table_read() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "ready-from-snapshot-value");
    assert_eq!(s.run(&["sync"]).code, 0);
    let mut args = s.args(&["--no-stream", "--no-drift-repair", "--insecure-no-auth"]);
    args.retain(|a| *a != "sync");
    // The table cannot be read at all: ready all the same, from the snapshot,
    // while the first reconcile fails (and /healthz counts the failures).
    let daemon = s.env.daemon(&args, &[("CREDSYNC_TABLE", "no-such-table")]);
    assert!(ready(daemon.port).await, "{}", s.env.daemon_log(&daemon));
    let log = s.env.daemon_log(&daemon);
    assert!(log.contains("ready from the last snapshot"), "{log}");
    assert!(
        support::daemon::eventually(std::time::Duration::from_secs(20), || async {
            s.env.daemon_log(&daemon).contains("reconcile failed")
        })
        .await,
        "{}",
        s.env.daemon_log(&daemon)
    );
    assert_eq!(http(daemon.port, "GET", "/readyz", None).0, 200);
    drop(daemon);

    // Without the snapshot flags, ready waits for a first reconcile that succeeds.
    let plain = ["--no-stream", "--no-drift-repair", "--insecure-no-auth"];
    let daemon = s.env.daemon(&plain, &[("CREDSYNC_TABLE", "no-such-table")]);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(http(daemon.port, "GET", "/readyz", None).0, 503);
    drop(daemon);
    let daemon = s.env.daemon(&plain, &[]);
    assert!(ready(daemon.port).await);
    assert!(
        !s.env
            .daemon_log(&daemon)
            .contains("ready from the last snapshot")
    );
}
