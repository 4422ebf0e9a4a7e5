//! Local stand-ins for the integration tests: moto (DynamoDB + KMS) and a
//! real kube-apiserver with etcd on loopback (one per test, see
//! `control-plane`), the real credstash CLI to write items, and the credsync
//! binary to run. Every process started here dies with the test (PDEATHSIG
//! and Drop), and every output captured from credsync is checked for the
//! values the test seeded.

#![allow(dead_code)]

pub mod daemon;
pub mod flow;
pub mod kms_hold;
mod kubernetes;
pub mod snap;
pub mod workloads;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use daemon::{Daemon, eventually, http, http_request, http_with, metric, ready, reconciled};

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_plane::{AuditMark, ControlPlane, FaultProxy, Kubelet, Options, User};

pub const REGION: &str = "us-east-1";

/// The API server user credsync runs as in tests (in `system:masters`; the
/// chart's least-privilege RBAC is tested apart, in tests/rbac.rs).
pub const CREDSYNC_USER: &str = "credsync";

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the project's venv (`just setup` makes it).
pub fn venv_tool(name: &str) -> PathBuf {
    let path = project_dir().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} missing: run `just setup` first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to its end and returns its output; a failure fails the test
/// with the command and what it wrote on stderr.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert_ok(&out, &format!("{cmd:?}"));
    out
}

