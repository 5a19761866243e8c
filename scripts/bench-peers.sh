#!/usr/bin/env bash
# Peer benchmark (not part of CI): the runner against GNU make, Snakemake, doit and GNU parallel
# on the same trivial workloads, beside floors that no tool can beat, plus runner-only scale
# measurements. Medians over --reps repetitions, tools interleaved within each repetition.
#
#   W1  a chain of N steps of `true` (N = 200 and 1000); every tool in a fresh directory per rep
#   W2  1000 independent steps of `true` with 2 parallel slots
#   W3  "nothing to do": the completed 1000-step chain of W1 checked again
#   W4  runner only: rebuild-projection over 1M events (gen_corpus 1000 x 1000), resume of a
#       complete run whose journal holds ~100k events (a real 50k-step run), and the peak RSS
#       of a real 100k-step run
#
# Peers are installed once into ${XDG_CACHE_HOME:-$HOME/.cache}/runner-bench-peers and reused:
# make and GNU parallel from Debian's packages (apt-get), Snakemake and doit from PyPI into a
# venv there. Everything else happens in a temporary directory that is removed on exit (unless
# --keep); the full default needs ~2.5 GB there (the 1M-event corpus, the 150k steps of the
# big runs). Set TMPDIR to put it elsewhere.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-peers.sh [options]

  --reps N            timed repetitions per measurement; medians are reported (default 3)
  --quick             small sizes, a smoke test: chains of 20 and 100 steps, 100 independent
                      steps, a 50 x 200 corpus, resume of a ~10k-event run, RSS of a 10k-step run
  --no-install        install nothing; peers that are missing are reported as n/a
  --no-build          use the runner binaries already built (skip cargo build --release)
  --big-timeout SECS  stop each big runner run (the ~100k-event run, the 100k-step run) after
                      SECS s and report how far it got instead (default 1800)
  --keep              keep the temporary directory and print where it is
  -h, --help          this help

Peers: GNU make, GNU parallel (apt-get), Snakemake and doit (pip, in a venv under
${XDG_CACHE_HOME:-$HOME/.cache}/runner-bench-peers, reused across invocations).

Targets: W1 runner <= 2x the durable floor and >= 10x faster than Snakemake; W3 runner
<= 50 ms; W4 rebuild >= 300k events/s; resume of a ~100k-event run <= 200 ms; a 100k-step
run <= 200 MB peak RSS.
EOF
}

die() {
    echo "bench-peers: error: $*" >&2
    exit 1
}
log() { echo "bench-peers: $*" >&2; }
warn() { echo "bench-peers: warning: $*" >&2; }

reps=3 quick=0 keep=0 install=1 build=1 big_timeout=1800
# shellcheck source=scripts/lib/bench-common.sh
source "$(dirname "$0")/lib/bench-common.sh"
while (($#)); do
    case $1 in
    --reps) positive "$1" "${2:-}"; reps=$2; shift 2 ;;
    --big-timeout) positive "$1" "${2:-}"; big_timeout=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-install) install=0; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
if ((quick)); then
    chain_sizes=(20 100) indep=100 corpus_runs=50 corpus_events=200 resume_steps=5000 rss_steps=10000
else
    chain_sizes=(200 1000) indep=1000 corpus_runs=1000 corpus_events=1000 resume_steps=50000 rss_steps=100000
