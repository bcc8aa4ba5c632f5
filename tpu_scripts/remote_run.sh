#!/usr/bin/env bash
# Worker side of launch.sh, stop.sh and status.sh: runs on each TPU worker.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --run-name NAME [flags] -- E1JAX_COMMAND [ARGS...]
       $SCRIPT_NAME --status [--run-name NAME] [--log-dir DIR]
       $SCRIPT_NAME --stop [--run-name NAME] [--log-dir DIR]
       $SCRIPT_NAME --print-log --run-name NAME [--tail N] [--log-dir DIR]

Runs on a TPU worker (launch.sh calls it through ssh --worker=all):
'python -m e1jax E1JAX_COMMAND ARGS' from the e1jax checkout with its virtual
environment. Output goes to DIR/NAME/worker-W.log (W: the worker number from
the TPU metadata); the exit status to worker-W.exit; while it runs, its pid is
in worker-W.pid. With --gcs-logs the log and exit files are copied to
URL/NAME/ every --sync-every seconds and at the end. In the foreground the
output is also printed, each line prefixed with "[wW] " so that the output of
all workers, as gcloud ssh --worker=all shows it, can be split apart again.

Flags:
  --run-name NAME     run name (letters, digits, . _ -)
  --log-dir DIR       run folder, relative to the home folder (default \$E1JAX_REMOTE_RUNS or e1jax-runs)
  --repo-dir DIR      e1jax checkout (default \$E1JAX_REMOTE_DIR or e1jax)
  --venv DIR          virtual environment (default \$E1JAX_REMOTE_VENV or e1jax-venv)
  --gcs-logs URL      gs:// folder to copy logs to
  --sync-every N      seconds between log copies (default 300)
  --env NAME=VALUE    environment variable for the run (repeatable; a leading ~/ in
                      VALUE becomes the home folder)
  --detach            start in the background, in its own session, and return at once
  --status            show the state of the runs (all, or --run-name)
  --stop              stop the runs (all, or --run-name): SIGTERM, then SIGKILL after 30 s
  --print-log         print the log of run --run-name, each line prefixed with "[wW] "
  --tail N            with --print-log: only the last N lines
  --dry-run           print the commands, run nothing
EOF
}

ACTION=run
RUN_NAME=""
TAIL=""
RUNS=$REMOTE_RUNS
REPO=$REMOTE_DIR
VENV=$REMOTE_VENV
GCS_LOGS=""
SYNC_SECONDS=300
DETACH=0
ENVS=()

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --detach) DETACH=1 ;;
    --status) ACTION=status ;;
    --stop) ACTION=stop ;;
    --print-log) ACTION=print-log ;;
    --run-name | --log-dir | --repo-dir | --venv | --gcs-logs | --sync-every | --env | --tail)
      need_value "$@"
      case $1 in
        --run-name) RUN_NAME=$2 ;;
        --log-dir) RUNS=$2 ;;
        --repo-dir) REPO=$2 ;;
        --venv) VENV=$2 ;;
        --gcs-logs) GCS_LOGS=${2%/} ;;
        --sync-every) SYNC_SECONDS=$2 ;;
        --env) ENVS+=("$2") ;;
        --tail) TAIL=$2 ;;
      esac
      FLAG_SHIFT=2
      return 0
      ;;
    *) return 1 ;;
  esac
  FLAG_SHIFT=1
}

