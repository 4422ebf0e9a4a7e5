//! Rollouts on a real API server: workloads that opted in restart once when
//! a Secret they use changes, through their pod template annotation.

mod support;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::StandIns;

const NS: &str = "app";

fn pod_template(secret_use: Value) -> Value {
    let mut container = json!({ "name": "main", "image": "registry.invalid/app:1" });
    if let Value::Object(extra) = secret_use {
        for (k, v) in extra {
            container[k] = v;
        }
    }
    json!({
        "metadata": { "labels": { "app": "x" } },
        "spec": { "containers": [container] }
    })
}

fn uses_env(secret: &str) -> Value {
    json!({ "env": [{ "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": secret, "key": "PASSWORD" } } }] })
}

fn uses_env_from(secret: &str) -> Value {
    json!({ "envFrom": [{ "secretRef": { "name": secret } }] })
}

async fn create_deployment(env: &StandIns, name: &str, annotations: Value, secret_use: Value) {
    let api: Api<Deployment> = Api::namespaced(env.admin().await, NS);
    let body: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "selector": { "matchLabels": { "app": "x" } },
            "template": pod_template(secret_use),
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &body).await.unwrap();
}

/// The pod template annotations and generation of a workload.
async fn template_state<K>(env: &StandIns, name: &str) -> (Option<String>, i64)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
    K: serde::Serialize,
{
    let api: Api<K> = Api::namespaced(env.admin().await, NS);
    let object = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
    let restarted =
        object["spec"]["template"]["metadata"]["annotations"]["credsync.io/restarted-for"]
            .as_str()
            .map(str::to_owned);
    let generation = object["metadata"]["generation"].as_i64().unwrap();
    (restarted, generation)
}