fi
noop_n=${chain_sizes[-1]}  # W3 checks the completed chain of this size again
start_all=$SECONDS

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir = /* ]] || target_dir=$root/$target_dir
runner=$target_dir/release/runner
gen=$target_dir/release/examples/gen_corpus

# ---------------------------------------------------------------------------------------------
# 1. Peers

cache=${XDG_CACHE_HOME:-$HOME/.cache}/runner-bench-peers
venv=$cache/venv
mkdir -p "$cache"

gnu_parallel() {
    local p
    p=$(command -v parallel 2>/dev/null) || return 1
    "$p" --version 2>/dev/null | sed -n 1p | grep -q '^GNU parallel' || return 1
    echo "$p"
}

apt_install() {
    local sudo=() apt_log=$cache/apt.log
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { warn "not root and no sudo: cannot apt-get install $*"; return 1; }
        sudo=(sudo -n)
    fi
    log "installing $* with apt-get (log: $apt_log)"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >"$apt_log" 2>&1; then
        log "apt-get install failed; running apt-get update and trying again"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >>"$apt_log" 2>&1 || return 1
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$apt_log" 2>&1 || return 1
    fi
}

if ((install)); then
    missing=()
    command -v make >/dev/null || missing+=(make)
    gnu_parallel >/dev/null || missing+=(parallel)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}" || warn "apt-get install ${missing[*]} failed (see $cache/apt.log); those peers will be n/a"
    else
        log "make and GNU parallel are installed already"
    fi
    if [[ -x $venv/bin/snakemake && -x $venv/bin/doit ]]; then
        log "snakemake and doit are in $venv already"
    elif command -v python3 >/dev/null; then
        log "installing snakemake and doit from PyPI into $venv (log: $cache/pip.log; a minute or two)"
        if ! { python3 -m venv "$venv" && "$venv/bin/python" -m pip install --disable-pip-version-check snakemake doit; } \
            >"$cache/pip.log" 2>&1; then
            warn "pip install snakemake doit failed (see $cache/pip.log); those peers will be n/a"
        fi
    else
        warn "no python3: cannot install snakemake and doit"
    fi
fi

make_bin=$(command -v make 2>/dev/null) || make_bin=""
parallel_bin=$(gnu_parallel) || parallel_bin=""
snakemake_bin="" doit_bin=""
if [[ -x $venv/bin/snakemake ]]; then snakemake_bin=$venv/bin/snakemake; else snakemake_bin=$(command -v snakemake 2>/dev/null) || snakemake_bin=""; fi
if [[ -x $venv/bin/doit ]]; then doit_bin=$venv/bin/doit; else doit_bin=$(command -v doit 2>/dev/null) || doit_bin=""; fi
python_bin=$(command -v python3 2>/dev/null) || python_bin=""

versions=()
[[ -n $make_bin ]] && versions+=("$("$make_bin" --version 2>/dev/null | sed -n 1p)") || versions+=("make: not installed (n/a)")
[[ -n $parallel_bin ]] && versions+=("$("$parallel_bin" --version 2>/dev/null | sed -n 1p)") || versions+=("GNU parallel: not installed (n/a)")
if [[ -n $snakemake_bin ]]; then
    versions+=("Snakemake $("$snakemake_bin" --version 2>/dev/null | tail -n 1) ($("$(dirname "$snakemake_bin")/python" --version 2>&1 || echo python))")
else
    versions+=("Snakemake: not installed (n/a)")
fi
[[ -n $doit_bin ]] && versions+=("doit $("$doit_bin" --version 2>/dev/null | sed -n 1p)") || versions+=("doit: not installed (n/a)")
[[ -n $python_bin ]] && versions+=("floors: $("$python_bin" --version 2>&1), /bin/sh -> $(readlink -f /bin/sh)")
for v in "${versions[@]}"; do log "peer: $v"; done

# ---------------------------------------------------------------------------------------------
# 2. Build

if ((build)); then
    log "building the runner (cargo build --release, with the gen_corpus example)"
    (cd "$root" && cargo build --release --quiet --bins --example gen_corpus) || die "cargo build --release failed"
fi
[[ -x $runner ]] || die "$runner is missing (build it, or drop --no-build)"
[[ -x $gen ]] || die "$gen is missing (build it, or drop --no-build)"
versions=("$("$runner" --version)" "${versions[@]}")

# ---------------------------------------------------------------------------------------------
# Temporary directory, clock, peak RSS, bookkeeping

tmp=$(mktemp -d "${TMPDIR:-/tmp}/runner-bench-peers.XXXXXX") || die "mktemp failed"
logs=$tmp/logs defs=$tmp/defs
mkdir -p "$logs" "$defs"
big_pidfile="" big_job="" poller=""
cleanup() {
    if [[ -n $poller ]]; then kill "$poller" 2>/dev/null || true; fi
    # A big run under way: stop the runner (it stops its steps), and wait for it to exit.
    if [[ -n $big_pidfile && -s $big_pidfile ]]; then kill -TERM "$(cat "$big_pidfile")" 2>/dev/null || true; fi
    if [[ -n $big_job ]]; then wait "$big_job" 2>/dev/null || true; fi
    cd /
    if ((keep)); then
        log "kept $tmp"
    else
        log "removing $tmp"
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$tmp"

rss_setup
if ((${#rss_prefix[@]} == 0)); then
    rss_method="none (VmHWM polled every 10 s)"
    rss_prefix=(/bin/sh -c 'shift; exec "$@"' no-rss)
fi
# "${rss_prefix[@]}" FILE CMD...: runs CMD and writes its peak RSS (KiB) to FILE.

declare -A samples=() errors=()
# timed KEY DIR CMD...: runs CMD in DIR with stdout/stderr in $logs/KEY.{out,err}; sets $rc
# and $elapsed_us. Never exits: the caller validates.
timed() {
    local key=$1 dir=$2 t0
    shift 2
    out=$logs/$key.out err=$logs/$key.err
    cd "$dir"
    rc=0
    stamp
    t0=$now_us
    "$@" >"$out" 2>"$err" </dev/null || rc=$?
    stamp
    elapsed_us=$((now_us - t0))
    cd "$tmp"
}
# active KEY: false once KEY has failed (its later reps are skipped).
active() { [[ -z ${errors[$1]:-} ]]; }
# broken KEY WHY: marks KEY failed, shows why and the tail of its output.
broken() {
    errors[$1]=$2
    warn "$1 failed: $2"
    if [[ -f $logs/$1.out ]]; then
        { echo "--- stdout (last 10 lines)"; tail -n 10 "$logs/$1.out"; echo "--- stderr (last 10 lines)"; tail -n 10 "$logs/$1.err"; } >&2 || true
    fi
}
record() { samples[$1]="${samples[$1]:-}${samples[$1]:+ }$2"; }
# accept KEY: records $elapsed_us for KEY if $rc is 0, else marks KEY failed. Returns 1 on failure.
accept() {
    if ((rc != 0)); then
        broken "$1" "exit status $rc"
        return 1
    fi
    record "$1" "$elapsed_us"
}
# count_files DIR PREFIX: number of DIR/PREFIX*.done files.
count_files() { find "$1" -maxdepth 1 -name "$2*.done" | wc -l; }

med() { median ${samples[$1]}; }  # word splitting intended
have() { [[ -n ${samples[$1]:-} ]] && active "$1"; }

log "temp dir $tmp; clock: $clock; peak RSS: $rss_method; $reps reps$( ((quick)) && echo ', --quick')"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) CPUs, $(uname -sr); temp dir on $(df -P "$tmp" | awk 'NR == 2 { print $1 }'); load average $load_start"

# ---------------------------------------------------------------------------------------------
# Workload definitions, one file per tool and shape

# Each step runs `true`; where a tool needs an output file to know a step is done, the same
# /bin/sh that runs `true` creates it with `: >FILE`, so every tool spawns one shell per step.
gen_runner() { # FILE N chain|indep
    local i
    for ((i = 0; i < $2; i++)); do
        if [[ $3 = chain ]]; then
            printf '[[steps]]\nid = "s%d"\nrun = "true"\n\n' "$i"
        else
            printf '[[steps]]\nid = "s%d"\nneeds = []\nrun = "true"\n\n' "$i"
        fi
    done >"$1"
}
gen_make() {
    local i
    {
        printf '.PHONY: all\n'
        if [[ $3 = chain ]]; then
            printf 'all: s%d.done\n' $(($2 - 1))
        else
            printf 'all:'
            for ((i = 0; i < $2; i++)); do printf ' s%d.done' "$i"; done
            printf '\n'
        fi
        for ((i = 0; i < $2; i++)); do
            if [[ $3 = chain ]] && ((i > 0)); then printf 's%d.done: s%d.done\n' "$i" $((i - 1)); else printf 's%d.done:\n' "$i"; fi
            printf '\ttrue && : >$@\n'
        done
    } >"$1"
}
gen_snakemake() {
    local i
    {
        # Snakemake builds its DAG recursively: a chain of 1000 rules exceeds Python's default
        # recursion limit (RecursionError at about rule 500), so raise it as a user would.
        printf 'import sys\nsys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))\n\n'
        if [[ $3 = chain ]]; then
            printf 'rule all:\n    input: "s%d.done"\n\n' $(($2 - 1))
        else
            printf 'rule all:\n    input: expand("s{i}.done", i=range(%d))\n\n' "$2"
        fi
        for ((i = 0; i < $2; i++)); do
            printf 'rule s%d:\n' "$i"
            [[ $3 = chain ]] && ((i > 0)) && printf '    input: "s%d.done"\n' $((i - 1))
            printf '    output: "s%d.done"\n    shell: "true && : >{output}"\n\n' "$i"
        done
    } >"$1"
}
gen_doit() {
    cat >"$1" <<EOF
# $2 top-level doit tasks ($3): each runs \`true\` through /bin/sh and creates its target.
# uptodate=[True]: doit always reruns a task that has no file_dep, unless told it is up to date
# while its targets exist; without it the first task of a chain would run again in W3.
N = $2
CHAIN = "$3" == "chain"
DOIT_CONFIG = {"verbosity": 1}

def task_steps():
    for i in range(N):
        yield {
            "basename": f"s{i}",
            "actions": [f"true && : >s{i}.done"],
            "file_dep": [f"s{i - 1}.done"] if CHAIN and i else [],
            "targets": [f"s{i}.done"],
            "uptodate": [True],
        }
EOF
}
# Floors: the same steps with no tool at all.
sh_loop() {
    local i
    for ((i = 0; i < $1; i++)); do /bin/sh -c true; done
}
cat >"$defs/floor.py" <<'EOF'
# floor.py MODE N FILE: per step, MODE "spawn" runs /bin/sh -c true; "durable" also appends a
# ~300-byte line to FILE with os.write + os.fdatasync before and after it (like a StepStarted
# and a StepSucceeded journaled one by one); "sync" does only the two appends.
import os, subprocess, sys
mode, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
line = (b'{"seq":1,"ts":"2026-01-01T00:00:00.000Z","type":"StepSucceeded","data":{"step":"s1"}}' + b" " * 300)[:299] + b"\n"
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
spawn, sync = mode in ("spawn", "durable"), mode in ("durable", "sync")
for _ in range(n):
    if sync:
        os.write(fd, line)
        os.fdatasync(fd)
    if spawn:
        subprocess.run(["/bin/sh", "-c", "true"], check=True)
    if sync:
        os.write(fd, line)
        os.fdatasync(fd)
os.close(fd)
EOF

log "generating workload definitions"
for n in 5 "${chain_sizes[@]}"; do
    gen_runner "$defs/chain-$n.toml" "$n" chain
    gen_make "$defs/chain-$n.mk" "$n" chain
    gen_snakemake "$defs/chain-$n.smk" "$n" chain
    gen_doit "$defs/chain-$n.py" "$n" chain
done
for n in 5 "$indep"; do
    gen_runner "$defs/indep-$n.toml" "$n" indep
    gen_make "$defs/indep-$n.mk" "$n" indep
    gen_snakemake "$defs/indep-$n.smk" "$n" indep
    gen_doit "$defs/indep-$n.py" "$n" indep
done

# ---------------------------------------------------------------------------------------------
# One repetition of one tool on one workload. SHAPE is chain or indep, N the step count, KEY
# where the sample goes, DIR a fresh directory. Each validates what the tool left behind.

rep_runner() { # SHAPE N KEY DIR
    local shape=$1 n=$2 key=$3 dir=$4 id=bench jobs=()
    [[ $shape = indep ]] && jobs=(--jobs 2)
    mkdir -p "$dir"
    timed "$key" "$dir" "$runner" -q --runs-dir "$dir/runs" run --run-id "$id" "${jobs[@]}" "$defs/$shape-$n.toml"
    ((rc == 0)) || { broken "$key" "exit status $rc"; return 1; }
    check_runner_run "$dir/runs" "$id" "$n" || { broken "$key" "$why"; return 1; }
    [[ $(head -n 1 "$out") = "$id" ]] || { broken "$key" "runner run did not print the run id"; return 1; }
    record "$key" "$elapsed_us"
}
# One repetition of a file-target tool: copy its definition of SHAPE-N (DEFS_EXT) into DIR
# as FILE, run the tool there, and check that it made all N `s*` outputs.
rep_tool() { # SHAPE N KEY DIR DEFS_EXT FILE TOOL ARGS...
    local shape=$1 n=$2 key=$3 dir=$4 ext=$5 file=$6
    shift 6
    mkdir -p "$dir"
    cp "$defs/$shape-$n.$ext" "$dir/$file"
    timed "$key" "$dir" "$@"
    ((rc == 0)) || { broken "$key" "exit status $rc"; return 1; }
    local c
    c=$(count_files "$dir" s)
    ((c == n)) || { broken "$key" "$c of $n outputs made"; return 1; }
    record "$key" "$elapsed_us"
}
rep_make() {
    local jobs=()
    [[ $1 = indep ]] && jobs=(-j2)
    rep_tool "$@" mk Makefile "$make_bin" "${jobs[@]}"
}
rep_snakemake() {
    local cores=1
    [[ $1 = indep ]] && cores=2
    rep_tool "$@" smk Snakefile "$snakemake_bin" --cores "$cores"
}
doit_parallel=()  # set by the warm-up: (-n 2) or (-n 2 -P thread), or empty if neither works
rep_doit() {
    local par=()
    [[ $1 = indep ]] && par=("${doit_parallel[@]}")
    rep_tool "$@" py dodo.py "$doit_bin" "${par[@]}"
}
rep_parallel() { # indep only
    local n=$2 key=$3 dir=$4
    mkdir -p "$dir"
    seq "$n" >"$dir/input"
    timed "$key" "$dir" "$parallel_bin" --will-cite -j2 -N0 --joblog "$dir/joblog" -a "$dir/input" true
    ((rc == 0)) || { broken "$key" "exit status $rc"; return 1; }
    local ok
    ok=$(awk -F'\t' 'NR > 1 && $7 == 0 && $8 == 0' "$dir/joblog" | wc -l)
    ((ok == n)) || { broken "$key" "joblog shows $ok of $n jobs succeeded"; return 1; }
    record "$key" "$elapsed_us"
}
rep_xargs() { # indep floor: xargs -P2 running /bin/sh -c true N times
    local n=$2 key=$3 dir=$4
    mkdir -p "$dir"
    seq "$n" >"$dir/input"
    timed "$key" "$dir" xargs -P 2 -n 1 -a "$dir/input" /bin/sh -c true
    accept "$key"
}
rep_sh() {
    local n=$2 key=$3 dir=$4
    mkdir -p "$dir"
    timed "$key" "$dir" sh_loop "$n"
    accept "$key"
}
rep_py() { # MODE N KEY DIR
    local mode=$1 n=$2 key=$3 dir=$4
    mkdir -p "$dir"
    timed "$key" "$dir" "$python_bin" "$defs/floor.py" "$mode" "$n" "$dir/journal"
    ((rc == 0)) || { broken "$key" "exit status $rc"; return 1; }
    local want=0 size
    [[ $mode = spawn ]] || want=$((2 * n * 300))
    size=$(stat -c %s "$dir/journal")
    ((size == want)) || { broken "$key" "journal has $size bytes, expected $want"; return 1; }
    record "$key" "$elapsed_us"
}

# Which tools take part, in the order they run within a repetition.
w1_tools=(runner) w2_tools=(runner) w3_tools=(runner)
[[ -n $make_bin ]] && w1_tools+=(make) w2_tools+=(make) w3_tools+=(make)
[[ -n $snakemake_bin ]] && w1_tools+=(snakemake) w2_tools+=(snakemake) w3_tools+=(snakemake)
[[ -n $doit_bin ]] && w1_tools+=(doit) w2_tools+=(doit) w3_tools+=(doit)
[[ -n $parallel_bin ]] && w2_tools+=(parallel)
w1_floors=(sh) w2_floors=(xargs)
[[ -n $python_bin ]] && w1_floors+=(py-spawn py-durable py-sync)

run_rep() { # TOOL SHAPE N KEY DIR
    local tool=$1
    shift
    active "$3" || return 0
    case $tool in
    runner) rep_runner "$@" ;;
    make) rep_make "$@" ;;
    snakemake) rep_snakemake "$@" ;;
    doit) rep_doit "$@" ;;
    parallel) rep_parallel "$@" ;;
    xargs) rep_xargs "$@" ;;
    sh) rep_sh "$@" ;;
    py-spawn) rep_py spawn "$2" "$3" "$4" ;;
    py-durable) rep_py durable "$2" "$3" "$4" ;;
    py-sync) rep_py sync "$2" "$3" "$4" ;;
    esac || true
}
last_ms() { # KEY: the latest sample in ms, or "error"
    local v=${samples[$1]:-}
    if ! active "$1"; then echo error; elif [[ -n $v ]]; then ms "${v##* }"; else echo -; fi
}

# ---------------------------------------------------------------------------------------------
# Warm-up: every tool once on 5 steps (page cache, Python bytecode), and doit's parallel mode.

log "warm-up: every tool on a 5-step chain and 5 independent steps"
for tool in "${w1_tools[@]}" "${w1_floors[@]}"; do
    run_rep "$tool" chain 5 "warm-chain.$tool" "$tmp/warm/chain-$tool"
done
if [[ -n $doit_bin ]]; then
    for mode in "-n 2" "-n 2 -P thread"; do
        read -r -a doit_parallel <<<"$mode"
        rm -rf "$tmp/warm/doit-par"
        mkdir -p "$tmp/warm/doit-par"
        cp "$defs/indep-5.py" "$tmp/warm/doit-par/dodo.py"
        timed "warm-doit-par" "$tmp/warm/doit-par" "$doit_bin" "${doit_parallel[@]}"
        if ((rc == 0)) && (($(count_files "$tmp/warm/doit-par" s) == 5)); then break; fi
        warn "doit $mode does not work here (exit status $rc)"
        doit_parallel=()
    done
    if ((${#doit_parallel[@]} == 0)); then
        errors[w2.doit]="n/a: doit's parallel mode does not work here"
    fi
fi
for tool in "${w2_tools[@]}" "${w2_floors[@]}"; do
    [[ $tool = doit && ${#doit_parallel[@]} -eq 0 ]] && continue
    run_rep "$tool" indep 5 "warm-indep.$tool" "$tmp/warm/indep-$tool"
done
for k in "${!errors[@]}"; do
    [[ $k = warm-* ]] && die "warm-up of ${k#warm-} failed: ${errors[$k]}"
done
rm -rf "$tmp/warm"

# ---------------------------------------------------------------------------------------------
# W1: chains

for n in "${chain_sizes[@]}"; do
    log "W1: chain of $n steps, $reps reps (tools interleaved, each rep in fresh directories)"
    for ((r = 1; r <= reps; r++)); do
        for tool in "${w1_floors[@]}" "${w1_tools[@]}"; do
            run_rep "$tool" chain "$n" "w1-$n.$tool" "$tmp/w1-$n/$tool/r$r"
            # Nothing is deleted until the end: on ext4, allocating inodes right after many
            # were freed is slow for minutes, which would tax whichever tool runs next.
        done
        line="   rep $r (ms):"
        for tool in "${w1_tools[@]}" "${w1_floors[@]}"; do line+=" $tool $(last_ms "w1-$n.$tool")"; done
        log "$line"
    done
done

# ---------------------------------------------------------------------------------------------
# W2: independent steps, 2 slots

log "W2: $indep independent steps with 2 parallel slots, $reps reps"
for ((r = 1; r <= reps; r++)); do
    for tool in "${w2_floors[@]}" "${w2_tools[@]}"; do
        run_rep "$tool" indep "$indep" "w2.$tool" "$tmp/w2/$tool/r$r"
    done
    line="   rep $r (ms):"
    for tool in "${w2_tools[@]}" "${w2_floors[@]}"; do line+=" $tool $(last_ms "w2.$tool")"; done
    log "$line"
done
if [[ -n $doit_bin && ${#doit_parallel[@]} -gt 0 ]]; then doit_w2_label="doit ${doit_parallel[*]}"; else doit_w2_label="doit -n 2"; fi

# ---------------------------------------------------------------------------------------------
# W3: nothing to do (the completed chain of W1's first rep, checked again)

log "W3: nothing to do: the completed $noop_n-step chain checked again, $reps reps"
for tool in "${w3_tools[@]}"; do
    dir=$tmp/w1-$noop_n/$tool/r1
    [[ -d $dir ]] && active "w1-$noop_n.$tool" || { errors[w3.$tool]="n/a: its W1 run failed"; continue; }
    touch "$dir/.w3-marker"
    for ((r = 1; r <= reps; r++)); do
        key="w3.$tool"
        case $tool in
        runner)
            timed "$key" "$dir" "$runner" --runs-dir "$dir/runs" resume --run-id bench
            if ((rc == 0)) && ! grep -q "already succeeded" "$err"; then rc=-1 why="resume did not say 'already succeeded'"; fi
            if ((rc == 0)) && ! check_runner_run "$dir/runs" bench "$noop_n"; then rc=-1 why="the journal changed: $why"; fi
            ;;
        make)
            timed "$key" "$dir" "$make_bin"
            if ((rc == 0)) && ! grep -Eq "Nothing to be done|is up to date" "$out"; then rc=-1 why="make did not say there was nothing to do"; fi
            ;;
        snakemake)
            timed "$key" "$dir" "$snakemake_bin" --cores 1
            if ((rc == 0)) && ! cat "$out" "$err" | grep -q "Nothing to be done"; then rc=-1 why="snakemake did not say 'Nothing to be done'"; fi
            ;;
        doit)
            timed "$key" "$dir" "$doit_bin"
            if ((rc == 0)); then
                if (($(grep -c '^-- ' "$out") != noop_n)) || grep -q '^\. ' "$out"; then
                    rc=-1 why="doit did not report all $noop_n tasks up to date ('-- ')"
                fi
            fi
            ;;
        esac
        if ((rc == 0)) && [[ -n $(find "$dir" -maxdepth 1 -name '*.done' -newer "$dir/.w3-marker") ]]; then
            rc=-1 why="some outputs were made again"
        fi
        if ((rc == -1)); then broken "$key" "$why"; break; fi
        accept "$key" || break
    done
    log "   $tool: $(for v in ${samples[w3.$tool]:-}; do printf '%s ' "$(ms "$v")"; done)ms"
done

# ---------------------------------------------------------------------------------------------
# W4 (runner only): rebuild-projection over a generated corpus

corpus=$tmp/corpus
events_total=$((corpus_runs * corpus_events))
log "W4: generating a corpus of $corpus_runs runs x $corpus_events events"
timed gen "$tmp" "$gen" --runs-dir "$corpus" --runs "$corpus_runs" --events-per-run "$corpus_events"
((rc == 0)) || { broken gen "exit status $rc"; die "gen_corpus failed"; }
gen_us=$elapsed_us
grep -q "^summary: runs=$corpus_runs events=$events_total " "$logs/gen.out" \
    || die "gen_corpus did not report the expected totals: $(cat "$logs/gen.out")"
corpus_bytes=$(sed -n 's/^summary: .* journal_bytes=\([0-9]*\) .*/\1/p' "$logs/gen.out")
log "   generated in $(calc %.1f "$gen_us / 1e6") s, journals $(calc %.0f "$corpus_bytes / 1048576") MiB"

