"""Issue 15's rows for bench.py: one table of HUGE_N items (cold reconcile vs
the emulator floor, warm reconcile vs one Scan pass, peak RSS, restart to
ready, per-put cost, snapshot commits) and the release build (time from
clean, stripped size). Every baseline is measured in the same run.

The functions take bench.py's `Bench` (its stand-ins, `sync`, `daemon`,
`floor`, `put_loop`, `metrics`) and put their figures in b.results.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import standins as si

DEBOUNCE = 1.0
WRITE_VERBS = ("create", "update", "patch", "delete")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def age_keys(work: Path) -> tuple[str, Path]:
    identity = work / "huge-reader.agekey"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    return recipient, identity


def run_huge(b, n: int, puts: int) -> None:
    """Every figure at N = n, on one table and one control plane per phase."""
    table = f"huge-{n}"
    say(f"seeding {table}: {n} items (BatchWriteItem of a credstash-CLI item under other names)")
    t0 = time.perf_counter()
    b.s.make_table(table, n)
    seeded_s = time.perf_counter() - t0
    say(f"seeded in {seeded_s:.1f} s")
    recipient, identity = age_keys(b.work)
    repo = b.work / "huge-snapshots"
    snap = ["--snapshot-repo", str(repo), "--age-recipient", recipient, "--age-identity", str(identity)]
    huge = {"n": n, "seed_s": seeded_s}

    say(f"N={n}: cold sync without snapshots, then the emulator floor")
    b.s.start_kube()
    huge["plain"] = b.sync(f"huge-{n}-plain", table, ["--verbose"])
    huge["floor"] = b.floor(table, n)

    say(f"N={n}: cold sync with --snapshot-repo (first snapshot commit) on an empty cluster")
    b.s.start_kube()
    huge["snapshot_first"] = b.sync(f"huge-{n}-snapshot-first", table, ["--verbose", *snap])
    say(f"N={n}: restart (a new sync with the last snapshot)")
    huge["restart"] = b.sync(f"huge-{n}-restart", table, ["--verbose", *snap])
    say(f"N={n}: one credstash put, then sync with the snapshot")
    b.s.put(table, si.item_names(n)[n // 3])
    huge["one_key"] = b.sync(f"huge-{n}-one-key", table, ["--verbose", *snap])

    say(f"N={n}: restart to ready and to converged (`credsync run` with the last snapshot, then a cold start)")
    huge["ready"] = restarts(b, f"huge-{n}", table, snap)

    say(f"N={n}: credsync run following the stream: a warm POST /sync, then {puts} puts")
    b.s.enable_stream(table)
    proc, port, log, _ = b.daemon(f"huge-{n}-stream", table,
                                  [*snap, "--insecure-no-auth", "--sync-rate-limit", "0s",
                                   "--no-drift-repair"])
    try:
        wait_for_reconcile(b, port, "startup", 1, 1800)
        huge["warm"] = warm_reconcile(b, port, table)
        samples, before, after = b.put_loop(port, b.s.kube, table, n, puts)
        huge["stream"] = {"samples": samples, "log": str(log.relative_to(b.out)),
                          "scans": after.get('credsync_dynamodb_requests_total{operation="Scan"}', 0)
                          - before.get('credsync_dynamodb_requests_total{operation="Scan"}', 0)}
    finally:
        b.s.stop(proc)
        b.s.stop_kube()
    # moto answers a Query by walking the whole table: what one costs here
    # bounds the per-put latency from below (a real DynamoDB Query does not grow with N).
    huge["moto_query_s"] = b.s.query_cost(table, si.item_names(n), k=5)
    b.results["huge"] = huge


def restarts(b, label: str, table: str, snap: list[str]) -> dict:
    """`credsync run` started with the last snapshot, then without: to ready
    and to converged, the KMS calls of each, and one Scan pass beside them."""
    warm = b.ready_after_start(f"{label}-run-warm", table, snap)
    cold = b.ready_after_start(f"{label}-run-cold", table, [])
    return {"warm_s": warm["ready_s"], "warm_kms": warm["kms"], "cold_s": cold["ready_s"],
            "cold_kms": cold["kms"], "warm_converged_s": warm["converged_s"],
            "cold_converged_s": cold["converged_s"], "scan_pass_s": b.s.scan_pass(table, 4)[0]}


def wait_for_reconcile(b, port: int, trigger: str, count: int, timeout: float) -> None:
    key = f'credsync_reconcile_duration_seconds_count{{trigger="{trigger}"}}'
    deadline = time.monotonic() + timeout
    while b.metrics(port).get(key, 0) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {trigger} reconcile finished within {timeout:.0f} s")
        time.sleep(0.2)


def warm_reconcile(b, port: int, table: str) -> dict:
    """One POST /sync with nothing changed: its reconcile time, calls, and
    one boto3 Scan pass right after (the faster of 1 and 4 segments)."""
    before = b.metrics(port)
    code, body = si.http(port, "POST", "/sync")
    if code != 202:
        raise RuntimeError(f"POST /sync answered {code}: {body[:200]}")
    wait_for_reconcile(b, port, "http", before.get('credsync_reconcile_duration_seconds_count{trigger="http"}', 0) + 1,
                       1800)
    after = b.metrics(port)

    def d(key):
        return after.get(key, 0) - before.get(key, 0)

    seq = b.s.scan_pass(table, 1)
    par = b.s.scan_pass(table, 4)
    return {
        "reconcile_s": d('credsync_reconcile_duration_seconds_sum{trigger="http"}'),
        "kms_decrypt": d('credsync_kms_requests_total{operation="Decrypt"}'),
        "dynamodb_scan": d('credsync_dynamodb_requests_total{operation="Scan"}'),
        "kubernetes_writes": sum(d(f'credsync_kubernetes_requests_total{{verb="{v}"}}') for v in WRITE_VERBS),
        "scan_pass_s": min(seq[0], par[0]),
    }


def run_build(b) -> None:
    """`cargo build --release` of the credsync binary from clean, in a
    separate target directory (so nothing cached counts), and its size."""
    target = b.work / "build-from-clean"
    say("release build of credsync from clean (a separate target directory)")
    env = {**os.environ, "CARGO_TARGET_DIR": str(target)}
    t0 = time.perf_counter()
    out = subprocess.run(["cargo", "build", "--release", "--locked", "-p", "credsync", "--bin", "credsync"],
                         cwd=si.ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"release build failed:\n{out.stderr[-2000:]}")
    binary = target / "release" / "credsync"
    stripped = b.work / "credsync-stripped"
    shutil.copy(binary, stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    b.results["build"] = {"wall_s": wall, "size_mib": binary.stat().st_size / 2**20,
                          "stripped_mib": stripped.stat().st_size / 2**20, "nproc": os.cpu_count(),
                          "profile": release_profile()}
    shutil.rmtree(target, ignore_errors=True)


def release_profile() -> str:
    text = (si.ROOT / "Cargo.toml").read_text()
    start = text.find("[profile.release]")
    if start < 0:
        return "cargo defaults"
    body = text[start + len("[profile.release]"):].split("\n[", 1)[0]
    return ", ".join(line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#"))


def rows(b, row, fmt_s, percentile) -> list[dict]:
    out = []
    h = b.results.get("huge")
    if h:
        n = h["n"]
        cold, floor = h["plain"]["wall_s"], h["floor"]["wall_s"]
        out.append(row(f"1-{n}-floor", "Cold full reconcile vs emulator floor", n, cold, "s",
                       "floor: boto3 Scan + 32-wide KMS Decrypt", floor, cold / floor,
                       f"{cold / floor:.2f}x floor", "<= 1.2x floor", cold / floor <= 1.2, "one rep each"))
        w = h["warm"]
        ratio = w["reconcile_s"] / w["scan_pass_s"]
        out.append(row(f"2-{n}-wall", "Warm reconcile, no change (`POST /sync`)", n, w["reconcile_s"], "s",
                       "one boto3 Scan pass", w["scan_pass_s"], ratio, f"{ratio:.2f}x Scan pass",
                       "<= 1.2x Scan pass, 0 KMS, 0 writes",
                       ratio <= 1.2 and w["kms_decrypt"] == 0 and w["kubernetes_writes"] == 0,
                       f"KMS {w['kms_decrypt']:.0f}, writes {w['kubernetes_writes']:.0f}, "
                       f"Scan calls {w['dynamodb_scan']:.0f}"))
        runs = {k: h[k]["peak_rss_mib"] for k in ("plain", "snapshot_first", "restart", "one_key")}
        worst = max(runs, key=runs.get)
        out.append(row(f"5-{n}", "Peak RSS of `credsync sync`", n, runs[worst], "MiB",
                       f"the same syncs at N={b.results['big']['n']} (row 5)", b.results["big"]["peak_rss_max_mib"],
                       runs[worst] / b.results["big"]["peak_rss_max_mib"],
                       f"{runs[worst] / b.results['big']['peak_rss_max_mib']:.2f}x", "<= 160 MiB",
                       runs[worst] <= 160, f"max over 4 syncs (worst: {worst})"))
        r = h["ready"]
        out.append(row(f"3-ready-{n}", "Restart to ready (`credsync run`, process start -> /readyz) "
                       "with the last snapshot", n, r["warm_s"], "s",
                       "a cold `credsync sync` of the same table", cold, r["warm_s"] / cold,
                       f"{r['warm_s'] / cold:.3f}x cold", "0 KMS calls", r["warm_kms"] == 0,
                       f"KMS calls before ready: {r['warm_kms']:.0f}"))
        out.append(converged_row(row, fmt_s, n, r))
        per_put = put_costs(h["stream"]["samples"])
        lat = sorted(s["after_put_s"] for s in h["stream"]["samples"])
        p99 = percentile(lat, 0.99)
        small = b.results.get("stream")
        small_costs = put_costs(small["samples"]) if small else None
        out.append(row(f"4-{n}-calls", "Per put: DynamoDB Query / KMS Decrypt / Secret writes / Scans",
                       n, costs_text(per_put), "", f"the same at N={small['n'] if small else '-'}",
                       costs_text(small_costs) if small_costs else "-", None,
                       "flat" if small_costs and per_put == small_costs else "",
                       "1 / 1 / 1 / 0", per_put == (1, 1, 1, 0),
                       f"max per put window over {len(lat)} puts; Scans in the whole loop: "
                       f"{h['stream']['scans']:.0f}"))
        small_p99 = percentile(sorted(s["after_put_s"] for s in small["samples"]), 0.99) if small else None
        out.append(row(f"4-{n}-p99", "Stream: `credstash put` -> Secret updated, p99", n, p99, "s",
                       f"the same at N={small['n']}" if small else "-", small_p99,
                       p99 / small_p99 if small_p99 else None, f"{p99 / small_p99:.2f}x" if small_p99 else "",
                       f"<= debounce + 1 s = {DEBOUNCE + 1:.1f} s", p99 <= DEBOUNCE + 1,
                       f"p50 {fmt_s(percentile(lat, 0.5))}; {len(lat)} puts; one moto Query at this N: "
                       f"{fmt_s(h['moto_query_s']) if h.get('moto_query_s') else '-'}"))
        out.append(own_time_row(row, fmt_s, n, h["stream"]["samples"], small))
        first = h["snapshot_first"]["phases"]["commit_s"]
        one = h["one_key"]["phases"]["commit_s"]
        out.append(row(f"6-{n}-first", "Snapshot commit, first snapshot (every Secret)", n, first, "s",
                       "cold sync without snapshots", cold, first / cold if first else None,
                       f"{100 * first / cold:.0f}% of a cold sync" if first else "", "<= 5 s",
                       first is not None and first <= 5, ""))
        out.append(row(f"6-{n}-one", "Snapshot commit, one-key change", n, one, "s",
                       "first snapshot commit", first, one / first if one and first else None,
                       f"{one / first:.3f}x" if one and first else "", "<= 1 s",
                       one is not None and one <= 1, ""))
    bd = b.results.get("build")
    if bd:
        out.append(row("7-build", "Release build from clean (`cargo build --release`, credsync binary)", None,
                       bd["wall_s"], "s", "-", None, None, "", "", None,
                       f"{bd['nproc']} CPUs; profile: {bd['profile']}"))
        out.append(row("7-size", "Release binary, stripped", None, bd["stripped_mib"], "MiB",
                       "unstripped", bd["size_mib"], bd["stripped_mib"] / bd["size_mib"],
                       f"{bd['stripped_mib'] / bd['size_mib']:.2f}x", "<= 25 MB",
                       bd["stripped_mib"] * 2**20 <= 25e6, ""))
    return out


def converged_row(row, fmt_s, n: int, ready: dict) -> dict:
    """Restart to converged: what a user restarting credsync waits for (the
    first reconcile done, every Secret right), beside a cold start."""
    warm, cold = ready["warm_converged_s"], ready["cold_converged_s"]
    return row(f"3-converged-{n}", "Restart to converged (`credsync run`, process start -> first reconcile "
               "finished) with the last snapshot", n, warm, "s",
               "the same start without a snapshot (every item decrypted)", cold, warm / cold,
               f"{warm / cold:.2f}x cold", "<= 2 s and 0 KMS calls" if n <= 10_000 else "0 KMS calls",
               (warm <= 2 or n > 10_000) and ready["warm_kms"] == 0,
               f"KMS calls: {ready['warm_kms']:.0f}; ready after {fmt_s(ready['warm_s'])}; one moto Scan "
               f"pass of the table (4 segments) takes {fmt_s(ready['scan_pass_s'])}, the floor of any convergence")


def own_time_row(row, fmt_s, n: int, samples: list[dict], small: dict | None) -> dict:
    """Per put: the reconcile's time split into credsync's own (with the API
    server's write) and the wait for AWS (here the emulator), medians, beside
    the same at the small N: which part grows with N."""
    def split(samples):
        own = sorted(max(0.0, s["window"].get("reconcile_s", 0) - s["window"].get("aws_wait_s", 0))
                     for s in samples)
        aws = sorted(s["window"].get("aws_wait_s", 0) for s in samples)
        mid = len(own) // 2
        return (own[mid], aws[mid]) if own else (None, None)
    own, aws = split(samples)
    small_own, small_aws = split(small["samples"]) if small else (None, None)
    growth = own / small_own if own and small_own else None
    return row(f"4-{n}-own", "Per put: reconcile time, credsync's own (and the API server's write) vs "
               "waiting for AWS, medians", n, own, "s",
               f"credsync's own at N={small['n'] if small else '-'}", small_own, growth,
               f"{growth:.2f}x" if growth else "", "-", None,
               f"waiting for AWS (moto) per put: {fmt_s(aws)} at N={n}, "
               f"{fmt_s(small_aws)} at N={small['n'] if small else '-'} "
               "(credsync_aws_request_duration_seconds of the reconcile's calls)")


def put_costs(samples: list[dict]) -> tuple[int, int, int, int]:
    """The largest (Query, KMS, writes, Scan) counts of any one put's window."""
    def most(key):
        return int(max((s["window"].get(key, 0) for s in samples), default=0))
    return most("query"), most("kms"), most("writes"), most("scan")


def costs_text(c) -> str:
    return " / ".join(str(x) for x in c)