parse_flags "$@"
no_positional
[[ -z $RUN_NAME || $RUN_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "run name '$RUN_NAME' may only hold letters, digits, . _ -"
[[ -z $GCS_LOGS || $GCS_LOGS == gs://* ]] || die "--gcs-logs must be a gs:// URL, got '$GCS_LOGS'"
[[ $SYNC_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--sync-every must be a positive integer, got '$SYNC_SECONDS'"
[[ -z $TAIL || $TAIL =~ ^[1-9][0-9]*$ ]] || die "--tail must be a positive integer, got '$TAIL'"
for assignment in "${ENVS[@]}"; do
  [[ $assignment =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs NAME=VALUE, got '$assignment'"
done

home_path() {
  if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s' "$HOME/$1"; fi
}
RUNS_PATH=$(home_path "$RUNS")

worker_id() {
  local id
  if [[ -n ${E1JAX_WORKER_ID:-} ]]; then
    printf '%s' "$E1JAX_WORKER_ID"
  elif id=$(curl -sf -m 2 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null) &&
    [[ $id =~ ^[0-9]+$ ]]; then
    printf '%s' "$id"
  elif [[ -n ${TPU_WORKER_ID:-} ]]; then
    printf '%s' "$TPU_WORKER_ID"
  else
    hostname
  fi
}

# The run folders to act on: one (--run-name) or all.
run_dirs() {
  if [[ -n $RUN_NAME ]]; then
    [[ -d $RUNS_PATH/$RUN_NAME ]] && printf '%s\n' "$RUNS_PATH/$RUN_NAME"
  else
    local dir
    for dir in "$RUNS_PATH"/*/; do
      [[ -d $dir ]] && printf '%s\n' "${dir%/}"
    done
  fi
  return 0
}

show_status() {
  local dir log worker state last found=0
  while IFS= read -r dir; do
    for log in "$dir"/worker-*.log; do
      [[ -e $log ]] || continue
      found=1
      worker=${log##*/worker-}
      worker=${worker%.log}
      if [[ -f $dir/worker-$worker.pid ]] && kill -0 "$(<"$dir/worker-$worker.pid")" 2>/dev/null; then
        state="running (pid $(<"$dir/worker-$worker.pid"))"
      elif [[ -f $dir/worker-$worker.exit ]]; then
        state="exited $(<"$dir/worker-$worker.exit")"
      else
        state="stopped without exit status"
      fi
      last=$(grep -v '^== ' "$log" 2>/dev/null | tail -n 1 || true)
      printf '%s worker %s on %s: %s | %s\n' "${dir##*/}" "$worker" "$(hostname)" "$state" "$last"
    done
  done < <(run_dirs)
  ((found)) || echo "no e1jax runs${RUN_NAME:+ named $RUN_NAME} in $RUNS_PATH on $(hostname)"
}

stop_runs() {
  local dir pidfile pid pids=() waited=0
  while IFS= read -r dir; do
    for pidfile in "$dir"/worker-*.pid; do
      [[ -f $pidfile ]] || continue
      pid=$(<"$pidfile")
      if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        run kill -TERM "$pid"
        pids+=("$pid")
      fi
    done
  done < <(run_dirs)
  if ((${#pids[@]} == 0)); then
    echo "no running e1jax runs${RUN_NAME:+ named $RUN_NAME} on $(hostname)"
    return 0
  fi
  [[ $DRY_RUN == 1 ]] && return 0
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((waited < 30)); do
      sleep 1
      waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
      run kill -KILL "$pid"
    fi
  done
  echo "stopped ${#pids[@]} e1jax process(es) on $(hostname)"
}

# Copy stdin to stdout with "[wWORKER] " before each line, flushing every line.
prefix_lines() {
  awk -v prefix="[w$1] " '{ print prefix $0; fflush() }'
}

print_logs() {
  [[ -n $RUN_NAME ]] || die "--print-log needs --run-name"
  local log worker found=0
  for log in "$RUNS_PATH/$RUN_NAME"/worker-*.log; do
    [[ -f $log ]] || continue
    found=1
    worker=${log##*/worker-}
    worker=${worker%.log}
    if [[ -n $TAIL ]]; then
      tail -n "$TAIL" "$log" | prefix_lines "$worker"
    else
      prefix_lines "$worker" <"$log"
    fi
  done
  ((found)) || die "no log of run $RUN_NAME in $RUNS_PATH on $(hostname)"
}

copy_logs() {
  local dir=$1 worker=$2 files=() file
  [[ -n $GCS_LOGS ]] || return 0
  for file in "$dir/worker-$worker.log" "$dir/worker-$worker.exit"; do
    [[ -f $file ]] && files+=("$file")
  done
  ((${#files[@]})) || return 0
  gcloud storage cp "${files[@]}" "$GCS_LOGS/$RUN_NAME/" >/dev/null 2>&1 ||
    note "could not copy logs to $GCS_LOGS/$RUN_NAME/"
}

start_run() {
  [[ -n $RUN_NAME ]] || die "--run-name is required"
  ((${#PASSTHROUGH[@]})) || die "missing e1jax command: $SCRIPT_NAME --run-name NAME -- train --config FILE"
  local worker dir log python status=0 pid sync_pid=""
  worker=$(worker_id)
  dir=$RUNS_PATH/$RUN_NAME
  log=$dir/worker-$worker.log
  python=$(home_path "$VENV")/bin/python
  local assignments=() assignment value
  for assignment in "${ENVS[@]}"; do
    value=${assignment#*=}
    # shellcheck disable=SC2088 # a literal ~/ from the command line, expanded here
    [[ $value == "~/"* ]] && value=$HOME/${value#"~/"}
    assignments+=("${assignment%%=*}=$value")
  done
  local command=(env "${assignments[@]}" PYTHONUNBUFFERED=1 "$python" -m e1jax "${PASSTHROUGH[@]}")

  if ((DETACH)); then
    local again=(bash "${BASH_SOURCE[0]}" --run-name "$RUN_NAME" --log-dir "$RUNS" --repo-dir "$REPO"
      --venv "$VENV" --sync-every "$SYNC_SECONDS")
    [[ -n $GCS_LOGS ]] && again+=(--gcs-logs "$GCS_LOGS")
    for assignment in "${ENVS[@]}"; do
      again+=(--env "$assignment")
    done
    again+=(-- "${PASSTHROUGH[@]}")
    run mkdir -p "$dir"
    if [[ $DRY_RUN == 1 ]]; then
      run env E1JAX_DETACHED=1 setsid nohup "${again[@]}"
      return 0
    fi
    E1JAX_DETACHED=1 setsid nohup "${again[@]}" >"$dir/worker-$worker.launcher.out" 2>&1 </dev/null &
    echo "started run $RUN_NAME on worker $worker ($(hostname)) in the background: $log"
    return 0
  fi

  run mkdir -p "$dir"
  if [[ $DRY_RUN == 1 ]]; then
    run cd "$(home_path "$REPO")"
    run "${command[@]}"
    return 0
  fi
  cd "$(home_path "$REPO")"
  rm -f "$dir/worker-$worker.exit"
  printf '== e1jax run %s, worker %s (%s), %s\n== %s\n' "$RUN_NAME" "$worker" "$(hostname)" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(quote_command "${command[@]}")" >>"$log"
  if [[ -n $GCS_LOGS ]]; then
    (while sleep "$SYNC_SECONDS"; do copy_logs "$dir" "$worker"; done) &
    sync_pid=$!
  fi
  local out_fd="" tee_pid=""
  if [[ ${E1JAX_DETACHED:-0} == 1 ]]; then
    "${command[@]}" >>"$log" 2>&1 &
  else
    exec {out_fd}> >(tee -a "$log" | prefix_lines "$worker")
    tee_pid=$!
    "${command[@]}" >&"$out_fd" 2>&1 &
  fi
  pid=$!
  echo "$pid" >"$dir/worker-$worker.pid"
  wait "$pid" || status=$?
  if [[ -n $out_fd ]]; then
    # Let tee finish writing the command's output before the exit line goes into the log.
    exec {out_fd}>&-
    wait "$tee_pid" 2>/dev/null || true
  fi
  echo "$status" >"$dir/worker-$worker.exit"
  rm -f "$dir/worker-$worker.pid"
  echo "== exit status $status" >>"$log"
  if [[ -n $sync_pid ]]; then
    kill "$sync_pid" 2>/dev/null || true
  fi
  copy_logs "$dir" "$worker"
  return "$status"
}

case $ACTION in
  status) show_status ;;
  stop) stop_runs ;;
  print-log) print_logs ;;
  run) start_run ;;
esac
