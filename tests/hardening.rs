//! The holes an attack on credsync found, each shown closed from the
//! outside: start-up refuses a bad token, `/sync` and `/plan` are closed by
//! default, made-up scopes and slow clients cost nothing, URL credentials
//! and long Event notes never reach where they would leak or be refused.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{StandIns, eventually, http, http_with, metric, ready};

fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics", None).1
}

fn print_config(env: &StandIns, vars: &[(&str, &str)]) -> support::Run {
    env.credsync_env(&["run", "--print-config"], vars)
}

#[tokio::test]
async fn an_empty_or_hidden_sync_token_stops_start_up() {
    let env = StandIns::start(&["app"]).await;
    for content in ["", "  \n\t\n"] {
        let file = env.write_file("empty-token", content);
        let run = env.credsync(&[
            "run",
            "--no-stream",
            "--listen",
            "127.0.0.1:0",
            "--sync-token-file",
            support::path_str(&file),
        ]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.error_line().contains("is empty"), "{}", run.stderr);
    }
    // An empty CREDSYNC_SYNC_TOKEN no longer hides FLASK_API_KEY and then
    // vanishes: it is an error, in print-config as in run.
    let hidden = [
        ("CREDSYNC_SYNC_TOKEN", ""),
        ("FLASK_API_KEY", "legacy-token-1"),
    ];
    let run = print_config(&env, &hidden);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.error_line().contains("CREDSYNC_SYNC_TOKEN is empty"),
        "{}",
        run.stderr
    );
    let run = env.credsync_env(&["run", "--no-stream", "--listen", "127.0.0.1:0"], &hidden);
    assert_eq!(run.code, 1);
    // print-config reports what is in force.
    let run = print_config(&env, &[("FLASK_API_KEY", "legacy-token-1")]);
    let config: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(config["sync_token"], "set");
    assert_eq!(config["sync_auth"], "token");
    assert!(!run.stdout.contains("legacy-token-1"));
    let run = print_config(&env, &[]);
    let config: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(config["sync_token"], "unset");
    assert_eq!(config["sync_auth"], "refused: no token configured");
}

#[tokio::test]
async fn without_a_token_sync_and_plan_are_closed_unless_opened_on_purpose() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "closed-by-default");
    let closed = env.daemon(&["--no-stream", "--no-drift-repair"], &[]);
    assert!(ready(closed.port).await, "{}", env.daemon_log(&closed));
    for (method, path) in [("POST", "/sync"), ("GET", "/syncnow"), ("GET", "/plan")] {
        let (status, body) = http(closed.port, method, path, None);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("--sync-token-file"), "{body}");
        assert!(body.contains("--insecure-no-auth"), "{body}");
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http(closed.port, "GET", path, None).0, 200, "{path}");
    }
    let log = env.daemon_log(&closed);
    assert!(log.contains("no sync token configured"), "{log}");

    let open = env.daemon(
        &["--no-stream", "--no-drift-repair", "--insecure-no-auth"],
        &[],
    );
    assert!(ready(open.port).await);
    assert_eq!(http(open.port, "POST", "/sync", None).0, 202);
    assert!(env.daemon_log(&open).contains("open to anyone"));
}

