#!/usr/bin/env python3
"""What keeping many clusters in step costs in AWS API calls, per day.

    .venv/bin/python benches/cost.py [--clusters 50] [--secrets 100000]
        [--changes-per-day 2000] [--out target/cost]

First it measures credsync itself on local stand-ins (moto, a real
kube-apiserver, the debug or release binary): N_MEASURE items, a few
`credstash put`s reaching their Secrets, once with the table's stream and once
with an SQS queue fed as EventBridge Pipes would feed it. The call counts per
change and per idle hour come from credsync's own /metrics, never from
guesses. Then it models a day for the parameters given, for four designs:

- credsync on the table's stream (every cluster polls every shard);
- credsync on SQS fan-out (one Pipe + SNS topic, one queue per cluster);
- Kubestash-V2's design: after a stream event, wait 120 s, then read and
  decrypt the whole table (every cluster polls the stream too);
- polling per secret, External Secrets Operator's model: one GetSecretValue
  per secret per refresh interval, per cluster.

Prices are us-east-1 list prices (printed; change them here when AWS does).
Writes OUT/cost.md and OUT/cost.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import standins as si  # noqa: E402
except ImportError as err:
    sys.exit(f"error: {err}; run with .venv/bin/python (just setup installs it)")

N_MEASURE = 200  # items in the measured table
CHANGES = 8  # puts measured per mode
IDLE_SECONDS = 40.0  # idle window measured per mode
IDLE_PACE_AFTER = 32.0  # a shard quiet for 30 s is polled at --stream-idle-poll
KUBESTASH_WAIT = 120.0  # Kubestash-V2's WAIT_TIME
ESO_REFRESH_S = 3600.0  # External Secrets Operator's default refreshInterval (1h)
STREAM_SHARDS = 4  # shards of a 100k-item table's stream, for the idle polling
ITEM_BYTES = 1024  # a Credstash item (key, contents, hmac): about 1 KB

# USD, us-east-1 list prices.
PRICE = {
    "dynamodb_read_unit": 0.125 / 1e6,  # on-demand read request unit
    "streams_read": 0.02 / 1e5,  # DynamoDB Streams read request (GetRecords etc.)
    "kms": 0.03 / 1e4,  # KMS request
    "secretsmanager": 0.05 / 1e4,  # Secrets Manager API call
    "sqs": 0.40 / 1e6,  # SQS request (standard)
    "sns": 0.50 / 1e6,  # SNS publish (delivery to SQS is free)
    "pipes": 0.40 / 1e6,  # EventBridge Pipes request
}

STREAM_OPS = ("GetRecords", "GetShardIterator", "DescribeStream", "ListShards")


def measure(binary_dir: Path, work: Path) -> dict:
    """Runs credsync on stand-ins and reads its call counts."""
    import boto3

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    s = si.StandIns(work, logs, bin_dir=binary_dir)
    credsync = binary_dir / "credsync"
    try:
        s.start_moto()
        table = "cost"
        names = s.make_table(table, N_MEASURE)
        s.enable_stream(table)
        kube = s.start_kube()
        env = {**s.aws_env(), "KUBECONFIG": str(kube.kubeconfig), "CREDSYNC_TABLE": table}
        sqs = boto3.client("sqs", endpoint_url=s.aws_endpoint, region_name=si.REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        queue = sqs.create_queue(QueueName="cost-cluster")["QueueUrl"]
        results = {}
        for mode, extra in (("stream", []), ("sqs", ["--no-stream", "--events-queue", queue])):
            port = si.free_port()
            log = logs / f"credsync-{mode}.log"
            proc = s.spawn([credsync, "run", "--listen", f"127.0.0.1:{port}", "--no-drift-repair", *extra],
                           env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(log, "wb"))
            deadline = time.monotonic() + 300
            while si.http(port, "GET", "/readyz", timeout=5)[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"credsync run ({mode}) not ready; see {log}")
                time.sleep(0.1)
            # Settle: shard readers started, first reconcile done, and (stream)
            # the shards past the quiet time after which they are polled at
            # the idle pace: the idle figure is what an idle day costs.
            time.sleep(2.0 + (IDLE_PACE_AFTER if mode == "stream" else 0.0))

            def calls() -> dict[str, float]:
                return si.metric_samples(si.http(port, "GET", "/metrics")[1])

            idle_start = calls()
            time.sleep(IDLE_SECONDS)
            idle_end = calls()
            before = idle_end
            for i in range(CHANGES):
                name = names[(i * 37) % len(names)]
                value = s.put(table, name)
                if mode == "sqs":
                    # What a Pipe from the stream delivers: the stream record.
                    record = {"eventName": "MODIFY", "eventSource": "aws:dynamodb",
                              "dynamodb": {"Keys": {"name": {"S": name}}}}
                    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(record))
                ns, secret, key = si.secret_of(name)
                want = base64.b64encode(value.encode()).decode()
                deadline = time.monotonic() + 60
                while kube.secret_value_b64(ns, secret, key) != want:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{mode}: a change did not arrive; see {log}")
                    time.sleep(0.02)
            time.sleep(2.0)
            after = calls()
            s.stop(proc)
            results[mode] = {
                "idle_seconds": IDLE_SECONDS,
                "idle": delta(idle_start, idle_end),
                "changes": CHANGES,
                "during": delta(before, after),
            }
        if s.leaks_in("".join(p.read_text(errors="replace") for p in logs.glob("credsync-*.log"))):
            raise RuntimeError("a seeded value appeared in credsync's log")
        return results
    finally:
        s.close()


def delta(a: dict, b: dict) -> dict[str, float]:
    """Call counters that moved between two scrapes."""
    out = {}
    for key, value in b.items():
        if key.endswith("_total") or "_total{" in key:
            moved = value - a.get(key, 0.0)
            if moved:
                out[key] = moved
    return out


def op(calls: dict, metric: str, operation: str) -> float:
    return calls.get(f'credsync_{metric}_requests_total{{operation="{operation}"}}', 0.0)


def per_change_and_idle(m: dict) -> tuple[dict, dict]:
    """(calls per change, calls per second idle) by kind, from a measurement."""
    idle_s = m["idle_seconds"]
    idle = {
        "streams": sum(op(m["idle"], "dynamodb", o) for o in STREAM_OPS) / idle_s,
        "sqs": sum(op(m["idle"], "sqs", o) for o in ("ReceiveMessage", "DeleteMessageBatch")) / idle_s,
    }
    n = m["changes"]
    during = m["during"]
    change = {
        "query": op(during, "dynamodb", "Query") / n,
        "scan": op(during, "dynamodb", "Scan") / n,
        "kms": op(during, "kms", "Decrypt") / n,
        # Polling during the changes is idle polling, counted once in `idle`.
        "sqs": max(0.0, sum(op(during, "sqs", o) for o in ("ReceiveMessage", "DeleteMessageBatch")) / n),
    }
    return change, idle


def model(p: argparse.Namespace, measured: dict) -> list[dict]:
    day = 86400.0
    c, n, r = p.clusters, p.secrets, p.changes_per_day
    rows = []
    stream_change, stream_idle = per_change_and_idle(measured["stream"])
    sqs_change, sqs_idle = per_change_and_idle(measured["sqs"])
    query_units = 0.5  # one eventually consistent read of a <4 KB item

    # The measured table has one shard; a big table's stream has STREAM_SHARDS, each polled.
    streams_calls = c * stream_idle["streams"] * STREAM_SHARDS * day
    rows.append(cost_row(
        "credsync, table stream", {
            "streams": streams_calls,
            "dynamodb_units": c * r * stream_change["query"] * query_units,
            "kms": c * r * stream_change["kms"],
        }))
    rows.append(cost_row(
        "credsync, SQS fan-out", {
            "sqs": c * (sqs_idle["sqs"] * day + r * sqs_change["sqs"]),
            "dynamodb_units": c * r * sqs_change["query"] * query_units,
            "kms": c * r * sqs_change["kms"],
            "sns": r,
            "pipes": r,
        }))
    windows = min(r, day / KUBESTASH_WAIT)
    scan_units = n * ITEM_BYTES / 4096 * 0.5
    rows.append(cost_row(
        "Kubestash-V2 (120 s wait, full read)", {
            "streams": c * stream_idle["streams"] * STREAM_SHARDS * day,
            "dynamodb_units": c * windows * scan_units,
            "kms": c * windows * n,
        }))
    rows.append(cost_row(
        "polling per secret (ESO, 1 h)", {
            "secretsmanager": c * n * day / ESO_REFRESH_S,
        }))
    return rows


def cost_row(design: str, calls: dict) -> dict:
    prices = {
        "streams": PRICE["streams_read"],
        "dynamodb_units": PRICE["dynamodb_read_unit"],
        "kms": PRICE["kms"],
        "secretsmanager": PRICE["secretsmanager"],
        "sqs": PRICE["sqs"],
        "sns": PRICE["sns"],
        "pipes": PRICE["pipes"],
    }
    usd = sum(calls[k] * prices[k] for k in calls)
    return {"design": design, "calls": calls, "usd_per_day": usd}


def markdown(p: argparse.Namespace, measured: dict, rows: list[dict]) -> str:
    stream_change, stream_idle = per_change_and_idle(measured["stream"])
    sqs_change, sqs_idle = per_change_and_idle(measured["sqs"])
    lines = [
        f"Parameters: {p.clusters} clusters, {p.secrets:,} secrets, {p.changes_per_day:,} changes a day "
        f"(spread over the day), {STREAM_SHARDS} stream shards, {ITEM_BYTES} B items, ESO refresh "
        f"{ESO_REFRESH_S / 3600:g} h, Kubestash-V2 wait {KUBESTASH_WAIT:g} s; us-east-1 list prices "
        "(DynamoDB $0.125/M read units, Streams $0.02/100k reads, KMS $0.03/10k, Secrets Manager "
        "$0.05/10k, SQS $0.40/M, SNS $0.50/M, Pipes $0.40/M).",
        "",
        f"Measured (`benches/cost.py`, {N_MEASURE} items, {CHANGES} changes per mode, credsync's /metrics): "
        f"per change and cluster, stream mode {stream_change['query']:.1f} Query + "
        f"{stream_change['kms']:.1f} KMS Decrypt + {stream_change['scan']:.1f} Scan; SQS mode "
        f"{sqs_change['query']:.1f} Query + {sqs_change['kms']:.1f} Decrypt + {sqs_change['sqs']:.1f} SQS calls; "
        f"idle, {stream_idle['streams'] * 3600:.0f} stream reads per shard-hour, "
        f"{sqs_idle['sqs'] * 3600:.0f} SQS receives per hour.",
        "",
        "| design | calls a day | USD a day |",
        "|---|---|---|",
    ]
    for row in rows:
        total = sum(row["calls"].values())
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in row["calls"].items() if v)
        lines.append(f"| {row['design']} | {total:,.0f} ({parts}) | {row['usd_per_day']:,.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--secrets", type=int, default=100_000)
    parser.add_argument("--changes-per-day", type=int, default=2000)
    parser.add_argument("--build", choices=["debug", "release"], default="debug")
    parser.add_argument("--out", type=Path, default=si.ROOT / "target" / "cost")
    p = parser.parse_args()
    p.out.mkdir(parents=True, exist_ok=True)
    binary_dir = si.TARGET_DIR / p.build
    with tempfile.TemporaryDirectory(prefix="credsync-cost-") as work:
        measured = measure(binary_dir, Path(work))
    rows = model(p, measured)
    md = markdown(p, measured, rows)
    (p.out / "cost.md").write_text(md)
    (p.out / "cost.json").write_text(json.dumps({"parameters": vars(p) | {"out": str(p.out)},
                                                 "measured": measured, "rows": rows}, indent=2) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
