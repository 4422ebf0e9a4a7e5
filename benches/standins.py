"""Local stand-ins for the benchmarks: moto (DynamoDB + KMS) and a real
kube-apiserver with etcd (tests/control-plane) on loopback, the real credstash CLI, and timed child processes.

Every process started here runs in its own session (process group) and is
remembered, so `StandIns.close()` can stop it with killpg, also after Ctrl-C.
Every value written to the table is remembered too, so the harness can check
that no credsync output contains one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import yaml
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
REGION = "us-east-1"
NAMESPACES = [f"bench-{i}" for i in range(10)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Binaries: $CARGO_TARGET_DIR/<profile> if set (as tests/demo.sh), else target/<profile>;
# release unless the harness is told otherwise (bench.py --build debug).
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
RELEASE = TARGET_DIR / "release"

# Text log lines of credsync: `2026-11-22T15:41:00.123456Z  INFO message k=v`.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+([A-Z]+)\s+(.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on port {port}")
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a running process (all its threads), from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sample_memory(proc: subprocess.Popen, out: list, every: float = 0.01) -> None:
    """Appends (unix time, RssAnon KiB, RssFile KiB, VmHWM KiB) of proc until it exits.

    VmHWM is the kernel's high-water mark of this process image's RSS (it
    starts afresh at exec). wait4's ru_maxrss is not used for peak RSS: it
    also counts the forking parent's (this harness's) pages from before exec."""
    path = f"/proc/{proc.pid}/status"
    while proc.returncode is None:
        try:
            with open(path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if fields.get("State", "").strip().startswith("Z"):
                return
            out.append((time.time(), int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0]),
                        int(fields["VmHWM"].split()[0])))
        except (OSError, KeyError, ValueError):
            return
        time.sleep(every)


def item_names(n: int) -> list[str]:
    """N names: N/2 Secrets with 2 keys each, spread over 10 namespaces."""
    names = []
    for i in range(n):
        secret = i // 2
        key = ("username", "password")[i % 2]
        names.append(f"{NAMESPACES[secret % len(NAMESPACES)]}/svc-{secret:05d}/{key}")
    return names


def secret_of(name: str) -> tuple[str, str, str]:
    """namespace, Secret name and normalized data key of a table name."""
    ns, secret, key = name.split("/")
    return ns, secret, key.upper().replace(".", "_").replace("-", "_")


@dataclass
class Timed:
    """One finished child process: wall time and its own resource usage."""

    argv: list[str]
    wall: float
    code: int
    user: float
    sys: float
    maxrss_kib: int
    started_at: float  # time.time() at spawn, to compare with log timestamps
    extra: dict = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys


class KubeApi:
    """A running control plane (tests/control-plane: etcd + kube-apiserver)
    and a tiny client for it, speaking TLS with the kubeconfig's CA and token."""

    def __init__(self, proc: subprocess.Popen, url: str, kubeconfig: Path):
        self.proc = proc
        self.url = url.rstrip("/")
        self.kubeconfig = kubeconfig
        config = yaml.safe_load(kubeconfig.read_text())
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        self._token = config["users"][0]["user"]["token"]
        self._tls = ssl.create_default_context(cadata=ca)

    def cpu_seconds(self) -> float:
        """CPU of the control plane: the wrapper, kube-apiserver and etcd."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.proc.pid))

    def get(self, path: str) -> dict | None:
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self._token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._tls) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def send(self, method: str, path: str, body: dict, content_type: str = "application/json") -> dict:
        req = urllib.request.Request(
            self.url + path, method=method, data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(req, timeout=30, context=self._tls) as resp:
            return json.loads(resp.read())

    def secret_value_b64(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if not secret:
            return None
        return (secret.get("data") or {}).get(key)

    def managed_secrets(self) -> int:
        listing = self.get(
            "/api/v1/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcredsync"
        )
        return len((listing or {}).get("items") or [])


def process_tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/PID/task/*/children."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


class StandIns:
    def __init__(self, work: Path, logs: Path, bin_dir: Path = RELEASE):
        self.bin_dir = bin_dir
        self.work = work
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.values: list[str] = []  # every value written to a table
        self.moto: subprocess.Popen | None = None
        self.aws_endpoint = ""
        self.kube: KubeApi | None = None
        self._lock = threading.Lock()
        self._kube_count = 0

    # ---- processes -------------------------------------------------------

    def spawn(self, argv: list, **kw) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        with self._lock:
            self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        with self._lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def close(self) -> None:
        """Stops everything this harness started, newest first."""
        for proc in reversed(list(self.procs)):
            try:
                if proc.stdin:
                    proc.stdin.close()
            except OSError:
                pass
            self.stop(proc, grace=10.0)

    def timed(self, argv: list, env: dict, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
              capture_stdout: bool = False, sample_rss: bool = False) -> tuple[Timed, bytes | None]:
        """Runs argv to completion; wall time, exit code and its rusage (wait4).
        With sample_rss, also (unix time, RssAnon KiB, RssFile KiB, VmHWM KiB)
        every 10 ms from /proc (in Timed.extra["rss"])."""
        started_at = time.time()
        t0 = time.perf_counter()
        proc = self.spawn(
            argv,
            env=env,
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else stdout,
            stderr=stderr,
        )
        captured: list[bytes] = []
        rss: list[tuple[float, int, int]] = []
        sampler = None
        if sample_rss:
            sampler = threading.Thread(target=sample_memory, args=(proc, rss), daemon=True)
            sampler.start()
        reader = None
        if capture_stdout:
            reader = threading.Thread(target=lambda: captured.append(proc.stdout.read()))
            reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if reader:
            reader.join()
            proc.stdout.close()
        if sampler:
            sampler.join()
        with self._lock:
            self.procs.remove(proc)
        result = Timed(
            argv=[str(a) for a in argv],
            wall=wall,
            code=proc.returncode,
            user=usage.ru_utime,
            sys=usage.ru_stime,
            maxrss_kib=usage.ru_maxrss,
            started_at=started_at,
            extra={"rss": rss} if sample_rss else {},
        )
        return result, (captured[0] if captured else None)

    # ---- AWS (moto) -------------------------------------------------------

    def aws_env(self) -> dict:
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")
        }
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(
            AWS_ENDPOINT_URL=self.aws_endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            SOPS_DISABLE_VERSION_CHECK="1",
        )
        return env

    def start_moto(self) -> None:
        port = free_port()
        self.moto = self.spawn(
            [VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.logs / "moto.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(port, "moto_server")
        self.aws_endpoint = f"http://127.0.0.1:{port}"
        config = Config(
            max_pool_connections=64, retries={"max_attempts": 3, "mode": "standard"}
        )
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.ddb = session.client("dynamodb", endpoint_url=self.aws_endpoint, config=config)
        self.kms = session.client("kms", endpoint_url=self.aws_endpoint, config=config)
        key = self.kms.create_key()["KeyMetadata"]["KeyId"]
        self.kms.create_alias(AliasName="alias/credstash", TargetKeyId=key)

    def moto_cpu(self) -> float:
        return cpu_seconds(self.moto.pid)

    def credstash(self, table: str, args: list[str], capture: bool = False):
        argv = [VENV_BIN / "credstash", "-r", REGION, "-t", table, *args]
        if capture:
            return self.timed(argv, self.aws_env(), stderr=subprocess.DEVNULL, capture_stdout=True,
                              sample_rss=True)
        out = subprocess.run(
            [str(a) for a in argv], env=self.aws_env(), cwd=self.work,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        if out.returncode != 0:
            raise RuntimeError(f"credstash {args[0]} failed: {out.stderr.decode(errors='replace')[-500:]}")
        return out

    def put(self, table: str, name: str, value: str | None = None) -> str:
        """`credstash put -a NAME @FILE` with a fresh random value; returns the value."""
        value = value or "bench-" + secrets.token_hex(12)
        self.values.append(value)
        path = self.work / f"value-{secrets.token_hex(4)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        try:
            self.credstash(table, ["put", "-a", name, f"@{path}"])
        finally:
            path.unlink()
        return value

    def make_table(self, table: str, n: int, cli_items: int = 3) -> list[str]:
        """`credstash setup`, a few items written by the credstash CLI, and the
        rest as copies of the first one under other names (the ciphertext does
        not bind the name), written with BatchWriteItem."""
        self.credstash(table, ["setup"])
        names = item_names(n)
        cli = names[: min(cli_items, n)]
        for name in cli:
            self.put(table, name)
        seed = self.ddb.get_item(
            TableName=table,
            Key={"name": {"S": cli[0]}, "version": {"S": "0000000000000000001"}},
            ConsistentRead=True,
        )["Item"]
        rest = names[len(cli):]

        def write(chunk: list[str]) -> None:
            requests = [{"PutRequest": {"Item": {**seed, "name": {"S": name}}}} for name in chunk]
            pending = {table: requests}
            for attempt in range(20):
                out = self.ddb.batch_write_item(RequestItems=pending)
                pending = out.get("UnprocessedItems") or {}
                if not pending:
                    return
                time.sleep(0.05 * (attempt + 1))
            raise RuntimeError("BatchWriteItem left items unprocessed")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, [rest[i: i + 25] for i in range(0, len(rest), 25)]))
        count = self.scan_pass(table, 1)[1]
        if count != n:
            raise RuntimeError(f"table {table} has {count} items, expected {n}")
        return names

    def enable_stream(self, table: str) -> None:
        self.ddb.update_table(
            TableName=table,
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )

    def scan_pass(self, table: str, segments: int) -> tuple[float, int, list[dict], int]:
        """One full read of the table with boto3 (segments in parallel threads):
        (seconds, items, items, Scan calls)."""

        def segment(index: int) -> tuple[list[dict], int]:
            items, calls, kwargs = [], 0, {"TableName": table}
            if segments > 1:
                kwargs.update(Segment=index, TotalSegments=segments)
            while True:
                page = self.ddb.scan(**kwargs)
                calls += 1
                items.extend(page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    return items, calls
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        t0 = time.perf_counter()
        if segments == 1:
            parts = [segment(0)]
        else:
            with ThreadPoolExecutor(segments) as pool:
                parts = list(pool.map(segment, range(segments)))
        seconds = time.perf_counter() - t0
        items = [i for part, _ in parts for i in part]
        return seconds, len(items), items, sum(c for _, c in parts)

    def query_cost(self, table: str, names: list[str], k: int = 20) -> float:
        """Mean seconds of one Query for a name's latest version (what
        `credstash get`/`getall` sends per name), over k names."""
        picks = [names[(i * len(names)) // k] for i in range(k)]
        t0 = time.perf_counter()
        for name in picks:
            self.ddb.query(
                TableName=table,
                KeyConditionExpression="#n = :n",
                ExpressionAttributeNames={"#n": "name"},
                ExpressionAttributeValues={":n": {"S": name}},
                Limit=1,
                ScanIndexForward=False,
                ConsistentRead=True,
            )
        return (time.perf_counter() - t0) / k

    def decrypt_all(self, items: list[dict], width: int) -> float:
        """One KMS Decrypt per item's data key, `width` calls in flight (boto3)."""
        blobs = [base64.b64decode(item["key"]["S"]) for item in items]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(width) as pool:
            for out in pool.map(lambda b: self.kms.decrypt(CiphertextBlob=b), blobs):
                if len(out["Plaintext"]) != 64:
                    raise RuntimeError("KMS Decrypt returned an unexpected data key")
        return time.perf_counter() - t0

    # ---- Kubernetes (tests/control-plane) -----------------------------------

    def start_kube(self, workloads: list[str] | None = None, bad_values: list[str] = (),
                   audit_file: Path | None = None) -> KubeApi:
        """A fresh, empty control plane (the previous one, if any, is stopped).
        `workloads`: namespaces with workload controllers and a played kubelet
        (Pods Ready unless a Secret they read holds one of `bad_values`)."""
        if self.kube:
            self.stop_kube()
        self._kube_count += 1
        kubeconfig = self.work / f"kubeconfig-{self._kube_count}"
        binary = self.bin_dir / "control-plane"
        argv = [binary, "--kubeconfig", kubeconfig]
        for ns in workloads if workloads is not None else NAMESPACES:
            argv += ["--namespace", ns]
        if workloads is not None:
            argv.append("--workloads")
            for value in bad_values:
                argv += ["--bad-value", value]
        if audit_file:
            argv += ["--audit-log-path-file", audit_file]
        log = self.logs / f"control-plane-{self._kube_count}.log"
        proc = self.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "wb"))
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"control-plane said {line!r}; see {log}")
        self.kube = KubeApi(proc, line[len("READY "):], kubeconfig)
        return self.kube

    def stop_kube(self) -> None:
        if self.kube:
            proc = self.kube.proc
            try:
                proc.stdin.close()  # control-plane stops both servers when its stdin closes
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.stop(proc)
            self.kube = None

    # ---- checks ------------------------------------------------------------

    def leaks_in(self, text: str) -> int:
        """How many written values (or their base64) appear in text."""
        found = 0
        for value in set(self.values):
            b64 = base64.b64encode(value.encode()).decode()
            if value in text or b64 in text:
                found += 1
        return found


def parse_log(path: Path) -> list[tuple[float, str, str]]:
    """(unix time, level, rest) of each credsync text log line."""
    from datetime import datetime, timezone

    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(raw)
        if not m:
            continue
        stamp = m.group(1)
        if "." in stamp:
            head, frac = stamp.split(".")
            stamp = f"{head}.{frac[:6]}"
            fmt = "%Y-%m-%dT%H:%M:%S.%f"
        else:
            fmt = "%Y-%m-%dT%H:%M:%S"
        t = datetime.strptime(stamp, fmt).replace(tzinfo=timezone.utc).timestamp()
        lines.append((t, m.group(2), m.group(3)))
    return lines


def done_calls(path: Path) -> dict[str, int]:
    """The call counts of the `done calls=kms_decrypt=N ...` line `credsync sync` ends with."""
    calls: dict[str, int] = {}
    for _, _, rest in parse_log(path):
        if rest.startswith("done") and "calls=" in rest:
            calls = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest.split("calls=", 1)[1])}
    return calls


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text -> {sample with labels: value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            pass
    return samples


def http(port: int, method: str, path: str, timeout: float = 30.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError:
        return 0, ""
