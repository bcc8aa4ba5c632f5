#!/usr/bin/env bash
# Fetch or show the logs of a run on the TPU workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --run-name NAME [flags]

Fetch each worker's log of run NAME to \$E1JAX_LOG_DIR/NAME/ (default
tpu_logs/NAME/), or print the last lines with --tail.

Flags:
  --run-name NAME     E1JAX_RUN_NAME   the run (as given to or printed by launch.sh)
  --from SOURCE       bucket: copy BUCKET/logs/NAME/ (worker-W.log, worker-W.exit);
                      workers: read ~/e1jax-runs/NAME/worker-W.log from every worker
                      over ssh (default: bucket when a bucket is set, else workers)
  --tail N            print the last N lines of each worker's log (prefixed [wW])
                      instead of fetching
EOF
  common_usage
}

RUN_NAME=${E1JAX_RUN_NAME:-}
SOURCE=""
TAIL=""

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --run-name | --from | --tail) need_value "$@" ;;
    *) return 1 ;;
  esac
  case $1 in
    --run-name) RUN_NAME=$2 ;;
    --from) SOURCE=$2 ;;
    --tail) TAIL=$2 ;;
  esac
  FLAG_SHIFT=2
}

parse_flags "$@"
no_positional
[[ -n $RUN_NAME ]] || die "missing run name: pass --run-name NAME or set E1JAX_RUN_NAME"
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "run name '$RUN_NAME' may only hold letters, digits, . _ -"
require_gcloud

if [[ -n $TAIL ]]; then
  [[ $TAIL =~ ^[1-9][0-9]*$ ]] || die "--tail must be a positive integer, got '$TAIL'"
  require_tpu_name
  tpu_ssh "$(remote_run_command --print-log --run-name "$RUN_NAME" --tail "$TAIL")"
  exit 0
fi

if [[ -z $SOURCE ]]; then
  if [[ -n $BUCKET ]]; then SOURCE=bucket; else SOURCE=workers; fi
fi
local_logs=$LOG_DIR/$RUN_NAME
case $SOURCE in
  bucket)
    require_bucket
    run mkdir -p "$local_logs"
    run gcloud storage rsync --recursive "$BUCKET/logs/$RUN_NAME" "$local_logs"
    ;;
  workers)
    require_tpu_name
    run mkdir -p "$local_logs"
    ssh_command "$(remote_run_command --print-log --run-name "$RUN_NAME")"
    run_to "$local_logs/fetched.log" "${SSH_COMMAND[@]}"
    split_worker_logs "$local_logs/fetched.log" "$local_logs"
    ;;
  *) die "--from must be bucket or workers, got '$SOURCE'" ;;
esac
note "logs of $RUN_NAME in $local_logs"
