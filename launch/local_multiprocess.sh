#!/usr/bin/env bash
# N local CPU processes joined by jax.distributed on localhost: multi-host code paths on a laptop.
#
#   launch/local_multiprocess.sh [-n 2] [-d 4] [--port 12355] [--logdir runs/mp_logs] [--dry-run] \
#       -- --config=configs/tiny.py --workdir=runs/tiny_mp
#
# Process i runs `python -m searche1_jax.main --coordinator=localhost:PORT --num_processes=N
# --process_id=i ARGS` with JAX_PLATFORMS=cpu and -d fake CPU devices (N x d global devices).
# Logs: LOGDIR/process_i.log. Exits non-zero if any process fails.
# --dry-run (or DRY_RUN=1) prints the N commands instead of running them.
set -euo pipefail

N=2 DEVICES=4 PORT=12355 LOGDIR="runs/mp_logs" PYTHON="${PYTHON:-.venv/bin/python}" DRY_RUN="${DRY_RUN:-0}"
usage() { sed -n '2,10p' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num_processes) N="$2"; shift 2 ;;
    -d|--devices_per_process) DEVICES="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --logdir) LOGDIR="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local_multiprocess.sh: unknown option $1 (training flags go after --)" >&2; usage 2 ;;
  esac
done

command_for() {  # the command of process $1, as one shell-quoted line
  local line
  line="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES"
  line+=" $(printf '%q' "$PYTHON") -m searche1_jax.main --coordinator=localhost:$PORT"
  line+=" --num_processes=$N --process_id=$1"
  for arg in "${@:2}"; do line+=" $(printf '%q' "$arg")"; done
  echo "$line"
}

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < N; i++)); do command_for "$i" "$@"; done
  exit 0
fi

mkdir -p "$LOGDIR"
pids=()
# shellcheck disable=SC2154  # p is the trap body's own loop variable
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' INT TERM
for ((i = 0; i < N; i++)); do
  bash -c "$(command_for "$i" "$@")" >"$LOGDIR/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; see $LOGDIR/process_$i.log" >&2; status=1
  fi
done
exit "$status"