/// Every workload kind and opt-in, one un-annotated Deployment, and one
/// annotated Deployment that uses another Secret.
async fn arrange(env: &StandIns) {
    env.put("app/db/PASSWORD", "rollout-password-one");
    env.put("app/other/TOKEN", "rollout-other-token");
    let first = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(
        !first.stdout.contains("restart"),
        "creating a Secret restarts nothing: {}",
        first.stdout
    );

    create_deployment(
        env,
        "web",
        json!({ "credsync.io/reload": "true" }),
        uses_env("db"),
    )
    .await;
    create_deployment(env, "plain", json!({}), uses_env("db")).await;
    create_deployment(
        env,
        "unrelated",
        json!({ "credsync.io/reload": "true" }),
        uses_env_from("other"),
    )
    .await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.admin().await, NS);
    let queue: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "queue", "annotations": { "credsync.io/reload-secrets": "db,cache" } },
        "spec": {
            "serviceName": "queue",
            "selector": { "matchLabels": { "app": "x" } },
            "template": pod_template(json!({})),
        }
    }))
    .unwrap();
    statefulsets
        .create(&PostParams::default(), &queue)
        .await
        .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.admin().await, NS);
    let agent: DaemonSet = serde_json::from_value(json!({
        "metadata": { "name": "agent", "annotations": { "eventdrivensecretsmanaged": "[\"db\"]" } },
        "spec": {
            "selector": { "matchLabels": { "app": "x" } },
            "template": {
                "metadata": { "labels": { "app": "x" } },
                "spec": {
                    "containers": [{ "name": "main", "image": "registry.invalid/agent:1" }],
                    "volumes": [{ "name": "creds", "secret": { "secretName": "db" } }]
                }
            },
        }
    }))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &agent)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_changed_secret_restarts_each_workload_that_opted_in_once() {
    let env = StandIns::start(&[NS]).await;
    arrange(&env).await;
    env.put("app/db/PASSWORD", "rollout-password-two");

    let plan = env.credsync(&["plan", "--rollouts"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    for expected in [
        "restart deployment/web (app)  for app/db",
        "restart statefulset/queue (app)",
        "restart daemonset/agent (app)",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "{expected}: {}",
            plan.stdout
        );
    }
    assert!(!plan.stdout.contains("deployment/plain"), "{}", plan.stdout);
    assert!(
        !plan.stdout.contains("deployment/unrelated"),
        "{}",
        plan.stdout
    );
    let json_plan = env.credsync(&["plan", "--rollouts", "--format", "json"]);
    let doc: Value = serde_json::from_str(&json_plan.stdout).unwrap();
    assert_eq!(doc["summary"]["restarts"], 3, "{}", json_plan.stdout);
    assert_eq!(doc["restarts"][0]["workload"]["kind"], "deployment");
    assert_eq!(doc["restarts"][0]["secrets"][0]["name"], "db");

    // A dry run lists the restarts and patches nothing.
    let (before, web_generation) = template_state::<Deployment>(&env, "web").await;
    assert_eq!(before, None);
    env.mark_requests();
    let dry = env.credsync(&["sync", "--rollouts", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("Would restart: 3 workload(s)."),
        "{}",
        dry.stdout
    );
    assert_eq!(
        template_state::<Deployment>(&env, "web").await,
        (None, web_generation)
    );
    let workload_patches = |env: &StandIns| {
        env.credsync_requests()
            .into_iter()
            .filter(|e| e.verb == "patch" && e.resource() != "secrets" && !e.dry_run())
            .map(|e| format!("{}/{}", e.resource(), e.name().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    assert!(workload_patches(&env).is_empty());

    let run = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("Restarted: 3 workload(s)."),
        "{}",
        run.stdout
    );
    let mut patched = workload_patches(&env);
    patched.sort();
    // One restart per workload; `unrelated` (whose Secret did not change)
    // gets its record of what it runs, a metadata patch that restarts nothing.
    assert_eq!(
        patched,
        [
            "daemonsets/agent",
            "deployments/unrelated",
            "deployments/web",
            "statefulsets/queue"
        ],
        "one patch per workload"
    );
    let fingerprint = env
        .secret("app", "db")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap()["credsync.io/fingerprint"]
        .clone();
    let (restarted, generation) = template_state::<Deployment>(&env, "web").await;
    assert_eq!(restarted, Some(format!("app/db@{fingerprint}")));
    assert_eq!(
        generation,
        web_generation + 1,
        "the template changed: a rollout"
    );
    assert!(
        template_state::<StatefulSet>(&env, "queue")
            .await
            .0
            .is_some()
    );
    assert!(template_state::<DaemonSet>(&env, "agent").await.0.is_some());
    assert_eq!(template_state::<Deployment>(&env, "plain").await.0, None);
    assert_eq!(
        template_state::<Deployment>(&env, "unrelated").await.0,
        None
    );

    // In step: nothing to restart.
    env.mark_requests();
    let again = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(again.code, 0);
    assert!(workload_patches(&env).is_empty());
    assert_eq!(
        template_state::<Deployment>(&env, "web").await.1,
        generation
    );

    // Without --rollouts, a change restarts nothing.
    env.put("app/db/PASSWORD", "rollout-password-three");
    env.mark_requests();
    assert_eq!(env.credsync(&["sync"]).code, 0);
    assert!(workload_patches(&env).is_empty());
}

#[tokio::test]
async fn a_refused_restart_is_retried_reported_and_the_others_still_roll() {
    let env = StandIns::start(&[NS]).await;
    arrange(&env).await;
    let faults = env.faults().await;

    // One refusal is retried away.
    faults.inject_json(
        json!({"verb": "patch", "resource": "deployments", "status": 409, "times": 1}),
    );
    env.put("app/db/PASSWORD", "rollout-password-retried");
    let run = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(template_state::<Deployment>(&env, "web").await.0.is_some());

    // A lasting refusal (RBAC) is reported; the other kinds still roll.
    faults.clear_faults();
    faults.inject_json(json!({"verb": "patch", "resource": "deployments", "status": 403}));
    let (_, queue_generation) = template_state::<StatefulSet>(&env, "queue").await;
    env.put("app/db/PASSWORD", "rollout-password-refused");
    let run = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("x not restarted app/deployment/web"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.secret_data("app", "db").await.unwrap()["PASSWORD"],
        b"rollout-password-refused",
        "the Secret itself was written"
    );
    assert_eq!(
        template_state::<StatefulSet>(&env, "queue").await.1,
        queue_generation + 1
    );

    // A Secret whose write failed restarts nothing.
    faults.clear_faults();
    faults.inject_json(json!({"verb": "patch", "resource": "secrets", "status": 403}));
    let (_, queue_generation) = template_state::<StatefulSet>(&env, "queue").await;
    env.put("app/db/PASSWORD", "rollout-password-unwritten");
    let run = env.credsync(&["sync", "--rollouts"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        template_state::<StatefulSet>(&env, "queue").await.1,
        queue_generation
    );
}
