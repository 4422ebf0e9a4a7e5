//! The chart's least-privilege RBAC on a real API server: the chart is
//! rendered by Helm's engine (tests/chart/render.py), its ServiceAccount,
//! Roles, ClusterRole and bindings are applied with kubectl, and credsync
//! runs as that ServiceAccount with a token from the TokenRequest API and
//! the environment the chart's Deployment sets. Both RBAC modes; then one
//! verb is taken away and the refusal must name it.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{StandIns, eventually, ready, venv_tool};

const RELEASE_NS: &str = "credsync";
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
];

/// The chart installed (its RBAC part) and credsync's identity from it.
struct Installed {
    env: Arc<StandIns>,
    objects: Vec<Value>,
    /// A kubeconfig holding the ServiceAccount's token.
    kubeconfig: PathBuf,
    admin_kubeconfig: PathBuf,
    /// The Deployment's plain `value` env entries, as the pod would get them.
    deployment_env: Vec<(String, String)>,
}

fn render(values: &Value) -> Vec<Value> {
    let out = Command::new(venv_tool("python"))
        .arg(support::project_dir().join("tests/chart/render.py"))
        .arg(values.to_string())
        .arg(RELEASE_NS)
        .output()
        .unwrap();
    support::assert_ok(&out, "rendering the chart");
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Installed {
    async fn new(env: Arc<StandIns>, values: Value) -> Self {
        let objects = render(&values);
        let admin_kubeconfig = env.dir.path().join("admin.kubeconfig");
        let plane = env.control_plane();
        plane
            .write_kubeconfig(&admin_kubeconfig, &plane.admin().token)
            .unwrap();
        let deployment_env = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("the chart renders a Deployment")["spec"]["template"]["spec"]["containers"][0]
            ["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            // Where to listen and which table are the test's to choose.
            .filter(|(name, _)| !matches!(name.as_str(), "CREDSYNC_LISTEN" | "CREDSYNC_TABLE"))
            .collect();
        let mut installed = Self {
            env,
            objects,
            kubeconfig: PathBuf::new(),
            admin_kubeconfig,
            deployment_env,
        };
        let rbac: Vec<Value> = installed
            .objects
            .iter()
            .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or("")))
            .cloned()
            .collect();
        assert!(rbac.len() >= 3, "{rbac:#?}");
        installed.kubectl_apply(&rbac);
        let token = installed.kubectl(&[
            "create",
            "token",
            "credsync",
            "-n",
            RELEASE_NS,
            "--duration",
            "1h",
        ]);
        installed.kubeconfig = installed.env.dir.path().join("serviceaccount.kubeconfig");
        std::fs::write(
            &installed.kubeconfig,
            plane_yaml(&installed.env, token.trim()),
        )
        .unwrap();
        installed
    }

    /// kubectl (the pinned one, from the venv) as the admin.
    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_with_input(args, None)
    }

    fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(venv_tool("kubectl"))
            .env("KUBECONFIG", &self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        support::assert_ok(&out, &format!("kubectl {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kubectl_apply(&self, objects: &[Value]) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&list.to_string()));
    }

    /// The environment credsync gets: the Deployment's, this identity's kubeconfig.
    fn env_vars(&self) -> Vec<(&str, &str)> {
        let mut vars: Vec<(&str, &str)> = self
            .deployment_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.push(("KUBECONFIG", self.kubeconfig.to_str().unwrap()));
        vars.push(("POD_NAME", "credsync-0"));
        vars.push(("POD_NAMESPACE", RELEASE_NS));
        vars
    }

    fn sync(&self) -> support::Run {
        self.env.credsync_env(&["sync"], &self.env_vars())
    }

    /// Removes `verb` from the rules of the rendered `kind` that grant it on
    /// `resource` (in `namespace`, for a Role), and applies the result.
    fn take_away(&self, kind: &str, namespace: Option<&str>, resource: &str, verb: &str) {
        let mut object = self
            .objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["namespace"].as_str() == namespace
                    && o["rules"].as_array().is_some_and(|rules| {
                        rules.iter().any(|r| {
                            r["resources"]
                                .as_array()
                                .unwrap()
                                .contains(&json!(resource))
                        })
                    })
            })
            .unwrap_or_else(|| panic!("no {kind} granting {resource} in {namespace:?}"))
            .clone();
        for rule in object["rules"].as_array_mut().unwrap() {
            if rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!(resource))
            {
                let verbs = rule["verbs"].as_array_mut().unwrap();
                assert!(
                    verbs.contains(&json!(verb)),
                    "{verb} is not granted: {rule}"
                );
                verbs.retain(|v| v != verb);
            }
        }
        self.kubectl_apply(&[object]);
    }
}