rebuild() { # KEY
    timed "$1" "$tmp" "$runner" --runs-dir "$corpus" rebuild-projection
    ((rc == 0)) || { broken "$1" "exit status $rc"; return 1; }
    local line
    line=$(grep '^rebuilt ' "$out") || { broken "$1" "rebuild-projection printed no summary"; return 1; }
    [[ $line =~ :\ ([0-9]+)\ runs,\ ([0-9]+)\ events\ in\ [0-9.]+s\ \(([0-9]+)\ events/s\) ]] \
        || { broken "$1" "cannot parse the rebuild summary: $line"; return 1; }
    ((BASH_REMATCH[1] == corpus_runs && BASH_REMATCH[2] == events_total)) || {
        broken "$1" "rebuild read ${BASH_REMATCH[1]} runs / ${BASH_REMATCH[2]} events, expected $corpus_runs / $events_total"
        return 1
    }
    record "$1" "$elapsed_us"
    record "$1.reported" "${BASH_REMATCH[3]}"
}
log "   rebuild-projection: 1 warm-up (into a new projection) + $reps reps (replacing it)"
rebuild rebuild-warmup || die "rebuild-projection failed"
for ((r = 1; r <= reps; r++)); do
    rebuild rebuild || break
    log "   rep $r: $(calc %.2f "$elapsed_us / 1e6") s, $(calc %.0f "$events_total / ($elapsed_us / 1e6)") events/s (wall)"
