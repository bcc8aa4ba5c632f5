#!/usr/bin/env bash
# Create a TPU VM or pod slice, directly or as a queued resource.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags] [-- extra gcloud flags]

Create the TPU named by --tpu-name with the accelerator type and runtime.
Plain:   gcloud compute tpus tpu-vm create NAME --accelerator-type=... --version=...
Queued:  gcloud compute tpus queued-resources create NAME --node-id=NAME
         --accelerator-type=... --runtime-version=...   (with --queued)
Queued resources wait in line for capacity instead of failing: use them for
spot capacity and for large slices (v4-128+, v5p-128+). The queued resource
and its node share the TPU name; give --queued (or E1JAX_QUEUED=1) to
status.sh and delete.sh too.

Flags:
  --spot               spot (preemptible) capacity
  --reserved           use the project's reservation
  --guaranteed         queued only: schedule at the guaranteed tier
  --valid-until D      queued only: give up if not provisioned within D (e.g. 6h)
  --wait               queued only: poll until the TPU is ACTIVE
  --poll-seconds N     polling interval for --wait (default 60)
  --async              return without waiting for the operation
Anything after -- is passed to gcloud (e.g. -- --network=my-net --internal-ips).
EOF
  common_usage
}

SPOT=0
RESERVED=0
GUARANTEED=0
VALID_UNTIL=""
WAIT=0
POLL_SECONDS=60
ASYNC=0

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --spot) SPOT=1 ;;
    --reserved) RESERVED=1 ;;
    --guaranteed) GUARANTEED=1 ;;
    --wait) WAIT=1 ;;
    --async) ASYNC=1 ;;
    --valid-until)
      need_value "$@"
      VALID_UNTIL=$2
      FLAG_SHIFT=2
      return 0
      ;;
    --poll-seconds)
      need_value "$@"
      POLL_SECONDS=$2
      FLAG_SHIFT=2
      return 0
      ;;
    *) return 1 ;;
  esac
  FLAG_SHIFT=1
}

parse_flags "$@"
no_positional
require_tpu_name
require_gcloud
((SPOT + RESERVED + GUARANTEED <= 1)) || die "choose at most one of --spot, --reserved, --guaranteed"
[[ $POLL_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--poll-seconds must be a positive integer, got '$POLL_SECONDS'"
if [[ $QUEUED == 0 ]]; then
  ((GUARANTEED == 0)) || die "--guaranteed needs --queued"
  [[ -z $VALID_UNTIL ]] || die "--valid-until needs --queued"
  ((WAIT == 0)) || die "--wait needs --queued (a plain create already waits unless --async)"
  chips=${ACCELERATOR##*-}
  if ((SPOT)) || ((chips >= 128)); then
    note "hint: --queued is recommended for spot capacity and large slices"
  fi
fi

location_flags
capacity=()
((SPOT)) && capacity+=(--spot)
((RESERVED)) && capacity+=(--reserved)
((GUARANTEED)) && capacity+=(--guaranteed)
extra=()
((ASYNC)) && extra+=(--async)

if [[ $QUEUED == 1 ]]; then
  [[ -n $VALID_UNTIL ]] && extra+=(--valid-until-duration="$VALID_UNTIL")
  run gcloud compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" "${LOCATION_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
    "${capacity[@]}" "${extra[@]}" "${PASSTHROUGH[@]}"
  if ((WAIT)); then
    describe=(gcloud compute tpus queued-resources describe "$TPU_NAME" "${LOCATION_FLAGS[@]}" --format='value(state.state)')
    if [[ $DRY_RUN == 1 ]]; then
      run "${describe[@]}"
    else
      while true; do
        state=$("${describe[@]}")
        note "queued resource $TPU_NAME: $state"
        case $state in
          ACTIVE) break ;;
          FAILED | SUSPENDED) die "queued resource $TPU_NAME is $state (see status.sh --queued)" ;;
        esac
        sleep "$POLL_SECONDS"
      done
    fi
  fi
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME" \
    "${capacity[@]}" "${extra[@]}" "${PASSTHROUGH[@]}"
fi
