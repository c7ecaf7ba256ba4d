#!/usr/bin/env bash
# Run the same training command on every worker of a Cloud TPU pod slice (v4-32, v5e-64, ...).
#
#   launch/tpu_pod.sh --name my-v4-32 --zone us-central2-b [--project P] [--repo ~/searche1_jax] \
#       [--dry-run] -- --config=configs/qwen3b.py --workdir=gs://bucket/run1 --config.model.checkpoint=...
#
# Every worker runs `python -m searche1_jax.main --coordinator=auto ARGS`: jax.distributed
# discovers the slice's hosts itself on TPU. The repo, its .venv, the checkpoint and the
# retrieval index must exist at the same paths on all workers (a shared disk or a bucket).
# --dry-run (or DRY_RUN=1) prints the gcloud command instead of running it.
set -euo pipefail

# shellcheck disable=SC2088  # the ~ is expanded by the remote worker's shell, not here
NAME="" ZONE="" PROJECT="" REPO='~/searche1_jax' PYTHON=".venv/bin/python" DRY_RUN="${DRY_RUN:-0}"
usage() { sed -n '2,12p' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --repo) REPO="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (training flags go after --)" >&2; usage 2 ;;
  esac
done
if [[ -z "$NAME" || -z "$ZONE" ]]; then
  echo "tpu_pod.sh: --name and --zone are required" >&2; usage 2
fi

# The remote command: one string, each training argument shell-quoted.
remote="cd $REPO && $PYTHON -m searche1_jax.main --coordinator=auto"
for arg in "$@"; do remote+=" $(printf '%q' "$arg")"; done

cmd=(gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$remote")
[[ -n "$PROJECT" ]] && cmd+=(--project "$PROJECT")

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
