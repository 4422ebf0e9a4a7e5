#!/usr/bin/env python3
"""credsync benchmarks (issue 5): every figure measured in one run, side by
side with its baseline from the same run, on local stand-ins (moto on
loopback for DynamoDB + KMS, a real kube-apiserver + etcd from tests/control-plane
for Kubernetes).

    .venv/bin/python benches/bench.py [--quick] [--out target/bench]

Writes OUT/report.json and OUT/report.md (and OUT/logs/, OUT/profile/).
Needs target/release/credsync and target/release/control-plane (`just bench`
builds them), the project's .venv (moto, credstash, boto3) and age-keygen.

Rows:
 1. cold full reconcile (`credsync sync`, new process, empty cluster) vs
    `credstash getall` on the same table, and vs the emulator floor (one
    Scan pass + KMS Decrypt of every item, 32 in flight, with boto3);
 2. warm reconcile with no change (`credsync run`, POST /sync): wall time,
    KMS / DynamoDB / Kubernetes calls, vs one boto3 Scan pass;
 3. restart with the last snapshot (`sync` with --age-identity): KMS calls
    for unchanged items;
 4. stream propagation, `credstash put` -> Secret updated, p50 / p99, vs
    Kubestash-V2's design floor (120 s wait + a full table read);
 5. peak RSS at N = 10000;
 6. snapshot commit time at N = 10000, and what a one-key change touches;
 8. rotations on workload controllers (benches/rotations.py): Secret write
    -> restart patch, a wave of 50, a failed wave's revert, beside Reloader.
Stops everything it started (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import figures  # noqa: E402
    import rotations  # noqa: E402
    import scale  # noqa: E402
    import sm_events  # noqa: E402
    import standins as si  # noqa: E402
except ImportError as err:  # boto3 lives in the project's venv
    sys.exit(f"error: {err}; run with .venv/bin/python (just setup installs it)")

ROOT = si.ROOT
CREDSYNC = si.RELEASE / "credsync"  # bench.py --build debug switches to target/debug
KMS_CONCURRENCY = 32  # credsync's default --kms-concurrency; the floor uses as many threads
SCAN_SEGMENTS = 4  # credsync's default --scan-segments
KUBESTASH_WAIT = 120.0  # Kubestash-V2's default WAIT_TIME after a stream event
DEBOUNCE = 1.0  # credsync run's default --debounce
MIB = 1024 * 1024

FULL = dict(cold_ns=[1000, 5000], cold_reps=3, getall_reps={1000: 3, 5000: 1}, warm_reps=5,
            stream_n=1000, puts=50, big_n=10000, huge_n=100000, huge_puts=50, sm_ns=[1000, 10000], build=True)
QUICK = dict(cold_ns=[100], cold_reps=2, getall_reps={100: 2}, warm_reps=3,
             stream_n=100, puts=5, big_n=100, huge_n=200, huge_puts=3, sm_ns=[50, 150], build=False)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(sorted_xs: list[float], p: float) -> float:
    """Nearest rank: the smallest sample with at least p of the samples at or below it."""
    rank = max(1, math.ceil(p * len(sorted_xs)))
    return sorted_xs[rank - 1]


def fmt_s(x) -> str:
    if x is None:
        return "n/a"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


class Bench:
    def __init__(self, args):
        self.quick = args.quick
        self.cfg = dict(QUICK if args.quick else FULL)
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.profile_dir = self.out / "profile"
        for d in (self.logs, self.profile_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.work = Path(tempfile.mkdtemp(prefix="credsync-bench-"))
        self.keep_work = args.keep_work
        self.build = args.build
        self.s = si.StandIns(self.work, self.logs, si.TARGET_DIR / args.build)
        self.results: dict = {}
        self.credsync_logs: list[Path] = []
        self.cold_runs: dict[int, list[dict]] = {}
        self.query_cost: dict[int, float] = {}
        self.profiling_built = False

    # ---- credsync runs ------------------------------------------------------

    def env(self, table: str) -> dict:
        env = self.s.aws_env()
        env.update(
            KUBECONFIG=str(self.s.kube.kubeconfig),
            CREDSYNC_TABLE=table,
            CREDSYNC_CLUSTER_NAME="bench",
        )
        return env

    def sync(self, label: str, table: str, extra: list[str] = (), profile: bool = False) -> dict:
        """One `credsync sync` process, timed, with its own CPU and peak RSS,
        and the CPU the emulators spent meanwhile."""
        log = self.logs / f"{label}.log"
        out = self.logs / f"{label}.plan.txt"
        argv = [self.profiling_binary() if profile else CREDSYNC, "--kms-concurrency", str(KMS_CONCURRENCY),
                *extra, "sync"]
        if profile:
            argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g",
                    "-o", self.profile_dir / "perf.data", "--", *argv]
        moto0, kube0 = self.s.moto_cpu(), self.s.kube.cpu_seconds()
        with open(log, "wb") as err, open(out, "wb") as std:
            timed, _ = self.s.timed(argv, self.env(table), stdout=std, stderr=err, sample_rss=not profile)
        moto1, kube1 = self.s.moto_cpu(), self.s.kube.cpu_seconds()
        self.credsync_logs += [log, out]
        calls = si.done_calls(log)
        if timed.code != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"credsync sync ({label}) exited {timed.code}:\n{tail}")
        rss = timed.extra.get("rss") or []
        return {
            "label": label,
            "wall_s": timed.wall,
            "cpu_s": timed.cpu,
            "user_s": timed.user,
            "sys_s": timed.sys,
            "wait4_maxrss_mib": timed.maxrss_kib / 1024,
            "peak_rss_mib": max((h for *_, h in rss), default=0) / 1024,
            "peak_anon_mib": max((a for _, a, _, _ in rss), default=0) / 1024,
            "peak_file_mib": max((f for _, _, f, _ in rss), default=0) / 1024,
            "moto_cpu_s": moto1 - moto0,
            "kube_api_cpu_s": kube1 - kube0,
            "calls": calls,
            "log": str(log.relative_to(self.out)),
            "_timed": timed,
            "_log": log,
        }

    def profiling_binary(self) -> Path:
        """The release code with symbols (Cargo profile `profiling`), built
        once, for perf and massif; the debug build when checking the harness."""
        if self.build != "release":
            return CREDSYNC
        binary = si.TARGET_DIR / "profiling" / "credsync"
        if not self.profiling_built:
            say("building credsync with the `profiling` profile (release code, symbols) for the profiles")
            subprocess.run(["cargo", "build", "--profile", "profiling", "--locked", "--quiet", "-p", "credsync",
                            "--bin", "credsync"], cwd=si.ROOT, check=True)
            self.profiling_built = True
        return binary

    def getall(self, table: str, n: int) -> dict:
        moto0 = self.s.moto_cpu()
        timed, stdout = self.s.credstash(table, ["getall"], capture=True)
        moto1 = self.s.moto_cpu()
        if timed.code != 0:
            raise RuntimeError(f"credstash getall exited {timed.code}")
        count = len(json.loads(stdout))  # values are only counted, never kept
        del stdout
        if count != n:
            raise RuntimeError(f"credstash getall returned {count} items, expected {n}")
        rss = timed.extra.get("rss") or []
        return {"wall_s": timed.wall, "cpu_s": timed.cpu, "peak_rss_mib": max((h for *_, h in rss), default=0) / 1024,
                "moto_cpu_s": moto1 - moto0, "items": count}

    def floor(self, table: str, n: int) -> dict:
        """The emulator floor: one Scan pass (the faster of 1 segment and
        SCAN_SEGMENTS parallel segments, both measured) plus one KMS Decrypt per
        item with KMS_CONCURRENCY threads, all with boto3."""
        moto0 = self.s.moto_cpu()
        seq = self.s.scan_pass(table, 1)
        par = self.s.scan_pass(table, SCAN_SEGMENTS)
        best = min(seq, par, key=lambda r: r[0])
        if best[1] != n:
            raise RuntimeError(f"Scan returned {best[1]} items, expected {n}")
        decrypt = self.s.decrypt_all(best[2], KMS_CONCURRENCY)
        moto1 = self.s.moto_cpu()
        return {"wall_s": best[0] + decrypt, "scan_1_segment_s": seq[0],
                f"scan_{SCAN_SEGMENTS}_segments_s": par[0], "decrypt_s": decrypt,
                "moto_cpu_s": moto1 - moto0}

    def daemon(self, label: str, table: str, extra: list[str]):
        port = si.free_port()
        log = self.logs / f"{label}.log"
        self.credsync_logs.append(log)
        argv = [CREDSYNC, "--kms-concurrency", str(KMS_CONCURRENCY), "run",
                "--listen", f"127.0.0.1:{port}", *extra]
        t0 = time.perf_counter()
        proc = self.s.spawn(argv, env=self.env(table), cwd=self.work, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        proc.started_at = t0
        deadline = time.monotonic() + 900
        while si.http(port, "GET", "/readyz", timeout=5)[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"credsync run exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("credsync run not ready after 900 s")
            time.sleep(0.1)
        return proc, port, log, time.perf_counter() - t0

    def ready_after_start(self, label: str, table: str, extra: list[str]) -> dict:
        """`credsync run` from process start (no stream, no drift watch: only
        the start-up reconcile): to /readyz 200 (`ready_s`), and to the end of
        its first reconcile, every Secret right again (`converged_s`), with
        the KMS Decrypt calls made by then."""
        # A cold start-up reconcile at N = 100,000 takes moto about 9 min:
        # past the default 300 s timeout, which would cancel and retry it.
        proc, port, _, ready_s = self.daemon(label, table, ["--no-stream", "--no-drift-repair",
                                                            "--reconcile-timeout", "3600s", *extra])
        try:
            self.wait_startup(proc, port, label)
            converged_s = time.perf_counter() - proc.started_at
            m = self.metrics(port)
            startup_ok = sum(v for k, v in m.items() if k.startswith("credsync_reconciles_by_trigger_total")
                             and 'trigger="startup"' in k and 'outcome="success"' in k)
            if startup_ok < 1:
                raise RuntimeError(f"{label}: the start-up reconcile did not succeed")
            kms = m.get('credsync_kms_requests_total{operation="Decrypt"}', 0.0)
        finally:
            self.s.stop(proc)
        return {"ready_s": ready_s, "converged_s": converged_s, "kms": kms}

    def wait_startup(self, proc, port: int, label: str) -> None:
        """Until the daemon's start-up reconcile has finished (30 min at most)."""
        key = 'credsync_reconcile_duration_seconds_count{trigger="startup"}'
        deadline = time.monotonic() + 1800
        while self.metrics(port).get(key, 0) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: no start-up reconcile finished")
            time.sleep(0.05)

    def metrics(self, port: int) -> dict[str, float]:
        code, text = si.http(port, "GET", "/metrics")
        if code != 200:
            raise RuntimeError(f"/metrics answered {code}")
        return si.metric_samples(text)

    # ---- rows ----------------------------------------------------------------

    def row_cold(self, n: int, reps: int, getall_reps: int) -> str:
        table = f"bench-{n}"
        say(f"seeding {table}: {n} items ({n // 2} Secrets x 2 keys, 10 namespaces)")
        t0 = time.perf_counter()
        self.s.make_table(table, n)
        say(f"seeded in {time.perf_counter() - t0:.1f} s")
        runs = []
        for rep in range(reps):
            self.s.start_kube()
            cs = self.sync(f"cold-{n}-rep{rep + 1}", table)
            managed = self.s.kube.managed_secrets()
            if managed != math.ceil(n / 2) or cs["calls"].get("kms_decrypt") != n:
                raise RuntimeError(f"cold sync {n}: {managed} Secrets, calls {cs['calls']}")
            fl = self.floor(table, n)
            ga = self.getall(table, n) if rep < getall_reps else None
            runs.append({"credsync": cs, "floor": fl, "getall": ga})
            say(f"cold N={n} rep {rep + 1}/{reps}: credsync {fmt_s(cs['wall_s'])}, floor {fmt_s(fl['wall_s'])}"
                + (f", credstash getall {fmt_s(ga['wall_s'])}" if ga else ""))
        self.s.stop_kube()
        self.cold_runs[n] = runs
        # moto answers a Query by walking the whole table, so `credstash getall`
        # (one Query per name) grows as N^2 here; a real DynamoDB Query does not.
        self.query_cost[n] = self.s.query_cost(table, si.item_names(n))
        return table

    def row_warm(self, table: str, n: int, reps: int) -> None:
        say(f"warm reconcile N={n}: credsync run --no-stream --no-drift-repair, POST /sync x{reps}")
        self.s.start_kube()
        proc, port, log, ready_s = self.daemon(
            f"warm-{n}", table,
            # POST /sync without a token on loopback: the explicit opt-in.
            ["--no-stream", "--no-drift-repair", "--sync-rate-limit", "0s", "--insecure-no-auth"])
        reps_out = []
        try:
            startup = self.metrics(port)
            count_key = 'credsync_reconcile_duration_seconds_count{trigger="http"}'
            sum_key = 'credsync_reconcile_duration_seconds_sum{trigger="http"}'
            for rep in range(reps):
                before = self.metrics(port)
                cpu0, moto0 = si.cpu_seconds(proc.pid), self.s.moto_cpu()
                t0 = time.perf_counter()
                code, body = si.http(port, "POST", "/sync")
                if code != 202:
                    raise RuntimeError(f"POST /sync answered {code}: {body[:200]}")
                while True:
                    after = self.metrics(port)
                    if after.get(count_key, 0) > before.get(count_key, 0):
                        break
                    if time.perf_counter() - t0 > 600:
                        raise RuntimeError("POST /sync: no reconcile finished within 600 s")
                    time.sleep(0.005)
                observed = time.perf_counter() - t0
                cpu1, moto1 = si.cpu_seconds(proc.pid), self.s.moto_cpu()

                def delta(key):
                    return after.get(key, 0) - before.get(key, 0)

                verbs = sorted({k.split('verb="')[1].split('"')[0] for k in after
                                if k.startswith("credsync_kubernetes_requests_total{")})
                kube = {v: delta(f'credsync_kubernetes_requests_total{{verb="{v}"}}') for v in verbs}
                seq = self.s.scan_pass(table, 1)
                par = self.s.scan_pass(table, SCAN_SEGMENTS)
                reps_out.append({
                    "reconcile_s": delta(sum_key),
                    "observed_s": observed,
                    "kms_decrypt": delta('credsync_kms_requests_total{operation="Decrypt"}'),
                    "dynamodb_scan": delta('credsync_dynamodb_requests_total{operation="Scan"}'),
                    "dynamodb_query": delta('credsync_dynamodb_requests_total{operation="Query"}'),
                    "kubernetes": kube,
                    "kubernetes_writes": sum(kube.get(v, 0) for v in ("create", "update", "patch", "delete")),
                    "credsync_cpu_s": cpu1 - cpu0,
                    "moto_cpu_s": moto1 - moto0,
                    "scan_1_segment_s": seq[0],
                    f"scan_{SCAN_SEGMENTS}_segments_s": par[0],
                    "scan_pass_s": min(seq[0], par[0]),
                })
                r = reps_out[-1]
                say(f"warm rep {rep + 1}/{reps}: reconcile {fmt_s(r['reconcile_s'])}, Scan pass {fmt_s(r['scan_pass_s'])}, "
                    f"KMS {r['kms_decrypt']:.0f}, writes {r['kubernetes_writes']:.0f}")
        finally:
            self.s.stop(proc)
            self.s.stop_kube()
        self.results["warm"] = {
            "n": n, "reps": reps_out, "startup_ready_s": ready_s, "log": str(log.relative_to(self.out)),
            "startup_kms_decrypt": startup.get('credsync_kms_requests_total{operation="Decrypt"}', 0),
            "startup_kubernetes_writes": sum(startup.get(f'credsync_kubernetes_requests_total{{verb="{v}"}}', 0)
                                             for v in ("create", "update", "patch", "delete")),
        }

    def row_stream(self, table: str, n: int, puts: int) -> None:
        say(f"stream propagation N={n}: {puts} credstash puts, credsync run (debounce {DEBOUNCE:.0f} s)")
        self.s.enable_stream(table)
        kube = self.s.start_kube()
        proc, port, log, _ = self.daemon(f"stream-{n}", table, [])
        ready_at = time.time()
        try:
            samples, before, after = self.put_loop(port, kube, table, n, puts)
            # The shards go idle (no record for IDLE_PACE_AFTER): the next put
            # meets the idle poll pace (--stream-idle-poll, 3 s).
            say(f"stream: {IDLE_PACE_AFTER:.0f} s without a put, then one more")
            time.sleep(IDLE_PACE_AFTER)
            idle_samples, _, _ = self.put_loop(port, kube, table, n, 1, settle=0.0)
        finally:
            self.s.stop(proc)
            self.s.stop_kube()

        def delta(key):
            return after.get(key, 0) - before.get(key, 0)

        self.results["stream"] = {
            "after_idle_s": idle_samples[0]["after_put_s"],
            "n": n, "puts": puts, "samples": samples, "log": str(log.relative_to(self.out)), "ready_at": ready_at,
            "kms_decrypt": delta('credsync_kms_requests_total{operation="Decrypt"}'),
            "dynamodb_scan": delta('credsync_dynamodb_requests_total{operation="Scan"}'),
            "dynamodb_query": delta('credsync_dynamodb_requests_total{operation="Query"}'),
            "kubernetes_writes": sum(delta(f'credsync_kubernetes_requests_total{{verb="{v}"}}')
                                     for v in ("create", "update", "patch", "delete")),
        }
        lat = sorted(s["after_put_s"] for s in samples)
        say(f"stream: p50 {fmt_s(percentile(lat, 0.5))}, p99 {fmt_s(percentile(lat, 0.99))}")

    def put_loop(self, port: int, kube, table: str, n: int, puts: int,
                 settle: float = 1.0) -> tuple[list, dict, dict]:
        """`puts` sequential `credstash put`s of existing names while `credsync
        run` on `port` follows the stream: per put, the time from the CLI's exit
        to the Secret holding the new value, and the calls made in its window."""
        names = si.item_names(n)
        targets = [names[(i * 97) % n] for i in range(puts)]
        samples = []
        deadline = time.monotonic() + 60
        while self.metrics(port).get("credsync_stream_enabled") != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError("credsync run is not following the stream")
            time.sleep(0.1)
        time.sleep(settle)  # let the shard readers settle; not part of any figure
        before = self.metrics(port)
        last = before
        for i, name in enumerate(targets):
            ns, secret, key = si.secret_of(name)
            at = time.time()
            launched = time.perf_counter()
            value = self.s.put(table, name)
            written = time.perf_counter()
            want = base64.b64encode(value.encode()).decode()
            while kube.secret_value_b64(ns, secret, key) != want:
                if time.perf_counter() - written > 60:
                    raise RuntimeError(f"put {i} ({name}) did not reach the Secret within 60 s")
                time.sleep(0.01)
            seen = time.perf_counter()
            now = self.metrics(port)  # after the measurement: not part of any figure
            samples.append({"name": name, "at": at, "after_put_s": seen - written,
                            "after_cli_start_s": seen - launched, "cli_s": written - launched,
                            "window": window_calls(last, now)})
            last = now
        time.sleep(DEBOUNCE + 0.5)
        return samples, before, self.metrics(port)

    def row_big(self, n: int) -> None:
        """Rows 3, 5 and 6 on one table of n items."""
        table = f"bench-{n}"
        if n not in self.cold_runs:
            say(f"seeding {table}: {n} items")
            self.s.make_table(table, n)
        identity = self.work / "reader.agekey"
        subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        repo = self.work / "snapshots"
        # Signed commits, as in production: the warm start authenticates the
        # last snapshot by its signature (no KMS call for that).
        signing = self.work / "signing.key"
        if not signing.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(signing)],
                           check=True, capture_output=True)
        snap = ["--snapshot-repo", str(repo), "--age-recipient", recipient, "--age-identity", str(identity),
                "--snapshot-signing-key", str(signing)]
        big = {"n": n}

        say(f"N={n}: cold sync without snapshots (--verbose, for peak RSS and a phase breakdown)")
        self.s.start_kube()
        plain = self.sync(f"big-{n}-plain", table, ["--verbose"])
        big["plain"] = plain

        say(f"N={n}: cold sync with --snapshot-repo (first snapshot commit)")
        self.s.start_kube()
        first = self.sync(f"big-{n}-snapshot-first", table, ["--verbose", *snap])
        big["snapshot_first"] = first

        say(f"N={n}: restart, a new sync process with the last snapshot and --age-identity")
        restart = self.sync(f"big-{n}-restart", table, ["--verbose", *snap])
        big["restart"] = restart

        say(f"N={n}: one credstash put, then sync with the snapshot")
        changed = si.item_names(n)[n // 2]
        self.s.put(table, changed)
        one = self.sync(f"big-{n}-one-key", table, ["--verbose", *snap])
        big["one_key"] = one
        big["one_key_name"] = changed

        say(f"N={n}: restart to ready and to converged: `credsync run` with the last snapshot, then a cold start")
        big["ready"] = scale.restarts(self, f"big-{n}", table, snap)
        self.s.stop_kube()

        numstat = subprocess.run(["git", "-C", str(repo), "show", "--numstat", "--format=", "HEAD"],
                                 check=True, capture_output=True, text=True).stdout
        stat = subprocess.run(["git", "-C", str(repo), "show", "--stat", "--format=", "HEAD"],
                              check=True, capture_output=True, text=True).stdout
        files = [line.split("\t") for line in numstat.splitlines() if line.strip()]
        commits = int(subprocess.run(["git", "-C", str(repo), "rev-list", "--count", "HEAD"],
                                     check=True, capture_output=True, text=True).stdout)
        tracked = len(subprocess.run(["git", "-C", str(repo), "ls-files"], check=True,
                                     capture_output=True, text=True).stdout.splitlines())
        big["git"] = {
            "commits": commits,
            "files_in_snapshot": tracked,
            "last_commit_files": len(files),
            "last_commit_added_lines": sum(int(f[0]) for f in files if f[0].isdigit()),
            "last_commit_removed_lines": sum(int(f[1]) for f in files if f[1].isdigit()),
            "last_commit_numstat": numstat.strip(),
            "last_commit_stat": stat.strip(),
            "repo_size_kib": sum(p.stat().st_size for p in (repo / ".git").rglob("*") if p.is_file()) / 1024,
        }
        for key in ("plain", "snapshot_first", "restart", "one_key"):
            big[key]["phases"] = phases(big[key])
        self.results["big"] = big

    def profile(self, table: str, n: int) -> None:
        """perf (cpu-clock samples of credsync) for a cold sync; only when a target missed."""
        ok = shutil.which("perf") and subprocess.run(
            ["perf", "record", "-q", "-e", "cpu-clock", "-o", str(self.profile_dir / "probe.data"), "--", "true"],
            capture_output=True).returncode == 0
        (self.profile_dir / "probe.data").unlink(missing_ok=True)
        if not ok:
            self.results["perf"] = {"available": False}
            return
        say(f"profiling a cold sync at N={n} with perf (cpu-clock samples of credsync)")
        self.s.start_kube()
        run = self.sync(f"profile-cold-{n}", table, profile=True)
        self.s.stop_kube()
        report = subprocess.run(
            ["perf", "report", "-i", str(self.profile_dir / "perf.data"), "--stdio", "--no-children",
             "--sort", "dso,symbol", "--percent-limit", "0.5", "-g", "none"],
            capture_output=True, text=True).stdout
        (self.profile_dir / "perf-report.txt").write_text(report)
        top = []
        for line in report.splitlines():
            m = re.match(r"^\s*([\d.]+%)\s+(\S+)\s+\[.\]\s+(.*?)\s*(?:-\s+-\s*)?$", line)
            if m and len(top) < 25:
                top.append(f"{m.group(1):>7}  {m.group(2):<20} {m.group(3)[:110]}")
        by_dso = subprocess.run(
            ["perf", "report", "-i", str(self.profile_dir / "perf.data"), "--stdio", "--no-children",
             "--sort", "dso", "-g", "none"], capture_output=True, text=True).stdout
        dsos = []
        for line in by_dso.splitlines():
            m = re.match(r"^\s*([\d.]+%)\s+(\S+)", line)
            if m and len(dsos) < 6:
                dsos.append(f"{m.group(2)} {m.group(1)}")
        self.results["perf"] = {"available": True, "n": n, "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                                "moto_cpu_s": run["moto_cpu_s"], "top": top, "by_dso": dsos,
                                "report": str((self.profile_dir / "perf-report.txt").relative_to(self.out))}

    def heap_profile(self, table: str, n: int) -> None:
        """valgrind massif of a cold sync: which code holds the heap, over the run
        and at the peak; only when the peak RSS target missed."""
        if not shutil.which("valgrind"):
            self.results["massif"] = {"available": False}
            return
        say(f"heap profile of a cold sync at N={n} with valgrind massif")
        out = self.profile_dir / "massif.out"
        self.s.start_kube()
        argv = ["valgrind", "--tool=massif", f"--massif-out-file={out}", "--depth=40", "--threshold=0.5",
                self.profiling_binary(), "sync"]
        log = self.logs / f"massif-cold-{n}.log"
        with open(log, "wb") as err:
            timed, _ = self.s.timed(argv, self.env(table), stderr=err)
        self.credsync_logs.append(log)
        self.s.stop_kube()
        if timed.code != 0 or not out.exists():
            self.results["massif"] = {"available": False, "error": f"valgrind exited {timed.code}"}
            return
        self.results["massif"] = {"available": True, "n": n, "snapshots": massif_summary(out),
                                  "file": str(out.relative_to(self.out))}

    # ---- the whole run -------------------------------------------------------

    def run(self) -> None:
        started = time.time()
        self.results["machine"] = machine()
        self.results["machine"]["cpu_busy_start"] = cpu_busy()
        say(f"mode {'quick' if self.quick else 'full'}; work dir {self.work}; reports in {self.out}")
        self.s.start_moto()
        cfg = self.cfg
        tables = {}
        for n in cfg["cold_ns"]:
            tables[n] = self.row_cold(n, cfg["cold_reps"], cfg["getall_reps"][n])
        warm_n = max(cfg["cold_ns"])
        self.row_warm(tables[warm_n], warm_n, cfg["warm_reps"])
        self.row_stream(tables[cfg["stream_n"]], cfg["stream_n"], cfg["puts"])
        self.row_big(cfg["big_n"])
        scale.run_huge(self, cfg["huge_n"], cfg["huge_puts"])
        for key in ("plain", "snapshot_first", "restart", "one_key"):
            self.results["huge"][key]["phases"] = phases(self.results["huge"][key])
        rotations.run(self)
        sm_events.run(self, cfg["sm_ns"])
        if cfg["build"]:
            scale.run_build(self)
        rows = build_rows(self)
        if any(r["pass"] is False for r in rows):
            self.profile(tables[max(cfg["cold_ns"])], max(cfg["cold_ns"]))
        if any(r["id"].startswith("5") and r["pass"] is False for r in rows):
            # At the N of row 5 (the table row_big seeded), whose peak is the target.
            self.heap_profile(f"bench-{cfg['big_n']}", cfg["big_n"])
        leaks = sum(self.s.leaks_in(p.read_text(errors="replace")) for p in self.credsync_logs if p.exists())
        busy = cpu_busy()
        self.results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.results["machine"]["other_cpu_note"] = busy_note(self.results["machine"]["cpu_busy_start"], busy)
        self.results["leaks"] = leaks
        self.results["duration_s"] = time.time() - started
        self.results["started"] = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
        write_reports(self, rows)
        if leaks:
            raise RuntimeError(f"{leaks} seeded value(s) appear in credsync output (see {self.logs})")

    def close(self) -> None:
        self.s.close()
        if not self.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


# ---- analysis ------------------------------------------------------------------

IDLE_PACE_AFTER = 32.0  # a shard without records for 30 s is polled at the idle pace
IDLE_POLL = 3.0  # --stream-idle-poll's default

RECONCILE_AWS_OPS = ("Query", "Scan", "GetItem", "Decrypt", "DescribeTable", "ListSecrets",
                     "BatchGetSecretValue", "GetSecretValue", "DescribeSecret")


def window_calls(before: dict, after: dict) -> dict:
    """Calls and reconciles (by trigger) credsync made between two /metrics reads."""
    def d(key):
        return after.get(key, 0) - before.get(key, 0)

    out = {"query": d('credsync_dynamodb_requests_total{operation="Query"}'),
           "scan": d('credsync_dynamodb_requests_total{operation="Scan"}'),
           "kms": d('credsync_kms_requests_total{operation="Decrypt"}'),
           "writes": sum(d(f'credsync_kubernetes_requests_total{{verb="{v}"}}')
                         for v in ("create", "update", "patch", "delete"))}
    # Time the reconciles spent, and of it the time waiting for the calls a
    # reconcile makes (the stream poll runs beside them and is left out).
    out["reconcile_s"] = sum(d(k) for k in after if k.startswith("credsync_reconcile_duration_seconds_sum{"))
    out["aws_wait_s"] = sum(d(f'credsync_aws_request_duration_seconds_sum{{operation="{op}"}}')
                            for op in RECONCILE_AWS_OPS)
    for key in after:
        if key.startswith("credsync_reconciles_by_trigger_total{"):
            trigger = key.split('trigger="')[1].split('"')[0]
            delta = d(key)
            if delta:
                out[f"reconciles_{trigger}"] = out.get(f"reconciles_{trigger}", 0) + delta
    return out


PHASES = ["start -> table read", "KMS Decrypt + live read", "plan", "snapshot commit", "apply", "exit"]


def phases(run: dict) -> dict:
    """Where a `credsync sync --verbose` spent its wall time, from its log
    timestamps: process start (clients, warm-start read) and the Scan up to the
    `read table and namespaces` line; KMS Decrypt and the live Secrets read up
    to `read live Secrets`; the diff up to `planned`; the snapshot commit up to
    `snapshot committed`; the writes up to `done`; then the process exit."""
    lines = si.parse_log(run["_log"])
    start = run["_timed"].started_at
    end = start + run["wall_s"]

    def first(prefix):
        return next((t for t, _, rest in lines if rest.startswith(prefix)), None)

    scanned, live, planned = first("read table and namespaces"), first("read live Secrets"), first("planned")
    committed, done = first("snapshot committed"), first("done")
    if None in (scanned, live, planned, done):
        return {"steps_s": {}, "commit_s": None}
    bounds = {
        "start -> table read": (start, scanned),
        "KMS Decrypt + live read": (scanned, live),
        "plan": (live, planned),
        "snapshot commit": (planned, committed or planned),
        "apply": (committed or planned, done),
        "exit": (done, end),
    }
    rss = run["_timed"].extra.get("rss") or []
    anon = {}
    for k, (t0, t1) in bounds.items():
        inside = [a for t, a, _, _ in rss if t0 <= t <= t1]
        anon[k] = round(max(inside) / 1024, 1) if inside else None  # None: shorter than one sample
    steps = {
        "start -> table read": scanned - start,
        "KMS Decrypt + live read": live - scanned,
        "plan": planned - live,
        "snapshot commit": (committed - planned) if committed else 0.0,
        "apply": done - (committed or planned),
        "exit": end - done,
    }
    return {"steps_s": {k: round(max(0.0, v), 4) for k, v in steps.items()},
            "commit_s": (committed - planned) if committed else None,
            "peak_anon_mib": anon,
            "kms_decrypt_lines": sum(1 for _, _, r in lines if r.startswith("decrypting"))}


def massif_summary(path: Path, top: int = 4) -> list[dict]:
    """Detailed snapshots of a massif.out: total heap, and the biggest holders,
    each named by its allocation site and the first credsync function above it."""
    snapshots, cur, tree = [], None, []

    def close():
        if cur and cur.get("kind") in ("detailed", "peak") and tree:
            cur["holders"] = holders(tree)
            snapshots.append(cur)

    def holders(lines):
        nodes = []  # (depth, bytes, desc)
        for line in lines:
            m = re.match(r"^( *)n\d+: (\d+) (.*)$", line)
            if m:
                nodes.append((len(m.group(1)), int(m.group(2)), m.group(3)))
        out = []
        for i, (depth, size, desc) in enumerate(nodes):
            if depth != 1 or "below massif's threshold" in desc:
                continue
            owner = None
            for d2, _, desc2 in nodes[i + 1:]:
                if d2 <= 1:
                    break
                if "credsync::" in desc2 and "credsync::main" not in desc2:
                    owner = desc2
                    break
            site = re.sub(r"^0x[0-9A-F]+: ", "", desc).split(" (in ")[0]
            owner = re.sub(r"^0x[0-9A-F]+: ", "", owner).split(" (in ")[0] if owner else "-"
            out.append({"bytes": size, "site": site[:160], "credsync": owner[:110]})
        return sorted(out, key=lambda h: -h["bytes"])[:top]

    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("snapshot="):
            close()
            cur, tree = {"n": int(line.split("=")[1])}, []
        elif cur is not None and line.startswith("time="):
            cur["time"] = int(line.split("=")[1])
        elif cur is not None and line.startswith("mem_heap_B="):
            cur["heap"] = int(line.split("=")[1])
        elif cur is not None and line.startswith("mem_heap_extra_B="):
            cur["extra"] = int(line.split("=")[1])
        elif cur is not None and line.startswith("heap_tree="):
            cur["kind"] = line.split("=")[1]
        elif cur is not None and line.startswith((" ", "n")):
            tree.append(line)
    close()
    end = max((s["time"] for s in snapshots), default=1) or 1
    for snap in snapshots:
        snap["at"] = snap["time"] / end
    return snapshots


def row(id_, measure, n, value, unit, baseline_name, baseline, ratio, ratio_text, target, passed, note=""):
    return {"id": id_, "measure": measure, "n": n, "value": value, "unit": unit,
            "baseline": baseline_name, "baseline_value": baseline, "ratio": ratio,
            "ratio_text": ratio_text, "target": target, "pass": passed, "note": note}


def build_rows(b: Bench) -> list[dict]:
    rows = []
    getall_by_n = {}
    for n, runs in b.cold_runs.items():
        cs = median([r["credsync"]["wall_s"] for r in runs])
        fl = median([r["floor"]["wall_s"] for r in runs])
        ga_runs = [r["getall"]["wall_s"] for r in runs if r["getall"]]
        ga = median(ga_runs)
        getall_by_n[n] = ga
        reps = len(runs)
        speedup = ga / cs
        q = b.query_cost.get(n)
        rows.append(row(f"1-{n}-getall", "Cold full reconcile (`credsync sync`) vs `credstash getall`", n,
                        cs, "s", f"`credstash getall` (median of {len(ga_runs)})", ga, speedup,
                        f"{speedup:.1f}x faster", ">= 5x faster", speedup >= 5,
                        f"medians; credsync {reps} reps; one moto Query at this N: {fmt_s(q)}"))
        ratio = cs / fl
        rows.append(row(f"1-{n}-floor", "Cold full reconcile vs emulator floor", n, cs, "s",
                        f"floor: boto3 Scan + {KMS_CONCURRENCY}-wide KMS Decrypt (median of {reps})", fl, ratio,
                        f"{ratio:.2f}x floor", "<= 1.3x floor", ratio <= 1.3, f"medians of {reps} reps"))
    warm = b.results["warm"]
    w = warm["reps"]
    rec = median([r["reconcile_s"] for r in w])
    scan = median([r["scan_pass_s"] for r in w])
    kms = max(r["kms_decrypt"] for r in w)
    writes = max(r["kubernetes_writes"] for r in w)
    scans = median([r["dynamodb_scan"] for r in w])
    queries = max(r["dynamodb_query"] for r in w)
    ratio = rec / scan
    rows.append(row("2-wall", "Warm reconcile, no change (`POST /sync`)", warm["n"], rec, "s",
                    f"one boto3 Scan pass (median of {len(w)})", scan, ratio, f"{ratio:.2f}x Scan pass",
                    "<= 1.5x Scan pass", ratio <= 1.5, f"median of {len(w)} reps; reconcile_duration_seconds"))
    rows.append(row("2-calls", "Warm reconcile: KMS calls / Kubernetes writes (DynamoDB calls)", warm["n"],
                    f"{kms:.0f} / {writes:.0f} ({scans:.0f} Scan, {queries:.0f} Query)", "", "the same process's start-up reconcile: KMS calls / writes",
                    f"{warm['startup_kms_decrypt']:.0f} / {warm['startup_kubernetes_writes']:.0f}", None, "",
                    "0 KMS, 0 writes",
                    kms == 0 and writes == 0, f"max over {len(w)} reps"))
    big = b.results["big"]
    n = big["n"]
    restart_kms = big["restart"]["calls"].get("kms_decrypt")
    first_kms = big["snapshot_first"]["calls"].get("kms_decrypt")
    rows.append(row("3", "Restart with the last snapshot: KMS calls for unchanged items", n, restart_kms, "calls",
                    "first sync of the same table", first_kms, None,
                    f"{restart_kms}/{first_kms}", "0", restart_kms == 0,
                    f"restart wall {fmt_s(big['restart']['wall_s'])}"))
    ready = big["ready"]
    rows.append(row("3-ready", "Restart to ready (`credsync run`, process start -> /readyz) with the last snapshot",
                    n, ready["warm_s"], "s", "the same start without a snapshot (every item decrypted)",
                    ready["cold_s"], ready["warm_s"] / ready["cold_s"],
                    f"{ready['warm_s'] / ready['cold_s']:.2f}x cold", "<= 1.5 s and 0 KMS calls",
                    ready["warm_s"] <= 1.5 and ready["warm_kms"] == 0,
                    f"KMS calls: {ready['warm_kms']:.0f} warm, {ready['cold_kms']:.0f} cold; "
                    "values from the warm-start cache"))
    rows.append(scale.converged_row(row, fmt_s, n, ready))
    st = b.results["stream"]
    lat = sorted(s["after_put_s"] for s in st["samples"])
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    ks_floor = KUBESTASH_WAIT + getall_by_n[st["n"]]
    rows.append(row("4-p50", "Stream: `credstash put` -> Secret updated, p50", st["n"], p50, "s",
                    f"Kubestash-V2 floor: {KUBESTASH_WAIT:.0f} s wait + `credstash getall` at N={st['n']}",
                    ks_floor, ks_floor / p50, f"{ks_floor / p50:.0f}x sooner", "", None,
                    f"{len(lat)} puts"))
    rows.append(row("4-p99", "Stream: `credstash put` -> Secret updated, p99", st["n"], p99, "s",
                    "Kubestash-V2 floor (as above)", ks_floor, ks_floor / p99, f"{ks_floor / p99:.0f}x sooner",
                    f"<= debounce + 1.5 s = {DEBOUNCE + 1.5:.1f} s", p99 <= DEBOUNCE + 1.5, f"{len(lat)} puts"))
    idle = st["after_idle_s"]
    rows.append(row("4-idle", f"Stream: the first put after {IDLE_PACE_AFTER:.0f} s without one (idle shard pace)",
                    st["n"], idle, "s", "p50 of the puts in a row (active pace)", p50, idle / p50,
                    f"{idle / p50:.2f}x", f"<= debounce + idle poll + 1 s = {DEBOUNCE + IDLE_POLL + 1:.1f} s",
                    idle <= DEBOUNCE + IDLE_POLL + 1,
                    "a shard without records for 30 s is polled every --stream-idle-poll (3 s), not every 250 ms"))
    rss_runs = {k: big[k]["peak_rss_mib"] for k in ("plain", "snapshot_first", "restart", "one_key")}
    rss = max(rss_runs.values())
    worst = max(rss_runs, key=rss_runs.get)
    ga_n = max(n2 for n2, g in getall_by_n.items() if g is not None)
    ga_rss = max(r["getall"]["peak_rss_mib"] for r in b.cold_runs[ga_n] if r["getall"])
    rows.append(row("5", "Peak RSS of `credsync sync`", n, rss, "MiB",
                    f"`credstash getall` peak RSS at N={ga_n}", ga_rss, rss / ga_rss,
                    f"{rss / ga_rss:.2f}x", "<= 48 MiB", rss <= 48,
                    f"max over 4 syncs (worst: {worst})"))
    c_first = big["snapshot_first"]["phases"]["commit_s"]
    c_one = big["one_key"]["phases"]["commit_s"]
    plain_wall = big["plain"]["wall_s"]
    rows.append(row("6-first", "Snapshot commit, first snapshot (every Secret)", n, c_first, "s",
                    "cold sync without snapshots", plain_wall, c_first / plain_wall if c_first else None,
                    f"{100 * c_first / plain_wall:.0f}% of a cold sync" if c_first else "",
                    "<= 2 s", c_first is not None and c_first <= 2,
                    f"files: {big['git']['files_in_snapshot']}"))
    rows.append(row("6-one", "Snapshot commit, one-key change", n, c_one, "s",
                    "first snapshot commit", c_first, c_one / c_first if c_one and c_first else None,
                    f"{c_one / c_first:.2f}x" if c_one and c_first else "", "<= 2 s",
                    c_one is not None and c_one <= 2, ""))
    g = big["git"]
    rows.append(row("6-files", "One-key change: files (lines +/-) in the snapshot commit", n,
                    f"{g['last_commit_files']} ({g['last_commit_added_lines']}+/{g['last_commit_removed_lines']}-)",
                    "files", "files in the snapshot", g["files_in_snapshot"], None, "", "1 file",
                    g["last_commit_files"] == 1, ""))
    big["peak_rss_max_mib"] = rss
    return (rows + scale.rows(b, row, fmt_s, percentile) + rotations.rows(b, row, fmt_s, median)
            + sm_events.rows(b, row))


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))

    def version(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    py = str(si.VENV_BIN / "python")
    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    return {
        "nproc": os.cpu_count(),
        "model_name": model,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "moto": version([py, "-c", "import moto; print(moto.__version__)"]),
        "boto3": version([py, "-c", "import boto3; print(boto3.__version__)"]),
        "credstash": version([py, "-c", "import importlib.metadata as m; print(m.version('credstash'))"]),
        "credsync": version([str(CREDSYNC), "--version"]),
        "kubernetes": re.search(r"k8s\.io/kubernetes (v\S+)", (ROOT / "tools/k8s/go.mod").read_text()).group(1),
        "credsync_commit": commit + (" (uncommitted changes)" if dirty else ""),
    }


def cpu_busy() -> tuple[float, float]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / si.CLK_TCK, sum(fields) / si.CLK_TCK


def busy_note(start, end) -> str:
    busy, total = end[0] - start[0], end[1] - start[1]
    return f"all CPUs {100 * busy / total:.0f}% busy over the run (the harness, the stand-ins and anything else)"


# ---- reports ------------------------------------------------------------------------

def clean(obj):
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 4)
    return obj


