# Helpers shared by scripts/bench.sh and scripts/bench-peers.sh. Source it after defining
# die(); call rss_setup once $tmp (a scratch directory) exists.

positive() { [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '${2:-}'"; }

# stamp: sets $now_us to the wall clock in microseconds, without a fork when bash has
# EPOCHREALTIME. $clock names the method.
if [[ -n ${EPOCHREALTIME:-} ]]; then
    clock="bash \$EPOCHREALTIME"
    stamp() {
        local t=${EPOCHREALTIME/[.,]/}
        now_us=$((10#$t))
    }
else
    date +%s%N | grep -Eq '^[0-9]+$' || die "neither \$EPOCHREALTIME (bash >= 5) nor GNU date +%s%N is available"
    clock="date +%s%N"
    stamp() {
        local t
        t=$(date +%s%N)
        now_us=$((t / 1000))
    }
fi

# median VALUES...: the middle value (mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# check_runner_run RUNS_DIR ID STEPS: a run of STEPS trivial steps has 2*STEPS+2 events
# (start, then a start and a success per step, then the finish) and ended succeeded.
# Otherwise returns 1 with the reason in $why.
check_runner_run() {
    local journal=$1/$2/journal.jsonl lines
    [[ -f $journal ]] || { why="no journal at $journal"; return 1; }
    lines=$(wc -l <"$journal")
    ((lines == 2 * $3 + 2)) || { why="$journal has $lines events, expected $((2 * $3 + 2))"; return 1; }
    tail -n 1 "$journal" | grep -q '"type":"RunFinished","data":{"outcome":"succeeded"' \
        || { why="run $2 did not finish with outcome succeeded"; return 1; }
}
ms() { calc %.1f "$1 / 1000"; }

# rss_setup: afterwards "${rss_prefix[@]}" FILE CMD... runs CMD and writes its peak RSS
# (KiB) to FILE, with GNU time if present, else python3's getrusage(RUSAGE_CHILDREN); both
# read the kernel's ru_maxrss of the waited-for child. Empty when neither exists;
# $rss_method says which.
rss_setup() {
    if [[ -x /usr/bin/time ]] && /usr/bin/time -f %M -o "$tmp/rss-probe" true 2>/dev/null \
        && [[ $(tail -n 1 "$tmp/rss-probe") =~ ^[0-9]+$ ]]; then
        rss_method="/usr/bin/time -f %M"
        rss_prefix=(/usr/bin/time -f %M -o)
    elif command -v python3 >/dev/null; then
        rss_method="python3 getrusage(RUSAGE_CHILDREN)"
        cat >"$tmp/maxrss.py" <<'PY'
import resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write("%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(status if status >= 0 else 128 - status)
PY
        rss_prefix=(python3 "$tmp/maxrss.py")
    else
        rss_method="none (n/a)"
        rss_prefix=()
    fi
}

# release_build EXAMPLE: sets $root, $target_dir, $runner and $example (the example's
# binary), building the release binaries first when $build is 1, and dies if one is missing.
release_build() {
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir = /* ]] || target_dir=$root/$target_dir
    runner=$target_dir/release/runner
    example=$target_dir/release/examples/$1
    if ((build)); then
        log "building (cargo build --release, with the $1 example)"
        (cd "$root" && cargo build --release --quiet --lib --bins --example "$1") || die "cargo build failed"
    fi
    [[ -x $runner ]] || die "$runner is missing (build it, or drop --no-build)"
    [[ -x $example ]] || die "$example is missing (build it, or drop --no-build)"
}