done

# ---------------------------------------------------------------------------------------------
# W4 (runner only): two big real runs, each stopped after --big-timeout s

# poll_progress JOURNAL PIDFILE TOTAL_EVENTS HWM_FILE: every 10 s notes the runner's peak RSS
# (VmHWM) in HWM_FILE; every 30 s logs the journal's progress. Runs until killed.
poll_progress() {
    local journal=$1 pidfile=$2 total=$3 hwm_file=$4 fd tick=0 last=0 ev pid hwm
    exec {fd}<> <(:)  # an empty pipe: `read -t` on it sleeps without a child process
    while :; do
        read -r -t 10 -u "$fd" _ || true
        pid=$(cat "$pidfile" 2>/dev/null) || pid=""
        [[ -n $pid ]] && hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [[ -n $hwm ]] && echo "$hwm" >"$hwm_file"
        if (((++tick % 3) == 0)); then
            ev=$(wc -l <"$journal" 2>/dev/null) || ev=0
            log "   ... $((tick * 10)) s: $ev of $total events (+$((ev - last)) in 30 s), peak RSS $(calc %.1f "${hwm:-0} / 1024") MiB"
            last=$ev
        fi
    done
}

declare -A big=()  # NAME.{us,rss_kb,events,status}
big_run() { # NAME STEPS
    local name=$1 steps=$2 flow=$defs/$1.toml dir=$tmp/big
    local journal=$dir/runs/$name/journal.jsonl total=$((2 * steps + 2))
    mkdir -p "$dir"
    gen_runner "$flow" "$steps" chain
    log "W4: a real run of a $steps-step chain (~$total events; stopped after $big_timeout s)"
    big_pidfile=$logs/$name.pid
    rm -f "$big_pidfile" "$logs/$name.rss" "$logs/$name.hwm"
    poll_progress "$journal" "$big_pidfile" "$total" "$logs/$name.hwm" &
    poller=$!
    cd "$dir"
    rc=0
    stamp
    local t0=$now_us
    # GNU time (peak RSS of everything below it) -> timeout -> sh that records the runner's pid
    # and execs it. timeout waits for the runner it stops, so when this job ends, the runner has
    # ended. In the background, so that a signal to this script is handled at once (cleanup).
    "${rss_prefix[@]}" "$logs/$name.rss" timeout -k 30 "$big_timeout" /bin/sh -c 'echo $$ >"$0"; exec "$@"' "$big_pidfile" \
        "$runner" -q --runs-dir "$dir/runs" run --run-id "$name" "$flow" >"$logs/$name.out" 2>"$logs/$name.err" &
    big_job=$!
    wait "$big_job" || rc=$?
    big_job=""
    local pid waited=0
    pid=$(cat "$big_pidfile" 2>/dev/null) || pid=""
    while [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && ((waited++ < 600)); do sleep 0.1; done
    stamp
    cd "$tmp"
    kill "$poller" 2>/dev/null || true
    wait "$poller" 2>/dev/null || true
    poller="" big_pidfile=""
    big[$name.us]=$((now_us - t0))
    big[$name.events]=$(wc -l <"$journal" 2>/dev/null) || big[$name.events]=0
    big[$name.rss_kb]=$(tail -n 1 "$logs/$name.rss" 2>/dev/null) || big[$name.rss_kb]=""
    [[ ${big[$name.rss_kb]} =~ ^[0-9]+$ ]] || big[$name.rss_kb]=$(cat "$logs/$name.hwm" 2>/dev/null) || big[$name.rss_kb]=""
    if ((rc == 124 || rc == 137)); then
        big[$name.status]="timed out after $big_timeout s"
        warn "$name: stopped after $big_timeout s at ${big[$name.events]} of $total events"
        return 1
    elif ((rc != 0)); then
        big[$name.status]="failed (exit status $rc)"
        broken "$name" "exit status $rc"
        return 1
    fi
    if ! check_runner_run "$dir/runs" "$name" "$steps"; then
        big[$name.status]="failed: $why"
        broken "$name" "$why"
        return 1
    fi
    big[$name.status]=ok
    log "   done in $(calc %.1f "${big[$name.us]} / 1e6") s ($(calc %.0f "$steps / (${big[$name.us]} / 1e6)") steps/s), peak RSS $(calc %.1f "${big[$name.rss_kb]:-0} / 1024") MiB"
}
resume_name=resume-$((2 * resume_steps + 2))ev rss_name=rss-${rss_steps}steps
if big_run "$resume_name" "$resume_steps"; then
    log "W4: resume of the complete $resume_name run: 1 warm-up + $reps reps"
    key="big-resume"
    for ((r = 0; r <= reps; r++)); do
        timed "$key" "$tmp/big" "$runner" --runs-dir "$tmp/big/runs" resume --run-id "$resume_name"
        if ((rc == 0)) && ! grep -q "already succeeded" "$err"; then broken "$key" "resume did not say 'already succeeded'"; break; fi
        accept "$key" || break
        if ((r == 0)); then samples[$key]=""; else log "   rep $r: $(ms "$elapsed_us") ms"; fi
    done
    check_runner_run "$tmp/big/runs" "$resume_name" "$resume_steps" || broken big-resume "the journal changed: $why"
fi
big_run "$rss_name" "$rss_steps" || true

# ---------------------------------------------------------------------------------------------
# Results

declare -A label=(
    [runner]="runner" [make]="GNU make" [snakemake]="Snakemake --cores 1" [doit]="doit"
    [sh]="floor (a): sh loop" [py-spawn]="python: subprocess loop" [py-durable]="python: subprocess + 2 fdatasync/step"
    [py-sync]="python: 2 fdatasync/step, no spawn" [xargs]="floor: xargs -P2 sh -c true" [parallel]="GNU parallel -j2"
)
rows=()
row() { rows+=("$(printf '%s\t' "$@")"); }
row "workload" "tool" "median" "per step" "vs runner" "reps (ms)"
# cell KEY: median in ms, or why there is none.
cell() {
    if ! active "$1"; then
        case ${errors[$1]} in n/a*) echo "${errors[$1]}" ;; *) echo "error: ${errors[$1]}" ;; esac
    elif [[ -n ${samples[$1]:-} ]]; then
        echo "$(ms "$(med "$1")") ms"
    else
        echo "n/a"
    fi
}
reps_of() { local v s=""; for v in ${samples[$1]:-}; do s+="$(calc %.0f "$v / 1000") "; done; echo "${s% }"; }
tool_row() { # WORKLOAD KEY LABEL STEPS RUNNER_KEY
    local m="-" per="-" ratio="-"
    if have "$2"; then
        m=$(med "$2")
        per="$(calc %.3f "$m / $4 / 1000") ms"
        have "$5" && ratio="$(calc %.2f "$m / $(med "$5")")x"
    fi
    row "$1" "$3" "$(cell "$2")" "$per" "$ratio" "$(reps_of "$2")"
}
verdicts=()
verdict() { # VALUE OP TARGET
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { print ((op == "le") ? (v <= t) : (v >= t)) ? "PASS" : "FAIL" }'
}
target() { verdicts+=("$(printf '%s\t' "$@")"); }

