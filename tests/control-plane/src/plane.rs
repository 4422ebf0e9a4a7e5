//! etcd and kube-apiserver on loopback: started, waited on, torn down.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Error;
use crate::audit::{AuditLog, policy};
use crate::binaries::binary;

/// A token user of the API server (`--token-auth-file`).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub token: String,
    pub groups: Vec<String>,
}

impl User {
    /// A user in `system:masters`: every verb on everything, RBAC bypassed.
    pub fn admin(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            token: random_token(name),
            groups: vec!["system:masters".to_owned()],
        }
    }

    /// A user with no group beyond `system:authenticated`: only what RBAC grants.
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            token: random_token(name),
            groups: Vec::new(),
        }
    }
}

/// What to set up beyond the server itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Created once the server is ready (besides default and kube-*).
    pub namespaces: Vec<String>,
    /// Token users besides the harness's own admin.
    pub users: Vec<User>,
    /// Record the bodies of Secret writes in the audit log (they hold
    /// values): for tests that check what a write carried.
    pub audit_secret_bodies: bool,
    /// Also run kube-controller-manager's workload controllers (Deployments,
    /// ReplicaSets, StatefulSets, DaemonSets, and the `default`
    /// ServiceAccount of each namespace) and register one Node, so
    /// workloads get Pods and status as in a cluster. There is still no
    /// scheduler and no kubelet: [`crate::Kubelet`] plays the kubelet.
    pub controllers: bool,
}

/// The controllers [`Options::controllers`] runs.
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,serviceaccount-controller";

/// The Node registered for DaemonSets to place their Pods on.
pub const NODE: &str = "node-1";