#[tokio::test]
async fn scopes_that_name_nothing_cost_nothing_and_plans_are_cached() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "scope-value");
    let token_file = env.write_file("token", "scope-token\n");
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--sync-token-file",
            support::path_str(&token_file),
        ],
        &[],
    );
    let port = daemon.port;
    assert!(ready(port).await, "{}", env.daemon_log(&daemon));
    let scans = |text: &str| metric(text, "credsync_dynamodb_requests_total{operation=\"Scan\"}");
    let before = metrics(port);
    // The auth scheme is case-insensitive (RFC 9110).
    for i in 0..40 {
        let scheme = ["bearer", "Bearer", "BEARER"][i % 3];
        let auth = format!("{scheme} scope-token");
        let (status, body) = http_with(
            port,
            "POST",
            &format!("/sync?namespace=ghost-{i}"),
            &[("Authorization", &auth)],
        );
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("nothing to reconcile"), "{body}");
    }
    // A scope that exists is still queued.
    let (status, _) = http_with(
        port,
        "POST",
        "/sync?namespace=app",
        &[("Authorization", "bearer scope-token")],
    );
    assert_eq!(status, 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &metrics(port),
                "credsync_reconciles_by_trigger_total{outcome=\"success\",trigger=\"http\"}",
            ) == 1.0
        })
        .await
    );
    let after = metrics(port);
    assert_eq!(
        scans(&after),
        scans(&before),
        "no full reconcile for made-up scopes"
    );

    // /plan: computed once per window, then served with its age.
    let (status, first) = http(port, "GET", "/plan?format=json", Some("scope-token"));
    assert_eq!(status, 200, "{first}");
    let once = scans(&metrics(port));
    assert!(once > scans(&after));
    for _ in 0..5 {
        let (status, again) = http(port, "GET", "/plan?format=text", Some("scope-token"));
        assert_eq!(status, 200);
        assert!(again.to_ascii_lowercase().contains("\r\nage: "), "{again}");
    }
    assert_eq!(scans(&metrics(port)), once, "no Scan for a cached plan");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_probes_keep_answering() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "slow-client-value");
    // 256 open files, as a container might start with: the connections
    // below would exhaust them if credsync kept that limit.
    let daemon = env.daemon_with_file_limit(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--http-header-timeout",
            "2s",
        ],
        &[],
        Some(256),
    );
    let port = daemon.port;
    assert!(ready(port).await, "{}", env.daemon_log(&daemon));
    let slow: Vec<TcpStream> = (0..400)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
                .unwrap();
            stream
        })
        .collect();
    // A probe while all 400 are held gets its answer before any of them
    // timed out.
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = probe.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "probe got {answer:?}");
    // After the header deadline every half-sent request has been closed.
    std::thread::sleep(Duration::from_secs(3));
    let still_open = slow
        .iter()
        .filter(|&stream| {
            let mut stream: &TcpStream = stream;
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(0) => false,
                // A 408 answer, then the close.
                Ok(_) => stream.read(&mut buf).map(|n| n > 0).unwrap_or(true),
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert_eq!(still_open, 0, "half-sent requests left open");
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
}

#[tokio::test]
async fn credentials_in_the_snapshot_remote_url_are_never_printed() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "remote-url-value");
    let (recipient, _) = env.age_identity("reader");
    for url in [
        "https://ci-bot:Pa55-w0rd-XYZ@127.0.0.1:1/org/snaps.git",
        "https://ghp_Pa55w0rdXYZtoken@127.0.0.1:1/org/snaps.git",
    ] {
        let run = env.credsync(&["--snapshot-remote", url, "run", "--print-config"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(!run.stdout.contains("Pa55"), "{}", run.stdout);
        assert!(run.stdout.contains("https://***@127.0.0.1:1/org/snaps.git"));
        let repo = env.dir.path().join(format!("clone-{}", url.len()));
        let run = env.credsync(&[
            "--snapshot-repo",
            support::path_str(&repo),
            "--snapshot-remote",
            url,
            "--age-recipient",
            &recipient,
            "sync",
        ]);
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(
            run.error_line().contains("cloning https://***@127.0.0.1:1"),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("Pa55") && !run.stdout.contains("Pa55"),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn a_secret_with_3000_keys_gets_an_event_the_api_server_accepts() {
    use k8s_openapi::api::events::v1::Event;
    let env = StandIns::start(&["app"]).await;
    env.put("app/big/key-00000", "many-keys-value");
    let names: Vec<String> = (1..3000).map(|i| format!("app/big/key-{i:05}")).collect();
    env.copy_item("app/big/key-00000", &names).await;
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(env.secret_data("app", "big").await.unwrap().len(), 3000);
    assert!(!run.stderr.contains("refused"), "{}", run.stderr);
    let events: kube::Api<Event> = kube::Api::namespaced(env.kube().await, "app");
    let list = events.list(&Default::default()).await.unwrap();
    let notes: Vec<String> = list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("big"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].len() <= 1024, "{} bytes", notes[0].len());
    assert!(notes[0].starts_with("credsync created 3000 key(s): +KEY_00000 +KEY_00001"));
    assert!(notes[0].ends_with(" more)"), "{}", notes[0]);

    // Events the server refuses: one warning for the whole reconcile.
    env.faults()
        .await
        .inject_json(serde_json::json!({"verb": "create", "resource": "events", "status": 403}));
    for i in 0..5 {
        env.put(&format!("app/refused-{i}/key"), "refused-event-value");
    }
    let run = env.credsync(&["sync"]);
    assert_eq!(run.code, 0, "the writes themselves succeed: {}", run.stderr);
    assert_eq!(env.secret_data("app", "refused-4").await.unwrap().len(), 1);
    let warnings = run
        .stderr
        .lines()
        .filter(|l| l.contains("refused Events"))
        .count();
    assert_eq!(warnings, 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused=5"), "{}", run.stderr);
}

/// Sends a request's headers, promising a body it never sends.
fn withhold_body(port: u16, path: &str, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 10\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

/// `/healthz` on a fresh connection: its status, and how long it took.
fn probe(port: u16) -> (String, Duration) {
    let started = std::time::Instant::now();
    let answer = (|| -> std::io::Result<String> {
        let mut probe = TcpStream::connect(("127.0.0.1", port))?;
        probe.set_read_timeout(Some(Duration::from_secs(3)))?;
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        probe.read_to_string(&mut answer)?;
        Ok(answer)
    })()
    .unwrap_or_default();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, started.elapsed())
}

#[tokio::test]
async fn withheld_bodies_hold_no_connection_and_probes_keep_answering() {
    let env = StandIns::start(&["app"]).await;
    env.put("app/svc/key", "withheld-body-value");
    // A hard limit of 256 open files, below the default connection cap:
    // credsync must lower its cap rather than let accept fail.
    let daemon = env.daemon_with_file_limits(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--self-service",
            "--self-service-namespaces",
            "app",
            "--http-header-timeout",
            "5s",
        ],
        &[],
        Some(256),
        Some(256),
    );
    let port = daemon.port;
    assert!(ready(port).await, "{}", env.daemon_log(&daemon));
    env.mark_requests();
    let log = env.daemon_log(&daemon);
    assert!(
        log.contains("--max-connections lowered to what the open-file limit allows")
            && log.contains("file_limit=256"),
        "{log}"
    );
    // 600 callers with made-up tokens (60 distinct) and 100 with a real
    // one, all withholding the value they announced.
    let admin = env.control_plane().admin().token.clone();
    let path = "/v1/secrets/app/svc/KEY";
    let mut held: Vec<TcpStream> = (0..600)
        .map(|i| withhold_body(port, path, &format!("made-up-token-{}", i % 60)))
        .collect();
    held.extend((0..100).map(|_| withhold_body(port, path, &admin)));
    // The probe answers within a second, again and again, while they wait.
    for _ in 0..10 {
        let (status, took) = probe(port);
        assert!(
            status.starts_with("HTTP/1.1 200") && took < Duration::from_secs(1),
            "probe: {status:?} after {took:?}\n{}",
            env.daemon_log(&daemon)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // No made-up token holds its connection: each was answered (401, or
    // 503 past the cap) and closed, or closed unanswered when even the
    // overflow was full; none is left waiting for its body.
    let waiting = held[..600]
        .iter()
        .filter(|stream| {
            let mut stream: &TcpStream = stream;
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 512];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => assert!(
                        buf[..n].starts_with(b"HTTP/1.1 401")
                            || buf[..n].starts_with(b"HTTP/1.1 503")
                            || !buf[..n].starts_with(b"HTTP/"),
                        "{:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                    Err(e) => {
                        return matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        );
                    }
                }
            }
        })
        .count();
    assert_eq!(waiting, 0, "{}", env.daemon_log(&daemon));
    let reviews = env
        .credsync_requests()
        .iter()
        .filter(|e| e.resource() == "tokenreviews")
        .count();
    // One per distinct token (the answer is kept a few seconds).
    assert!(
        (1..=61).contains(&reviews),
        "TokenReviews are cached by token, not made per call: {reviews}"
    );
    // The real token's bodies are given up after the deadline: answered 408.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(probe(port).0, "HTTP/1.1 200 OK");
    drop(held);
    env.daemon_log(&daemon);
}

#[tokio::test]
async fn without_self_service_nothing_under_v1_reads_a_body() {
    let env = StandIns::start(&["app"]).await;
    let daemon = env.daemon(&["--no-stream", "--no-drift-repair"], &[]);
    let port = daemon.port;
    assert!(ready(port).await, "{}", env.daemon_log(&daemon));
    let mut stream = withhold_body(port, "/v1/secrets/app/svc/KEY", "any");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer).unwrap_or(0);
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    // --self-service without the namespaces it is the authority for: refused.
    let run = env.credsync(&["run", "--self-service", "--print-config"]);
    assert_eq!(run.code, 1);
    assert!(
        run.error_line()
            .contains("--self-service needs --self-service-namespaces"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn self_service_writes_only_where_this_cluster_is_the_authority() {
    // `other` exists and credsync writes it, but it is not listed; `ghost`
    // is listed but does not exist here. The caller is a cluster admin, so
    // RBAC would allow anything: the refusals are the authority's.
    let env = StandIns::start(&["app", "other"]).await;
    let daemon = env.daemon(
        &[
            "--no-stream",
            "--no-drift-repair",
            "--self-service",
            "--self-service-namespaces",
            "app,ghost",
        ],
        &[],
    );
    let port = daemon.port;
    assert!(ready(port).await, "{}", env.daemon_log(&daemon));
    let admin = env.control_plane().admin().token.clone();
    let bearer = format!("Bearer {admin}");
    let put = |path: &str, value: &[u8]| {
        support::daemon::http_request(
            port,
            "PUT",
            path,
            &[("Authorization", bearer.as_str())],
            value,
        )
    };
    let (status, body) = put("/v1/secrets/other/db/KEY", b"authority-other-value");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("not the authority for namespace 'other'") && body.contains("app, ghost"),
        "{body}"
    );
    let (status, body) = put("/v1/secrets/ghost/db/KEY", b"authority-ghost-value");
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("namespace 'ghost' does not exist in this cluster"),
        "{body}"
    );
    let (status, body) = put("/v1/secrets/app/db/KEY", b"authority-app-value");
    assert_eq!(status, 201, "{body}");
    let out = env.credstash(&["get", "-n", "other/db/KEY"]);
    assert!(!out.status.success(), "nothing written for 'other'");
    // Listings are a Scan each: one per caller per window.
    let (status, body) = http(port, "GET", "/v1/secrets/app", Some(&admin));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(port, "GET", "/v1/secrets/app", Some(&admin));
    assert_eq!(status, 429, "{body}");
    env.daemon_log(&daemon);
}