for n in "${chain_sizes[@]}"; do
    w="W1 chain $n"
    for tool in "${w1_tools[@]}"; do
        lab=${label[$tool]}
        [[ $tool = runner ]] && lab="runner (durable journal)"
        tool_row "$w" "w1-$n.$tool" "$lab" "$n" "w1-$n.runner"
    done
    for tool in "${w1_floors[@]}"; do tool_row "$w" "w1-$n.$tool" "${label[$tool]}" "$n" "w1-$n.runner"; done
    # The durable floor: the shell loop plus the in-situ cost of two fdatasync'd appends per
    # step, i.e. python's (spawn + appends) minus python's (spawn alone), so python's own
    # overhead cancels out.
    if have "w1-$n.sh" && have "w1-$n.py-durable" && have "w1-$n.py-spawn"; then
        sync_us=$(calc %.0f "$(med "w1-$n.py-durable") - $(med "w1-$n.py-spawn")")
        ((sync_us > 0)) || sync_us=0
        floor=$(calc %.0f "$(med "w1-$n.sh") + $sync_us")
        samples[w1-$n.floor]=$floor
        tool_row "$w" "w1-$n.floor" "floor (b): durable = (a) + [py durable - py spawn]" "$n" "w1-$n.runner"
        if have "w1-$n.runner"; then
            x=$(calc %.2f "$(med "w1-$n.runner") / $floor")
            target "W1 chain $n: runner vs durable floor (b)" "${x}x" "<= 2x" "$(verdict "$x" le 2)"
        fi
    fi
    if have "w1-$n.runner" && have "w1-$n.snakemake"; then
        x=$(calc %.1f "$(med "w1-$n.snakemake") / $(med "w1-$n.runner")")
        target "W1 chain $n: Snakemake / runner" "${x}x" ">= 10x" "$(verdict "$x" ge 10)"
    elif [[ -z $snakemake_bin ]]; then
        target "W1 chain $n: Snakemake / runner" "n/a" ">= 10x" "n/a"
    fi
