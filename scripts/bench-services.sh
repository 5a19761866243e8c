#!/usr/bin/env bash
# What supervising a service costs, with medians over reps, for a one-step flow whose step
# uses a TCP service (a Python listener that writes the time it started listening):
#
#   ready  from the service listening to its step starting (health-check latency)
#   stop   from the step's success to the service's exit being journaled
#   run    the whole `runner run`, wall clock
#
# for health-check intervals of 100 ms and 500 ms (the default), against the shell
# script people write today: start the server, poll with `sleep 0.1` until the port
# answers, run the step, kill the server.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-services.sh [--reps N] [--no-build]

  --reps N     timed repetitions per measurement (default 10)
  --no-build   use the release binary already in target/release
  -h, --help   this help
EOF
}

die() {
    echo "bench-services: error: $*" >&2
    exit 1
}

reps=10 build=1
# shellcheck source=scripts/lib/bench-common.sh
source "$(dirname "$0")/lib/bench-common.sh"
while (($#)); do
    case $1 in
    --reps) positive --reps "${2:-}"; reps=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
command -v python3 >/dev/null || die "python3 is needed for the test service"
cd "$(dirname "$0")/.."
((build)) && cargo build --release --quiet
runner=$PWD/target/release/runner
[[ -x $runner ]] || die "no $runner (drop --no-build)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

cat >listen.py <<'PY'
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
with open("listen.t", "w") as f: f.write(repr(time.time()))
while True:
    c, _ = s.accept(); c.close()
PY
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { python3 -c 'import time; print(repr(time.time()))'; }
# The journal's ts of the first event of TYPE, in seconds.
ts_of() { grep -m1 "\"type\":\"$2\"" "$1" | sed -E 's/.*"ts":"[^T]*T([0-9:.]+)Z.*/\1/' \
    | awk -F: '{ printf "%.3f", $1 * 3600 + $2 * 60 + $3 }'; }

flow() {
    cat >f.toml <<EOF
[services.api]
run = ["python3", "listen.py", "$1"]
health = { tcp = "127.0.0.1:$1" }
interval = "$2"

[[steps]]
id = "use"
services = ["api"]
run = "python3 -c 'import time; print(repr(time.time()))' > step.t"
EOF
}

measure_runner() {
    local interval=$1 ready=() stop=() wall=() i
    for ((i = 0; i < reps; i++)); do
        rm -rf runs listen.t step.t
        flow "$(port)" "$interval"
        stamp; local t0=$now_us
        "$runner" --quiet run f.toml --run-id b >/dev/null 2>&1 || die "runner run failed (interval $interval)"
        stamp; wall+=("$(((now_us - t0) / 1000))")
        ready+=("$(calc %.0f "($(cat step.t) - $(cat listen.t)) * 1000")")
        local j=runs/b/journal.jsonl
        stop+=("$(calc %.0f "($(ts_of $j ServiceExited) - $(ts_of $j StepSucceeded)) * 1000")")
    done
    printf '%-28s ready %5s ms   stop %4s ms   run %5s ms\n' "runner, interval $interval" \
        "$(median "${ready[@]}")" "$(median "${stop[@]}")" "$(median "${wall[@]}")"
}

measure_shell() {
    local ready=() wall=() i p
    for ((i = 0; i < reps; i++)); do
        rm -f listen.t step.t
        p=$(port)
        stamp; local t0=$now_us
        python3 listen.py "$p" &
        local pid=$!
        until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),1)" 2>/dev/null; do
            sleep 0.1
        done
        python3 -c 'import time; print(repr(time.time()))' >step.t
        kill "$pid"; wait "$pid" 2>/dev/null || true
        stamp; wall+=("$(((now_us - t0) / 1000))")
        ready+=("$(calc %.0f "($(cat step.t) - $(cat listen.t)) * 1000")")
    done
    printf '%-28s ready %5s ms   stop    - ms   run %5s ms\n' "shell, poll every 100ms" \
        "$(median "${ready[@]}")" "$(median "${wall[@]}")"
}

echo "bench-services: $reps reps, medians ($(nproc) cores)"
measure_runner 100ms
measure_runner 500ms
measure_shell
