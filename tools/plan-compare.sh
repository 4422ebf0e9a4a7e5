#!/usr/bin/env bash
# Plans of the demo table from two credsync binaries, compared byte for byte:
# a refactor must not change what users read. Needs `just setup` and
# `cargo build` (for target/debug/control-plane); stops what it starts.
# usage: tools/plan-compare.sh OLD_BIN NEW_BIN
set -euo pipefail
old="$1"; new="$2"; root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
work="$(mktemp -d)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 & pids+=($!)
export AWS_ACCESS_KEY_ID=t AWS_SECRET_ACCESS_KEY=t AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" KUBECONFIG="$work/kubeconfig"
export CREDSYNC_TABLE=credential-store CREDSYNC_CLUSTER_NAME=demo
coproc PLANE { exec "$root/target/debug/control-plane" --kubeconfig "$KUBECONFIG" --namespace payments --namespace search --namespace web 2>"$work/cp.log"; }
pids+=("$PLANE_PID"); read -r _ <&"${PLANE[0]}"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
python3 -c 'import boto3; k=boto3.client("kms"); kid=k.create_key()["KeyMetadata"]["KeyId"]; k.create_alias(AliasName="alias/credstash", TargetKeyId=kid)'
credstash -t credential-store setup >/dev/null
while IFS=$'\t' read -r name value; do
    [[ "$name" == \#* ]] && continue
    credstash -t credential-store put -a "$name" "$value" >/dev/null
done <"$root/fixtures/demo-table.tsv"
compare() {
    local stage="$1"
    for fmt in text markdown json; do
        "$old" plan --format "$fmt" >"$work/old.$fmt" 2>/dev/null || true
        "$new" plan --format "$fmt" >"$work/new.$fmt" 2>/dev/null || true
        if cmp -s "$work/old.$fmt" "$work/new.$fmt"; then
            echo "$stage plan --format $fmt: identical ($(wc -c <"$work/new.$fmt") bytes)"
        else
            echo "$stage plan --format $fmt: DIFFERENT"; diff "$work/old.$fmt" "$work/new.$fmt" | head -20
        fi
    done
}
compare "empty cluster:"
"$new" sync >/dev/null 2>&1 || true
credstash -t credential-store put -a payments/db/password rotated-value-for-compare >/dev/null
compare "after sync + one rotation:"