done

w="W2 $indep independent, 2 slots"
for tool in "${w2_tools[@]}"; do
    case $tool in
    runner) lab="runner --jobs 2" ;;
    make) lab="GNU make -j2" ;;
    snakemake) lab="Snakemake --cores 2" ;;
    doit) lab=$doit_w2_label ;;
    *) lab=${label[$tool]} ;;
    esac
    tool_row "$w" "w2.$tool" "$lab" "$indep" "w2.runner"
done
tool_row "$w" "w2.xargs" "${label[xargs]}" "$indep" "w2.runner"

w="W3 nothing to do ($noop_n)"
for tool in "${w3_tools[@]}"; do
    case $tool in
    runner) lab="runner resume --run-id" ;;
    snakemake) lab="Snakemake --cores 1" ;;
    *) lab=${label[$tool]} ;;
    esac
    tool_row "$w" "w3.$tool" "$lab" "$noop_n" "w3.runner"
done
if have w3.runner; then
    x=$(ms "$(med w3.runner)")
    target "W3: runner resume of the completed $noop_n-step run" "$x ms" "<= 50 ms" "$(verdict "$x" le 50)"
fi

w="W4 runner only"
if have rebuild; then
    rb=$(med rebuild)
    rate=$(calc %.0f "$events_total / ($rb / 1e6)")
    row "$w" "rebuild-projection, $corpus_runs x $corpus_events events" "$(calc %.2f "$rb / 1e6") s" \
        "$rate ev/s (wall)" "-" "$(reps_of rebuild)"
    row "$w" "  as the runner reports it" "$(median ${samples[rebuild.reported]}) ev/s" "-" "-" "-"
    target "W4: rebuild-projection over $events_total events (wall)" "$rate ev/s" ">= 300000 ev/s" "$(verdict "$rate" ge 300000)"
