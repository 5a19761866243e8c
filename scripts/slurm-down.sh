#!/usr/bin/env bash
# Part of runner's local Slurm test cluster (tests/integration/slurm.rs and .ci/run use it).
# slurm-down.sh — stop the Slurm/munge daemons that slurm-up.sh started.
# Only PIDs recorded in $STATE_DIR are signalled, and only if the process
# still has the expected name (no pkill/killall, no PID-reuse accidents).
# Jobs still queued or running are cancelled first (scancel), so no
# slurmstepd is left behind. State in /var/spool/slurmctld is kept.
#
# Env: SLURM_UP_STATE_DIR (default /run/slurm-local)
#      SLURM_DOWN_KEEP_JOBS=1 to skip cancelling jobs
set -uo pipefail

STATE_DIR=${SLURM_UP_STATE_DIR:-/run/slurm-local}
log() { printf '[slurm-down %s] %s\n' "$(date +%T)" "$*" >&2; }

pid_alive() {
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

stop_recorded() { # name
  local name=$1 f="$STATE_DIR/$1.pid" pid i
  [ -f "$f" ] || { log "$name: no recorded pid, nothing to stop"; return 0; }
  pid=$(cat "$f")
  if ! pid_alive "$pid" "$name"; then
    log "$name: recorded pid $pid is not running"
    rm -f "$f"; return 0
  fi
  log "$name: SIGTERM to pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do pid_alive "$pid" "$name" || break; sleep 0.1; done
  if pid_alive "$pid" "$name"; then
    log "$name: still alive after 15s, SIGKILL to pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" "$name" || break; sleep 0.1; done
  fi
  rm -f "$f"
}

ours() { pid_alive "$(cat "$STATE_DIR/$1.pid" 2>/dev/null)" "$1"; }

# Cancel jobs while the controller is still up, so their slurmstepd exit.
if [ "${SLURM_DOWN_KEEP_JOBS:-0}" != 1 ] && ours slurmctld && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do
      [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.2
    done
  fi
fi

stop_recorded slurmd
stop_recorded slurmctld
stop_recorded munged
log "done"
exit 0
