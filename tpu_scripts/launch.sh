#!/usr/bin/env bash
# Run `python -m e1jax ...` on every worker of the TPU at once, with logs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags] [--] E1JAX_COMMAND [ARGS...]
  e.g. $SCRIPT_NAME --tpu-name my-v4 -- train --config configs/e1_math_1.5b_1k_1k.yaml

Flags come first; everything from the e1jax command on (or after --) is passed
to e1jax unchanged.

Starts 'python -m e1jax E1JAX_COMMAND ARGS' on all workers (--worker, default
all) at once, from ~/e1jax with ~/e1jax-venv (see setup.sh). JAX finds the
other workers of a pod slice by itself. Each worker writes its output to
~/e1jax-runs/RUN/worker-W.log; with a bucket the logs are also copied to
BUCKET/logs/RUN/ (every --sync-every seconds and at the end).

In the foreground (default) the workers' output streams here, each line
prefixed with [wW], and is saved to \$E1JAX_LOG_DIR/RUN/launch.log (default
tpu_logs/RUN/), then split into worker-W.log there. The script returns when all
workers are done, with gcloud's exit status (non-zero when a worker failed).
A dropped ssh connection stops the run: use --detach for long runs, then
logs.sh, status.sh and stop.sh.

Flags:
  --run-name NAME     E1JAX_RUN_NAME   run name (default e1jax-YYYYmmdd-HHMMSS)
  --detach                             start in the background on the workers and return
  --env NAME=VALUE                     environment variable for the run (repeatable; a
                                       leading ~/ in VALUE is the worker's home folder)
  --sync-every N                       seconds between log copies to the bucket (default 300)
EOF
  common_usage
}

RUN_NAME=${E1JAX_RUN_NAME:-}
DETACH=0
ENVS=()
SYNC_SECONDS=300

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --detach)
      DETACH=1
      FLAG_SHIFT=1
      ;;
    --run-name | --env | --sync-every)
      need_value "$@"
      case $1 in
        --run-name) RUN_NAME=$2 ;;
        --env) ENVS+=("$2") ;;
        --sync-every) SYNC_SECONDS=$2 ;;
      esac
      FLAG_SHIFT=2
      ;;
    *) return 1 ;;
  esac
}

COMMAND_STARTS_AT_FIRST_WORD=1
parse_flags "$@"
((${#PASSTHROUGH[@]})) || die "missing e1jax command: $SCRIPT_NAME [flags] -- train --config FILE"
require_tpu_name
require_gcloud
RUN_NAME=${RUN_NAME:-e1jax-$(date +%Y%m%d-%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "run name '$RUN_NAME' may only hold letters, digits, . _ -"
[[ $SYNC_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--sync-every must be a positive integer, got '$SYNC_SECONDS'"
for assignment in "${ENVS[@]}"; do
  [[ $assignment =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs NAME=VALUE, got '$assignment'"
done

remote_args=(--run-name "$RUN_NAME" --repo-dir "$REMOTE_DIR" --venv "$REMOTE_VENV" --sync-every "$SYNC_SECONDS")
[[ -n $BUCKET ]] && remote_args+=(--gcs-logs "$BUCKET/logs")
for assignment in "${ENVS[@]}"; do
  remote_args+=(--env "$assignment")
done
((DETACH)) && remote_args+=(--detach)
remote=$(remote_run_command "${remote_args[@]}" -- "${PASSTHROUGH[@]}")

if ((DETACH)); then
  tpu_ssh "$remote"
  note "run $RUN_NAME started; follow it with: logs.sh --run-name $RUN_NAME --tail 50"
  exit 0
fi

local_logs=$LOG_DIR/$RUN_NAME
run mkdir -p "$local_logs"
ssh_command "$remote"
status=0
run_tee "$local_logs/launch.log" "${SSH_COMMAND[@]}" || status=$?
split_worker_logs "$local_logs/launch.log" "$local_logs"
if [[ $DRY_RUN == 0 ]]; then
  note "run $RUN_NAME finished with status $status; logs in $local_logs${BUCKET:+ and $BUCKET/logs/$RUN_NAME}"
fi
exit "$status"