else
    row "$w" "rebuild-projection" "$(cell rebuild)" "-" "-" "-"
fi
big_row() { # NAME STEPS
    local n=$1 s=$2
    local st=${big[$n.status]:-not run} us=${big[$n.us]:-0} ev=${big[$n.events]:-0}
    local desc="real run, $s-step chain"
    if [[ $st = ok ]]; then
        row "$w" "$desc" "$(calc %.1f "$us / 1e6") s" "$(calc %.3f "$us / $s / 1000") ms" "-" "1 run"
    else
        row "$w" "$desc" "$st" "-" "-" "at $ev of $((2 * s + 2)) events ($(calc %.0f "$ev / 2 / ($us / 1e6 + 1e-9)") steps/s)"
    fi
}
big_row "$resume_name" "$resume_steps"
resume_ev=$((2 * resume_steps + 2))
if have big-resume; then
    x=$(ms "$(med big-resume)")
    row "$w" "resume of that complete run ($resume_ev events)" "$x ms" "-" "-" "$(reps_of big-resume)"
    target "W4: resume of a complete $resume_ev-event run" "$x ms" "<= 200 ms" "$(verdict "$x" le 200)"
else
    row "$w" "resume of that complete run ($resume_ev events)" "$(active big-resume && echo "n/a: the run did not complete" || cell big-resume)" "-" "-" "-"
    target "W4: resume of a complete $resume_ev-event run" "n/a" "<= 200 ms" "n/a"
