#!/usr/bin/env bash
# The SIGKILL soak at full size: kill the runner at random moments over many runs, resume
# like a cron line would, and check that nothing acknowledged is lost or done twice
# (see tests/integration/chaos.rs for exactly what is checked). CI runs the same test
# with 50 kills.
#
#   scripts/chaos.sh [--cycles N] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=500 seed=""
while (($#)); do
    case $1 in
    --cycles) cycles=${2:?--cycles needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[[ $cycles =~ ^[1-9][0-9]*$ ]] || { echo "chaos: --cycles needs a positive number" >&2; exit 2; }

export RUNNER_CHAOS_CYCLES=$cycles
[[ -n $seed ]] && export RUNNER_CHAOS_SEED=$seed
exec cargo test --release --test integration chaos::sigkill_soak_loses_nothing_and_repeats_nothing -- --exact --nocapture
