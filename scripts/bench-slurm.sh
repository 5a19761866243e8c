#!/usr/bin/env bash
# What driving Slurm through runner costs, with medians over reps, for N independent
# trivial steps (`true`) on the cluster:
#
#   runner  `runner run` of a flow with N Slurm steps, wall clock, and how many `squeue`
#           calls it made
#   shell   the script people write today: `sbatch --parsable` N times, then `squeue`
#           every second until none of the jobs is left queued or running
#   held    the same script with runner's write-ahead: submitted with --hold, released
#           in one `scontrol release` (what the hold itself costs on this cluster)
#
# Needs a cluster (scripts/slurm-up.sh starts a single-node one, as root).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-slurm.sh [--steps N] [--reps N] [--no-build]

  --steps N    Slurm steps (jobs) per run (default 200)
  --reps N     timed repetitions of each (default 5)
  --no-build   use the release binary already in target/release
  -h, --help   this help
EOF
}

die() {
    echo "bench-slurm: error: $*" >&2
    exit 1
}

steps=200 reps=5 build=1
# shellcheck source=scripts/lib/bench-common.sh
source "$(dirname "$0")/lib/bench-common.sh"
while (($#)); do
    case $1 in
    --steps) positive --steps "${2:-}"; steps=$2; shift 2 ;;
    --reps) positive --reps "${2:-}"; reps=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done
command -v sbatch >/dev/null || die "no Slurm client on PATH (as root: scripts/slurm-up.sh)"
sinfo -h -o %T | grep -Eq 'idle|mixed' || die "the cluster has no idle node (sinfo: $(sinfo -h -o %T | head -1))"
cd "$(dirname "$0")/.."
((build)) && cargo build --release --quiet
runner=$PWD/target/release/runner
[[ -x $runner ]] || die "no $runner (drop --no-build)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

{
    printf '[defaults]\nexecutor = "slurm"\n[slurm]\nmax_jobs = %d\n' "$steps"
    for ((i = 0; i < steps; i++)); do
        printf '[[steps]]\nid = "s%d"\nneeds = []\nrun = "true"\n' "$i"
    done
} >wide.toml
# Counts the squeue calls runner makes.
mkdir shim
real=$(command -v squeue)
printf '#!/bin/sh\necho x >>%s/squeue.calls\nexec %s "$@"\n' "$tmp" "$real" >shim/squeue
chmod +x shim/squeue

runner_ms=() shell_ms=() held_ms=() calls=()
# shell_run [--hold]: the script, timed into $now_us - $t0.
shell_run() {
    local ids=() i list
    stamp; t0=$now_us
    for ((i = 0; i < steps; i++)); do
        ids+=("$(sbatch --parsable "$@" -o /dev/null --wrap true)")
    done
    list=$(IFS=,; echo "${ids[*]}")
    [[ ${1:-} == --hold ]] && scontrol release "$list"
    while squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -j "$list" 2>/dev/null | grep -q .; do
        sleep 1
    done
    stamp
}
for ((r = 1; r <= reps; r++)); do
    rm -rf runs squeue.calls
    stamp; t0=$now_us
    PATH=$tmp/shim:$PATH "$runner" run wide.toml --run-id "b$r" --quiet >/dev/null ||
        die "runner run failed (runs kept in $tmp)"
    stamp; runner_ms+=($(((now_us - t0) / 1000)))
    calls+=("$(wc -l <squeue.calls)")

    shell_run; shell_ms+=($(((now_us - t0) / 1000)))
    shell_run --hold; held_ms+=($(((now_us - t0) / 1000)))
done

echo "bench-slurm: $steps trivial Slurm jobs, $reps reps, medians ($clock)"
printf '  runner run     %8s ms   (%s squeue calls)\n' "$(median "${runner_ms[@]}")" "$(median "${calls[@]}")"
printf '  shell script   %8s ms   (sbatch loop, squeue every 1 s)\n' "$(median "${shell_ms[@]}")"
printf '  shell, held    %8s ms   (the same, submitted held, then released)\n' "$(median "${held_ms[@]}")"
