//! What a person at a terminal sees: progress on a pseudo-terminal and none
//! in a pipe, colour that NO_COLOR and `--color never` switch off, shell
//! completions and the man page.

mod support;

use std::process::{Command, Stdio};

use support::{StandIns, path_str};

/// `credsync ARGS` on a pseudo-terminal (util-linux `script`): everything
/// it wrote to the terminal, stdout and stderr together, and its exit code.
fn on_a_terminal(env: &StandIns, args: &[&str], vars: &[(&str, &str)]) -> (i32, String) {
    let mut line = String::from(env!("CARGO_BIN_EXE_credsync"));
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    let mut cmd = Command::new("script");
    env.configure(&mut cmd);
    cmd.args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("util-linux script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    env.assert_no_value_in(&text, "the terminal");
    (out.status.code().unwrap_or(-1), text)
}

fn seed(env: &StandIns, n: usize) {
    for i in 0..n {
        env.put(
            &format!("team-a/app-{i:02}/key"),
            &format!("terminal-value-{i}"),
        );
    }
}

#[tokio::test]
async fn sync_shows_progress_on_a_terminal_and_none_in_a_pipe() {
    let env = StandIns::start(&["team-a"]).await;
    seed(&env, 12);
    // A pipe first: the plan on stdout, no progress and no escape code anywhere.
    let piped = env.credsync(&["plan"]);
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    for text in [&piped.stdout, &piped.stderr] {
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
    }
    assert!(!piped.stderr.contains("decrypting"), "{}", piped.stderr);
    // Byte for byte what `--color never` prints, which has no progress either.
    let never = env.credsync(&["--color", "never", "plan"]);
    assert_eq!(piped.stdout, never.stdout);

    let (code, shown) = on_a_terminal(&env, &["sync"], &[]);
    assert_eq!(code, 0, "{shown}");
    for step in [
        "scanning the table",
        "decrypting (KMS calls)",
        "writing Secrets",
    ] {
        assert!(
            shown.contains(step),
            "no '{step}' on the terminal:\n{shown:?}"
        );
    }
    assert!(
        shown.contains("\x1b[32m+ create"),
        "a coloured plan: {shown:?}"
    );
    // The progress line is gone once the work is done: the plan follows it.
    let after = shown.rsplit("writing Secrets").next().unwrap_or_default();
    assert!(after.contains("Applied: 12 Secret(s)."), "{shown:?}");
}

#[tokio::test]
async fn no_color_and_color_never_leave_no_escape_code_anywhere() {
    let env = StandIns::start(&["team-a"]).await;
    seed(&env, 3);
    let (code, shown) = on_a_terminal(&env, &["plan"], &[("NO_COLOR", "1")]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("3 to create"), "{shown}");
    assert!(!shown.contains('\x1b'), "NO_COLOR: {shown:?}");
    let (_, shown) = on_a_terminal(&env, &["--color", "never", "plan"], &[]);
    assert!(
        shown.contains("3 to create") && !shown.contains('\x1b'),
        "{shown:?}"
    );
    // --color always colours a text plan even in a pipe; markdown and JSON never.
    let always = env.credsync(&["--color", "always", "plan"]);
    assert!(always.stdout.contains("\x1b[32m"), "{:?}", always.stdout);
    for format in ["markdown", "json"] {
        let run = env.credsync(&["--color", "always", "plan", "--format", format]);
        assert!(!run.stdout.contains('\x1b'), "{format}: {:?}", run.stdout);
        // stdout alone on the terminal (the shell line sends stderr away).
        let (_, shown) = on_a_terminal(&env, &["plan", "--format", format, "2>/dev/null"], &[]);
        assert!(shown.contains("team-a"), "{shown:?}");
        assert!(!shown.contains('\x1b'), "{format} on a terminal: {shown:?}");
    }
}

#[test]
fn completions_load_in_bash_and_the_man_page_renders() {
    let binary = env!("CARGO_BIN_EXE_credsync");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{binary}' completions bash) && complete -p credsync"
        ))
        .output()
        .unwrap();
    support::assert_ok(&out, "bash completion");
    assert!(String::from_utf8_lossy(&out.stdout).contains("credsync"));
    for shell in ["zsh", "fish"] {
        let out = Command::new(binary)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("credsync.1");
    let out = Command::new(binary).arg("man").output().unwrap();
    assert!(out.status.success());
    std::fs::write(&page, &out.stdout).unwrap();
    let rendered = Command::new("man")
        .arg(path_str(&page))
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    support::assert_ok(&rendered, "rendered");
    for section in [
        "NAME",
        "SYNOPSIS",
        "credsync",
        "--key-mapping",
        "completions",
    ] {
        assert!(
            text.contains(section),
            "no {section} in the rendered page:\n{text}"
        );
    }
}
