//! `credsync run` as a child process, and what tests ask it over HTTP:
//! probes, endpoints, metrics.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{StandIns, free_port, spawn_tied, wait_for_port};

/// A `credsync run` process on a loopback port, stopped (SIGTERM) on drop.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange over a raw socket: (status, headers+body).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    http_with(port, method, path, &headers)
}

/// One HTTP/1.1 exchange with extra request headers.
pub fn http_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(port, method, path, headers, b"")
}

/// One HTTP/1.1 exchange with headers and a body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let auth: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body.
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The value of one sample in Prometheus text, e.g. `credsync_kms_requests_total{operation="Decrypt"}`.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl StandIns {
    /// Turns on the table's DynamoDB Stream, as `credsync run` expects in production.
    pub async fn enable_stream(&self) {
        use aws_sdk_dynamodb::types::{StreamSpecification, StreamViewType};
        let spec = StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(StreamViewType::NewAndOldImages)
            .build()
            .unwrap();
        self.dynamodb()
            .await
            .update_table()
            .table_name(&self.table)
            .stream_specification(spec)
            .send()
            .await
            .unwrap();
    }

    /// Starts `credsync run` with `args` and waits until /healthz answers.
    pub fn daemon(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.daemon_with_file_limit(args, env, None)
    }

    /// [`StandIns::daemon`] started with a soft limit of `open_files`, as a
    /// container with the common default of 1024 would start it.
    pub fn daemon_with_file_limit(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Daemon {
        self.daemon_with_file_limits(args, env, open_files, None)
    }

    /// [`StandIns::daemon`] under a soft and a hard open-file limit (as
    /// `prlimit --nofile=SOFT:HARD` would start it).
    pub fn daemon_with_file_limits(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
        hard: Option<u64>,
    ) -> Daemon {
        let port = free_port();
        let log = self.dir.path().join(format!("run-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credsync"));
        self.aws_env(&mut cmd);
        cmd.env("KUBECONFIG", self.active_kubeconfig())
            .env("CREDSYNC_TABLE", &self.table)
            .arg("run")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if open_files.is_some() || hard.is_some() {
            unsafe {
                cmd.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    if let Some(hard) = hard {
                        limit.rlim_max = hard.min(limit.rlim_max);
                    }
                    limit.rlim_cur = open_files.unwrap_or(limit.rlim_cur).min(limit.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                    Ok(())
                });
            }
        }
        let child = spawn_tied(&mut cmd);
        wait_for_port(port, "credsync run");
        Daemon { child, port, log }
    }

    /// The daemon's log so far, checked for seeded values like every other output.
    pub fn daemon_log(&self, daemon: &Daemon) -> String {
        let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
        self.assert_no_value_in(&text, "the credsync run log");
        text
    }
}

/// Whether `credsync run` on `port` turns ready within 30 s.
pub async fn ready(port: u16) -> bool {
    eventually(Duration::from_secs(30), || async move {
        http(port, "GET", "/readyz", None).0 == 200
    })
    .await
}

/// Whether the first reconcile of `credsync run` on `port` succeeded within
/// 60 s. Readiness alone can come before it, from the last snapshot.
pub async fn reconciled(port: u16) -> bool {
    eventually(Duration::from_secs(60), || async move {
        let (code, text) = http(port, "GET", "/metrics", None);
        code == 200 && metric(&text, "credsync_reconciles_total{outcome=\"success\"}") >= 1.0
    })
    .await
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