def cell(value, unit):
    if isinstance(value, float):
        if unit == "s":
            return fmt_s(value)
        return f"{value:.1f} {unit}"
    if value is None:
        return "n/a"
    return f"{value} {unit}".strip() if unit not in ("files", "calls") else str(value)


def write_reports(b: Bench, rows: list[dict]) -> None:
    m = b.results["machine"]
    mode = "quick" if b.quick else "full"
    command = "just bench" if not b.quick else "just bench-quick"
    report = {"schema": "credsync.bench/v1", "mode": mode, "build": b.build, "command": command, "config": b.cfg,
              "rows": rows, **{k: v for k, v in b.results.items()}}
    report["cold"] = {str(n): runs for n, runs in b.cold_runs.items()}
    report["moto_query_s"] = {str(n): q for n, q in b.query_cost.items()}
    (b.out / "report.json").write_text(json.dumps(clean(report), indent=2) + "\n")

    failing = [r for r in rows if r["pass"] is False]
    md = []
    md.append(f"## credsync benchmark ({mode} run, {b.results['started']})")
    md.append("")
    md.append(f"Machine: {m['nproc']} CPUs ({m['model_name']}), {m['mem_total_gib']} GiB memory, Linux "
              f"{m['kernel']}; load average at start {' '.join(m['loadavg_start'])}, at end "
              f"{' '.join(m['loadavg_end'])}; {m['other_cpu_note']}.")
    md.append(f"Stand-ins on loopback: moto {m['moto']} (DynamoDB + KMS), kube-apiserver {m.get('kubernetes', '?')} + etcd (tests/control-plane); baselines: "
              f"credstash {m['credstash']} CLI and boto3 {m['boto3']} (Python {m['python']}). "
              f"{m['credsync']} ({b.build} build) at {m['credsync_commit']}.")
    try:
        where = b.out.relative_to(ROOT)
    except ValueError:
        where = b.out
    md.append(f"Reproduce: `{command}` (writes {where}/report.md and report.json). "
              f"Whole run: {b.results['duration_s'] / 60:.1f} min."
              + (" Debug build: this run checks the harness; its figures are not representative." if b.build == "debug" else ""))
    md.append("")
    md.append("| # | Measure | N | credsync | Baseline (same run) | Baseline value | Ratio | Target | Result |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        result = {True: "PASS", False: "**FAIL**", None: "-"}[r["pass"]]
        md.append(f"| {r['id']} | {r['measure']} | {r['n'] if r['n'] is not None else '-'} | {cell(r['value'], r['unit'])} | {r['baseline']} | "
                  f"{cell(r['baseline_value'], r['unit'])} | {r['ratio_text']} | {r['target'] or '-'} | {result} |")
    md.append("")
    md.append(f"Targets missed: {', '.join(r['id'] for r in failing) if failing else 'none'}.")
    md.append("")
    md.append("### How each figure was measured")
    md.append("")
    c = b.cfg
    md.append(f"- Items: N names `bench-K/svc-NNNNN/{{username,password}}` (N/2 Secrets with 2 keys, 10 "
              "namespaces); 3 written by the credstash CLI, the rest copies of one CLI-written item under "
              "other names (BatchWriteItem).")
    md.append(f"- Row 1: per repetition ({c['cold_reps']} per N) a fresh control plane (empty cluster) and a new "
              f"`credsync --kms-concurrency {KMS_CONCURRENCY} sync` process (wall time from spawn to exit); then "
              f"the floor: one boto3 Scan pass (the faster of 1 and {SCAN_SEGMENTS} parallel segments) plus one "
              f"KMS Decrypt per item on a {KMS_CONCURRENCY}-thread pool; then `credstash getall` (spawn to exit, "
              f"output counted and dropped; {', '.join(f'{v} rep(s) at N={k}' for k, v in c['getall_reps'].items())}). "
              "Medians.")
    md.append(f"- Row 2: `credsync run --no-stream --no-drift-repair --sync-rate-limit 0s`; after /readyz, "
              f"{c['warm_reps']} x `POST /sync`, each followed by the boto3 Scan pass; figures are deltas of "
              "/metrics (reconcile_duration_seconds{trigger=\"http\"} sum, KMS / DynamoDB / Kubernetes counters).")
    md.append("- Row 3: after a first `sync --snapshot-repo R --age-recipient A --age-identity I`, a new "
              "process with the same flags and no table change; the `kms_decrypt=` figure of its `done` log line. "
              "Row 3-ready: `credsync run --no-stream --no-drift-repair` with those flags, timed from process "
              "start to the first /readyz 200 (with the snapshot: its values loaded and the API server "
              "answering; without: the start-up reconcile done), against the same start without the snapshot "
              "flags, in a cluster already in step. At the largest N the baseline is that N's cold `sync`. "
              "Rows 3-converged: the same two starts, timed from process start to the end of the start-up "
              "reconcile (reconcile_duration_seconds_count{trigger=\"startup\"} = 1, its outcome success): "
              "what a user restarting credsync waits for. KMS Decrypt calls counted at that point; one boto3 "
              "Scan pass of the table (4 segments) is shown beside it, since no convergence can beat reading "
              "the table once.")
    md.append(f"- Rows at N={c['huge_n']} (issue 15): one table seeded by BatchWriteItem; a cold `sync` and the "
              "floor (one rep each); then with snapshots: first commit, restart, one-key change (as rows 3 and "
              "6); restart to ready; then `credsync run` with the snapshot following the stream: after its "
              "start-up reconcile, one `POST /sync` (reconcile time vs a boto3 Scan pass right after) and "
              f"{c['huge_puts']} puts as in row 4. Per-put calls are the largest counts of any one put's window "
              "(/metrics read after each put's Secret changed), compared with row 4's at its N.")
    md.append("- Row 7: `cargo build --release --locked -p credsync --bin credsync` in an empty target directory "
              "(every dependency compiled), wall time; size of the binary and of a `strip`ped copy.")
    md.append(f"- Row 4: table stream enabled (NEW_AND_OLD_IMAGES), `credsync run` with default settings "
              f"(debounce {DEBOUNCE:.0f} s); {c['puts']} sequential `credstash put -a` of existing names; latency from "
              "the CLI's exit (the item is written) to the Secret holding the new value, polled every 10 ms "
              "through the Kubernetes API. Kubestash-V2 floor = its 120 s default wait + a full `credstash getall` "
              "of the same table, as measured in row 1.")
    md.append("- Row 5: peak RSS = VmHWM of the `credsync sync` process, read from /proc/PID/status every 10 ms "
              "while it runs (wait4's ru_maxrss is not used: it also counts the forking harness's pages from "
              "before exec); the largest of the 4 syncs at the largest N is shown.")
    md.append("- Row 6: commit time = time between the `planned` debug line and the `snapshot "
              "committed` line of `sync --verbose` (SOPS/age encryption of the files + git commit); the one-key "
              "change is one `credstash put` followed by `sync`; files and lines from `git show --numstat HEAD`.")
    md.append("- Row 8 (benches/rotations.py): a control plane with kube-controller-manager's workload controllers "
              "and a played kubelet (`control-plane --workloads`; a Pod is Ready unless its Secret holds the bad "
              "value); `credsync run --rollouts --no-stream` with a snapshot repository, one Deployment per Secret. "
              "8-patch: a `credstash put`, POST /sync, then the Secret's patch -> the Deployment's restart patch, "
              "from the API server audit log's `stageTimestamp`s, one rotation at a time. 8-wave: one new version "
              "for each of the wave's Secrets, one POST /sync; last Secret patch -> last restart patch. 8-revert: a "
              "value the kubelet fails; from the bench seeing `ProgressDeadlineExceeded` (polled every 20 ms) to "
              "reading the good value back. Reloader's figures are its acceptance figures on the same ground.")
    md.append("")
    md.append("### Where the time goes")
    md.append("")
    md.append("CPU seconds of each process during the timed runs (wall time vs CPU of credsync, moto, kube-apiserver + etcd):")
    md.append("")
    md.append("| Run | N | Wall | credsync CPU | moto CPU | kube-apiserver + etcd CPU | Peak RSS (VmHWM) | peak anon + file |")
    md.append("|---|---|---|---|---|---|---|---|")
    for n, runs in b.cold_runs.items():
        for r in runs:
            cs = r["credsync"]
            md.append(f"| {cs['label']} | {n} | {fmt_s(cs['wall_s'])} | {cs['cpu_s']:.2f} s | "
                      f"{cs['moto_cpu_s']:.2f} s | {cs['kube_api_cpu_s']:.2f} s | {cs['peak_rss_mib']:.1f} MiB | "
                  f"{cs['peak_anon_mib']:.1f} + {cs['peak_file_mib']:.1f} MiB |")
    for group in (b.results["big"], b.results["huge"]):
        for k in ("plain", "snapshot_first", "restart", "one_key"):
            cs = group[k]
            md.append(f"| {cs['label']} | {group['n']} | {fmt_s(cs['wall_s'])} | {cs['cpu_s']:.2f} s | "
                      f"{cs['moto_cpu_s']:.2f} s | {cs['kube_api_cpu_s']:.2f} s | {cs['peak_rss_mib']:.1f} MiB | "
                      f"{cs['peak_anon_mib']:.1f} + {cs['peak_file_mib']:.1f} MiB |")
    big = b.results["big"]
    md.append("")
    md.append("Emulator floor and peer, same runs:")
    md.append("")
    md.append("| N | floor wall | Scan 1 seg | Scan 4 seg | Decrypt (32 threads) | moto CPU | getall wall | getall moto CPU |")
    md.append("|---|---|---|---|---|---|---|---|")
    for n, runs in b.cold_runs.items():
        for r in runs:
            f, g = r["floor"], r["getall"]
            md.append(f"| {n} | {fmt_s(f['wall_s'])} | {fmt_s(f['scan_1_segment_s'])} | "
                      f"{fmt_s(f[f'scan_{SCAN_SEGMENTS}_segments_s'])} | {fmt_s(f['decrypt_s'])} | "
                      f"{f['moto_cpu_s']:.2f} s | {fmt_s(g['wall_s']) if g else '-'} | "
                      f"{(str(round(g['moto_cpu_s'], 2)) + ' s') if g else '-'} |")
    md.append("")
    md.append("moto walks the whole table for every Query, and `credstash getall` sends one Query per name "
              "(then one KMS Decrypt), so on moto its time grows as N^2; a real DynamoDB Query does not. "
              "One Query for a name's latest version, measured with boto3 after the repetitions: "
              + ", ".join(f"{fmt_s(q)} at N={n} ({fmt_s(q * n)} for N of them, sequentially)"
                          for n, q in b.query_cost.items()) + ". The floor and credsync read the table "
              "with Scan only.")
    md.append("")
    w = b.results["warm"]["reps"]
    md.append(f"Warm reconciles (N={b.results['warm']['n']}):")
    md.append("")
    md.append("| Rep | reconcile | observed by client | Scan pass (1 / 4 seg) | KMS | Scan calls | Kubernetes requests | credsync CPU | moto CPU |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(w, 1):
        kube = ", ".join(f"{v} {int(n)}" for v, n in r["kubernetes"].items() if n)
        md.append(f"| {i} | {fmt_s(r['reconcile_s'])} | {fmt_s(r['observed_s'])} | "
                  f"{fmt_s(r['scan_1_segment_s'])} / {fmt_s(r[f'scan_{SCAN_SEGMENTS}_segments_s'])} | "
                  f"{r['kms_decrypt']:.0f} | {r['dynamodb_scan']:.0f} | {kube or 'none'} | "
                  f"{r['credsync_cpu_s']:.2f} s | {r['moto_cpu_s']:.2f} s |")
    md.append("")
    st = b.results["stream"]
    lat = sorted(s["after_put_s"] for s in st["samples"])
    incl = sorted(s["after_cli_start_s"] for s in st["samples"])
    slow = max(range(len(st["samples"])), key=lambda i: st["samples"][i]["after_put_s"])
    sw = st["samples"][slow]
    rest = sorted(x["after_put_s"] for i, x in enumerate(st["samples"]) if i != slow)
    md.append(f"Slowest put: #{slow + 1} of {st['puts']} (`{sw['name']}`, "
              f"{fmt_s(sw['after_put_s'])}, {sw['at'] - st['ready_at']:.1f} s after /readyz); in its window credsync "
              "made " + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in sw["window"].items() if v)
              + (f". Without it, p99 of the other {len(rest)} puts: {fmt_s(percentile(rest, 0.99))}." if rest else "."))
    md.append("")
    md.append(f"Stream (N={st['n']}, {st['puts']} puts): after the put min {fmt_s(lat[0])}, p50 "
              f"{fmt_s(percentile(lat, 0.5))}, p99 {fmt_s(percentile(lat, 0.99))}, max {fmt_s(lat[-1])}; "
              f"counting the credstash CLI's own run time p50 {fmt_s(percentile(incl, 0.5))}, p99 "
              f"{fmt_s(percentile(incl, 0.99))}. Calls for all puts: {st['kms_decrypt']:.0f} KMS Decrypt, "
              f"{st['dynamodb_query']:.0f} Query, {st['dynamodb_scan']:.0f} Scan, "
              f"{st['kubernetes_writes']:.0f} Kubernetes writes.")
    md.append("")
    md.append(f"Phases of the N={big['n']} syncs, from `--verbose` log timestamps; in brackets the peak "
              "anonymous (heap) RSS in that phase, sampled from /proc every 10 ms:")
    md.append("")
    md.append("| Run | Wall | " + " | ".join(PHASES) + " | calls |")
    md.append("|---|---|" + "---|" * len(PHASES) + "---|")
    for k in ("plain", "snapshot_first", "restart", "one_key"):
        ph = big[k]["phases"]["steps_s"]
        calls = " ".join(f"{a}={v}" for a, v in big[k]["calls"].items())
        anon = big[k]["phases"].get("peak_anon_mib", {})
        md.append(f"| {big[k]['label']} | {fmt_s(big[k]['wall_s'])} | "
                  + " | ".join(f"{fmt_s(ph.get(p))}" + (f" ({anon[p]:.0f} MiB)" if anon.get(p) is not None else "")
                               for p in PHASES) + f" | {calls} |")
    md.append("")
    g = big["git"]
    md.append(f"Snapshot repository: {g['commits']} commits, {g['files_in_snapshot']} files, .git "
              f"{g['repo_size_kib'] / 1024:.1f} MiB. Last commit (`git show --stat`, the one-key change of "
              f"`{big['one_key_name']}`):")
    md.append("")
    md.append("```")
    md.append(g["last_commit_stat"])
    md.append("```")
    perf = b.results.get("perf")
    if perf:
        md.append("")
        if perf.get("available"):
            md.append(f"perf profile of a cold `credsync sync` at N={perf['n']} (cpu-clock samples of the "
                      f"credsync process; wall {fmt_s(perf['wall_s'])}, credsync CPU {perf['cpu_s']:.2f} s, "
                      f"moto CPU {perf['moto_cpu_s']:.2f} s meanwhile; full report in {perf['report']}):")
            md.append("")
            md.append(f"By binary: {', '.join(perf['by_dso'])}.")
            md.append("")
            md.append("```")
            md.extend(perf["top"])
            md.append("```")
        else:
            md.append("perf is not usable on this machine; see the CPU and phase tables above.")
    ms = b.results.get("massif")
    if ms:
        md.append("")
        if ms.get("available"):
            md.append(f"Heap profile of a cold `credsync sync` at N={ms['n']} (valgrind massif, {ms['file']}; "
                      "`at` = share of the run's instructions; the biggest holders of each detailed snapshot, "
                      "by allocation site and the credsync function that made it):")
            md.append("")
            md.append("| at | heap | holders |")
            md.append("|---|---|---|")
            peak_heap = max(sn["heap"] + sn["extra"] for sn in ms["snapshots"])
            for snap in ms["snapshots"]:
                if snap["heap"] + snap["extra"] < 0.2 * peak_heap:
                    continue
                holders = "<br>".join(f"{h['bytes'] / MIB:.1f} MiB {h['site']} in `{h['credsync']}`"
                                      for h in snap["holders"])
                peak = " (peak)" if snap["kind"] == "peak" else ""
                md.append(f"| {100 * snap['at']:.0f}%{peak} | {(snap['heap'] + snap['extra']) / MIB:.1f} MiB | "
                          f"{holders} |")
        else:
            md.append("valgrind is not available here: no heap profile; see the per-phase RSS above.")
    md.append("")
    md.append(f"No seeded value appears in any credsync output: {'yes' if not b.results['leaks'] else 'NO'}.")
    drawn = figures.write(clean(report), b.out / "figures")
    md.append("")
    md.append("### Figures")
    md.append("")
    md.append("![Cold full reconcile vs N](figures/scaling-cold.svg)")
    md.append("![Peak RSS vs N](figures/scaling-rss.svg)")
    md.append("")
    md.append("One per measure with a baseline (credsync beside its baseline, the target dashed): "
              + ", ".join(f"[{p.stem}](figures/{p.name})" for p in drawn if not p.stem.startswith("scaling")) + ".")
    (b.out / "report.md").write_text("\n".join(md) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 100, a few puts: the CI smoke run")
    parser.add_argument("--out", default=str(ROOT / "target" / "bench"), help="report directory")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--cold-n", type=int, default=5000, help="N of `--only cold`")
    parser.add_argument("--only", choices=["rotations", "cold", "sm-events"],
                        help="run only these rows and print them (no report.md): a quick look at one part")
    parser.add_argument("--build", choices=["release", "debug"], default="release",
                        help="which cargo build to run (debug: only to check the harness, figures mean little)")
    args = parser.parse_args()
    global CREDSYNC
    bin_dir = si.TARGET_DIR / args.build
    CREDSYNC = bin_dir / "credsync"
    for binary in (CREDSYNC, bin_dir / "control-plane"):
        if not binary.exists():
            flag = " --release" if args.build == "release" else ""
            sys.exit(f"error: {binary} missing: cargo build{flag} -p credsync -p control-plane")
    if not shutil.which("age-keygen"):
        sys.exit("error: age-keygen missing (Debian package age)")

    stopping = []

    def stop(signum, _frame):
        if stopping:  # already stopping: let the cleanup finish
            print(f"signal {signum}: already stopping the stand-ins", file=sys.stderr)
            return
        stopping.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (e.g. `cmd &`)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    bench = Bench(args)
    if args.only == "cold":
        try:
            bench.s.start_moto()
            bench.row_cold(args.cold_n, 3, 0)
            runs = bench.cold_runs[args.cold_n]
            cs = median([r["credsync"]["wall_s"] for r in runs])
            fl = median([r["floor"]["wall_s"] for r in runs])
            print(f"| 1-{args.cold_n}-floor | cold full reconcile | {fmt_s(cs)} | floor {fmt_s(fl)} | "
                  f"{cs / fl:.2f}x | <= 1.3x | {'PASS' if cs / fl <= 1.3 else 'FAIL'} |")
        finally:
            bench.close()
        return 0
    if args.only:
        try:
            bench.s.start_moto()
            if args.only == "sm-events":
                sm_events.run(bench, bench.cfg["sm_ns"])
                found = sm_events.rows(bench, row)
            else:
                rotations.run(bench)
                found = rotations.rows(bench, row, fmt_s, median)
            for r in found:
                print(f"| {r['id']} | {r['measure']} | {cell(r['value'], r['unit'])} | {r['baseline']}: "
                      f"{cell(r['baseline_value'], r['unit'])} | {r['ratio_text']} | {r['target']} | "
                      f"{'PASS' if r['pass'] else 'FAIL'} |")
            (bench.out / f"{args.only}.json").write_text(json.dumps(clean(bench.results), indent=2) + "\n")
        finally:
            bench.close()
        return 0
    try:
        bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the stand-ins", file=sys.stderr)
        return 130
    finally:
        bench.close()
    print((bench.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
