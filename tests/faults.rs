//! The fault suite: what credsync does when its surroundings misbehave.
//! A hostile or broken snapshot repository, a frozen AWS endpoint, a full
//! disk, a Kubernetes API that fails or hangs, processes killed half way.
//! Each test states what a user sees and checks that nothing was lost,
//! half-written or leaked.

mod support;

use std::path::Path;
use std::time::Duration;

use support::snap::Snap;
use support::{StandIns, path_str};

/// Every regular file under `dir`, with its contents.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(files_under(&path));
        } else if meta.is_file() {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_link_in_the_work_tree_never_leads_a_write_outside_the_repository() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "link-value-one");
    s.env.put("ns/web/key", "link-value-web");
    assert_eq!(s.run(&["sync"]).code, 0);
    let outside = s.env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.yaml"), "precious\n").unwrap();
    let before = files_under(&outside);

    // A link at a Secret's file, then one at the cluster's directory.
    let file = s.repo.join("test/ns/app.yaml");
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(outside.join("precious.yaml"), &file).unwrap();
    s.env.put("ns/app/key", "link-value-two");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(!std::fs::symlink_metadata(&file).unwrap().is_symlink());

    let cluster_dir = s.repo.join("test");
    std::fs::rename(&cluster_dir, s.env.dir.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&outside, &cluster_dir).unwrap();
    s.env.put("ns/web/key", "link-value-web-two");
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(
        !std::fs::symlink_metadata(&cluster_dir)
            .unwrap()
            .is_symlink()
    );
    // The work tree shows the committed snapshot again.
    let out = s.env.sops(
        &s.identity,
        &["-d", path_str(&s.repo.join("test/ns/web.yaml"))],
    );
    support::assert_ok(&out, "sops -d test/ns/web.yaml");
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
}

#[tokio::test]
async fn committed_files_that_cannot_be_read_are_rewritten_not_fatal() {
    let s = Snap::start(&["ns"]).await;
    for name in ["truncated", "notsops", "link", "gone"] {
        s.env.put(
            &format!("ns/{name}/key"),
            &format!("{name}-unreadable-value"),
        );
    }
    assert_eq!(s.run(&["sync"]).code, 0);
    let good = s.head();
    let dir = s.repo.join("test/ns");
    let text = std::fs::read_to_string(dir.join("truncated.yaml")).unwrap();
    std::fs::write(dir.join("truncated.yaml"), &text[..text.len() / 2]).unwrap();
    std::fs::write(dir.join("notsops.yaml"), "just: some yaml\n").unwrap();
    std::fs::remove_file(dir.join("link.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link.yaml")).unwrap();
    std::fs::write(dir.join("gone.yaml"), "\u{0}\u{1}binary").unwrap();
    s.env.git_commit_all(&s.repo, "broken files");
    let broken = s.head();
    // The Secret behind `gone` leaves the table: its unreadable file goes too.
    let out = s.env.credstash(&["delete", "ns/gone/key"]);
    support::assert_ok(&out, "credstash delete ns/gone/key");

    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for name in ["truncated", "notsops", "link", "gone"] {
        assert!(
            run.stderr.contains(&format!("test/ns/{name}.yaml")),
            "a warning names {name}: {}",
            run.stderr
        );
    }
    // Rewritten from the desired state: real sops decrypts each again.
    for name in ["truncated", "notsops", "link"] {
        let path = dir.join(format!("{name}.yaml"));
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        let out = s.env.sops(&s.identity, &["-d", path_str(&path)]);
        support::assert_ok(&out, name);
    }
    assert!(!dir.join("gone.yaml").exists());
    assert_ne!(s.head(), broken, "a new commit");
    // And the next sync has nothing left to fix.
    let head = s.head();
    let run = s.run(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(s.head(), head);
    assert!(!run.stderr.contains("cannot be read"), "{}", run.stderr);

    // Rolling back to the broken revision is refused, and names the file.
    s.env.mark_requests();
    let run = s.run(&["rollback", &broken]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.error_line().contains("test/ns/"), "{}", run.stderr);
    assert!(s.env.secret_writes().is_empty(), "nothing applied");
    // A Secret whose file is fine at that revision can still be restored.
    let run = s.run(&["rollback", &good, "--secret", "ns/notsops"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// A small tmpfs, unmounted on drop (the tests run as root, as CI does).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        support::assert_ok(&out, "mounting a tmpfs needs root (CI runs as root)");
        Self {
            path: path.to_owned(),
        }
    }

    /// Fills what is left, but for `spare` bytes.
    fn fill(&self, spare: u64) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.path.join("filler").display()))
            .output();
        if spare > 0 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(self.path.join("filler"))
                .unwrap();
            let len = file.metadata().unwrap().len();
            file.set_len(len.saturating_sub(spare)).unwrap();
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output();
    }
}