fn plane_yaml(env: &StandIns, token: &str) -> String {
    env.control_plane().kubeconfig_yaml(token, RELEASE_NS)
}

/// What the chart's Deployment would run: schedule-driven loop with leader election.
fn values(extra: Value) -> Value {
    let mut values = json!({
        "config": {"stream": {"enabled": false}, "interval": "1s"},
        "leaderElection": {"enabled": true},
    });
    if let (Some(base), Some(extra)) = (values.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    values
}

/// `sync`, then `run --leader-election` as the ServiceAccount, then a
/// change the loop carries over.
async fn sync_and_run_as_the_service_account(chart: &Installed) {
    let env = &chart.env;
    env.put("team-a/app/password", "rbac-team-a-password-1");
    env.put("team-b/web/token", "rbac-team-b-token-1");
    let run = chart.sync();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        env.secret_data("team-a", "app").await.unwrap()["PASSWORD"],
        b"rbac-team-a-password-1"
    );
    assert_eq!(
        env.secret_data("team-b", "web").await.unwrap()["TOKEN"],
        b"rbac-team-b-token-1"
    );

    let daemon = env.daemon(
        &[
            "--sync-token-file",
            env.write_file("token", "rbac-sync-token").to_str().unwrap(),
        ],
        &chart.env_vars(),
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.admin().await, RELEASE_NS);
    let held = eventually(Duration::from_secs(20), || async {
        leases
            .get_opt("credsync")
            .await
            .ok()
            .flatten()
            .is_some_and(|l| {
                l.spec.and_then(|s| s.holder_identity).as_deref() == Some("credsync-0")
            })
    })
    .await;
    assert!(held, "the Lease is held: {}", env.daemon_log(&daemon));
    env.put("team-a/app/password", "rbac-team-a-password-2");
    let carried = env
        .eventually_value(
            "team-a",
            "app",
            "PASSWORD",
            b"rbac-team-a-password-2",
            Duration::from_secs(30),
        )
        .await;
    let log = env.daemon_log(&daemon);
    assert!(carried, "{log}");
    assert!(!log.contains("forbidden"), "{log}");
}

/// With `patch` on Secrets gone in team-b, a change there fails naming
/// what was refused, and team-a's change still lands.
async fn a_missing_verb_is_named(chart: &Installed) {
    let env = &chart.env;
    env.put("team-a/app/password", "rbac-team-a-password-3");
    env.put("team-b/web/token", "rbac-team-b-token-3");
    let run = chart.sync();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let output = format!("{}\n{}", run.stdout, run.stderr);
    let named = output.lines().find(|l| {
        l.contains("team-b")
            && l.contains("patch")
            && l.contains("secrets")
            && l.contains("forbidden")
    });
    assert!(
        named.is_some(),
        "no line names secrets/patch/team-b:\n{output}"
    );
    assert_eq!(
        env.secret_data("team-a", "app").await.unwrap()["PASSWORD"],
        b"rbac-team-a-password-3",
        "the other namespace still syncs"
    );
    assert_eq!(
        env.secret_data("team-b", "web").await.unwrap()["TOKEN"],
        b"rbac-team-b-token-1",
        "the refused write changed nothing"
    );
}

#[tokio::test]
async fn cluster_wide_rbac_is_enough_and_a_missing_verb_is_named() {
    let env = StandIns::start(&[RELEASE_NS, "team-a", "team-b"]).await;
    let chart = Installed::new(env, values(json!({}))).await;
    assert!(
        chart
            .objects
            .iter()
            .all(|o| o["kind"] != "Role" || o["metadata"]["name"] == "credsync-leader-election"),
        "cluster-wide mode grants Secrets through the ClusterRole only"
    );
    sync_and_run_as_the_service_account(&chart).await;
    // The ClusterRole loses patch on Secrets: every namespace is refused
    // its updates, creates still work.
    chart.take_away("ClusterRole", None, "secrets", "patch");
    chart
        .env
        .put("team-a/app/password", "rbac-team-a-password-3");
    chart.env.put("team-a/fresh/key", "rbac-fresh-value");
    let run = chart.sync();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let output = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        output
            .lines()
            .any(|l| l.contains("cannot patch resource \"secrets\"") && l.contains("team-a")),
        "{output}"
    );
    assert!(
        chart.env.secret("team-a", "fresh").await.is_some(),
        "create is still granted"
    );
}

#[tokio::test]
async fn namespaced_rbac_is_enough_and_a_missing_verb_is_named() {
    let env = StandIns::start(&[RELEASE_NS, "team-a", "team-b", "team-c"]).await;
    let chart = Installed::new(
        env,
        values(json!({"rbac": {"namespaces": ["team-a", "team-b"]}})),
    )
    .await;
    // team-c is outside the grant: the chart's include list keeps credsync out of it.
    chart.env.put("team-c/other/key", "rbac-team-c-value");
    sync_and_run_as_the_service_account(&chart).await;
    assert!(chart.env.secret("team-c", "other").await.is_none());
    chart.take_away("Role", Some("team-b"), "secrets", "patch");
    a_missing_verb_is_named(&chart).await;
}

