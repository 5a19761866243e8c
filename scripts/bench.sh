#!/usr/bin/env bash
# Benchmarks for the runner, with medians over repeated measurements:
#
#   1. per-step overhead: a chain of N steps of `true`, against a shell loop of N `sh -c true`
#   2. resume of that completed N-step run (prints "already succeeded", exits 0)
#   3. rebuild-projection throughput on a corpus made by `examples/gen_corpus.rs`
#   4. peak RSS of the chain run and of the rebuild
#
# Everything happens in a temporary directory that is removed on exit (unless --keep).
# The full default needs ~1.5 GB of free space there (corpus + projection + its WAL);
# set TMPDIR to put it elsewhere.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [options]

  --reps N           timed repetitions per measurement (default 5; 3 with --quick)
  --quick            small sizes, as a smoke test: 100-step chain, corpus of 50 runs x 200 events
  --steps N          steps in the chain (default 1000)
  --corpus-runs N    runs in the rebuild corpus (default 1000)
  --corpus-events N  events per corpus run (default 1000)
  --no-build         use the binaries already in the target directory
  --keep             keep the temporary directory and print where it is
  --strict           exit with status 3 if a measurement misses its target
  -h, --help         this help

Targets: runner/shell <= 3x (aim 2x); resume <= 50 ms; rebuild >= 200k events/s (aim 300k).
EOF
}

die() {
    echo "bench: error: $*" >&2
    exit 1
}
log() { echo "bench: $*" >&2; }

reps="" quick=0 keep=0 strict=0 build=1
steps="" corpus_runs="" corpus_events=""
# shellcheck source=scripts/lib/bench-common.sh
source "$(dirname "$0")/lib/bench-common.sh"
while (($#)); do
    case $1 in
    --reps) positive "$1" "${2:-}"; reps=$2; shift 2 ;;
    --steps) positive "$1" "${2:-}"; steps=$2; shift 2 ;;
    --corpus-runs) positive "$1" "${2:-}"; corpus_runs=$2; shift 2 ;;
    --corpus-events) positive "$1" "${2:-}"; corpus_events=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    --strict) strict=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
if ((quick)); then
    : "${reps:=3}" "${steps:=100}" "${corpus_runs:=50}" "${corpus_events:=200}"
else
    : "${reps:=5}" "${steps:=1000}" "${corpus_runs:=1000}" "${corpus_events:=1000}"
fi
((corpus_events >= 3)) || die "--corpus-events must be at least 3"

release_build gen_corpus
gen=$example

