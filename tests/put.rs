//! `credsync put` and `delete` write the credstash format: the real
//! credstash CLI reads what credsync writes, credsync reads what credstash
//! writes, and versions, contexts and KMS refusals behave as credstash's do.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::StandIns;

/// `credstash get -n NAME [context]`: the exact stored value, or None.
fn credstash_get(env: &StandIns, args: &[&str]) -> Option<Vec<u8>> {
    let mut all = vec!["get", "-n"];
    all.extend_from_slice(args);
    let out = env.credstash(&all);
    out.status.success().then_some(out.stdout)
}

/// `credsync put NAME -` with `value` on stdin.
fn put_from_stdin(env: &StandIns, name: &str, value: &[u8]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credsync"));
    env.configure(&mut cmd);
    let mut child = cmd
        .args(["put", name, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_no_value_in(&text, "credsync put -");
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn credstash_and_credsync_read_what_the_other_writes() {
    let env = StandIns::start(&["team-a"]).await;
    let from_file = "credsync-put-from-file\nsecond line, ünïcødé\n";
    let from_stdin = "credsync-put-from-stdin";
    for value in [
        from_file,
        from_stdin,
        "credsync-put-api-two",
        "credsync-put-context",
    ] {
        env.seed(value);
    }

    // credsync writes; the real credstash reads the exact bytes.
    let file = env.write_file("value", from_file);
    let run = env.credsync(&["put", "team-a/app/PASSWORD", "-f", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "team-a/app/PASSWORD version 0000000000000000001 stored"
    );
    assert_eq!(
        credstash_get(&env, &["team-a/app/PASSWORD"]).unwrap(),
        from_file.as_bytes()
    );
    let (code, out) = put_from_stdin(&env, "team-a/app/TOKEN", from_stdin.as_bytes());
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        credstash_get(&env, &["team-a/app/TOKEN"]).unwrap(),
        from_stdin.as_bytes()
    );

    // credstash writes version 1; credsync -a writes 2 after it.
    env.put("team-a/app/API", "credstash-put-api-one");
    let file = env.write_file("api", "credsync-put-api-two");
    let run = env.credsync(&["put", "-a", "team-a/app/API", "-f", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("version 0000000000000000002 stored"),
        "{}",
        run.stdout
    );
    assert_eq!(
        credstash_get(&env, &["team-a/app/API"]).unwrap(),
        b"credsync-put-api-two"
    );
    assert_eq!(
        credstash_get(&env, &["-v", "0000000000000000001", "team-a/app/API"]).unwrap(),
        b"credstash-put-api-one"
    );

    // A version that exists is never overwritten.
    let run = env.credsync(&[
        "put",
        "-v",
        "2",
        "team-a/app/API",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.error_line()
            .contains("version 0000000000000000002 is already in the table"),
        "{}",
        run.stderr
    );

    // An encryption context is bound into the data key, as credstash's is.
    let file = env.write_file("ctx", "credsync-put-context");
    let run = env.credsync(&[
        "--context",
        "app=billing",
        "put",
        "team-a/app/CTX",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        credstash_get(&env, &["team-a/app/CTX", "app=billing"]).unwrap(),
        b"credsync-put-context"
    );
    assert_eq!(
        credstash_get(&env, &["team-a/app/CTX"]),
        None,
        "the context is required to read it"
    );

    // KMS refusing a data key: a clear error and nothing written.
    let run = env.credsync(&[
        "put",
        "--key-id",
        "alias/no-such-key",
        "team-a/app/NOPE",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1);
    let line = run.error_line();
    assert!(
        line.contains("alias/no-such-key") && line.contains("nothing written"),
        "{line}"
    );
    assert_eq!(credstash_get(&env, &["team-a/app/NOPE"]), None);

    // credsync syncs what both wrote (the context item, which a sync
    // without its context could not read, deleted first).
    let run = env.credsync(&["delete", "team-a/app/CTX"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        "deleted team-a/app/CTX version 0000000000000000001"
    );
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let app = env.secret_data("team-a", "app").await.unwrap();
    assert_eq!(app["PASSWORD"], from_file.as_bytes());
    assert_eq!(app["TOKEN"], from_stdin.as_bytes());
    assert_eq!(app["API"], b"credsync-put-api-two");

    // delete removes every version, as credstash delete does.
    let run = env.credsync(&["delete", "team-a/app/API"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert_eq!(credstash_get(&env, &["team-a/app/API"]), None);
    let run = env.credsync(&["delete", "team-a/app/API"]);
    assert_eq!(run.code, 1);
    assert!(
        run.error_line().contains("no item named team-a/app/API"),
        "{}",
        run.stderr
    );
}

#[test]
fn put_says_where_the_value_is_safe_from_the_process_list() {
    let out = Command::new(env!("CARGO_BIN_EXE_credsync"))
        .args(["put", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("never appears in argv"), "{help}");
    assert!(
        help.contains("-v, --version <VERSION>") && help.contains("-a, --autoversion"),
        "{help}"
    );
    // Neither a value nor a file: refused before anything runs.
    let out = Command::new(env!("CARGO_BIN_EXE_credsync"))
        .args(["put", "team-a/app/KEY"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// `put --server` sends the caller's Kubernetes token: never over TLS that
/// was not verified, even when the kubeconfig skips verification for the
/// API server. Only `--insecure-skip-tls-verify` on the command line does.
#[tokio::test]
async fn put_through_a_server_verifies_its_certificate_whatever_the_kubeconfig_says() {
    let env = StandIns::start(&["team-a"]).await;
    let dir = env.dir.path();
    let (key, cert) = (dir.join("tls.key"), dir.join("tls.crt"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let token = "put-server-tls-token-7Qx";
    let kubeconfig = env.write_file(
        "skip-verify.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: {token}}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    );
    // A TLS server with a certificate nobody trusts, printing what it receives.
    let serve = |port: u16| {
        let server = support::spawn_tied(
            Command::new("openssl")
                .args(["s_server", "-quiet", "-accept"])
                .arg(port.to_string())
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        support::wait_for_port(port, "openssl s_server");
        server
    };
    let put = |port: u16, extra: &[&str]| {
        let server = format!("https://127.0.0.1:{port}");
        let mut args = vec![
            "put",
            "team-a/db/TOKEN",
            "value-over-tls",
            "--server",
            &server,
        ];
        args.extend_from_slice(extra);
        env.credsync_within(
            &args,
            &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
            std::time::Duration::from_secs(20),
        )
    };
    let received = |mut server: std::process::Child| {
        let _ = server.kill();
        let out = server.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let port = support::free_port();
    let server = serve(port);
    let run = put(port, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.error_line().to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    assert!(!received(server).contains(token), "the token never left");

    // Asked for on the command line: the request (and the token) goes out.
    let port = support::free_port();
    let server = serve(port);
    let handle = std::thread::spawn(move || received_after(server, token));
    let run = put(port, &["--insecure-skip-tls-verify"]);
    assert!(
        run.stderr.contains("--insecure-skip-tls-verify"),
        "{}",
        run.stderr
    );
    assert!(
        handle.join().unwrap(),
        "the request went out unverified, as asked"
    );
}

/// Reads the server's output until `token` shows (true) or it ends.
fn received_after(mut server: std::process::Child, token: &str) -> bool {
    use std::io::Read;
    let mut out = server.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains(token) {
                    break true;
                }
            }
        }
    };
    let _ = server.kill();
    let _ = server.wait();
    found
}
