# credsync tasks. `just demo` and `just test` each do their own setup.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
export SOPS_DISABLE_VERSION_CHECK := "1"

# Run every test.
default: test

# Python tools (pinned in requirements-test.txt, into .venv) and the test control plane.
setup: control-plane
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x "{{venv}}/bin/python" ]; then python3 -m venv "{{venv}}"; fi
    if [ ! "{{venv}}/.installed" -nt requirements-test.txt ]; then
        "{{venv}}/bin/pip" install --quiet --disable-pip-version-check -r requirements-test.txt
        touch "{{venv}}/.installed"
    fi

# Build credsync and tests/control-plane (starts etcd + kube-apiserver for the demo and bench).
build:
    cargo build --workspace --quiet

# Formatting, lints, unit and integration tests (moto + a real kube-apiserver and etcd on loopback).
test: setup build
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet -- -D warnings
    python3 tools/imports.py --check
    PATH="{{venv}}/bin:$PATH" cargo test --workspace
    PATH="{{venv}}/bin:$PATH" "{{venv}}/bin/python" -m pytest tests/chart -q

# Chart tests alone: Helm render/lint, schemas, RBAC vs calls.json, promtool, dashboard metrics.
test-chart: setup build
    PATH="{{venv}}/bin:$PATH" "{{venv}}/bin/python" -m pytest tests/chart -q

# The main job end to end on local stand-ins; stops everything it starts.
demo: setup build
    PATH="{{venv}}/bin:$PATH" bash tests/demo.sh

# Benchmarks (release build): writes target/bench/report.md and report.json (about 90 min on two cores with N = 100,000).
bench: setup
    cargo build --release --quiet -p credsync -p control-plane
    "{{venv}}/bin/python" benches/bench.py --out target/bench

# The benchmark harness on N = 100 with the debug build: keeps it from rotting (CI runs it).
bench-quick: setup build
    "{{venv}}/bin/python" benches/bench.py --quick --build debug --out target/bench-quick

# The cost model: measures credsync's calls per change (stream and SQS), then models a day for many clusters.
cost *ARGS: setup build
    "{{venv}}/bin/python" benches/cost.py --build debug {{ARGS}}

# Crash inputs land in fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/ (not committed).
# Fuzz each parser of untrusted bytes for SECONDS (libFuzzer via cargo fuzz).
fuzz seconds="600" targets=fuzz_targets: fuzz-setup
    #!/usr/bin/env bash
    set -euo pipefail
    # cargo fuzz asks rustc for -Z flags: the stable toolchain allows them this way.
    export RUSTC_BOOTSTRAP=1
    # The instrumented build of every dependency takes about 14 min on two
    # cores: kept per machine, outside the work tree, for every checkout.
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/credsync/fuzz-target"
    mkdir -p target/fuzz-logs
    for target in {{targets}}; do
        mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
        log="target/fuzz-logs/$target.log"
        echo "fuzz $target for {{seconds}} s (log: $log)"
        status=0
        cargo fuzz run --fuzz-dir fuzz --target-dir "$cache" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
            -max_total_time={{seconds}} -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
        grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "$log" | sed "s/^/  /" || true
        if [ "$status" -ne 0 ]; then
            tail -n 40 "$log" >&2
            echo "fuzz $target failed (exit $status); a crash input is in fuzz/artifacts/$target/" >&2
            exit 1
        fi
    done

fuzz_targets := "sops_file credstash_item stream_records http_query schedule queue_event secretsmanager_value"

# cargo-fuzz, pinned, installed once per machine.
fuzz-setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz 0.13.2" ]; then
        cargo install --quiet --locked cargo-fuzz --version 0.13.2
    fi

# Build the test control plane (kube-apiserver, kube-controller-manager and etcd, pinned in tools/k8s/go.mod) from the Go module proxy, once per machine (~8 min).
control-plane:
    #!/usr/bin/env bash
    set -euo pipefail
    version="$(sed -n 's/^\s*k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' tools/k8s/go.mod)"
    minor="$(echo "$version" | cut -d. -f2)"
    out="${XDG_CACHE_HOME:-$HOME/.cache}/credsync/k8s-$version"
    kube=()
    for server in kube-apiserver kube-controller-manager; do
        [ -x "$out/$server" ] || kube+=("./cmd/$server")
    done
    if [ "${#kube[@]}" -eq 0 ] && [ -x "$out/etcd" ]; then exit 0; fi
    mkdir -p "$out/.part"
    cd tools/k8s
    echo "building the control plane ${version} into $out (once per machine, about 8 min)"
    # The Go build cache (~3 GB) serves this one build only: keep it off the
    # disk after. Both servers build in one go: they share most packages.
    export GOCACHE="$(mktemp -d)"
    trap 'rm -rf "$GOCACHE" "$out/.part"' EXIT
    ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version \
        -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    # Upstream's flags: static, reproducible, no test code.
    if [ "${#kube[@]}" -gt 0 ]; then
        CGO_ENABLED=0 go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$out/.part/" "${kube[@]}"
    fi
    if [ ! -x "$out/etcd" ]; then
        CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/.part/etcd" ./cmd/etcd
    fi
    mv "$out/.part/"* "$out/"
    "$out/kube-apiserver" --version
