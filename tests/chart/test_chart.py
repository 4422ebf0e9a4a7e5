"""Tests of the Helm chart (charts/credsync), its alerts and its dashboard.

- The chart is rendered and linted by the real Helm library (helm-python-sdk
  embeds Helm v4) and every object is validated against the Kubernetes
  OpenAPI schemas (kubernetes-validate, strict: unknown fields fail); the
  prometheus-operator objects against the CRD schemas as generated into
  cloudcoil-models-prometheus-operator.
- The rendered RBAC is evaluated like the API server's RBAC authorizer
  against tests/calls.json, the calls credsync makes.
- The rendered environment is handed to the real binary (`credsync run
  --print-config`), so a misspelt variable or a value credsync refuses fails.
- Alerts go through `promtool check rules` and `promtool test rules`; every
  PromQL expression is parsed and its metric names checked against what
  credsync exports (src/metrics.rs, cross-checked with a real /metrics scrape).

Nothing here uses the network; a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import promql_parser
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from render import CHART, NAMESPACE, RELEASE, ROOT, render
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
AGE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"

VARIANTS: dict[str, dict] = {
    "default": {},
    "namespaced-rbac": {"rbac": {"namespaces": ["team-a", "team-b"]}},
    "servicemonitor": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "platform"}},
        "dashboard": {"enabled": True},
        "networkPolicy": {"enabled": True},
    },
    "two-replicas": {"replicaCount": 2, "podDisruptionBudget": {"enabled": True}},
    # Rollouts and the self-service API, with RBAC confined to two namespaces.
    "peers-namespaced": {
        "rbac": {"namespaces": ["team-a", "team-b"]},
        "rollouts": {"enabled": True},
        "selfService": {"enabled": True, "keyId": "alias/team-writes", "maxValueBytes": 4096,
                        "namespaces": ["team-a", "team-b"]},
    },
    # No stream, no token: a schedule-only installation with /sync open on purpose.
    "schedule-only": {
        "config": {"stream": {"enabled": False}, "interval": "1h"},
        "syncToken": {"generate": False, "insecureNoAuth": True},
    },
    # Everything else a platform team may set, to exercise every template branch.
    "full": {
        "image": {"repository": "registry.example.com/credsync", "digest": "sha256:" + "a" * 64},
        "serviceAccount": {"roleArn": "arn:aws:iam::123456789012:role/credsync"},
        "config": {
            "sources": ["credstash", "secretsmanager"],
            "secretsManager": {"names": "kiss", "prefix": "prod/", "tags": {"team": "payments"}},
            "eventsQueues": ["https://sqs.eu-west-1.amazonaws.com/123456789012/credsync-prod-eu"],
            "table": "prod-credentials",
            "region": "eu-west-1",
            "context": {"app": "credsync", "env": "prod"},
            "clusterName": "prod-eu",
            "namespaceExclude": "kube-system|kube-public",
            "namespaceInclude": ["payments", "web"],
            "kmsConcurrency": 8,
            "scanSegments": 1000000,
            "prune": False,
            "keepEmpty": True,
            "keyMapping": "kubestash-v2",
            "adoptKubestashV2": True,
            "logFormat": "text",
            "verbose": True,
            "interval": "",
            "schedule": "*/15 * * * *",
            "stream": {
                "enabled": True,
                "arn": "arn:aws:dynamodb:eu-west-1:123456789012:table/prod-credentials/stream/2024-01-01T00:00:00.000",
                "debounce": "500ms",
                "idlePoll": "5s",
            },
            "reconcileTimeout": "2m",
            "failureLimit": 3,
            "syncRateLimit": "30s",
            "driftRepair": False,
            "dryRun": True,
            "grace": "10s",
        },
        "leaderElection": {"enabled": True, "leaseDuration": "30s"},
        "syncToken": {"existingSecret": "kubestash-v2", "existingSecretKey": "FLASK_API_KEY"},
        "snapshot": {
            "enabled": True,
            "ageRecipients": [AGE_RECIPIENT],
            "remote": "git@github.example.com:platform/snapshots.git",
            "sshKeySecret": {"name": "snapshot-deploy-key", "key": "id_ed25519"},
            "sshKnownHosts": "github.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "tokenSecret": {"name": "snapshot-https", "key": "token"},
            "signingKeySecret": {"name": "snapshot-signing", "key": "id_ed25519"},
            "trustedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl old-key"],
            "ageIdentitySecret": {"name": "snapshot-age", "key": "identity"},
        },
        "networkPolicy": {"enabled": True, "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
        "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}],
    },
}
CRD_KINDS = {"ServiceMonitor": prometheus_operator.ServiceMonitor, "PrometheusRule": prometheus_operator.PrometheusRule}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace"}


# ---------------------------------------------------------------- helpers


def rendered(variant: str) -> list[dict]:
    return render(VARIANTS[variant])


def merged(variant: str) -> dict:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(VARIANTS[variant])


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[dict]) -> dict:
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["credsync"]
    return pod["containers"][0]


def env_of(objects: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(objects).get("env", [])}


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (README: apt-get install -y prometheus)")
    return path


def credsync_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    candidates = [os.environ.get("CREDSYNC_BIN", ""), target / "debug" / "credsync", target / "release" / "credsync"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("credsync is not built: run `cargo build` (or `just build`) first, or set CREDSYNC_BIN")


def seconds(text: str) -> float:
    """A duration as credsync's flags read it, or as Rust's Duration Debug prints it."""
    number, unit = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s|m|h)?", text.strip()).groups()
    scale = {None: 1, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "m": 60, "h": 3600}[unit]
    return float(number) * scale


# ---------------------------------------------------------------- render, lint, schemas


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_is_clean(variant):
    for kube_version in ("v1.25.0", "v1.37.0"):
        report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version=kube_version)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_its_schema(variant, kube_version):
    objects = rendered(variant)
    assert objects
    for obj in objects:
        where = f'{obj["kind"]}/{obj["metadata"].get("name")}'
        if obj["kind"] in CRD_KINDS:
            model = CRD_KINDS[obj["kind"]].model_validate(obj)
            # The models ignore unknown fields: a field that does not survive the
            # round trip is one the CRD does not have.
            assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, where
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{where} fails the Kubernetes {kube_version} schema at {list(err.path)}: {err.message}")
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), f"{where} has no namespace (kubectl apply of `helm template` output would misplace it)"


def test_variants_render_what_they_enable():
    kinds = lambda variant: sorted(o["kind"] for o in rendered(variant))  # noqa: E731
    assert kinds("default") == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "Service", "Deployment"])
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"} <= set(kinds("servicemonitor"))
    assert {"Role", "RoleBinding", "PodDisruptionBudget"} <= set(kinds("two-replicas"))
    namespaced = rendered("namespaced-rbac")
    assert sorted(o["metadata"]["namespace"] for o in namespaced if o["kind"] == "Role") == ["team-a", "team-b"]


def test_pod_is_locked_down_and_probed():
    objects = rendered("full")
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert env_of(objects)["CREDSYNC_LISTEN"]["value"] == "0.0.0.0:8080"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["args"] == ["run"]
    assert c["image"] == "registry.example.com/credsync@sha256:" + "a" * 64
    # The only writable mount is the snapshot repository's emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [(m["name"], m["mountPath"]) for m in writable] == [("snapshots", "/var/lib/credsync")]
    assert "emptyDir" in volumes["snapshots"]
    assert env_of(objects)["CREDSYNC_SNAPSHOT_REPO"]["value"].startswith("/var/lib/credsync/")
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    # The Dockerfile's user is the one the chart runs as.
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", dockerfile, re.M)
    assert user and int(user[-1]) == pod["securityContext"]["runAsUser"]


def test_dockerfile_is_multi_stage_distroless_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) == 2 and "rust:" in stages[0]
    assert stages[-1].startswith("gcr.io/distroless/cc-debian12") and stages[-1].endswith(":nonroot")
    assert "--locked" in text and "cargo build --release" in text
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/credsync"\]', text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"target/", ".venv/", ".git/"} <= set(ignored)


def test_leader_election_follows_replicas():
    single = rendered("default")
    assert "CREDSYNC_LEADER_ELECTION" not in env_of(single)
    assert only(single, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in single if o["kind"] == "Role"]

    two = rendered("two-replicas")
    env = env_of(two)
    assert only(two, "Deployment")["spec"]["replicas"] == 2
    assert env["CREDSYNC_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "CREDSYNC_LEASE_NAMESPACE" not in env, "the Lease belongs in the pod's namespace (POD_NAMESPACE)"
    assert only(two, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert only(two, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_service_account_carries_the_irsa_role():
    sa = only(rendered("full"), "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/credsync"
    assert "annotations" not in only(rendered("default"), "ServiceAccount")["metadata"]
    pod = only(rendered("default"), "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_sync_token_is_generated_or_taken_from_an_existing_secret():
    objects = rendered("default")
    secret = only(objects, "Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
    assert token != base64.b64decode(only(rendered("default"), "Secret")["data"]["token"]).decode(), "random per install"
    volume = only_volume(objects, "sync-token")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert env_of(objects)["CREDSYNC_SYNC_TOKEN_FILE"]["value"] == "/etc/credsync/sync-token/token"
    # Kept across upgrades: the template reuses the token `lookup` finds (an offline
    # render has no cluster, so only the template's logic can be checked here).
    template = (CHART / "templates" / "secret-sync-token.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert "$token = index $existing.data \"token\"" in template
    assert "randAlphaNum" in template

    existing = rendered("full")
    assert not [o for o in existing if o["kind"] == "Secret"]
    volume = only_volume(existing, "sync-token")
    assert volume["secret"]["secretName"] == "kubestash-v2"
    assert volume["secret"]["items"] == [{"key": "FLASK_API_KEY", "path": "token"}]

    # No token: /sync and /plan are closed unless opened on purpose.
    closed = render({"syncToken": {"existingSecret": "", "existingSecretKey": "token", "generate": False}})
    assert not [o for o in closed if o["kind"] == "Secret"]
    assert "CREDSYNC_SYNC_TOKEN_FILE" not in env_of(closed)
    assert "CREDSYNC_INSECURE_NO_AUTH" not in env_of(closed)
    opened = render({"syncToken": {"existingSecret": "", "generate": False, "insecureNoAuth": True}})
    assert env_of(opened)["CREDSYNC_INSECURE_NO_AUTH"]["value"] == "true"
    # A token wins: insecureNoAuth is ignored rather than sent beside it.
    both = render({"syncToken": {"generate": True, "insecureNoAuth": True}})
    assert "CREDSYNC_INSECURE_NO_AUTH" not in env_of(both)


def only_volume(objects: list[dict], name: str) -> dict:
    volumes = only(objects, "Deployment")["spec"]["template"]["spec"].get("volumes", [])
    found = [v for v in volumes if v["name"] == name]
    assert len(found) == 1, f"volume {name}: {volumes}"
    return found[0]


def test_snapshot_remote_credentials_are_mounted_from_secrets():
    objects = rendered("full")
    env = env_of(objects)
    assert env["CREDSYNC_AGE_RECIPIENT"]["value"] == AGE_RECIPIENT
    assert env["CREDSYNC_SNAPSHOT_REMOTE"]["value"] == "git@github.example.com:platform/snapshots.git"
    assert env["CREDSYNC_SNAPSHOT_SSH_KEY"]["value"] == "/etc/credsync/snapshot-ssh/key"
    assert only_volume(objects, "snapshot-ssh")["secret"] == {
        "secretName": "snapshot-deploy-key", "defaultMode": 0o440, "items": [{"key": "id_ed25519", "path": "key"}]}
    assert only_volume(objects, "snapshot-token")["secret"]["secretName"] == "snapshot-https"
    assert only_volume(objects, "age-identity")["secret"]["secretName"] == "snapshot-age"
    assert only_volume(objects, "signing-key")["secret"] == {
        "secretName": "snapshot-signing", "defaultMode": 0o440, "items": [{"key": "id_ed25519", "path": "key"}]}
    assert env["CREDSYNC_SNAPSHOT_SIGNING_KEY"]["value"] == "/etc/credsync/signing/key"
    assert env["CREDSYNC_SNAPSHOT_TRUSTED_KEY"]["value"] == "/etc/credsync/trusted/keys"
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    trusted = next(o for name, o in config_maps.items() if name.endswith("-trusted-keys"))
    assert trusted["data"]["keys"].strip().endswith(" old-key"), trusted
    known_hosts = next(o for name, o in config_maps.items() if name.endswith("-ssh-known-hosts"))
    assert known_hosts["data"]["known_hosts"].startswith("github.example.com ssh-ed25519 ")
    assert env["HOME"]["value"] == "/home/nonroot"
    policy = only(objects, "NetworkPolicy")
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 6443, 22} <= egress_ports


# ---------------------------------------------------------------- the environment, read by credsync itself


def cli_env_names() -> set[str]:
    """Every CREDSYNC_* variable credsync reads (clap `env = ...` and std::env::var)."""
    text = "".join(path.read_text() for path in sorted((ROOT / "src" / "cli").glob("*.rs")))
    return set(re.findall(r'env = "(CREDSYNC_[A-Z0-9_]+)"', text)) | set(re.findall(r'env::var\("(CREDSYNC_[A-Z0-9_]+)"\)', text))


# README configuration variables the chart deliberately does not set, and why.
NOT_SET_IN_CLUSTER = {
    "CREDSYNC_FORMAT": "output format of plan/sync; `run` prints no plan",
    "CREDSYNC_IDENTITY": "POD_NAME (downward API) names the replica in the Lease",
    "CREDSYNC_LEASE_NAMESPACE": "POD_NAMESPACE: the Lease lives in the release namespace, where its Role is",
    "CREDSYNC_SYNC_TOKEN": "the token is mounted as a file (CREDSYNC_SYNC_TOKEN_FILE), never an env value",
    "CREDSYNC_SNAPSHOT_TOKEN": "the token is mounted as a file (CREDSYNC_SNAPSHOT_TOKEN_FILE)",
    "CREDSYNC_TIMEOUT": "bounds one-shot commands; `run` has CREDSYNC_RECONCILE_TIMEOUT",
    "CREDSYNC_SERVER": "where `put --server` sends a write: a workstation setting",
}


def test_chart_sets_every_in_cluster_variable_and_only_real_ones():
    known = cli_env_names()
    readme = (ROOT / "README.md").read_text()
    config_section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(CREDSYNC_[A-Z0-9_]+)`", config_section))
    assert listed, "README configuration table not found"
    set_by_chart: set[str] = set()
    for variant in VARIANTS:
        names = {n for n in env_of(rendered(variant)) if n.startswith("CREDSYNC_")}
        unknown = names - known
        assert not unknown, f"{variant}: credsync reads no {sorted(unknown)} (src/cli/)"
        set_by_chart |= names
    missing = listed - set_by_chart - set(NOT_SET_IN_CLUSTER)
    assert not missing, f"README variables the chart never sets: {sorted(missing)}"
    assert set(NOT_SET_IN_CLUSTER) <= listed


@pytest.mark.parametrize("variant", VARIANTS)
def test_credsync_accepts_the_rendered_environment(variant, tmp_path):
    """`credsync run --print-config` parses the env exactly as the pod would."""
    objects = rendered(variant)
    values = merged(variant)
    c = container(objects)
    pod_fields = {"metadata.name": "credsync-7d9f-abcde", "metadata.namespace": NAMESPACE}
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(tmp_path)}
    for item in c["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = pod_fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    # The token Secret as the pod mounts it: credsync reads the file at start.
    if "CREDSYNC_SYNC_TOKEN_FILE" in env:
        mounted = tmp_path / "sync-token"
        mounted.write_text("rendered-test-token\n")
        env["CREDSYNC_SYNC_TOKEN_FILE"] = str(mounted)
    run = subprocess.run([str(credsync_binary()), *c["args"], "--print-config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    cfg = values["config"]
    include = cfg["namespaceInclude"] or values["rbac"]["namespaces"]
    leader = values["replicaCount"] > 1 or values["leaderElection"]["enabled"]
    assert printed["table"] == cfg["table"]
    assert printed["sources"] == sorted(cfg["sources"])
    assert printed["events_queues"] == cfg["eventsQueues"]
    if "secretsmanager" in cfg["sources"]:
        assert printed["sm_names"] == cfg["secretsManager"]["names"]
        assert printed["sm_prefix"] == cfg["secretsManager"]["prefix"]
        assert printed["sm_tag_keys"] == sorted(cfg["secretsManager"]["tags"])
    assert printed["region"] == (cfg["region"] or None)
    assert printed["context_keys"] == sorted(cfg["context"])
    assert printed["cluster_name"] == cfg["clusterName"]
    assert printed["namespace_exclude"] == cfg["namespaceExclude"]
    assert printed["namespace_include"] == (",".join(include) or None)
    assert printed["kms_concurrency"] == cfg["kmsConcurrency"]
    assert printed["scan_segments"] == cfg["scanSegments"]
    assert printed["prune_keys"] == cfg["prune"]
    assert printed["delete_empty"] == (not cfg["keepEmpty"])
    assert printed["listen"] == "0.0.0.0:8080"
    assert printed["schedule"] == (cfg["schedule"] or None)
    if cfg["interval"]:
        assert seconds(printed["interval"]) == seconds(cfg["interval"])
    else:
        assert printed["interval"] is None
    expected_stream = "off" if not cfg["stream"]["enabled"] else (cfg["stream"]["arn"] or "from DescribeTable")
    assert printed["stream"] == expected_stream
    for key, value in [("debounce", cfg["stream"]["debounce"]), ("stream_idle_poll", cfg["stream"]["idlePoll"]), ("reconcile_timeout", cfg["reconcileTimeout"]),
                       ("sync_rate_limit", cfg["syncRateLimit"]), ("grace", cfg["grace"])]:
        assert seconds(printed[key]) == seconds(value), key
    assert printed["failure_limit"] == cfg["failureLimit"]
    assert seconds(printed["request_timeout"]) == seconds(cfg["requestTimeout"])
    assert seconds(printed["http_header_timeout"]) == seconds(cfg["httpHeaderTimeout"])
    assert printed["max_connections"] == cfg["maxConnections"]
    assert printed["drift_repair"] == cfg["driftRepair"]
    assert printed["dry_run"] == cfg["dryRun"]
    assert printed["leader_election"] == leader
    if leader:
        assert printed["lease_name"] == only(objects, "Deployment")["metadata"]["name"]
        assert seconds(printed["lease_duration"]) == seconds(values["leaderElection"]["leaseDuration"])
    token = values["syncToken"]["existingSecret"] or values["syncToken"]["generate"]
    assert printed["sync_token"] == ("set" if token else "unset")
    opened = values["syncToken"].get("insecureNoAuth")
    assert printed["sync_auth"] == (
        "token" if token else "insecure: open to anyone" if opened else "refused: no token configured")
    snapshot = values["snapshot"]
    assert printed["snapshot_repo"] == ("/var/lib/credsync/snapshots" if snapshot["enabled"] else None)
    assert printed["age_recipients"] == (snapshot["ageRecipients"] if snapshot["enabled"] else [])
    assert printed["snapshot_remote"] == (snapshot["remote"] or None if snapshot["enabled"] else None)
    assert printed["age_identity"] == ("set" if snapshot["enabled"] and snapshot["ageIdentitySecret"]["name"] else "unset")
    # Rollback requests are followed with a remote and an identity to check them with.
    follows = (snapshot["enabled"] and snapshot["remote"] and snapshot["ageIdentitySecret"]["name"]
               and not cfg["dryRun"])
    assert (printed["request_poll_interval"] is not None) == bool(follows)
    if follows:
        assert seconds(printed["request_poll_interval"]) == seconds(snapshot["requestPollInterval"])
    # The pod's terminationGracePeriodSeconds leaves credsync its --grace.
    grace_period = only(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_period > seconds(cfg["grace"])


# ---------------------------------------------------------------- bad values fail at install time


BAD_VALUES = {
    "negative replicas": ({"replicaCount": -1}, "/replicaCount"),
    "unknown log format": ({"config": {"logFormat": "yaml"}}, "/config/logFormat"),
    "missing table name": ({"config": {"table": None}}, "missing property 'table'"),
    "empty table name": ({"config": {"table": ""}}, "/config/table"),
    "misspelt key": ({"replicas": 2}, "replicas"),
    "duration credsync cannot read": ({"config": {"reconcileTimeout": "5 minutes"}}, "/config/reconcileTimeout"),
    "snapshots without a recipient": ({"snapshot": {"enabled": True}}, "/snapshot/ageRecipients"),
    "not an IAM role ARN": ({"serviceAccount": {"roleArn": "credsync-role"}}, "/serviceAccount/roleArn"),
    "namespace that is not a DNS label": ({"rbac": {"namespaces": ["Team_A"]}}, "/rbac/namespaces/0"),
    "replicas as a string": ({"replicaCount": "2"}, "/replicaCount"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_fail_with_a_schema_error(case):
    values, where = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    message = str(err.value)
    assert "don't meet the specifications of the schema" in message and where in message, message
    report = helm.lint(CHART, values, namespace=NAMESPACE)
    assert report["errors"], "helm lint must report the same values as errors"


def test_self_service_without_its_namespaces_fails_at_render():
    with pytest.raises(helm.HelmError, match="selfService.namespaces is required"):
        render({"selfService": {"enabled": True}})


def test_include_outside_the_namespaced_rbac_fails_at_render():
    with pytest.raises(helm.HelmError, match="config.namespaceInclude names \"web\""):
        render({"rbac": {"namespaces": ["payments"]}, "config": {"namespaceInclude": ["payments", "web"]}})


# ---------------------------------------------------------------- RBAC against the calls credsync makes


CALLS = json.loads((CHART / "tests" / "calls.json").read_text())["calls"]
RBAC_VARIANTS = ["default", "namespaced-rbac", "two-replicas", "full", "peers-namespaced"]


def for_callers(o: dict) -> bool:
    """A ClusterRole for admins to bind callers of the self-service API to, not credsync's own."""
    return o["metadata"].get("labels", {}).get("credsync.io/grants") == "self-service-callers"