fi
big_row "$rss_name" "$rss_steps"
rss_kb=${big[$rss_name.rss_kb]:-}
if [[ $rss_kb =~ ^[0-9]+$ ]]; then
    rss_mib=$(calc %.1f "$rss_kb / 1024")
    partial=""
    [[ ${big[$rss_name.status]:-} = ok ]] || partial=" (so far: the run did not complete)"
    row "$w" "peak RSS of that $rss_steps-step run" "$rss_mib MiB$partial" "-" "-" "via $rss_method"
    if [[ -z $partial ]]; then
        target "W4: peak RSS of a $rss_steps-step run" "$rss_mib MiB" "<= 200 MB (190.7 MiB)" "$(verdict "$rss_kb" le 195312.5)"
    else
        target "W4: peak RSS of a $rss_steps-step run" "$rss_mib MiB so far" "<= 200 MB (190.7 MiB)" "n/a (incomplete)"
    fi
else
    row "$w" "peak RSS of that $rss_steps-step run" "n/a" "-" "-" "-"
fi

table() { # COLUMNS: reads tab-separated rows on stdin
    awk -F'\t' -v ncol="$1" '
        { for (i = 1; i <= ncol; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
        END {
            for (r = 1; r <= NR; r++) {
                line = "|"
                for (i = 1; i <= ncol; i++) line = line sprintf(" %-" w[i] "s |", cell[r, i])
                print line
                if (r == 1) {
                    line = "|"
                    for (i = 1; i <= ncol; i++) { d = ""; for (k = 0; k < w[i] + 2; k++) d = d "-"; line = line d "|" }
                    print line
                }
            }
        }'
}

echo
echo "runner vs peers: $reps reps, medians; $(nproc) CPUs, $(uname -sr)$( ((quick)) && echo '; --quick: small sizes, verdicts indicative only (targets are for the full sizes)')"
for v in "${versions[@]}"; do echo "  $v"; done
echo "Every step runs \`true\` through /bin/sh; make/Snakemake/doit also create an output file with"
echo "\`: >FILE\` in that same shell, so each tool spawns one shell per step. Each rep of W1/W2 runs"
echo "in a fresh directory (no state leaks between reps). GNU parallel has no chains: W2 only."
echo "Snakemake runs with its defaults (so W2 uses its ILP scheduler) and a Snakefile that raises"
echo "Python's recursion limit: without it, a chain of 1000 rules fails with RecursionError."
echo "Floors: (a) a bash loop running /bin/sh -c true N times: spawning the steps and nothing else."
echo "(b) the durable floor = (a) + the cost of two fdatasync'd ~300-byte appends per step (a start"
echo "and an end record journaled one at a time), measured in situ as python [spawn + 2 appends per"
echo "step] minus python [spawn only], so python's own overhead (shown) cancels out. The runner"
echo "shares one commit between a step's success and the next start, and also updates its SQLite"
echo "projection; (b) is what a naive durable runner must pay, not a lower bound on fsyncs."
echo
printf '%s\n' "${rows[@]}" | table 6
echo
echo "targets:"
printf '%s\n' "metric	value	target	verdict" "${verdicts[@]}" | table 4
echo
echo "load average (1, 5, 15 min): $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (2 CPUs: other work skews medians)"
echo "peak RSS via $rss_method; total bench time $((SECONDS - start_all)) s (including installs and the build)"