/// A running etcd + kube-apiserver; both are killed on drop (and get SIGKILL
/// if the thread that started them dies first).
pub struct ControlPlane {
    apiserver: Child,
    etcd: Child,
    controller_manager: Option<Child>,
    url: String,
    ca_pem: Vec<u8>,
    admin: User,
    audit: AuditLog,
    dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let children = self
            .controller_manager
            .iter_mut()
            .chain([&mut self.apiserver, &mut self.etcd]);
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const READY_WITHIN: Duration = Duration::from_secs(90);

impl ControlPlane {
    /// Starts etcd and kube-apiserver and returns once `/readyz` answers ok
    /// and the namespaces exist (about 2.5 s). A start that fails (a port
    /// taken between choosing and binding it, a machine too busy to get
    /// ready in time) is retried twice with fresh ports and directories.
    pub async fn start(options: Options) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()).await {
                Ok(plane) => return Ok(plane),
                Err(Error::NotBuilt { path }) => return Err(Error::NotBuilt { path }),
                Err(e) if attempt < 3 => {
                    eprintln!("control plane start {attempt} failed, retrying: {e}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(options: Options) -> Result<Self, Error> {
        let (etcd_bin, apiserver_bin) = (binary("etcd")?, binary("kube-apiserver")?);
        let dir = tempfile::Builder::new()
            .prefix("control-plane-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir", e))?;
        let path = |name: &str| dir.path().join(name);
        let write = |name: &str, text: &str| {
            std::fs::write(path(name), text).map_err(|e| Error::io(format!("writing {name}"), e))
        };

        let admin = User::admin("admin");
        let mut tokens = String::new();
        for user in std::iter::once(&admin).chain(&options.users) {
            let _ = writeln!(
                tokens,
                "{},{},{},\"{}\"",
                user.token,
                user.name,
                user.name,
                user.groups.join(",")
            );
        }
        write("tokens.csv", &tokens)?;
        write("audit-policy.yaml", &policy(options.audit_secret_bodies))?;
        service_account_key(&path("sa.key"))?;

        let (client_port, peer_port, secure_port) = (free_port()?, free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn_tied(
            Command::new(etcd_bin)
                .args(["--name", "credsync-test", "--data-dir"])
                .arg(path("etcd"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("credsync-test={peer_url}")])
                .args(["--unsafe-no-fsync", "--log-level", "error"]),
            &path("etcd.log"),
        )?;
        let apiserver = spawn_tied(
            Command::new(apiserver_bin)
                .args(["--etcd-servers", &client_url])
                .args(["--secure-port", &secure_port.to_string()])
                .args([
                    "--bind-address",
                    "127.0.0.1",
                    "--advertise-address",
                    "127.0.0.1",
                ])
                .arg("--cert-dir")
                .arg(path("certs"))
                .arg("--token-auth-file")
                .arg(path("tokens.csv"))
                .args(["--authorization-mode", "RBAC"])
                .args(["--service-account-issuer", "https://credsync.test"])
                .arg("--service-account-key-file")
                .arg(path("sa.key"))
                .arg("--service-account-signing-key-file")
                .arg(path("sa.key"))
                .args(["--service-cluster-ip-range", "10.0.0.0/24"])
                .args(["--endpoint-reconciler-type", "none"])
                .arg("--audit-policy-file")
                .arg(path("audit-policy.yaml"))
                .arg("--audit-log-path")
                .arg(path("audit.log"))
                .args(["--audit-log-format", "json", "--audit-log-mode", "blocking"])
                .args(["--profiling=false", "-v", "0"]),
            &path("apiserver.log"),
        );
        let apiserver = match apiserver {
            Ok(child) => child,
            Err(e) => {
                let mut etcd = etcd;
                let _ = etcd.kill();
                let _ = etcd.wait();
                return Err(e);
            }
        };
        let mut plane = Self {
            apiserver,
            etcd,
            controller_manager: None,
            url: format!("https://127.0.0.1:{secure_port}"),
            ca_pem: Vec::new(),
            audit: AuditLog::new(&path("audit.log")),
            admin,
            dir,
        };
        plane.wait_ready(secure_port).await?;
        let namespaces: Api<Namespace> = Api::all(plane.client(&plane.admin.token).await?);
        for name in &options.namespaces {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
                .map_err(|e| Error::Kubeconfig(e.to_string()))?;
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        if options.controllers {
            plane.start_controllers(&options.namespaces).await?;
        }
        Ok(plane)
    }

    /// Starts kube-controller-manager as the admin, registers [`NODE`], and
    /// returns once each namespace has its `default` ServiceAccount (the
    /// controllers are running; without it every Pod is refused).
    async fn start_controllers(&mut self, namespaces: &[String]) -> Result<(), Error> {
        let binary = binary("kube-controller-manager")?;
        let kubeconfig = self.dir.path().join("controller-manager.kubeconfig");
        self.write_kubeconfig(&kubeconfig, &self.admin.token)?;
        let child = spawn_tied(
            Command::new(binary)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--leader-elect=false", "--secure-port=0"])
                .args(["--controllers", CONTROLLERS])
                .args(["--profiling=false", "-v", "0"]),
            &self.dir.path().join("controller-manager.log"),
        )?;
        self.controller_manager = Some(child);
        let client = self.admin_client().await?;
        register_node(&client).await?;
        let deadline = Instant::now() + READY_WITHIN;
        for namespace in namespaces {
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
            while accounts.get_opt("default").await?.is_none() {
                self.check_alive()?;
                if Instant::now() > deadline {
                    return Err(Error::NotReady {
                        what: "kube-controller-manager",
                        seconds: READY_WITHIN.as_secs(),
                        log_tail: tail(&self.dir.path().join("controller-manager.log")),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Waits for the serving cert, then for `/readyz` to answer ok.
    async fn wait_ready(&mut self, port: u16) -> Result<(), Error> {
        let deadline = Instant::now() + READY_WITHIN;
        let crt = self.dir.path().join("certs/apiserver.crt");
        loop {
            self.check_alive()?;
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && crt.is_file() {
                break;
            }
            self.check_deadline(deadline)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ca_pem = std::fs::read(&crt).map_err(|e| Error::io("reading the serving cert", e))?;
        let client = self.client(&self.admin.token).await?;
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok")
            {
                return Ok(());
            }
            self.check_deadline(deadline)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), Error> {
        let servers = [
            ("etcd", &mut self.etcd, "etcd.log"),
            ("kube-apiserver", &mut self.apiserver, "apiserver.log"),
        ];
        let controllers = self
            .controller_manager
            .as_mut()
            .map(|c| ("kube-controller-manager", c, "controller-manager.log"));
        for (what, child, log) in servers.into_iter().chain(controllers) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    what,
                    status,
                    log_tail: tail(&self.dir.path().join(log)),
                });
            }
        }
        Ok(())
    }

    fn check_deadline(&self, deadline: Instant) -> Result<(), Error> {
        if Instant::now() < deadline {
            return Ok(());
        }
        Err(Error::NotReady {
            what: "kube-apiserver",
            seconds: READY_WITHIN.as_secs(),
            log_tail: tail(&self.dir.path().join("apiserver.log")),
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The harness's own `system:masters` user.
    pub fn admin(&self) -> &User {
        &self.admin
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn apiserver_pid(&self) -> i32 {
        self.apiserver.id() as i32
    }

    /// kube-controller-manager's pid, if it runs: to stop it in a test.
    pub fn controller_manager_pid(&self) -> Option<i32> {
        self.controller_manager.as_ref().map(|c| c.id() as i32)
    }

    /// The apiserver's log (`-v 0`): for a failing test's message.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.path().join("apiserver.log")
    }

    /// A kubeconfig that reaches this server with `token`, trusting its CA.
    pub fn kubeconfig_yaml(&self, token: &str, namespace: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "credsync-test", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "credsync-test", "context": {"cluster": "credsync-test", "user": "user", "namespace": namespace}}],
            "current-context": "credsync-test",
            "preferences": {},
        });
        serde_yaml::to_string(&config).unwrap_or_default()
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path` (atomically: a reader never sees half a file).
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<(), Error> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.kubeconfig_yaml(token, "default"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// A client that authenticates with `token`.
    pub async fn client(&self, token: &str) -> Result<kube::Client, Error> {
        let kubeconfig: kube::config::Kubeconfig =
            serde_yaml::from_str(&self.kubeconfig_yaml(token, "default"))
                .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client as the harness's admin.
    pub async fn admin_client(&self) -> Result<kube::Client, Error> {
        self.client(&self.admin.token).await
    }
}

/// A Ready Node for DaemonSets to place Pods on (nothing runs them).
async fn register_node(client: &kube::Client) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": NODE}}))
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    nodes.create(&PostParams::default(), &node).await?;
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "played by the test harness"}]}});
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // The API server taints a new Node not-ready; with no node lifecycle
    // controller to lift it, DaemonSets would never place a Pod there.
    let untaint = json!({"spec": {"taints": null}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(&untaint))
        .await?;
    Ok(())
}

/// An ECDSA P-256 key for signing service-account tokens (TokenRequest).
fn service_account_key(path: &Path) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(path)
        .output()
        .map_err(|e| Error::io("running openssl (install it: apt-get install openssl)", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(
            "openssl ecparam -genkey",
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ))
    }
}

fn random_token(user: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{user}-{:x}-{nanos:x}", std::process::id())
}

fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free loopback port", e))
}

/// Spawns a server that gets SIGKILL when the spawning thread ends, its
/// output going to `log`.
fn spawn_tied(cmd: &mut Command, log: &Path) -> Result<Child, Error> {
    let file = std::fs::File::create(log).map_err(|e| Error::io("creating a log file", e))?;
    let err = file
        .try_clone()
        .map_err(|e| Error::io("creating a log file", e))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::io(format!("starting {:?}", cmd.get_program()), e))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
