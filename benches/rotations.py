"""Rotation rows (issue 27): Secret write -> workload restart, a wave of
many workloads, and a failed wave's revert, on a control plane with
kube-controller-manager's workload controllers and a played kubelet
(tests/control-plane --workloads), beside Stakater Reloader's figures.

Times come from the API server's own audit log (the `stageTimestamp` of
each completed request, microseconds), so the bench's polling adds nothing
to the restart figures; the revert is timed from the moment the bench sees
the Deployment report ProgressDeadlineExceeded (polled every 20 ms) to the
moment it reads the good value back in the Secret.

Reloader v1.4.21's acceptance figures, measured on this same ground (a real
kube-apiserver, Deployments with one replica, the Secret patched directly):
Secret patch -> template change 153 ms median; a burst of 50 Secrets
patched at once rolls their 50 Deployments one after another, the last
5.0 s after the first Secret write. Reloader never reverts.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import standins as si

NS = "rot"
BAD = "bench-rotation-bad-value"
RELOADER_PATCH_S = 0.153
RELOADER_BURST_S = 5.0
DEADLINE_S = 8


def deployment(name: str, secret: str, wave: int | None = None, deadline: int = 600) -> dict:
    annotations = {"credsync.io/reload": "true"}
    if wave:
        annotations["credsync.io/rollout-wave"] = str(wave)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": deadline,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "main",
                        "image": "registry.invalid/app:1",
                        "env": [{"name": "PASSWORD", "valueFrom": {
                            "secretKeyRef": {"name": secret, "key": "PASSWORD"}}}],
                    }],
                },
            },
        },
    }


def available(kube, name: str) -> bool:
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}") or {}
    st = d.get("status") or {}
    want = (d.get("spec") or {}).get("replicas", 1)
    return (st.get("observedGeneration", 0) >= d.get("metadata", {}).get("generation", 1)
            and st.get("updatedReplicas") == want and st.get("replicas") == want
            and st.get("availableReplicas") == want)


def progressing_reason(kube, name: str) -> str | None:
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}") or {}
    for c in (d.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing":
            return c.get("reason")
    return None


def wait(check, timeout: float, what: str, every: float = 0.02) -> float:
    start = time.time()
    while time.time() - start < timeout:
        if check():
            return time.time()
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def audit_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("stage") != "ResponseComplete" or e.get("verb") != "patch":
            continue
        if (e.get("user") or {}).get("username") != "admin":
            continue
        ref = e.get("objectRef") or {}
        if ref.get("namespace") != NS or not str(e.get("responseStatus", {}).get("code", 200)).startswith("2"):
            continue
        stamp = e["stageTimestamp"].rstrip("Z")
        head, _, frac = stamp.partition(".")
        t = datetime.fromisoformat(head + "+00:00").timestamp() + (float("0." + frac) if frac else 0.0)
        events.append({"t": t, "resource": ref.get("resource"), "name": ref.get("name"),
                       "subresource": ref.get("subresource")})
    return sorted(events, key=lambda e: e["t"])


def restart_after(events: list[dict], secret_t: float, deployment: str) -> float | None:
    """The first patch of `deployment` after a Secret write at `secret_t`: its restart."""
    for e in events:
        if e["resource"] == "deployments" and e["name"] == deployment and not e["subresource"] and e["t"] >= secret_t:
            return e["t"]
    return None


def run(b) -> None:
    """Measures the rotation rows into b.results["rotations"]."""
    s = b.s
    quick = b.quick
    singles = 5 if quick else 20
    burst = 10 if quick else 50
    audit_file = b.work / "rotations-audit-path"
    kube = s.start_kube(workloads=[NS], bad_values=[BAD], audit_file=audit_file)
    s.values.append(BAD)
    audit = Path(audit_file.read_text().strip())
    table = "bench-rotations"
    s.credstash(table, ["setup"])
    s.put(table, f"{NS}/db/password")
    s.put(table, f"{NS}/fragile/password")
    for i in range(burst):
        s.put(table, f"{NS}/s{i:03d}/password")
    identity = b.work / "rotations-age.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    repo = b.work / "rotations-snapshots"
    snap = ["--snapshot-repo", str(repo), "--age-recipient", recipient, "--age-identity", str(identity)]
    b.sync("rotations-first", table, snap)
    deploys = ["web"] + [f"w{i:03d}" for i in range(burst)] + ["fragile"]
    kube.send("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("web", "db", wave=1))
    for i in range(burst):
        kube.send("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", deployment(f"w{i:03d}", f"s{i:03d}"))
    kube.send("POST", f"/apis/apps/v1/namespaces/{NS}/deployments",
              deployment("fragile", "fragile", wave=1, deadline=DEADLINE_S))
    for name in deploys:
        wait(lambda: available(kube, name), 180, f"{name} to be available", every=0.2)
    proc, port, _, _ = b.daemon("rotations", table, ["--rollouts", "--no-stream", "--no-drift-repair",
                                                     "--insecure-no-auth", "--sync-rate-limit", "0s", *snap])
    wait(lambda: b.metrics(port).get('credsync_reconciles_total{outcome="success"}', 0) >= 1, 120,
         "the first reconcile")

    # One Secret at a time: write -> restart patch.
    marks = []
    for _ in range(singles):
        before = restarted_for(kube, "web")
        s.put(table, f"{NS}/db/password")
        sent = time.time()
        si.http(port, "POST", "/sync")
        wait(lambda: restarted_for(kube, "web") != before and available(kube, "web"), 60, "web to roll")
        # Recorded as rolled out (a metadata patch): before the next write.
        wait(lambda: settled(kube, "web"), 30, "web's rollout recorded")
        marks.append(sent)
    # Many at once: one reconcile writes them all, then one wave.
    before = {f"w{i:03d}": restarted_for(kube, f"w{i:03d}") for i in range(burst)}
    for i in range(burst):
        s.put(table, f"{NS}/s{i:03d}/password")
    burst_sent = time.time()
    si.http(port, "POST", "/sync")
    for name, was in before.items():
        wait(lambda: restarted_for(kube, name) != was, 60, f"{name} to restart", every=0.1)
    # A bad value: the wave fails its deadline; credsync reverts.
    good = kube.secret_value_b64(NS, "fragile", "PASSWORD")
    s.put(table, f"{NS}/fragile/password", BAD)
    si.http(port, "POST", "/sync")
    deadline_seen = wait(lambda: progressing_reason(kube, "fragile") == "ProgressDeadlineExceeded",
                         DEADLINE_S + 60, "fragile's deadline")
    good_back = wait(lambda: kube.secret_value_b64(NS, "fragile", "PASSWORD") == good, 30, "the good value back")
    counted = 'credsync_rotation_reverts_total{outcome="reverted"}'
    wait(lambda: b.metrics(port).get(counted, 0) >= 1, 10, "the revert to be counted", every=0.1)
    metrics = b.metrics(port)
    s.stop(proc)

    events = audit_events(audit)
    single = []
    for sent in marks:
        writes = [e["t"] for e in events if e["resource"] == "secrets" and e["name"] == "db" and e["t"] >= sent]
        if not writes:
            continue
        patched = restart_after(events, writes[0], "web")
        if patched:
            single.append(patched - writes[0])
    burst_writes = [e["t"] for e in events if e["resource"] == "secrets" and e["name"].startswith("s")
                    and e["t"] >= burst_sent]
    burst_patches = [restart_after(events, max(burst_writes), f"w{i:03d}") for i in range(burst)] if burst_writes else []
    b.results["rotations"] = {
        "singles": single,
        "burst": burst,
        "burst_first_write_to_last_patch_s": (max(burst_patches) - min(burst_writes)) if all(burst_patches) and burst_writes else None,
        "burst_last_write_to_last_patch_s": (max(burst_patches) - max(burst_writes)) if all(burst_patches) and burst_writes else None,
        "revert_s": good_back - deadline_seen,
        "deadline_s": DEADLINE_S,
        "reverts": metrics.get('credsync_rotation_reverts_total{outcome="reverted"}', 0),
    }
    s.stop_kube()


def settled(kube, name: str) -> bool:
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}") or {}
    rolled = (d.get("metadata", {}).get("annotations") or {}).get("credsync.io/rolled-out-for")
    return rolled is not None and rolled == restarted_for(kube, name)


def restarted_for(kube, name: str) -> str | None:
    d = kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}") or {}
    return ((d.get("spec") or {}).get("template", {}).get("metadata", {}).get("annotations") or {}).get(
        "credsync.io/restarted-for")


def rows(b, row, fmt_s, median) -> list[dict]:
    r = b.results.get("rotations")
    if not r:
        return []
    out = []
    med = median(r["singles"]) if r["singles"] else None
    out.append(row("8-patch", "Rotation: Secret write -> its workload's restart patch, median", None, med, "s",
                   "Stakater Reloader v1.4.21 (same ground)", RELOADER_PATCH_S,
                   RELOADER_PATCH_S / med if med else None, f"{RELOADER_PATCH_S / med:.1f}x sooner" if med else "",
                   "<= 100 ms", med is not None and med <= 0.1,
                   f"{len(r['singles'])} rotations; API server audit timestamps"))
    last = r["burst_last_write_to_last_patch_s"]
    first = r["burst_first_write_to_last_patch_s"]
    out.append(row("8-wave", f"Rotation: a wave of {r['burst']} workloads, last Secret write -> last restart patch",
                   r["burst"], last, "s", "Reloader: 50 rolled serially, the last after (from the first write)",
                   RELOADER_BURST_S, RELOADER_BURST_S / first if first else None,
                   f"first write -> last patch {fmt_s(first)}" if first else "", "<= 1 s", last is not None and last <= 1,
                   "one reconcile writes them all, then patches the wave 16 at a time"))
    out.append(row("8-revert", "Rotation: failed wave's deadline -> the good value back in the Secret", None,
                   r["revert_s"], "s", "no peer reverts (progressDeadlineSeconds shown)", float(r["deadline_s"]),
                   None, "", "<= 2 s", r["revert_s"] <= 2 and r["reverts"] >= 1,
                   f"deadline seen by polling every 20 ms; reverts counted: {r['reverts']:.0f}"))
    return out