tmp=$(mktemp -d "${TMPDIR:-/tmp}/runner-bench.XXXXXX") || die "mktemp failed"
cleanup() {
    if ((keep)); then
        log "kept $tmp"
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$tmp/work"
cd "$tmp/work"

# ---------------------------------------------------------------------------------------------
# Peak RSS and timing

rss_setup
rss_file=$tmp/maxrss

# timed [--rss] NAME CMD...: runs CMD with output to $tmp/NAME.{out,err}, fails loudly on a
# non-zero exit, and sets $elapsed_us (and $rss_kb with --rss; "" if RSS is not measured).
timed() {
    local with_rss=0
    if [[ $1 = --rss ]]; then
        with_rss=1
        shift
    fi
    local name=$1
    shift
    local wrap=()
    if ((with_rss)) && ((${#rss_prefix[@]})); then
        wrap=("${rss_prefix[@]}" "$rss_file")
        rm -f "$rss_file"
    fi
    local t0 rc=0
    stamp
    t0=$now_us
    "${wrap[@]}" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
    stamp
    elapsed_us=$((now_us - t0))
    if ((rc != 0)); then
        echo "bench: command failed with exit status $rc: $*" >&2
        echo "--- stdout (last 20 lines)" >&2
        tail -n 20 "$tmp/$name.out" >&2 || true
        echo "--- stderr (last 20 lines)" >&2
        tail -n 20 "$tmp/$name.err" >&2 || true
        exit 1
    fi
    rss_kb=""
    if ((with_rss)) && ((${#wrap[@]})); then
        rss_kb=$(tail -n 1 "$rss_file")
        [[ $rss_kb =~ ^[0-9]+$ ]] || die "could not read the peak RSS of: $*"
    fi
}

# verdict VALUE OP TARGET [AIM]: OP is le (lower is better) or ge (higher is better).
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" -v a="${4:-}" 'BEGIN {
        good = (op == "le") ? (v <= t) : (v >= t)
        aim = a != "" && ((op == "le") ? (v <= a) : (v >= a))
        print (aim ? "PASS (aim met)" : (good ? "PASS" : "FAIL")) }'
}

log "temp dir $tmp; clock: $clock; peak RSS: $rss_method; $reps reps$( ((quick)) && echo ', --quick')"
log "machine: $(nproc) CPUs, $(uname -sr)"
start_all=$SECONDS

# ---------------------------------------------------------------------------------------------
# 1. Per-step overhead: a chain of $steps steps of `true` against a shell loop.

chain=$tmp/chain.toml
for ((i = 0; i < steps; i++)); do
    printf '[[steps]]\nid = "s%d"\nrun = "true"\n\n' "$i"
done >"$chain"
runs=$tmp/runs

# run_chain ID: one timed run of the chain, checked to have succeeded with every step.
run_chain() {
    local id=$1
    timed --rss "run-$id" "$runner" -q --runs-dir "$runs" run --run-id "$id" "$chain"
    [[ $(head -n 1 "$tmp/run-$id.out") = "$id" ]] || die "runner run did not print the run id $id"
    check_runner_run "$runs" "$id" "$steps" || die "$why"
}

shell_loop() {
    local i
    for i in $(seq "$steps"); do sh -c true; done
}

log "1. chain of $steps steps: runner vs shell loop (1 warm-up + $reps reps, interleaved)"
run_chain chain-warmup
timed shell-warmup shell_loop
chain_us=() shell_us=() chain_rss=()
for ((r = 1; r <= reps; r++)); do
    timed shell shell_loop
    shell_us+=("$elapsed_us")
    run_chain "chain-$r"
    chain_us+=("$elapsed_us")
    chain_rss+=("${rss_kb:-0}")
    log "   rep $r: runner $(calc %.1f "${chain_us[-1]} / 1000") ms, shell $(calc %.1f "${shell_us[-1]} / 1000") ms"
done

# ---------------------------------------------------------------------------------------------
# 2. Resume of the completed run.

log "2. resume of the completed $steps-step run (1 warm-up + $reps reps)"
timed resume-check "$runner" --runs-dir "$runs" resume --run-id chain-1
grep -q "already succeeded" "$tmp/resume-check.err" \
    || die "resume of a completed run did not say 'already succeeded': $(cat "$tmp/resume-check.err")"
resume_us=()
for ((r = 1; r <= reps; r++)); do
    timed resume "$runner" -q --runs-dir "$runs" resume --run-id chain-1
    resume_us+=("$elapsed_us")
done
check_runner_run "$runs" chain-1 "$steps" || die "resuming a completed run changed its journal: $why"

# ---------------------------------------------------------------------------------------------
# 3. rebuild-projection on a generated corpus.

corpus=$tmp/corpus
events_total=$((corpus_runs * corpus_events))
log "3. generating a corpus of $corpus_runs runs x $corpus_events events"
timed gen "$gen" --runs-dir "$corpus" --runs "$corpus_runs" --events-per-run "$corpus_events"
gen_us=$elapsed_us
grep -q "^summary: runs=$corpus_runs events=$events_total " "$tmp/gen.out" \
    || die "gen_corpus did not report the expected totals: $(cat "$tmp/gen.out")"
corpus_bytes=$(sed -n 's/^summary: .* journal_bytes=\([0-9]*\) .*/\1/p' "$tmp/gen.out")
log "   $(sed -n 2p "$tmp/gen.out" | sed 's/^ *//')"
log "   $(sed -n 3p "$tmp/gen.out" | sed 's/^ *//')"

# rebuild NAME: one timed rebuild, checked to have read every run and event.
rebuild() {
    timed --rss "$1" "$runner" --runs-dir "$corpus" rebuild-projection
    local line
    line=$(grep '^rebuilt ' "$tmp/$1.out") || die "rebuild-projection printed no summary"
    [[ $line =~ :\ ([0-9]+)\ runs,\ ([0-9]+)\ events\ in\ [0-9.]+s\ \(([0-9]+)\ events/s\) ]] \
        || die "cannot parse the rebuild summary: $line"
    ((BASH_REMATCH[1] == corpus_runs && BASH_REMATCH[2] == events_total)) \
        || die "rebuild read ${BASH_REMATCH[1]} runs / ${BASH_REMATCH[2]} events, expected $corpus_runs / $events_total"
    reported_rate=${BASH_REMATCH[3]}
}

log "   rebuild-projection (1 warm-up on a new projection + $reps reps replacing it)"
rebuild rebuild-warmup
fresh_us=$elapsed_us
rebuild_us=() rebuild_rss=() rebuild_reported=()
for ((r = 1; r <= reps; r++)); do
    rebuild rebuild
    rebuild_us+=("$elapsed_us")
    rebuild_rss+=("${rss_kb:-0}")
    rebuild_reported+=("$reported_rate")
    log "   rep $r: $(calc %.2f "$elapsed_us / 1e6") s wall, runner says $reported_rate events/s"
done
projection_bytes=$(stat -c %s "$corpus/projection.sqlite")

# ---------------------------------------------------------------------------------------------
# Results

chain_med=$(median "${chain_us[@]}")
shell_med=$(median "${shell_us[@]}")
resume_med=$(median "${resume_us[@]}")
rebuild_med=$(median "${rebuild_us[@]}")
ratio=$(calc %.2f "$chain_med / $shell_med")
rate=$(calc %.0f "$events_total / ($rebuild_med / 1e6)")
reported_med=$(median "${rebuild_reported[@]}")
fresh_rate=$(calc %.0f "$events_total / ($fresh_us / 1e6)")

rows=()
row() { rows+=("$(printf '%s\t' "$@")"); }
row "measurement" "median" "target" "verdict"
row "runner run: chain of $steps x 'true'" "$(ms "$chain_med") ms" "-" "-"
row "shell loop: $steps x 'sh -c true'" "$(ms "$shell_med") ms" "-" "-"
row "per step: runner / shell" "$(calc %.3f "$chain_med / $steps / 1000") / $(calc %.3f "$shell_med / $steps / 1000") ms" "-" "-"
row "per-step overhead beyond the shell" "$(calc %.3f "($chain_med - $shell_med) / $steps / 1000") ms" "-" "-"
row "ratio runner / shell" "$(calc %.2f "$ratio")x" "<= 3x (aim 2x)" "$(verdict "$ratio" le 3 2)"
row "resume of completed $steps-step run" "$(ms "$resume_med") ms" "<= 50 ms" "$(verdict "$(ms "$resume_med")" le 50)"
row "rebuild: $corpus_runs runs x $corpus_events ev, wall" "$rate ev/s ($(calc %.2f "$rebuild_med / 1e6") s)" ">= 200k ev/s (aim 300k)" "$(verdict "$rate" ge 200000 300000)"
row "rebuild: as the runner reports it" "$reported_med ev/s" ">= 200k ev/s (aim 300k)" "$(verdict "$reported_med" ge 200000 300000)"
row "rebuild into a new projection (warm-up)" "$fresh_rate ev/s ($(calc %.2f "$fresh_us / 1e6") s)" "-" "-"
if ((${#rss_prefix[@]})); then
    row "peak RSS: runner run ($steps steps)" "$(calc %.1f "$(median "${chain_rss[@]}") / 1024") MiB" "-" "-"
    row "peak RSS: rebuild-projection" "$(calc %.1f "$(median "${rebuild_rss[@]}") / 1024") MiB" "-" "-"
else
    row "peak RSS: runner run ($steps steps)" "n/a" "-" "-"
    row "peak RSS: rebuild-projection" "n/a" "-" "-"
fi

echo
echo "runner benchmark: $reps reps, medians$( ((quick)) && echo ' (--quick: small sizes, a smoke test; targets are for the full sizes)')"
echo "raw (ms): chain [$(for v in "${chain_us[@]}"; do ms "$v"; echo -n ' '; done)]" \
    "shell [$(for v in "${shell_us[@]}"; do ms "$v"; echo -n ' '; done)]" \
    "resume [$(for v in "${resume_us[@]}"; do ms "$v"; echo -n ' '; done)]" \
    "rebuild [$(for v in "${rebuild_us[@]}"; do ms "$v"; echo -n ' '; done)]" | sed 's/ \]/]/g'
echo "corpus: $events_total events, journals $(calc %.1f "$corpus_bytes / 1048576") MiB," \
    "generated in $(calc %.2f "$gen_us / 1e6") s; projection $(calc %.1f "$projection_bytes / 1048576") MiB;" \
    "peak RSS via $rss_method; total bench time $((SECONDS - start_all)) s"
echo
printf '%s\n' "${rows[@]}" | awk -F'\t' '
    { for (i = 1; i <= 4; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
    END {
        for (r = 1; r <= NR; r++) {
            line = "|"
            for (i = 1; i <= 4; i++) line = line sprintf(" %-" w[i] "s |", cell[r, i])
            print line
            if (r == 1) {
                line = "|"
                for (i = 1; i <= 4; i++) { d = ""; for (k = 0; k < w[i] + 2; k++) d = d "-"; line = line d "|" }
                print line
            }
        }
    }'

if ((strict)) && printf '%s\n' "${rows[@]}" | grep -q $'\tFAIL\t'; then
    echo "bench: some targets were missed (--strict)" >&2
    exit 3
fi
