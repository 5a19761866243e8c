#!/usr/bin/env bash
# Part of runner's local Slurm test cluster (tests/integration/slurm.rs and .ci/run use it).
# slurm-check.sh — exercise the Slurm CLI contract a batch runner relies on,
# against the cluster started by slurm-up.sh. Exits non-zero on the first
# failed check. Takes about 10 s.
set -euo pipefail
W=$(mktemp -d /tmp/slurm-check.XXXXXX)
trap 'rm -rf "$W"' EXIT
cd "$W"
ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

# terminal state of one job, "" while it is pending/running
state() { squeue -h -t all -j "$1" -o '%T' 2>/dev/null || true; }
wait_done() { # jobid timeout_s
  local s i
  for ((i = 0; i < $2 * 10; i++)); do
    s=$(state "$1")
    case "$s" in PENDING | RUNNING | CONFIGURING | COMPLETING | "") ;; *) echo "$s"; return 0 ;; esac
    sleep 0.1
  done
  return 1
}

sinfo -h -o '%T' | grep -qx idle || fail "sinfo: node not idle"; ok "sinfo shows idle node"
[ "$(srun -t 1 hostname)" = "$(hostname)" ] || fail "srun hostname"; ok "srun hostname"

sbatch -Q --wait -o "$W/hi.out" --wrap 'echo hi' || fail "sbatch --wait"
grep -qx hi "$W/hi.out" || fail "sbatch --wait output"
ok "sbatch --wait --wrap 'echo hi'"

rc=0; sbatch -Q --wait -o /dev/null --wrap 'exit 7' || rc=$?
[ "$rc" = 7 ] || fail "sbatch --wait exit code $rc != 7"; ok "sbatch --wait propagates exit code 7"

# --parsable + polling; exit code via our own file AND via scontrol
j=$(sbatch --parsable -o "$W/j.out" --wrap "sleep 1; echo 3 > $W/j.rc; exit 3")
[[ "$j" =~ ^[0-9]+$ ]] || fail "sbatch --parsable gave '$j'"
s=$(wait_done "$j" 30) || fail "job $j did not finish"
[ "$s" = FAILED ] || fail "job $j state $s != FAILED"
[ "$(cat "$W/j.rc")" = 3 ] || fail "exit-code file"
scontrol -o show job "$j" | grep -q 'ExitCode=3:0' || fail "scontrol ExitCode"
ok "sbatch --parsable ($j) -> squeue FAILED, scontrol ExitCode=3:0, rc file 3"

# scancel a running job
j=$(sbatch --parsable -o /dev/null --wrap 'sleep 300')
for _ in $(seq 50); do [ "$(state "$j")" = RUNNING ] && break; sleep 0.1; done
[ "$(state "$j")" = RUNNING ] || fail "job $j never RUNNING"
scancel "$j"
s=$(wait_done "$j" 30) || fail "cancelled job $j did not end"
[ "$s" = CANCELLED ] || fail "job $j state $s != CANCELLED"
ok "scancel $j -> CANCELLED"

# accounting: expected to be unavailable without slurmdbd
if sacct -n -j "$j" >/dev/null 2>&1; then ok "sacct works"; else ok "sacct unavailable (no slurmdbd), as expected"; fi
echo "all checks passed"