class Rbac:
    """The RBAC authorizer's decision for one ServiceAccount, from rendered objects."""

    def __init__(self, objects: list[dict], sa_name: str, sa_namespace: str):
        roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o.get("rules", [])
                 for o in objects if o["kind"] in ("Role", "ClusterRole") and not for_callers(o)}
        self.grants: list[tuple[str | None, dict]] = []  # (namespace or None for cluster-wide, rule)
        bound = set()
        for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
            subjects = binding.get("subjects", [])
            assert subjects == [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}], binding
            ref = binding["roleRef"]
            scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
            key = (ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])
            assert key in roles, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {key}"
            bound.add(key)
            self.grants += [(scope, rule) for rule in roles[key]]
        assert bound == set(roles), f"roles bound to nothing: {set(roles) - bound}"

    def allows(self, verb: str, group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        for scope, rule in self.grants:
            if scope is not None and scope != namespace:
                continue
            if not (set(rule.get("verbs", [])) & {verb, "*"}):
                continue
            if not (set(rule.get("apiGroups", [])) & {group, "*"}):
                continue
            if not (set(rule.get("resources", [])) & {resource, "*"}):
                continue
            names = rule.get("resourceNames")
            if names and (name is None or name not in names):
                continue
            return True
        return False


def rbac_context(variant: str):
    objects = rendered(variant)
    values = merged(variant)
    sa = only(objects, "ServiceAccount")["metadata"]
    env = env_of(objects)
    features = {"always": True,
                "leaderElection": env.get("CREDSYNC_LEADER_ELECTION", {}).get("value") == "true",
                "driftRepair": "CREDSYNC_NO_DRIFT_REPAIR" not in env,
                "rollouts": env.get("CREDSYNC_ROLLOUTS", {}).get("value") == "true",
                "selfService": env.get("CREDSYNC_SELF_SERVICE", {}).get("value") == "true"}
    lease_name = env.get("CREDSYNC_LEASE_NAME", {}).get("value", "credsync")
    namespaces = values["rbac"]["namespaces"] or values["config"]["namespaceInclude"] or ["payments", "default"]
    return Rbac(objects, sa["name"], sa["namespace"]), features, lease_name, namespaces, values


def call_requests(call: dict, lease_name: str, namespaces: list[str], included: bool = False):
    """The API requests one call makes: (namespace or None, name)."""
    name = lease_name if call["name"] == "$LEASE_NAME" else call["name"]
    scope = call.get("scopeWithInclude", call["scope"]) if included else call["scope"]
    if scope == "included-namespaces":
        return [(ns, name) for ns in namespaces]
    if scope in ("cluster", "all-namespaces"):
        return [(None, name)]
    if call["scope"] == "release-namespace":
        return [(NAMESPACE, name)]
    return [(ns, name) for ns in namespaces]


def features_of(values: dict) -> dict[str, bool]:
    """Which optional calls a configuration makes (the `when` of calls.json)."""
    return {"always": True,
            "leaderElection": values["replicaCount"] > 1 or values["leaderElection"]["enabled"],
            "driftRepair": values["config"]["driftRepair"],
            "rollouts": values["rollouts"]["enabled"],
            "selfService": values["selfService"]["enabled"]}


def rbac_cases():
    for variant in RBAC_VARIANTS:
        features = features_of(merged(variant))
        for call in CALLS:
            if not features[call["when"]]:
                continue  # made only with a feature this variant leaves off
            yield pytest.param(variant, call, id=f"{variant}-{call['id']}")


@pytest.mark.parametrize(("variant", "call"), list(rbac_cases()))
def test_rbac_allows_every_call_credsync_makes(variant, call):
    rbac, features, lease_name, namespaces, values = rbac_context(variant)
    assert features == features_of(values), "the rendered env must turn on what the values say"
    included = bool(values["config"]["namespaceInclude"] or values["rbac"]["namespaces"])
    for namespace, name in call_requests(call, lease_name, namespaces, included):
        assert rbac.allows(call["verb"], call["apiGroup"], call["resource"], namespace, name), (
            f"{variant}: {call['verb']} {call['apiGroup'] or 'core'}/{call['resource']} in {namespace or 'all namespaces'} "
            f"is denied ({call['source']})")


@pytest.mark.parametrize("variant", RBAC_VARIANTS)
def test_rbac_grants_nothing_credsync_does_not_call(variant):
    rbac, features, lease_name, namespaces, values = rbac_context(variant)
    needed = [c for c in CALLS if features[c["when"]]]
    namespaced_mode = bool(values["rbac"]["namespaces"])
    assert rbac.grants
    for scope, rule in rbac.grants:
        assert "nonResourceURLs" not in rule, rule
        for field in ("verbs", "apiGroups", "resources"):
            assert "*" not in rule[field] and rule[field], f"wildcard or empty {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    users = [c for c in needed if (c["apiGroup"], c["resource"], c["verb"]) == (group, resource, verb)]
                    assert users, f"{variant}: {verb} {group or 'core'}/{resource} is granted but credsync never calls it"
                    scopes = {c["scope"] for c in users}
                    if scope is None:
                        wide = {"cluster", "all-namespaces"} | (set() if namespaced_mode else {"secret-namespace"})
                        assert scopes & wide, f"{variant}: {verb} {resource} granted cluster-wide, needed only in {scopes}"
                    elif "release-namespace" in scopes:
                        assert scope == NAMESPACE
                    else:
                        assert scope in namespaces, f"{variant}: {verb} {resource} granted in {scope}"
    # Leases: only in the release namespace, and get/update only of credsync's own Lease.
    for scope, rule in rbac.grants:
        if "leases" in rule["resources"]:
            assert scope == NAMESPACE
            assert set(rule["verbs"]) == {"create"} or rule.get("resourceNames") == [lease_name], rule
    assert not rbac.allows("update", "coordination.k8s.io", "leases", NAMESPACE, "someone-elses-lease")
    if namespaced_mode:
        assert not rbac.allows("get", "", "secrets", "kube-system", "x")
        assert not rbac.allows("patch", "", "secrets", "not-listed", "x")
        assert not rbac.allows("create", "events.k8s.io", "events", "not-listed", None)
    for verb in ("update", "deletecollection", "escalate", "bind", "impersonate"):
        assert not rbac.allows(verb, "", "secrets", "payments", "x")


def test_rollout_and_self_service_grants_come_only_with_their_switch():
    def granted(objects):
        return {(g, r, v) for o in objects if o["kind"] in ("Role", "ClusterRole") and not for_callers(o)
                for rule in o["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    default = granted(rendered("default"))
    peers = rendered("peers-namespaced")
    assert not {g for g, _, _ in default} & {"apps", "authentication.k8s.io", "authorization.k8s.io"}, default
    assert ("apps", "deployments", "patch") in granted(peers)
    assert ("authentication.k8s.io", "tokenreviews", "create") in granted(peers)
    assert not [o for o in rendered("default") if for_callers(o)]
    callers = {o["metadata"]["name"]: o["rules"] for o in peers if for_callers(o)}
    assert callers == {
        f"{RELEASE}-credentials-editor": [{"apiGroups": ["credsync.io"], "resources": ["credentials"],
                                           "verbs": ["create", "update", "delete", "list"]}],
        f"{RELEASE}-credentials-viewer": [{"apiGroups": ["credsync.io"], "resources": ["credentials"],
                                           "verbs": ["list"]}],
    }, callers
    env = env_of(peers)
    assert env["CREDSYNC_ROLLOUTS"]["value"] == "true"
    assert env["CREDSYNC_SELF_SERVICE"]["value"] == "true"
    assert env["CREDSYNC_KEY_ID"]["value"] == "alias/team-writes"
    assert env["CREDSYNC_SELF_SERVICE_MAX_BYTES"]["value"] == "4096"


def test_calls_fixture_matches_the_code():
    """The calls.json list cannot drift from what the code does."""
    counted = set()
    for file in ("mod.rs", "apply.rs", "events.rs", "lease.rs", "rollout.rs", "review.rs"):
        counted |= set(re.findall(r'self\.count\("([a-z]+)"\)', (ROOT / "src" / "cluster" / file).read_text()))
    assert counted == {c["metricVerb"] for c in CALLS if c["metricVerb"]}, counted
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    row = next(line for line in metrics_doc.splitlines() if "credsync_kubernetes_requests_total{verb}" in line and line.startswith("|"))
    assert set(re.findall(r"`([a-z]+)`", row)) == counted
    for call in CALLS:
        path = call["source"].split()[0]
        assert (ROOT / path).is_file(), call
    # Secrets are read through Cluster::secret_apis: cluster-wide (Api::all), or one
    # Api::namespaced per --namespace-include namespace; calls.json says both.
    cluster = (ROOT / "src" / "cluster" / "mod.rs").read_text()
    assert re.search(r"Api<Secret> = Api::all\(", cluster) and "pub fn secret_apis" in cluster
    assert "pub fn watch_apis" in cluster
    assert "watch_apis()" in (ROOT / "src" / "daemon" / "trigger" / "drift.rs").read_text()
    ids = {"list-managed-secrets", "list-secrets-for-drift", "watch-secrets-for-drift"}
    assert ids <= {c["id"] for c in CALLS if c["scope"] == "all-namespaces" and c.get("scopeWithInclude") == "included-namespaces"}
    lease = (ROOT / "src" / "cluster" / "lease.rs").read_text()
    assert "Api::namespaced(client, &config.namespace)" in lease


# ---------------------------------------------------------------- alerts and dashboard


ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "dashboards" / "credsync.json"


def test_promtool_checks_and_unit_tests_the_alert_rules(tmp_path):
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=CHART / "tests",
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    # What the PrometheusRule carries is the same file (plus alertLabels), and still valid.
    rule = only(rendered("servicemonitor"), "PrometheusRule")
    rendered_file = tmp_path / "rendered.yaml"
    rendered_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(rendered_file)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    source = yaml.safe_load(ALERTS.read_text())
    expected = copy.deepcopy(source["groups"])
    for group in expected:
        for r in group["rules"]:
            r["labels"] = {**r.get("labels", {}), "team": "platform"}
    assert rule["spec"]["groups"] == expected


def test_alerts_cover_the_failures_the_issue_names():
    names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"CredsyncSyncFailing", "CredsyncStreamLag", "CredsyncReconcileStuck",
            "CredsyncSnapshotPushFailing", "CredsyncLeaderMissing",
            "CredsyncRotationReverted", "CredsyncRotationNotReverted"} <= names
    disabled = render({"prometheusRule": {"enabled": True, "disabledAlerts": ["CredsyncStreamLag"]}})
    kept = {r["alert"] for g in only(disabled, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert kept == names - {"CredsyncStreamLag"}


def exported_metrics() -> set[str]:
    """Metric names credsync exports, parsed from src/metrics.rs; histograms with their series suffixes."""
    text = (ROOT / "src" / "metrics.rs").read_text()
    names = {"credsync_" + n for n in re.findall(r'\b(?:counter2|counter|plain_counter|gauge)\(\s*"([a-z_]+)"', text)}
    names |= set(re.findall(r'"(credsync_[a-z_]+)"', text))
    for histogram in re.findall(r'(?:HistogramOpts::new|\bhistogram)\(\s*"(credsync_[a-z_]+)"', text):
        names |= {histogram + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def promql_metric_names(expr: str) -> set[str]:
    # Grafana's own variables are not PromQL: give them values Prometheus would get.
    for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert names, f"no metric in {expr!r}"
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        queries += [t["expr"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert inner, variable
            queries.append(inner.group(1))
    return queries


def alert_queries() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_dashboard_and_alerts_query_only_metrics_credsync_exports():
    exported = exported_metrics()
    assert len(exported) > 30, exported
    for source, queries in (("dashboard", dashboard_queries()), ("alerts", alert_queries())):
        assert queries
        for expr in queries:
            unknown = promql_metric_names(expr) - exported
            assert not unknown, f"{source}: {expr!r} queries {sorted(unknown)}, which credsync does not export"


def test_dashboard_shows_what_the_issue_asks_for():
    used = set().union(*(promql_metric_names(q) for q in dashboard_queries()))
    for metric in ("credsync_reconciles_total", "credsync_reconciles_by_trigger_total",
                   "credsync_reconcile_duration_seconds_bucket", "credsync_stream_lag_seconds", "credsync_keys_failed",
                   "credsync_kms_requests_total", "credsync_dynamodb_requests_total", "credsync_kubernetes_requests_total",
                   "credsync_snapshot_push_failures_total", "credsync_drift_corrections_total", "credsync_leader"):
        assert metric in used, metric
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # Shipped verbatim in the dashboard ConfigMap.
    config_map = only(rendered("servicemonitor"), "ConfigMap")
    assert json.loads(config_map["data"]["credsync.json"]) == dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metric_names_parsed_from_source_match_a_real_scrape(tmp_path):
    """`credsync run` against nothing (loopback ports with no server) still serves /metrics."""
    binary = credsync_binary()
    closed = free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": f"http://127.0.0.1:{closed}"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {"token": "none"}}]}))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig),
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed}", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "none", "AWS_SECRET_ACCESS_KEY": "none", "AWS_EC2_METADATA_DISABLED": "true"}
    process = subprocess.Popen([str(binary), "run", "--listen", f"127.0.0.1:{port}", "--no-stream", "--no-drift-repair"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "credsync_reconciles_total" not in text:
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                continue
        assert "credsync_reconciles_total" in text, "no reconcile counted within 30 s"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    scraped = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert scraped and scraped <= exported_metrics(), scraped - exported_metrics()
