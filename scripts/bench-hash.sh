#!/usr/bin/env bash
# Hashing throughput of a step's declared files, against b3sum, with medians over reps:
#
#   (a) b3sum over every file of the input set
#   (b) `runner run` of a one-step flow with `inputs = ["data/**"]`, minus the same flow
#       without `inputs` (skipped, with a clear line, while the runner rejects `inputs`)
#   (c) runner::fileset::digest via examples/hash_files (no flow plumbing around it)
#
# The input set (default 1 GiB: 4 files of 224 MiB and 1000 files of ~32 KiB, random
# bytes) lives in a temporary directory that is removed on exit (unless --keep); set TMPDIR
# to put it elsewhere. The page cache cannot be dropped without root, so every tool gets one
# untimed pass first and all figures are warm-cache.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-hash.sh [options]

  --size-mib N   size of the input set in MiB (default 1024): 4 large files of 7/32 of it
                 each (224 MiB at 1024) and N*1000/1024 files of 24-40 KiB (~32 KiB)
  --reps N       timed repetitions per measurement (default 5)
  --no-build     use the binaries already in the target directory
  --keep         keep the temporary directory and print where it is
  -h, --help     this help

b3sum is taken from PATH, else built once into target/bench-tools/ (cargo install).
Aim: runner::fileset within 1.3x of b3sum's time on the large files.
EOF
}

die() {
    echo "bench-hash: error: $*" >&2
    exit 1
}
log() { echo "bench-hash: $*" >&2; }

reps=5 size_mib=1024 keep=0 build=1
# shellcheck source=scripts/lib/bench-common.sh
source "$(dirname "$0")/lib/bench-common.sh"
while (($#)); do
    case $1 in
    --reps) positive "$1" "${2:-}"; reps=$2; shift 2 ;;
    --size-mib) positive "$1" "${2:-}"; size_mib=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
((size_mib >= 4)) || die "--size-mib must be at least 4"

release_build hash_files
hash_files=$example

tools=$target_dir/bench-tools
if command -v b3sum >/dev/null; then
    b3sum=$(command -v b3sum)
elif [[ -x $tools/bin/b3sum ]]; then
    b3sum=$tools/bin/b3sum
else
    log "b3sum not found: building it once into $tools (cargo install b3sum --locked)"
    cargo install b3sum --locked --quiet --root "$tools" || die "cargo install b3sum failed"
    b3sum=$tools/bin/b3sum
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/runner-bench-hash.XXXXXX") || die "mktemp failed"
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
work=$tmp/work
mkdir -p "$work/data/big" "$work/data/small"
cd "$work"

# timed NAME CMD...: runs CMD with output to $tmp/NAME.{out,err}, fails loudly on a non-zero
# exit, and sets $elapsed_us.
timed() {
    local name=$1
    shift
    local t0 rc=0
    stamp
    t0=$now_us
    "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
    stamp
    elapsed_us=$((now_us - t0))
    if ((rc != 0)); then
        echo "bench-hash: command failed with exit status $rc: $*" >&2
        echo "--- stdout (last 20 lines)" >&2
        tail -n 20 "$tmp/$name.out" >&2 || true
        echo "--- stderr (last 20 lines)" >&2
        tail -n 20 "$tmp/$name.err" >&2 || true
        exit 1
    fi
}

# ---------------------------------------------------------------------------------------------
# The input set

big_count=4
big_bytes=$((size_mib * 1048576 * 7 / 32))
small_count=$((size_mib * 1000 / 1024))
log "generating the input set in $work/data: $big_count x $(calc %.1f "$big_bytes / 1048576") MiB" \
    "and $small_count x ~32 KiB, from /dev/urandom"
for ((i = 1; i <= big_count; i++)); do
    head -c "$big_bytes" /dev/urandom >"data/big/big-$i.bin"
done
exec 3</dev/urandom
for ((i = 0; i < small_count; i++)); do
    head -c $((32768 + (i * 7919) % 16385 - 8192)) <&3 >"$(printf 'data/small/s-%04d.bin' "$i")"
