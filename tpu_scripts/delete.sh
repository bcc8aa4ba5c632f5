#!/usr/bin/env bash
# Delete the TPU VM, or the queued resource and its TPU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags]

Delete the TPU. With --queued (or E1JAX_QUEUED=1), delete the queued resource
of that name together with its TPU (--force). Files on the workers are lost:
keep checkpoints and logs in the bucket.

Flags:
  --yes               do not ask for confirmation (gcloud --quiet)
  --async             return without waiting for the deletion
EOF
  common_usage
}

YES=0
ASYNC=0

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --yes) YES=1 ;;
    --async) ASYNC=1 ;;
    *) return 1 ;;
  esac
  FLAG_SHIFT=1
}

parse_flags "$@"
no_positional
require_tpu_name
require_gcloud
location_flags
extra=()
((ASYNC)) && extra+=(--async)
((YES)) && extra+=(--quiet)
if [[ $QUEUED == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$TPU_NAME" "${LOCATION_FLAGS[@]}" --force "${extra[@]}"
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION_FLAGS[@]}" "${extra[@]}"
fi
