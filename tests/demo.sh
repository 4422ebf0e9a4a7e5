#!/usr/bin/env bash
# The main job end to end on local stand-ins: moto (DynamoDB + KMS) and a
# real kube-apiserver with etcd on loopback (built once by `just
# control-plane`, started by tests/control-plane), items written by the real credstash
# CLI, then `credsync plan` and `credsync sync`, one change, and the second
# plan. Stops everything it started; fails if any seeded value is printed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
work="$(mktemp -d)"
log="$work/demo.log"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export CREDSYNC_TABLE=credential-store CREDSYNC_CLUSTER_NAME=demo
export SOPS_DISABLE_VERSION_CHECK=1

# Everything below is shown and kept in $log, for the leak check at the end.
exec 3>&1 4>&2
exec > >(tee "$log") 2>&1
tee_pid=$!

say "Starting moto and a real Kubernetes control plane (etcd + kube-apiserver) on loopback"
port="$(free_port)"
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
pids+=($!)
export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
export KUBECONFIG="$work/kubeconfig"
coproc PLANE { exec "$bin/control-plane" --kubeconfig "$KUBECONFIG" --namespace payments --namespace search --namespace web 2>"$work/control-plane.log"; }
pids+=("$PLANE_PID")
read -r ready <&"${PLANE[0]}" || { cat "$work/control-plane.log"; exit 1; }
echo "moto: $AWS_ENDPOINT_URL   kube-apiserver: ${ready#READY }"
kubectl version
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

say "Making the snapshot reader's age identity and the snapshot repository"
age-keygen -o "$work/reader.agekey" 2>/dev/null
export CREDSYNC_AGE_RECIPIENT="$(age-keygen -y "$work/reader.agekey")"
export CREDSYNC_AGE_IDENTITY="$work/reader.agekey"
export CREDSYNC_SNAPSHOT_REPO="$work/snapshots"
# The key credsync signs its snapshot commits with (only its pod holds it).
ssh-keygen -q -t ed25519 -N '' -C credsync-demo -f "$work/signing.key"
export CREDSYNC_SNAPSHOT_SIGNING_KEY="$work/signing.key"
echo "recipient: $CREDSYNC_AGE_RECIPIENT   repository: $CREDSYNC_SNAPSHOT_REPO"

say "Creating the KMS key alias/credstash and the table (credstash setup)"
python3 -c 'import boto3; k=boto3.client("kms"); kid=k.create_key()["KeyMetadata"]["KeyId"]; k.create_alias(AliasName="alias/credstash", TargetKeyId=kid)'
credstash -t "$CREDSYNC_TABLE" setup >/dev/null

say "Seeding $(grep -vc '^#' "$root/fixtures/demo-table.tsv") items with the credstash CLI (one invalid name, one conflict)"
while IFS=$'\t' read -r name value; do
    [[ "$name" == \#* ]] && continue
    credstash -t "$CREDSYNC_TABLE" put -a "$name" "$value" >/dev/null
    echo "  put $name"
done <"$root/fixtures/demo-table.tsv"

say "credsync plan"
"$bin/credsync" plan

say "credsync sync"
"$bin/credsync" sync

say "kubectl get secrets (the real kubectl, against the real API server)"
kubectl get secrets -A -l app.kubernetes.io/managed-by=credsync

say "Rotating one value: credstash put payments/db/password"
credstash -t "$CREDSYNC_TABLE" put -a payments/db/password demo-payments-pass-rotated-5e5e >/dev/null

say "credsync plan (markdown, as for a pull request): exactly one update"
"$bin/credsync" plan --format markdown
"$bin/credsync" plan --format json >"$work/plan.json"
python3 - "$work/plan.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
assert (s["create"], s["update"], s["delete"]) == (0, 1, 0), s
print(f"second plan: {s['update']} update, {s['unchanged']} unchanged")
PY

say "credsync sync"
"$bin/credsync" sync

say "credsync history"
"$bin/credsync" history

say "git show --stat of the last snapshot commit: one file, no values in the message"
git -C "$CREDSYNC_SNAPSHOT_REPO" show --stat --format='commit %H%n%n%B' HEAD

say "git verify-commit: the real git checks credsync's signature with the public key only"
echo "credsync $(cat "$work/signing.key.pub")" >"$work/allowed_signers"
git -C "$CREDSYNC_SNAPSHOT_REPO" -c gpg.format=ssh -c gpg.ssh.allowedSignersFile="$work/allowed_signers" verify-commit HEAD

say "The changed file as git stores it: metadata readable, values encrypted"
sed -n '1,40p' "$CREDSYNC_SNAPSHOT_REPO/demo/payments/db.yaml"

say "sops -d of that file with the reader's age key (values masked by the demo, checked instead)"
SOPS_AGE_KEY_FILE="$CREDSYNC_AGE_IDENTITY" sops -d "$CREDSYNC_SNAPSHOT_REPO/demo/payments/db.yaml" >"$work/db.decrypted.yaml"
sed -E '/^data:/,/^[a-z]/ s/^( +[A-Za-z0-9_.-]+: ).*/\1<value hidden by the demo>/' "$work/db.decrypted.yaml"
python3 - "$work/db.decrypted.yaml" <<'PY'
import base64, sys
data = {}
in_data = False
for line in open(sys.argv[1]):
    if line.startswith("data:"):
        in_data = True
        continue
    if in_data and line.startswith("  "):
        key, value = line.strip().split(": ", 1)
        data[key] = base64.b64decode(value).decode()
    elif in_data:
        in_data = False
expected = {"USER": "demo-payments-user-71c2", "PASSWORD": "demo-payments-pass-rotated-5e5e", "HOST": "demo-payments-host-04aa"}
assert data == expected, sorted(data)
print(f"sops -d decrypted {len(data)} values, each equal to the table's latest version")
PY
rm -f "$work/db.decrypted.yaml"

# Close the pipe to tee and let it finish writing the log.
exec 1>&3 2>&4
wait "$tee_pid" 2>/dev/null || true

say "Checking the demo's output for seeded values"
leaks=0
while IFS=$'\t' read -r name value; do
    [[ "$name" == \#* ]] && continue
    encoded="$(printf '%s' "$value" | base64 -w0)"
    if grep -qF -e "$value" -e "$encoded" "$log"; then echo "LEAK: the value of $name was printed"; leaks=1; fi
done < <(cat "$root/fixtures/demo-table.tsv"; printf 'payments/db/password\tdemo-payments-pass-rotated-5e5e\n')
[ "$leaks" -eq 0 ] && echo "no seeded value appears in the output"
exit "$leaks"