done
exec 3<&-
big_files=(data/big/*.bin)
small_files=(data/small/*.bin)
all_files=("${big_files[@]}" "${small_files[@]}")
total_bytes=$(du -b --apparent-size -c "${all_files[@]}" | tail -n 1 | cut -f 1)
big_total=$((big_count * big_bytes))
small_total=$((total_bytes - big_total))
mib() { calc %.1f "$1 / 1048576"; }

# ---------------------------------------------------------------------------------------------
# Warm-up: one untimed pass of each tool, which also checks that they agree.

log "warm-up (untimed): b3sum, hash_files; checking that their hashes agree"
"$b3sum" "${all_files[@]}" | sort -k 2 >"$tmp/b3sum.list"
"$hash_files" --list "$work" 'data/**' >"$tmp/hash_files.all"
grep -v '^files=' "$tmp/hash_files.all" | sort -k 2 >"$tmp/hash_files.list"
cmp -s "$tmp/b3sum.list" "$tmp/hash_files.list" \
    || die "b3sum and runner::fileset disagree: diff $tmp/b3sum.list $tmp/hash_files.list (use --keep)"
grep -q "^files=${#all_files[@]} bytes=$total_bytes " "$tmp/hash_files.all" \
    || die "hash_files did not count ${#all_files[@]} files, $total_bytes bytes: $(tail -n 1 "$tmp/hash_files.all")"

cat >"$tmp/hash.toml" <<'EOF'
[[steps]]
id = "hash"
run = "true"
inputs = ["data/**"]
cache = true
EOF
grep -v '^inputs' "$tmp/hash.toml" >"$tmp/base.toml"
runner_ok=0
if "$runner" validate "$tmp/hash.toml" >"$tmp/validate.out" 2>&1; then
    runner_ok=1
    "$runner" validate "$tmp/base.toml" >/dev/null 2>&1 || grep -v '^cache' "$tmp/hash.toml" | grep -v '^inputs' >"$tmp/base.toml"
else
    runner_why=$(grep -m 1 . "$tmp/validate.out" || echo "no message")
    log "runner does not support inputs yet: runner validate says: $runner_why"
fi

# run_flow FLOW NAME: one timed `runner run` of FLOW in a fresh runs dir (so no cache hit).
run_flow() {
    local runs=$tmp/runs-$2
    rm -rf "$runs"
    timed "$2" "$runner" -q --runs-dir "$runs" run "$tmp/$1.toml"
}
receipt_note=""
if ((runner_ok)); then
    run_flow base warm-base
    run_flow hash warm-hash
    # The receipt must name a hash that b3sum computed, or the runner did not hash the inputs.
    mapfile -t receipts < <(find "$tmp/runs-warm-hash" -name receipt.json)
    first_hash=$(head -n 1 "$tmp/b3sum.list" | cut -d ' ' -f 1)
    if ((${#receipts[@]} == 0)); then
        receipt_note="no receipt.json found under the run: cannot confirm that the inputs were hashed"
    elif ! grep -q "$first_hash" "${receipts[@]}"; then
        receipt_note="receipt.json does not contain b3sum's hash of $(head -n 1 "$tmp/b3sum.list" | cut -d ' ' -f 3)"
    fi
    [[ -z $receipt_note ]] || log "warning: $receipt_note"
fi

# ---------------------------------------------------------------------------------------------
# Timed reps, interleaved so that a slow moment of the machine hits every tool alike.

log "machine: $(nproc) CPUs, $(uname -sr), load average $(cut -d ' ' -f 1-3 /proc/loadavg); clock: $clock"
log "$reps reps; set: ${#all_files[@]} files, $(mib "$total_bytes") MiB"
b3_all=() b3_big=() b3_small=() fs_all=() fs_big=() fs_small=() fs_inner=() run_hash=() run_base=()
start_all=$SECONDS
for ((r = 1; r <= reps; r++)); do
    timed b3-all "$b3sum" "${all_files[@]}"
    b3_all+=("$elapsed_us")
    timed fs-all "$hash_files" "$work" 'data/**'
    fs_all+=("$elapsed_us")
    ms_inner=$(sed -n 's/.* elapsed_ms=\([0-9.]*\) .*/\1/p' "$tmp/fs-all.out")
    fs_inner+=("$(calc %.0f "$ms_inner * 1000")")
    timed b3-big "$b3sum" "${big_files[@]}"
    b3_big+=("$elapsed_us")
    timed fs-big "$hash_files" "$work" 'data/big/*'
    fs_big+=("$elapsed_us")
    timed b3-small "$b3sum" "${small_files[@]}"
    b3_small+=("$elapsed_us")
    timed fs-small "$hash_files" "$work" 'data/small/*'
    fs_small+=("$elapsed_us")
    line="rep $r: b3sum $(ms "${b3_all[-1]}") ms, hash_files $(ms "${fs_all[-1]}") ms"
    if ((runner_ok)); then
        run_flow base "base-$r"
        run_base+=("$elapsed_us")
        run_flow hash "hash-$r"
        run_hash+=("$elapsed_us")
        line+=", runner with inputs $(ms "${run_hash[-1]}") ms, without $(ms "${run_base[-1]}") ms"
    fi
    log "   $line"
done

# ---------------------------------------------------------------------------------------------
# Results

rate() { calc %.0f "$1 / 1048576 / ($2 / 1e6)"; } # BYTES MICROSECONDS -> MiB/s

rows=()
row() { rows+=("$(printf '%s\t' "$@")"); }
row "measurement (median of $reps, warm cache)" "time" "throughput" "vs b3sum (time ratio)"
add() { # LABEL BYTES MEDIAN_US B3SUM_MEDIAN_US
    local ratio="-"
    [[ -n ${4:-} ]] && ratio="$(calc %.2f "$3 / $4")x"
    row "$1" "$(ms "$3") ms" "$(rate "$2" "$3") MiB/s" "$ratio"
}
m_b3_all=$(median "${b3_all[@]}")
m_b3_big=$(median "${b3_big[@]}")
m_b3_small=$(median "${b3_small[@]}")
add "(a) b3sum: all ${#all_files[@]} files" "$total_bytes" "$m_b3_all"
add "(a) b3sum: $big_count large files" "$big_total" "$m_b3_big"
add "(a) b3sum: $small_count small files" "$small_total" "$m_b3_small"
add "(c) runner::fileset via examples/hash_files: all" "$total_bytes" "$(median "${fs_all[@]}")" "$m_b3_all"
add "(c) same, timed inside the process" "$total_bytes" "$(median "${fs_inner[@]}")" "$m_b3_all"
add "(c) runner::fileset: large files" "$big_total" "$(median "${fs_big[@]}")" "$m_b3_big"
add "(c) runner::fileset: small files" "$small_total" "$(median "${fs_small[@]}")" "$m_b3_small"
if ((runner_ok)); then
    m_hash=$(median "${run_hash[@]}")
    m_base=$(median "${run_base[@]}")
    row "(b) runner run, flow with inputs (raw)" "$(ms "$m_hash") ms" "-" "-"
    row "(b) runner run, same flow without inputs (raw)" "$(ms "$m_base") ms" "-" "-"
    diff_us=$(calc %.0f "$m_hash - $m_base")
    if ((diff_us > 0)); then
        add "(b) runner: difference = hashing the inputs" "$total_bytes" "$diff_us" "$m_b3_all"
    else
        row "(b) runner: difference = hashing the inputs" "$(ms "$diff_us") ms" "n/a (within noise)" "-"
    fi
else
    row "(b) runner run with inputs" "n/a" "runner does not support inputs yet" "-"
fi

echo
echo "hashing benchmark: ${#all_files[@]} files, $(mib "$total_bytes") MiB" \
    "($big_count x $(mib "$big_bytes") MiB + $small_count x ~32 KiB); $reps reps, medians;" \
    "warm-cache figures (the page cache is not dropped: that needs root)"
echo "b3sum: $b3sum ($("$b3sum" --version 2>/dev/null || echo '?')); $(nproc) CPUs;" \
    "load average now $(cut -d ' ' -f 1-3 /proc/loadavg); total bench time $((SECONDS - start_all)) s"
echo "raw (ms): b3sum [$(for v in "${b3_all[@]}"; do ms "$v"; echo -n ' '; done)]" \
    "hash_files [$(for v in "${fs_all[@]}"; do ms "$v"; echo -n ' '; done)]" \
    "$( ((runner_ok)) && echo "runner with inputs [$(for v in "${run_hash[@]}"; do ms "$v"; echo -n ' '; done)]" \
        "without [$(for v in "${run_base[@]}"; do ms "$v"; echo -n ' '; done)]")" | sed 's/ \]/]/g; s/ *$//'
((runner_ok)) || echo "(b) skipped: runner does not support inputs yet ($runner_why)"
[[ -z $receipt_note ]] || echo "(b) warning: $receipt_note"
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
