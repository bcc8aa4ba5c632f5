#!/usr/bin/env bash
# Stop e1jax runs on the TPU workers (and, with --vm, the TPU VM itself).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags]

Stop the e1jax runs started by launch.sh on every worker (--worker): SIGTERM,
then SIGKILL after 30 s. Only the processes recorded in ~/e1jax-runs/RUN/*.pid
are touched.

Flags:
  --run-name NAME     only this run (default: every run)
  --vm                then stop the TPU VM (single-host TPUs only; restart it with
                      gcloud compute tpus tpu-vm start). Pod slices cannot be
                      stopped: delete them with delete.sh.
EOF
  common_usage
}

RUN_NAME=""
VM=0

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --vm)
      VM=1
      FLAG_SHIFT=1
      ;;
    --run-name)
      need_value "$@"
      RUN_NAME=$2
      FLAG_SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
no_positional
require_tpu_name
require_gcloud
stop_args=(--stop)
[[ -n $RUN_NAME ]] && stop_args+=(--run-name "$RUN_NAME")
tpu_ssh "$(remote_run_command "${stop_args[@]}")"
if ((VM)); then
  location_flags
  run gcloud compute tpus tpu-vm stop "$TPU_NAME" "${LOCATION_FLAGS[@]}"
fi
