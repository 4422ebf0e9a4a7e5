"""Row 9 (issue 28): AWS calls per Secrets Manager change event, at two N.

`credsync run --source secretsmanager --events-queue URL` follows N secrets
(`bench-K/sm-NNNNN`, one JSON key each); each change is a PutSecretValue
followed by the CloudTrail event EventBridge would put on the queue. The
row counts Secrets Manager calls between the first event and the last
Secret updated, divided by the events: what one event costs, beside the
same figure at the smaller N, and beside what the full listing every event
used to cost (ceil(N / 100) ListSecrets pages + one BatchGetSecretValue per
20 changed secrets, issue 28's measurement).

N is 1,000 and 10,000 in the full run, not 100,000: moto's ListSecrets
serializes every secret of the account for each page it returns, so
credsync's start-up listing of 100,000 secrets (1,000 pages) would cost
moto 10^8 serializations. The event path makes no listing at all (the
test `a_secrets_manager_event_reads_its_secret_alone` proves the calls);
the row shows the count does not move between the two N.
"""

from __future__ import annotations

import json
import math
import time

import standins as si
from scale import say

SM_OPS = ("ListSecrets", "DescribeSecret", "GetSecretValue", "BatchGetSecretValue")
SQS_OPS = ("ReceiveMessage", "DeleteMessageBatch", "DeleteMessage")
EVENTS = 20
LISTING_PAGE = 100  # ListSecrets' largest page


def secret_name(i: int) -> str:
    return f"{si.NAMESPACES[i % len(si.NAMESPACES)]}/sm-{i:06d}"


def cloudtrail_event(call: str, secret: str) -> str:
    """What an EventBridge rule on CloudTrail puts on the queue."""
    return json.dumps({
        "version": "0",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.secretsmanager",
        "detail": {"eventSource": "secretsmanager.amazonaws.com", "eventName": call,
                   "requestParameters": {"secretId": secret}},
    })


def run(b, ns: list[int]) -> None:
    import boto3

    s = b.s
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name=si.REGION)
    sm = session.client("secretsmanager", endpoint_url=s.aws_endpoint)
    sqs = session.client("sqs", endpoint_url=s.aws_endpoint)
    queue = sqs.create_queue(QueueName="bench-sm-events")["QueueUrl"]
    seeded = 0
    out = {}
    for n in sorted(ns):
        say(f"Secrets Manager events at N={n}: seeding {n - seeded} secrets")
        for i in range(seeded, n):
            value = f"bench-sm-value-{i}-0"
            s.values.append(value)
            sm.create_secret(Name=secret_name(i), SecretString=json.dumps({"TOKEN": value}))
        seeded = n
        out[n] = one_n(b, n, sm, sqs, queue)
    b.results["sm_events"] = out


def one_n(b, n: int, sm, sqs, queue: str) -> dict:
    s = b.s
    kube = s.start_kube()
    proc, port, log, _ = b.daemon(f"sm-events-{n}", "unused", [
        "--source", "secretsmanager", "--events-queue", queue, "--no-drift-repair",
        "--reconcile-timeout", "3600s"])
    try:
        b.wait_startup(proc, port, f"sm-events-{n} (see {log})")
        time.sleep(1.0)
        before = b.metrics(port)
        t0 = time.perf_counter()
        for k in range(EVENTS):
            i = (k * 7919) % n
            name = secret_name(i)
            value = f"bench-sm-value-{i}-{k + 1}"
            s.values.append(value)
            sm.put_secret_value(SecretId=name, SecretString=json.dumps({"TOKEN": value}))
            sqs.send_message(QueueUrl=queue, MessageBody=cloudtrail_event("PutSecretValue", name))
            ns, secret = name.split("/")
            wait_value(kube, ns, secret, value, log)
        wall = time.perf_counter() - t0
        # The last message is deleted after its reconcile: wait for the queue
        # to drain, so the counts are of finished events.
        drained(sqs, queue)
        time.sleep(0.5)
        after = b.metrics(port)
    finally:
        s.stop(proc)
        s.stop_kube()

    def d(service, op):
        key = f'credsync_{service}_requests_total{{operation="{op}"}}'
        return after.get(key, 0) - before.get(key, 0)

    sm_calls = {op: d("secretsmanager", op) for op in SM_OPS}
    sqs_calls = {op: d("sqs", op) for op in SQS_OPS}
    return {"n": n, "events": EVENTS, "wall_s": wall, "sm_calls": sm_calls, "sqs_calls": sqs_calls,
            "sm_per_event": sum(sm_calls.values()) / EVENTS,
            "full_listing_per_event": math.ceil(n / LISTING_PAGE) + 1}


def wait_value(kube, ns: str, secret: str, value: str, log) -> None:
    import base64

    want = base64.b64encode(value.encode()).decode()
    deadline = time.monotonic() + 60
    while kube.secret_value_b64(ns, secret, "TOKEN") != want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a Secrets Manager change did not reach {ns}/{secret}; see {log}")
        time.sleep(0.02)


def drained(sqs, queue: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        if all(attrs[k] == "0" for k in attrs):
            return
        time.sleep(0.1)
    raise RuntimeError("the events queue did not drain")


def rows(b, row) -> list[dict]:
    r = b.results.get("sm_events")
    if not r:
        return []
    small, big = r[min(r)], r[max(r)]
    per, base = big["sm_per_event"], small["sm_per_event"]
    calls = ", ".join(f"{op} {v / big['events']:.2f}" for op, v in big["sm_calls"].items() if v)
    return [row("9-sm", "Secrets Manager event (SQS) -> Secret: Secrets Manager calls per event", big["n"], per,
                "calls", f"same at N={small['n']}", base, per / base if base else None,
                f"{per:.2f} vs {base:.2f} per event; a full listing: {big['full_listing_per_event']} calls",
                "<= 3, flat in N", per <= 3 and per <= base + 0.5,
                f"{big['events']} events at each N; per event: {calls}")]