#[tokio::test]
async fn a_full_disk_is_named_and_nothing_is_applied() {
    // How much is left decides where git fails: writing a blob, building
    // the tree, or writing the commit (where libgit2 reports only that the
    // commit "doesn't exist"). Each must name the full disk.
    for spare in [0, 8192, 20000] {
        let mut s = Snap::start(&["ns"]).await;
        let disk = SmallDisk::mount(&s.env.dir.path().join("disk"), "2m");
        s.repo = disk.path.join("snapshots");
        s.env.put("ns/app/key", "disk-full-value-one");
        assert_eq!(s.run(&["sync"]).code, 0);
        let head = s.head();
        disk.fill(spare);
        s.env.put("ns/app/key", "disk-full-value-two");
        s.env.mark_requests();
        let run = s.run(&["sync"]);
        assert_eq!(run.code, 1, "{}", run.stdout);
        let line = run.error_line();
        assert!(
            line.contains("No space left on device") || line.contains("is full"),
            "{spare}: {line}"
        );
        assert!(!line.contains("no error"), "{line}");
        assert_eq!(
            line.matches("snapshot repository").count(),
            1,
            "said once: {line}"
        );
        assert!(s.env.secret_writes().is_empty(), "nothing applied");
        assert_eq!(s.head(), head, "no commit");
    }
}

/// Stops a process with SIGSTOP until dropped (SIGCONT), also on panic.
struct Frozen(i32);

