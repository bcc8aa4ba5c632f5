#!/usr/bin/env bash
# Show the TPU (or queued resource) and, with --runs, the e1jax runs on its workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags]

Describe the TPU (with --queued: the queued resource, whose state shows
whether capacity was granted), or list all TPUs in the zone.

Flags:
  --list              list the TPU VMs (with --queued also the queued resources) in the zone
  --runs              show each worker's e1jax runs (running / exit status, last log line)
  --run-name NAME     with --runs: only this run
EOF
  common_usage
}

LIST=0
RUNS=0
RUN_NAME=""

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --list) LIST=1 ;;
    --runs) RUNS=1 ;;
    --run-name)
      need_value "$@"
      RUN_NAME=$2
      FLAG_SHIFT=2
      return 0
      ;;
    *) return 1 ;;
  esac
  FLAG_SHIFT=1
}

parse_flags "$@"
no_positional
require_gcloud
location_flags

if ((LIST)); then
  run gcloud compute tpus tpu-vm list "${LOCATION_FLAGS[@]}"
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources list "${LOCATION_FLAGS[@]}"
  fi
else
  require_tpu_name
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION_FLAGS[@]}"
  else
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOCATION_FLAGS[@]}" \
      --format='yaml(name,acceleratorType,runtimeVersion,state,health,schedulingConfig,networkEndpoints[].ipAddress)'
  fi
fi
if ((RUNS)); then
  require_tpu_name
  status_args=(--status)
  [[ -n $RUN_NAME ]] && status_args+=(--run-name "$RUN_NAME")
  tpu_ssh "$(remote_run_command "${status_args[@]}")"
fi
