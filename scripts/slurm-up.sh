#!/usr/bin/env bash
# Part of runner's local Slurm test cluster (tests/integration/slurm.rs and .ci/run use it).
# slurm-up.sh — install (if needed) and start a single-node Slurm cluster on
# this machine, without systemd, then wait until the node is idle.
#
# Idempotent: safe to run again; daemons already started by this script are
# left alone. Exits 0 when `sinfo` shows the node idle and `srun true` works.
#
# Debian bookworm packages: slurmctld slurmd slurm-client munge (22.05.8).
# Daemons started here are recorded in $STATE_DIR/*.pid; slurm-down.sh stops
# exactly those PIDs and nothing else.
#
# Env knobs:
#   SLURM_UP_STATE_DIR   where recorded PIDs go      (default /run/slurm-local)
#   SLURM_UP_OVERSUB     jobs per core (FORCE:N)      (default 8; 0 = off)
#   SLURM_UP_TIMEOUT     seconds to wait for idle     (default 60)
#   SLURM_UP_SMOKE       1 = run `srun true` at end   (default 1)
set -euo pipefail

STATE_DIR=${SLURM_UP_STATE_DIR:-/run/slurm-local}
OVERSUB=${SLURM_UP_OVERSUB:-8}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
SMOKE=${SLURM_UP_SMOKE:-1}
CONF=/etc/slurm/slurm.conf
MARKER="# managed-by: slurm-up.sh"

log() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# ---------------------------------------------------------------- install
need_pkgs=()
for p in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
  # (no `| grep -q` here: with pipefail, SIGPIPE to apt-cache reads as failure)
  policy=$(apt-cache policy slurmctld 2>/dev/null || true)
  if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    log "apt-get update"
    apt-get "${apt_opts[@]}" update -qq
  fi
  log "installing: ${need_pkgs[*]}"
  # policy-rc.d (exit 101) stops postinst from starting the services (this
  # container ships one; add a temporary one if absent). We start them below.
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    tmp_policy=1
  fi
  rc=0
  apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null || rc=$?
  [ "$tmp_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || die "apt-get install failed (rc=$rc)"
fi

mkdir -p "$STATE_DIR"

# pid_alive PID NAME: true if PID runs and its comm is NAME (guards PID reuse)
pid_alive() {
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}
recorded_pid() { cat "$STATE_DIR/$1.pid" 2>/dev/null || true; }

# wait_pidfile FILE NAME SECONDS: wait until FILE names a live NAME process
wait_pidfile() {
  local f=$1 name=$2 t=$3 i pid
  for ((i = 0; i < t * 10; i++)); do
    pid=$(cat "$f" 2>/dev/null || true)
    if pid_alive "$pid" "$name"; then echo "$pid"; return 0; fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "generating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if pid_alive "$(recorded_pid munged)" munged && munge_ok; then
  log "munged already running (pid $(recorded_pid munged), ours)"
elif munge_ok; then
  log "a munged not started by us is already serving; using it"
else
  rm -f /run/munge/munged.pid
  log "starting munged"
  # setpriv execs munged directly as user munge; munged daemonizes itself.
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged
  pid=$(wait_pidfile /run/munge/munged.pid munged 10) || die "munged did not start; see /var/log/munge/munged.log"
  echo "$pid" >"$STATE_DIR/munged.pid"
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munge credential round-trip failed"
fi

# ---------------------------------------------------------------- config
NODE=$(hostname -s)
# Real hardware line from slurmd, e.g.
# NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')
[ -n "$HW" ] || die "slurmd -C gave no hardware line"
PART_EXTRA=""
[ "$OVERSUB" != 0 ] && PART_EXTRA=" OverSubscribe=FORCE:$OVERSUB"

new_conf=$(cat <<EOF
$MARKER
# Single-node test cluster: no systemd, no cgroups, no accounting database.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Without slurmdbd, sacct does not work; finished jobs are appended here:
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
SchedulerType=sched/backfill
# Default batch_sched_delay=3 makes every sbatch job wait ~3 s to start.
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for this many seconds.
MinJobAge=300
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP$PART_EXTRA
EOF
)

conf_changed=0
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  bak="$CONF.bak.$(date +%s)"
  log "existing $CONF was not written by us; moving it to $bak"
  mv "$CONF" "$bak"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  mkdir -p /etc/slurm
  printf '%s\n' "$new_conf" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  chmod 0644 "$CONF"
  conf_changed=1
  log "wrote $CONF"
fi

install -d -o slurm -g slurm -m 0755 /run/slurm /var/log/slurm /var/spool/slurmctld
install -d -o root -g root -m 0755 /var/spool/slurmd

# ---------------------------------------------------------------- daemons
start_daemon() { # name binary pidfile
  local name=$1 bin=$2 pidfile=$3 pid
  pid=$(recorded_pid "$name")
  if pid_alive "$pid" "$name"; then
    log "$name already running (pid $pid, ours)"
    return 0
  fi
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if pid_alive "$pid" "$name"; then
    log "$name already running (pid $pid, not started by us); leaving it"
    return 0
  fi
  rm -f "$pidfile"
  log "starting $name"
  "$bin" || die "$name failed to start; see /var/log/slurm/$name.log"
  pid=$(wait_pidfile "$pidfile" "$name" 15) || die "$name did not write $pidfile; see /var/log/slurm/$name.log"
  echo "$pid" >"$STATE_DIR/$name.pid"
}

start_daemon slurmctld /usr/sbin/slurmctld /run/slurm/slurmctld.pid
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
scontrol ping | grep -q 'is UP' || die "slurmctld not answering; see /var/log/slurm/slurmctld.log"
if [ "$conf_changed" = 1 ]; then scontrol reconfigure >/dev/null 2>&1 || true; fi
start_daemon slurmd /usr/sbin/slurmd /run/slurm/slurmd.pid

# ---------------------------------------------------------------- wait idle
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
  case "$state" in
    idle) break ;;
    mixed | allocated | completing)
      log "node is $state (jobs from an earlier run are still there)"; break ;;
    drain* | down* | fail*)
      if [ "$resumed" = 0 ]; then
        log "node is $state; resuming it"
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        resumed=1
      fi ;;
  esac
  [ "$SECONDS" -lt "$deadline" ] || die "node '$NODE' not idle after ${TIMEOUT}s (state: ${state:-none}); see /var/log/slurm/"
  sleep 0.2
done

if [ "$SMOKE" = 1 ]; then
  (cd / && timeout 60 srun --quiet -t 1 true) || die "smoke test 'srun true' failed"
fi
log "cluster up: node $NODE is ${state}; partition debug; PIDs in $STATE_DIR"
sinfo