impl Frozen {
    fn freeze(pid: i32) -> Self {
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

#[tokio::test]
async fn a_frozen_aws_endpoint_ends_in_one_error_line_and_a_thaw_recovers() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/key", "frozen-aws-value");
    {
        let _frozen = Frozen::freeze(env.moto_pid());
        // The overall --timeout of a one-shot command.
        let run = env.credsync_within(&["plan", "--timeout", "3s"], &[], Duration::from_secs(60));
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(run.error_line().contains("--timeout 3s"), "{}", run.stderr);
        assert_eq!(
            run.stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .count(),
            1
        );
        // Each request's own timeout, well before the overall one.
        let run = env.credsync_within(
            &["sync", "--request-timeout", "1s", "--timeout", "10m"],
            &[],
            Duration::from_secs(120),
        );
        assert_eq!(run.code, 1, "{}", run.stdout);
        let line = run.error_line();
        assert!(!line.contains("--timeout"), "{line}");
        assert!(
            line.to_lowercase().contains("timeout") || line.contains("timed out"),
            "{line}"
        );
    }
    // Thawed: the next run works, nothing was written meanwhile.
    assert!(env.secret_data("ns", "app").await.is_none());
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(env.secret_data("ns", "app").await.is_some());
}

#[tokio::test]
async fn a_frozen_kubernetes_api_ends_in_an_error_not_a_hang() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/key", "frozen-kube-value");
    let _frozen = Frozen::freeze(env.apiserver_pid());
    let run = env.credsync_within(
        &["sync", "--request-timeout", "1s"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(!run.error_line().contains("--timeout"), "{}", run.stderr);
}

/// `plan --detailed-exitcode`: 0 when the cluster matches the table.
fn converged(env: &StandIns, extra: &[&str]) -> bool {
    let mut args = extra.to_vec();
    args.extend(["plan", "--detailed-exitcode"]);
    env.credsync(&args).code == 0
}

#[tokio::test]
async fn kubernetes_errors_fail_only_their_secret_and_a_rerun_converges() {
    let env = StandIns::start(&["ns"]).await;
    env.put("ns/app/key", "api-error-value-one");
    env.put("ns/web/key", "api-error-web-one");
    assert_eq!(env.credsync(&["sync"]).code, 0);
    // Each status on every patch: the Secret is reported, the run exits 1.
    for status in [500, 429, 409] {
        env.faults().await.inject_json(
            serde_json::json!({"verb": "patch", "resource": "secrets", "status": status}),
        );
        env.put("ns/app/key", &format!("api-error-value-{status}"));
        let run = env.credsync(&["sync"]);
        assert_eq!(run.code, 1, "{status}: {}", run.stderr);
        assert!(run.stdout.contains("ns/app"), "{status}: {}", run.stdout);
        assert_eq!(
            env.secret_data("ns", "web").await.unwrap()["KEY"],
            b"api-error-web-one",
            "the other Secret is untouched"
        );
        env.faults().await.clear_faults();
        assert!(!converged(&env, &[]));
        assert_eq!(
            env.credsync(&["sync"]).code,
            0,
            "{status}: the rerun writes it"
        );
        assert!(converged(&env, &[]));
        assert_eq!(
            env.secret_data("ns", "app").await.unwrap()["KEY"],
            format!("api-error-value-{status}").as_bytes()
        );
    }
    // A short 409 storm (someone else writing) is re-read and retried.
    env.faults().await.inject_json(
        serde_json::json!({"verb": "patch", "resource": "secrets", "status": 409, "times": 2}),
    );
    env.put("ns/app/key", "api-error-value-storm");
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(converged(&env, &[]));
}

/// Starts `credsync sync` and kills it with SIGKILL after `after`.
fn sync_killed_after(env: &StandIns, args: &[&str], after: Duration) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_credsync"));
    env.configure(&mut cmd);
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn sigkill_at_any_point_of_a_sync_leaves_nothing_half_done() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/seed/key", "sigkill-seed-value");
    let names: Vec<String> = (0..300).map(|i| format!("ns/app-{i:03}/key")).collect();
    s.env.copy_item("ns/seed/key", &names).await;
    let args = s.args(&["sync"]);
    // Killed early (reading), in the middle (committing, writing), late.
    for millis in [150, 400, 700, 1000, 1400] {
        sync_killed_after(&s.env, &args, Duration::from_millis(millis));
        let fsck = std::process::Command::new("git")
            .arg("-C")
            .arg(&s.repo)
            .args(["fsck", "--no-dangling"])
            .output()
            .unwrap();
        // A repository exists once the first run got that far; whatever it
        // holds must be whole.
        if s.repo.join(".git").exists() {
            support::assert_ok(&fsck, "fsck");
        }
        // Every Secret written so far is complete: all its keys, right values.
        let secrets = s.env.kube().await;
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(secrets, "ns");
        for secret in api.list(&Default::default()).await.unwrap().items {
            let data = secret.data.unwrap_or_default();
            assert_eq!(data.len(), 1, "{:?}", secret.metadata.name);
            assert_eq!(data["KEY"].0, b"sigkill-seed-value");
        }
        // And a rerun finishes the work.
        let run = s.run(&["sync"]);
        assert_eq!(run.code, 0, "after a kill at {millis} ms: {}", run.stderr);
        assert!(
            converged(&s.env, &s.args(&[])),
            "after a kill at {millis} ms"
        );
        let files = s.git(&["ls-files", "test/ns"]);
        assert_eq!(files.lines().count(), 301, "one file per Secret");
        // Next round starts from nothing in the cluster.
        for secret in api.list(&Default::default()).await.unwrap().items {
            let name = secret.metadata.name.unwrap();
            api.delete(&name, &Default::default()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn concurrent_syncs_on_one_repository_never_lose_a_commit() {
    let s = Snap::start(&["ns"]).await;
    for i in 0..20 {
        s.env
            .put(&format!("ns/app-{i}/key"), &format!("concurrent-value-{i}"));
    }
    let args = s.args(&["sync"]);
    let runs: Vec<support::Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.env.credsync(&args)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        // A run that lost the race (to create the repository, to hold its
        // index or to move the branch) says so; it never half-commits.
        if run.code != 0 {
            let line = run.error_line().to_lowercase();
            assert!(
                line.contains("lock") || line.contains("moving the branch"),
                "{line}"
            );
        }
    }
    assert!(runs.iter().any(|r| r.code == 0));
    let fsck = s.git(&["fsck", "--no-dangling"]);
    assert!(!fsck.contains("error"), "{fsck}");
    assert_eq!(s.run(&["sync"]).code, 0);
    assert!(converged(&s.env, &s.args(&[])));
    let history = s.git(&["log", "--format=%H %P", "main"]);
    assert!(
        history.lines().all(|l| l.split(' ').count() <= 2),
        "linear: {history}"
    );
}

#[tokio::test]
async fn a_hostile_snapshot_remote_cannot_write_outside_or_stop_syncs() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/app/key", "hostile-remote-value-one");
    let remote = s.env.dir.path().join("remote.git");
    s.env.git(
        s.env.dir.path(),
        &["init", "-q", "--bare", "-b", "main", path_str(&remote)],
    );
    let with_remote = |command: &[&str]| {
        let mut args = vec!["--snapshot-remote", path_str(&remote)];
        args.extend(s.args(command));
        s.env.credsync(&args)
    };
    assert_eq!(with_remote(&["sync"]).code, 0);

    // Another writer pushes a link at this cluster's directory, an
    // unparsable file, and a link at a Secret's file.
    let other = s.env.dir.path().join("other");
    s.env.git(
        s.env.dir.path(),
        &["clone", "-q", path_str(&remote), path_str(&other)],
    );
    let outside = s.env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("app.yaml"), "precious\n").unwrap();
    let before = files_under(&outside);
    std::fs::remove_file(other.join("test/ns/app.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.join("app.yaml"), other.join("test/ns/app.yaml")).unwrap();
    std::fs::write(other.join("test/ns/junk.yaml"), "{{{ not yaml").unwrap();
    let push = |message: &str| {
        s.env.git_commit_all(&other, message);
        s.env.git(&other, &["push", "-q", "-f", "origin", "main"]);
    };
    push("hostile files");
    s.env.put("ns/app/key", "hostile-remote-value-two");
    let run = with_remote(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["KEY"],
        b"hostile-remote-value-two"
    );

    // History rewritten on the remote (force-pushed, unrelated to ours).
    s.env
        .git(&other, &["checkout", "-q", "--orphan", "rewritten"]);
    s.env.git(&other, &["rm", "-rq", "--cached", "."]);
    std::fs::remove_dir_all(other.join("test")).unwrap();
    std::fs::create_dir_all(other.join("test")).unwrap();
    std::os::unix::fs::symlink(&outside, other.join("test/ns")).unwrap();
    s.env.git_commit_all(&other, "rewritten");
    s.env
        .git(&other, &["push", "-q", "-f", "origin", "rewritten:main"]);
    s.env.put("ns/app/key", "hostile-remote-value-three");
    let run = with_remote(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(files_under(&outside), before, "nothing written outside");
    assert_eq!(
        s.env.secret_data("ns", "app").await.unwrap()["KEY"],
        b"hostile-remote-value-three"
    );
    // The local snapshot still decrypts with the real sops.
    let out = s.env.sops(
        &s.identity,
        &["-d", path_str(&s.repo.join("test/ns/app.yaml"))],
    );
    support::assert_ok(&out, "sops -d test/ns/app.yaml");
    assert!(converged(&s.env, &s.args(&[])));
}

#[tokio::test]
async fn sigkill_of_the_loop_at_any_point_then_a_restart_converges() {
    let s = Snap::start(&["ns"]).await;
    s.env.put("ns/seed/key", "run-kill-seed-value");
    let names: Vec<String> = (0..200).map(|i| format!("ns/run-{i:03}/key")).collect();
    s.env.copy_item("ns/seed/key", &names).await;
    // Global flags may follow `run`, which the harness puts first.
    let args = s.args(&["--no-stream", "--no-drift-repair"]);
    for millis in [100, 500, 900] {
        let mut daemon = s.env.daemon(&args, &[]);
        std::thread::sleep(Duration::from_millis(millis));
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        drop(daemon);
        if s.repo.join(".git").exists() {
            s.git(&["fsck", "--no-dangling"]);
        }
        let restarted = s.env.daemon(&args, &[]);
        let ready = support::ready(restarted.port).await;
        assert!(ready, "{}", s.env.daemon_log(&restarted));
        // Ready can come from the snapshot; convergence needs the reconcile.
        let reconciled = support::reconciled(restarted.port).await;
        assert!(reconciled, "{}", s.env.daemon_log(&restarted));
        drop(restarted);
        assert!(
            converged(&s.env, &s.args(&[])),
            "after a kill at {millis} ms"
        );
        assert_eq!(s.git(&["ls-files", "test/ns"]).lines().count(), 201);
    }
}

#[tokio::test]
async fn a_watch_that_hangs_mid_stream_still_repairs_drift_once_the_api_answers() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/password", "hung-watch-value");
    let daemon = env.daemon(&["--no-stream", "--request-timeout", "2s"], &[]);
    let ready = support::ready(daemon.port).await;
    assert!(ready, "{}", env.daemon_log(&daemon));
    // The API server stops answering with the watch open, longer than a
    // request may take; meanwhile the loop keeps serving its probes.
    {
        let _frozen = Frozen::freeze(env.apiserver_pid());
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(support::http(daemon.port, "GET", "/healthz", None).0, 200);
    }
    env.patch_secret(
        "app",
        "svc",
        serde_json::json!({"data": {"PASSWORD": "aGFuZC1lZGl0"}}),
    )
    .await;
    let restored = env
        .eventually_value(
            "app",
            "svc",
            "PASSWORD",
            b"hung-watch-value",
            Duration::from_secs(30),
        )
        .await;
    assert!(restored, "{}", env.daemon_log(&daemon));
}

#[tokio::test]
async fn an_aws_endpoint_restarted_on_the_same_port_is_picked_up_again() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "restart-value-one");
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--interval",
            "1s",
            "--request-timeout",
            "2s",
        ],
        &[],
    );
    let port = daemon.port;
    let ready = support::ready(port).await;
    assert!(ready, "{}", env.daemon_log(&daemon));
    // Down, then back empty on the same port (a new table, a new key).
    env.restart_moto().await;
    env.put("app/svc/key", "restart-value-two");
    let synced = env
        .eventually_value(
            "app",
            "svc",
            "KEY",
            b"restart-value-two",
            Duration::from_secs(30),
        )
        .await;
    assert!(synced, "{}", env.daemon_log(&daemon));
    assert_eq!(support::http(port, "GET", "/healthz", None).0, 200);
}