impl Installed {
    /// A ServiceAccount `name` in `namespace`, bound there to the chart's
    /// credentials-editor ClusterRole; returns a token for it.
    fn caller(&self, name: &str, namespace: &str) -> String {
        self.kubectl_apply(&[
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": namespace}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": format!("{name}-credentials"), "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "credsync-credentials-editor"},
                   "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}),
        ]);
        self.kubectl(&["create", "token", name, "-n", namespace, "--duration", "1h"])
            .trim()
            .to_owned()
    }
}

/// `PUT`/`DELETE`/`GET` on the self-service API as `token`: (status, body).
fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    let (status, response) = support::http_request(port, method, path, &headers, body);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn self_service_writes_follow_each_callers_rbac() {
    let env = StandIns::start(&[RELEASE_NS, "team-a", "team-b", "team-c"]).await;
    let chart = Installed::new(
        env.clone(),
        values(json!({
            "rbac": {"namespaces": ["team-a", "team-b"]},
            "rollouts": {"enabled": true},
            "selfService": {"enabled": true, "maxValueBytes": 1024, "namespaces": ["team-a", "team-b"]},
        })),
    )
    .await;
    let alice = chart.caller("alice", "team-a");
    let bob = chart.caller("bob", "team-b");
    let alice_user = "system:serviceaccount:team-a:alice";
    let (recipient, _identity) = env.age_identity("reader");
    let repo = env.dir.path().join("snapshots");
    let daemon = env.daemon(
        &[
            "--sync-token-file",
            env.write_file("token", "rbac-sync-token").to_str().unwrap(),
            "--snapshot-repo",
            repo.to_str().unwrap(),
            "--age-recipient",
            &recipient,
        ],
        &chart.env_vars(),
    );
    assert!(ready(daemon.port).await, "{}", env.daemon_log(&daemon));
    let port = daemon.port;
    for value in [
        "alice-self-service-one",
        "alice-self-service-two",
        "bob-self-service-one",
        "bob-refused-value",
        "bob-through-put-server",
    ] {
        env.seed(value);
    }

    // Who may not: no token, a garbage token, another namespace's caller.
    let path = "/v1/secrets/team-a/db/PASSWORD";
    let (status, body) = call(port, "PUT", path, None, b"bob-refused-value");
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(port, "PUT", path, Some("not-a-token"), b"bob-refused-value");
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(port, "PUT", path, Some(&bob), b"bob-refused-value");
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("namespace 'team-a'") && body.contains("system:serviceaccount:team-b:bob"),
        "{body}"
    );
    let table_has = |name: &str| {
        let out = env.credstash(&["get", "-n", name]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(
        table_has("team-a/db/PASSWORD"),
        None,
        "refused calls touch no table"
    );

    // Bad input, each its own answer.
    let (status, body) = call(
        port,
        "PUT",
        "/v1/secrets/team-a/Bad_Name/KEY",
        Some(&alice),
        b"x",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(port, "PUT", "/v1/secrets/team-c/db/KEY", Some(&alice), b"x");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not included"), "{body}");
    let (status, body) = call(port, "PUT", path, Some(&alice), &[b'x'; 2048]);
    assert_eq!(status, 413, "{body}");

    // Alice writes her namespace; the item is in the table, the real
    // credstash reads it, and it reaches the Secret.
    let (status, body) = call(port, "PUT", path, Some(&alice), b"alice-self-service-one");
    assert_eq!(status, 201, "{body}");
    let written: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(written["version"], "0000000000000000001");
    assert_eq!(
        table_has("team-a/db/PASSWORD").as_deref(),
        Some("alice-self-service-one")
    );
    let reached = env
        .eventually_value(
            "team-a",
            "db",
            "PASSWORD",
            b"alice-self-service-one",
            Duration::from_secs(30),
        )
        .await;
    assert!(reached, "{}", env.daemon_log(&daemon));
    // A stale If-Match is a conflict, not an overwrite.
    let bearer = format!("Bearer {alice}");
    let (status, _) = support::http_request(
        port,
        "PUT",
        path,
        &[("Authorization", bearer.as_str()), ("If-Match", "7")],
        b"alice-self-service-two",
    );
    assert_eq!(status, 409);

    // Bob writes his own namespace.
    let (status, body) = call(
        port,
        "PUT",
        "/v1/secrets/team-b/api/TOKEN",
        Some(&bob),
        b"bob-self-service-one",
    );
    assert_eq!(status, 201, "{body}");

    // The audit line, the Event and the snapshot commit name the writer.
    let log = env.daemon_log(&daemon);
    assert!(
        log.lines().any(|l| l.contains("self-service write")
            && l.contains(alice_user)
            && l.contains("team-a/db/PASSWORD")),
        "{log}"
    );
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.admin().await, "team-a");
    let noted = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("db")
                && e.note.as_deref().is_some_and(|n| n.contains(alice_user))
        });
    assert!(noted, "an Event on team-a/db names the writer");
    // The snapshot history: a commit message that says `line`, soon.
    let commit_says = |line: String| {
        let (env, repo) = (&env, &repo);
        async move {
            let said = eventually(Duration::from_secs(20), || async {
                env.git(repo, &["log", "--format=%B"]).contains(&line)
            })
            .await;
            assert!(
                said,
                "no commit says {line}: {}",
                env.git(repo, &["log", "--format=%B"])
            );
        }
    };
    commit_says(format!(
        "put by {alice_user}: team-a/db/PASSWORD@0000000000000000001"
    ))
    .await;

    // Listing: names and versions, never values; only where RBAC allows.
    let (status, body) = call(port, "GET", "/v1/secrets/team-a", Some(&alice), b"");
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["items"][0]["key"], "PASSWORD", "{body}");
    assert_eq!(listed["items"][0]["version"], "0000000000000000001");
    env.assert_no_value_in(&body, "the listing");
    assert_eq!(
        call(port, "GET", "/v1/secrets/team-a", Some(&bob), b"").0,
        403
    );

    // A rotation through the API restarts the Deployment that uses it (rollouts RBAC).
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(env.admin().await, "team-a");
    let web: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "annotations": {"credsync.io/reload": "true"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1",
                "envFrom": [{"secretRef": {"name": "db"}}]}]}}}
    }))
    .unwrap();
    deployments.create(&Default::default(), &web).await.unwrap();
    let (status, body) = call(port, "PUT", path, Some(&alice), b"alice-self-service-two");
    assert_eq!(status, 201, "{body}");
    let restarted = eventually(Duration::from_secs(30), || async {
        deployments
            .get("web")
            .await
            .ok()
            .and_then(|d| d.spec.template.metadata?.annotations)
            .is_some_and(|a| {
                a.get("credsync.io/restarted-for")
                    .is_some_and(|v| v.starts_with("team-a/db@sha256:"))
            })
    })
    .await;
    assert!(restarted, "{}", env.daemon_log(&daemon));

    // `credsync put --server` with the kubeconfig's token: no AWS credentials.
    let bob_kubeconfig = env.dir.path().join("bob.kubeconfig");
    std::fs::write(
        &bob_kubeconfig,
        env.control_plane().kubeconfig_yaml(&bob, "team-b"),
    )
    .unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let value_file = env.write_file("bob-value", "bob-through-put-server");
    let no_aws = [
        ("KUBECONFIG", bob_kubeconfig.to_str().unwrap()),
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ];
    let put = env.credsync_env(
        &[
            "put",
            "team-b/api/TOKEN",
            "-f",
            value_file.to_str().unwrap(),
            "--server",
            &server,
        ],
        &no_aws,
    );
    assert_eq!(put.code, 0, "{}\n{}", put.stdout, put.stderr);
    assert!(
        put.stdout
            .contains("team-b/api/TOKEN version 0000000000000000002 stored"),
        "{}",
        put.stdout
    );
    assert_eq!(
        table_has("team-b/api/TOKEN").as_deref(),
        Some("bob-through-put-server")
    );
    let refused = env.credsync_env(
        &[
            "put",
            "team-a/db/PASSWORD",
            "-f",
            value_file.to_str().unwrap(),
            "--server",
            &server,
        ],
        &no_aws,
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused.error_line().contains("403") && refused.error_line().contains("team-a"),
        "{}",
        refused.stderr
    );

    // Alice deletes her key: every version goes, and the key leaves the Secret.
    let (status, body) = call(port, "DELETE", path, Some(&alice), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(table_has("team-a/db/PASSWORD"), None);
    let (status, _) = call(port, "DELETE", path, Some(&alice), b"");
    assert_eq!(status, 404);
    let removed = eventually(Duration::from_secs(30), || async {
        env.secret_data("team-a", "db")
            .await
            .is_none_or(|d| !d.contains_key("PASSWORD"))
    })
    .await;
    assert!(removed, "{}", env.daemon_log(&daemon));
    commit_says(format!(
        "deleted by {alice_user}: team-a/db/PASSWORD (every version)"
    ))
    .await;
    env.daemon_log(&daemon);
}