/// Fails the test unless `out` (of `what`) succeeded, showing its stderr.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spawns a child that gets SIGTERM when this test's thread ends.
pub fn spawn_tied(cmd: &mut Command) -> Child {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts moto on a free loopback port with extra environment; returns once it listens.
pub fn start_moto(env: &[(&str, &str)]) -> (Child, u16) {
    let port = free_port();
    (start_moto_on(port, env), port)
}

/// Starts moto on `port`; returns once it listens.
fn start_moto_on(port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(venv_tool("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = spawn_tied(&mut cmd);
    wait_for_port(port, "moto");
    child
}

/// How to write one item with the credstash CLI.
#[derive(Default, Clone)]
pub struct Put<'a> {
    pub version: Option<&'a str>,
    pub context: &'a [(&'a str, &'a str)],
    pub key_alias: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// What one credsync run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The one `error:` line a failed run ends with.
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line in:\n{}", self.stderr))
    }
}

pub struct StandIns {
    /// Behind a lock so a fault test can restart it on the same port.
    moto: Mutex<Child>,
    /// Started on first use; from then on credsync talks through it.
    proxy: Mutex<Option<Arc<FaultProxy>>>,
    plane: ControlPlane,
    /// The test's own client (user `admin`), built once.
    admin: kube::Client,
    /// Plays the kubelet (with [`StandIns::start_with_workloads`]).
    pub kubelet: Option<Kubelet>,
    /// Where [`StandIns::credsync_requests`] starts reading the audit log.
    mark: Mutex<AuditMark>,
    pub dir: tempfile::TempDir,
    pub aws_endpoint: String,
    /// Reaches the API server directly as the user `credsync` (system:masters).
    pub kubeconfig: PathBuf,
    pub table: String,
    seeded: Mutex<Vec<String>>,
    /// Every stdout and stderr credsync produced in this test.
    pub captured: Mutex<Vec<String>>,
}

impl Drop for StandIns {
    fn drop(&mut self) {
        if let Ok(moto) = self.moto.get_mut() {
            let _ = moto.kill();
            let _ = moto.wait();
        }
    }
}

impl StandIns {
    /// Starts moto and a control plane with `namespaces`, a KMS key under
    /// alias/credstash and a table made by `credstash setup`.
    pub async fn start(namespaces: &[&str]) -> Arc<Self> {
        Self::start_with(namespaces, false).await
    }

    /// [`StandIns::start`] with kube-controller-manager's workload
    /// controllers and a played kubelet: Deployments, StatefulSets and
    /// DaemonSets get Pods and roll as in a cluster.
    pub async fn start_with_workloads(namespaces: &[&str]) -> Arc<Self> {
        Self::start_with(namespaces, true).await
    }

    async fn start_with(namespaces: &[&str], workloads: bool) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (moto, port) = start_moto(&[]);
        let credsync = User::admin(CREDSYNC_USER);
        let plane = ControlPlane::start(Options {
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            users: vec![credsync.clone()],
            audit_secret_bodies: true,
            controllers: workloads,
        })
        .await
        .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        let kubeconfig = dir.path().join("kubeconfig");
        plane
            .write_kubeconfig(&kubeconfig, &credsync.token)
            .unwrap();
        let admin = plane.admin_client().await.unwrap();
        let kubelet = workloads.then(|| {
            let namespaces = namespaces.iter().map(|n| (*n).to_owned()).collect();
            Kubelet::start(admin.clone(), namespaces)
        });
        let stand_ins = Self {
            kubelet,
            moto: Mutex::new(moto),
            proxy: Mutex::new(None),
            admin,
            plane,
            mark: Mutex::new(AuditMark::default()),
            aws_endpoint: format!("http://127.0.0.1:{port}"),
            kubeconfig,
            table: "credential-store".to_owned(),
            dir,
            seeded: Mutex::new(Vec::new()),
            captured: Mutex::new(Vec::new()),
        };
        stand_ins.set_up_aws().await;
        Arc::new(stand_ins)
    }

    /// A KMS key under alias/credstash and a table made by `credstash setup`.
    async fn set_up_aws(&self) {
        self.create_kms_key("alias/credstash", REGION).await;
        let out = self.credstash(&["setup"]);
        assert_ok(&out, "credstash setup");
    }

    /// Kills moto and starts a new, empty one on the same port, with a new
    /// key and table: what credsync sees when its AWS endpoint restarts.
    pub async fn restart_moto(&self) {
        let port: u16 = self
            .aws_endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        {
            let mut moto = self.moto.lock().unwrap();
            let _ = moto.kill();
            let _ = moto.wait();
            *moto = start_moto_on(port, &[]);
        }
        self.set_up_aws().await;
    }

    pub async fn sdk_config(&self, region: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(credsync::aws_http::aws_http_client(None))
            .region(aws_config::Region::new(region.to_owned()))
            .endpoint_url(&self.aws_endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await
    }

    pub async fn create_kms_key(&self, alias: &str, region: &str) {
        let kms = aws_sdk_kms::Client::new(&self.sdk_config(region).await);
        let key = kms.create_key().send().await.unwrap();
        let id = key.key_metadata.unwrap().key_id;
        kms.create_alias()
            .alias_name(alias)
            .target_key_id(id)
            .send()
            .await
            .unwrap();
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config(REGION).await)
    }

    /// A credsync child's environment: these stand-ins' AWS, cluster and table.
    pub fn configure(&self, cmd: &mut Command) {
        self.aws_env(cmd);
        cmd.env("KUBECONFIG", self.active_kubeconfig())
            .env("CREDSYNC_TABLE", &self.table);
    }

    /// The kubeconfig credsync gets: the fault proxy's once a test asked
    /// for it ([`StandIns::faults`]), else the API server's.
    pub fn active_kubeconfig(&self) -> PathBuf {
        match self.proxy.lock().unwrap().as_ref() {
            Some(_) => self.dir.path().join("fault-proxy.kubeconfig"),
            None => self.kubeconfig.clone(),
        }
    }

    /// Environment for child processes: loopback AWS, no user config.
    fn aws_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT_URL", &self.aws_endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE");
    }

    pub fn credstash(&self, args: &[&str]) -> Output {
        self.credstash_in(REGION, &self.table, args)
    }

    /// The credstash CLI against another region or table of the same moto.
    pub fn credstash_in(&self, region: &str, table: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(venv_tool("credstash"));
        cmd.args(["-r", region, "-t", table]).args(args);
        self.aws_env(&mut cmd);
        cmd.output().unwrap()
    }

    /// Writes `value` under `name` with the real credstash CLI and remembers
    /// it so no credsync output may contain it.
    pub fn put(&self, name: &str, value: &str) {
        self.put_with(name, value, Put::default());
    }

    pub fn put_with(&self, name: &str, value: &str, opts: Put) {
        self.seeded.lock().unwrap().push(value.to_owned());
        let file = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        std::fs::write(file.path(), value).unwrap();
        let mut args = vec!["put".to_owned(), "-a".to_owned()];
        if let Some(v) = opts.version {
            args = vec!["put".into(), "-v".into(), v.into()];
        }
        if let Some(k) = opts.key_alias {
            args.extend(["-k".into(), k.into()]);
        }
        if let Some(d) = opts.digest {
            args.extend(["-d".into(), d.into()]);
        }
        args.push(name.to_owned());
        args.push(format!("@{}", file.path().display()));
        args.extend(opts.context.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.credstash(&args);
        assert_ok(&out, &format!("credstash put {name}"));
    }

    /// Remembers `value` as a secret no output may contain (for values
    /// written some other way than [`StandIns::put`]).
    pub fn seed(&self, value: &str) {
        self.seeded.lock().unwrap().push(value.to_owned());
    }

    /// Runs the credsync binary and asserts its output holds no seeded value.
    pub fn credsync(&self, args: &[&str]) -> Run {
        self.credsync_env(args, &[])
    }

    pub fn credsync_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.credsync_within(args, env, Duration::from_secs(1800))
    }

    /// Runs credsync and fails the test if it has not ended by itself
    /// within `limit` (the child is killed first, so nothing hangs).
    pub fn credsync_within(&self, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credsync"));
        self.configure(&mut cmd);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = spawn_tied(&mut cmd);
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let (stdout, stderr) = (read_all(Box::new(stdout)), read_all(Box::new(stderr)));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("credsync {args:?} did not end by itself within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        };
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.assert_no_value_in(&run.stdout, &format!("stdout of credsync {args:?}"));
        self.assert_no_value_in(&run.stderr, &format!("stderr of credsync {args:?}"));
        self.captured
            .lock()
            .unwrap()
            .push(format!("{}\n{}", run.stdout, run.stderr));
        run
    }

    /// Fails if any seeded value (or its base64) appears in `text`.
    pub fn assert_no_value_in(&self, text: &str, what: &str) {
        use base64::Engine;
        for value in self.seeded.lock().unwrap().iter().filter(|v| v.len() >= 6) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(value);
            assert!(
                !text.contains(value.as_str()),
                "{what} contains a seeded secret value"
            );
            assert!(
                !text.contains(&b64),
                "{what} contains a seeded secret value in base64"
            );
        }
    }

    /// The moto process, to freeze and thaw it in fault tests.
    pub fn moto_pid(&self) -> i32 {
        self.moto.lock().unwrap().id() as i32
    }

    /// The kube-apiserver process, to freeze and thaw it.
    pub fn apiserver_pid(&self) -> i32 {
        self.plane.apiserver_pid()
    }

    /// A fresh age identity in the test's directory: (recipient, identity file).
    pub fn age_identity(&self, name: &str) -> (String, PathBuf) {
        use age::secrecy::ExposeSecret;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let path = self.dir.path().join(format!("{name}.agekey"));
        std::fs::write(
            &path,
            format!(
                "# test identity\n{}\n",
                identity.to_string().expose_secret()
            ),
        )
        .unwrap();
        (recipient, path)
    }

    /// A new SQS queue (visibility timeout 2 s, so a message left
    /// undeleted comes back quickly); its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk_config(REGION).await);
        sqs.create_queue()
            .queue_name(name)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "2",
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap()
    }

    /// Sends `body` to the queue at `url`, as a rule or a Pipe would.
    pub async fn send_to_queue(&self, url: &str, body: &str) {
        aws_sdk_sqs::Client::new(&self.sdk_config(REGION).await)
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Messages of the queue at `url`, waiting or in flight.
    pub async fn queued(&self, url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let sqs = aws_sdk_sqs::Client::new(&self.sdk_config(REGION).await);
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| attributes[a].parse::<u64>().unwrap())
        .sum()
    }

    /// Waits (at most `within`) until the queue at `url` holds no message,
    /// visible or in flight: every message was handled and deleted.
    pub async fn eventually_drained(&self, url: &str, within: Duration) -> bool {
        eventually(within, || async { self.queued(url).await == 0 }).await
    }

    /// A snapshot signing key made by the real `ssh-keygen` (ed25519, no
    /// passphrase): the private key's path and the public key's line.
    pub fn signing_key(&self, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(format!("{name}.sshkey"));
        if !path.exists() {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        let public = std::fs::read_to_string(path.with_extension("sshkey.pub")).unwrap();
        (path, public.trim().to_owned())
    }

    /// Runs git in `repo` and returns stdout.
    pub fn git(&self, repo: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .unwrap();
        assert_ok(&out, &format!("git {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commits everything in `repo`'s work tree, as another writer would.
    pub fn git_commit_all(&self, repo: &Path, message: &str) {
        self.git(repo, &["add", "-A"]);
        self.git(
            repo,
            &[
                "-c",
                "user.name=o",
                "-c",
                "user.email=o@o",
                "commit",
                "-qm",
                message,
            ],
        );
    }

    /// Runs the real sops with `identity` as its age key file.
    pub fn sops(&self, identity: &Path, args: &[&str]) -> Output {
        Command::new(venv_tool("sops"))
            .env("SOPS_AGE_KEY_FILE", identity)
            .env("SOPS_DISABLE_VERSION_CHECK", "1")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        path
    }
}

/// Validates `document` against the schema shipped in src/render with the
/// reference Python implementation of JSON Schema.
pub fn validate_against_schema(document: &str) {
    let schema = project_dir().join("src/render/plan.schema.json");
    let out = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.Draft202012Validator(schema).validate(json.loads(sys.stdin.read()))",
        ])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(document.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "schema validation failed:\n{}\n{document}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl StandIns {
    /// Stores copies of item `from` (version 1) under each of `names` with
    /// BatchWriteItem: the ciphertext does not bind the name, so every copy
    /// decrypts to the same value. Seeds thousands of items in seconds,
    /// where the credstash CLI takes a fraction of a second per item.
    pub async fn copy_item(&self, from: &str, names: &[String]) {
        use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
        let ddb = self.dynamodb().await;
        let seed = ddb
            .get_item()
            .table_name(&self.table)
            .key("name", AttributeValue::S(from.to_owned()))
            .key(
                "version",
                AttributeValue::S("0000000000000000001".to_owned()),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap_or_else(|| panic!("{from} version 1 is not in the table"));
        for chunk in names.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|name| {
                    let mut item = seed.clone();
                    item.insert("name".to_owned(), AttributeValue::S(name.clone()));
                    let put = PutRequest::builder().set_item(Some(item)).build().unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !pending.is_empty() {
                let out = ddb
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .unwrap();
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
            }
        }
    }
}

/// The event EventBridge delivers for a Secrets Manager call, from CloudTrail.
pub fn cloudtrail_event(call: &str, secret: &str) -> String {
    serde_json::json!({
        "version": "0",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager",
        "detail": {
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": call,
            "requestParameters": {"secretId": secret},
        },
    })
    .to_string()
}

impl StandIns {
    /// A Secrets Manager client on moto.
    pub async fn secrets_manager(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config(REGION).await)
    }

    /// Creates a Secrets Manager secret holding `text` (its values seeded
    /// for the leak checks).
    pub async fn sm_create(&self, name: &str, text: &str, seeded: &[&str]) {
        for value in seeded {
            self.seed(value);
        }
        self.secrets_manager()
            .await
            .create_secret()
            .name(name)
            .secret_string(text)
            .send()
            .await
            .unwrap();
    }

    /// Puts a new version of a Secrets Manager secret.
    pub async fn sm_put(&self, name: &str, text: &str) {
        self.secrets_manager()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(text)
            .send()
            .await
            .unwrap();
    }
}
