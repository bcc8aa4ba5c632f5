# shellcheck shell=bash disable=SC2034 # settings are read by the scripts that source this file
# Shared by the tpu_scripts: settings, flag parsing, quoting and `run`.
# Source it from a script that runs under `set -euo pipefail`.
#
# Settings (flag, environment variable, default):
#   --project      E1JAX_PROJECT      gcloud's configured project
#   --zone         E1JAX_ZONE         from the accelerator: v4 us-central2-b,
#                                     v5p us-east5-a, v5litepod us-west4-a,
#                                     v6e us-east5-b, v2/v3 us-central1-b
#   --tpu-name     E1JAX_TPU_NAME     (required by scripts that touch a TPU)
#   --accelerator  E1JAX_ACCELERATOR  v4-32
#   --runtime      E1JAX_RUNTIME      from the accelerator: v4/v2/v3
#                                     tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
#                                     v5litepod v2-alpha-tpuv5-lite,
#                                     v6e v2-alpha-tpuv6e
#   --bucket       E1JAX_BUCKET       (required for data and GCS logs)
#   --queued/--no-queued E1JAX_QUEUED 0: the TPU is a plain TPU VM, 1: it is
#                                     (to be) a queued resource of the same name
#   --worker       E1JAX_WORKER       all: workers that remote commands run on
#   --dry-run      E1JAX_DRY_RUN      0 (1: print the commands, run nothing)
# On the workers (paths relative to the remote home directory):
#   E1JAX_REMOTE_DIR  e1jax        the e1jax checkout
#   E1JAX_REMOTE_VENV e1jax-venv   its virtual environment
#   E1JAX_REMOTE_RUNS e1jax-runs   per-run logs, pid and exit files
# Locally: E1JAX_LOG_DIR tpu_logs  where worker logs are fetched to.

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "error: tpu_scripts need bash >= 4.4 (macOS: brew install bash)" >&2
  exit 2
fi

E1JAX_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E1JAX_ROOT=$(cd "$E1JAX_SCRIPTS_DIR/.." && pwd)
SCRIPT_NAME=$(basename "$0")

PROJECT=${E1JAX_PROJECT:-}
ZONE=${E1JAX_ZONE:-}
TPU_NAME=${E1JAX_TPU_NAME:-}
ACCELERATOR=${E1JAX_ACCELERATOR:-v4-32}
RUNTIME=${E1JAX_RUNTIME:-}
BUCKET=${E1JAX_BUCKET:-}
QUEUED=${E1JAX_QUEUED:-0}
DRY_RUN=${E1JAX_DRY_RUN:-0}
REMOTE_DIR=${E1JAX_REMOTE_DIR:-e1jax}
REMOTE_VENV=${E1JAX_REMOTE_VENV:-e1jax-venv}
REMOTE_RUNS=${E1JAX_REMOTE_RUNS:-e1jax-runs}
LOG_DIR=${E1JAX_LOG_DIR:-tpu_logs}
WORKER=${E1JAX_WORKER:-all}

POSITIONAL=()  # arguments that are not flags, before `--`
PASSTHROUGH=() # everything after `--`

die() {
  echo "$SCRIPT_NAME: error: $*" >&2
  exit 2
}

note() {
  echo "$SCRIPT_NAME: $*" >&2
}

# Quote one word for a POSIX shell, like Python's shlex.quote.
shell_quote() {
  local word=$1 squote="'"
  if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//$squote/$squote\\$squote$squote}"
  fi
}

# All arguments quoted and joined by spaces: one shell command line.
quote_command() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

# Run a command, or with --dry-run print it (quoted, one line) and run nothing.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$(quote_command "$@")"
  else
    note "+ $(quote_command "$@")"
    "$@"
  fi
}

common_usage() {
  cat <<'EOF'

Settings (flag, or environment variable):
  --project ID        E1JAX_PROJECT      GCP project (default: gcloud's configured project)
  --zone ZONE         E1JAX_ZONE         zone (default from the accelerator: v4 us-central2-b,
                                         v5p us-east5-a, v5litepod us-west4-a, v6e us-east5-b)
  --tpu-name NAME     E1JAX_TPU_NAME     TPU VM / pod slice name (no default)
  --accelerator TYPE  E1JAX_ACCELERATOR  accelerator type, e.g. v4-32, v5p-64 (default v4-32)
  --runtime VERSION   E1JAX_RUNTIME      TPU software version (default from the accelerator:
                                         v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
                                         v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --bucket gs://NAME  E1JAX_BUCKET       GCS bucket for data, checkpoints and logs
  --queued            E1JAX_QUEUED=1     the TPU is a queued resource (--no-queued: a plain TPU VM)
  --worker W          E1JAX_WORKER       workers for remote commands: all, 0, 1-3, 0,2 (default all)
  --dry-run           E1JAX_DRY_RUN=1    print each command (shell-quoted, one per line), run nothing
  -h, --help                             show this help
Worker paths (relative to the remote home): E1JAX_REMOTE_DIR (e1jax), E1JAX_REMOTE_VENV
(e1jax-venv), E1JAX_REMOTE_RUNS (e1jax-runs). Local log folder: E1JAX_LOG_DIR (tpu_logs).
EOF
}

# Parse "$@". Common flags are handled here; any other flag is offered to the
# script's `script_flag` function (if defined), which handles "$1" (and its
# value "$2"), sets FLAG_SHIFT to the number of words used and returns 0, or
# returns 1 for an unknown flag. `--flag=value` is accepted for every flag.
# Words after `--` go to PASSTHROUGH; so does everything from the first
# non-flag word on when the script sets COMMAND_STARTS_AT_FIRST_WORD=1.
parse_flags() {
  local arg
  while (($#)); do
    arg=$1
    if [[ $arg == --*=* ]]; then
      shift
      set -- "${arg%%=*}" "${arg#*=}" "$@"
      arg=$1
    fi
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --no-queued) QUEUED=0; shift ;;
      --project | --zone | --tpu-name | --accelerator | --runtime | --bucket | --worker)
        (($# >= 2)) || die "$arg needs a value"
        case $arg in
          --project) PROJECT=$2 ;;
          --zone) ZONE=$2 ;;
          --tpu-name) TPU_NAME=$2 ;;
          --accelerator) ACCELERATOR=$2 ;;
          --runtime) RUNTIME=$2 ;;
          --bucket) BUCKET=$2 ;;
          --worker) WORKER=$2 ;;
        esac
        shift 2
        ;;
      --)
        shift
        PASSTHROUGH=("$@")
        break
        ;;
      -*)
        FLAG_SHIFT=0
        if declare -F script_flag >/dev/null && script_flag "$@"; then
          shift "$FLAG_SHIFT"
        else
          die "unknown flag $arg (see $SCRIPT_NAME --help)"
        fi
        ;;
      *)
        if [[ ${COMMAND_STARTS_AT_FIRST_WORD:-0} == 1 ]]; then
          PASSTHROUGH=("$@")
          break
        fi
        POSITIONAL+=("$arg")
        shift
        ;;
    esac
  done
  finish_settings
}

# For script_flag: fail unless flag "$1" has a value.
need_value() {
  (($# >= 2)) || die "$1 needs a value"
}

accelerator_family() {
  printf '%s' "${ACCELERATOR%-*}"
}

finish_settings() {
  [[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "E1JAX_DRY_RUN must be 0 or 1, got '$DRY_RUN'"
  [[ $QUEUED == 0 || $QUEUED == 1 ]] || die "E1JAX_QUEUED must be 0 or 1, got '$QUEUED'"
  [[ $ACCELERATOR =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
    die "accelerator type '$ACCELERATOR' is not like v4-32, v5p-64, v5litepod-16 or v6e-8"
  local family
  family=$(accelerator_family)
  if [[ -z $ZONE ]]; then
    case $family in
      v4) ZONE=us-central2-b ;;
      v5p) ZONE=us-east5-a ;;
      v5litepod) ZONE=us-west4-a ;;
      v6e) ZONE=us-east5-b ;;
      v2 | v3) ZONE=us-central1-b ;;
      *) die "no default zone for $ACCELERATOR: pass --zone or set E1JAX_ZONE" ;;
    esac
  fi
  if [[ -z $RUNTIME ]]; then
    case $family in
      v2 | v3 | v4) RUNTIME=tpu-ubuntu2204-base ;;
      v5p) RUNTIME=v2-alpha-tpuv5 ;;
      v5litepod) RUNTIME=v2-alpha-tpuv5-lite ;;
      v6e) RUNTIME=v2-alpha-tpuv6e ;;
      *) die "no default runtime for $ACCELERATOR: pass --runtime or set E1JAX_RUNTIME" ;;
    esac
  fi
  if [[ -n $BUCKET ]]; then
    BUCKET=gs://${BUCKET#gs://}
    BUCKET=${BUCKET%/}
    [[ $BUCKET =~ ^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$ ]] || die "bucket '$BUCKET' is not a valid gs:// bucket name"
  fi
  [[ $WORKER =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] || die "worker '$WORKER' must be all, N, N-M or a list like 0,2"
  local name value
  for name in REMOTE_DIR REMOTE_VENV REMOTE_RUNS; do
    value=${!name}
    [[ $value =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ ]] ||
      die "E1JAX_$name must be a plain path relative to the remote home, got '$value'"
  done
}

require_tpu_name() {
  [[ -n $TPU_NAME ]] || die "missing TPU name: pass --tpu-name NAME or set E1JAX_TPU_NAME"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "TPU name '$TPU_NAME' must be lower-case letters, digits and hyphens, starting with a letter"
}

require_bucket() {
  [[ -n $BUCKET ]] || die "missing bucket: pass --bucket gs://NAME or set E1JAX_BUCKET"
}

no_positional() {
  ((${#POSITIONAL[@]} == 0)) || die "unexpected argument '${POSITIONAL[0]}' (see $SCRIPT_NAME --help)"
}

# Real runs need gcloud; dry runs never call it.
require_gcloud() {
  if [[ $DRY_RUN == 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  fi
}

# --zone and --project for gcloud commands.
location_flags() {
  LOCATION_FLAGS=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    LOCATION_FLAGS+=(--project="$PROJECT")
  fi
}

# Like run, with the command's stdout and stderr also appended to FILE.
run_tee() {
  local file=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s 2>&1 | tee -a %s\n' "$(quote_command "$@")" "$(shell_quote "$file")"
  else
    note "+ $(quote_command "$@") 2>&1 | tee -a $(shell_quote "$file")"
    "$@" 2>&1 | tee -a "$file"
  fi
}

# Like run, with the command's stdout written to FILE.
run_to() {
  local file=$1
  shift
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s > %s\n' "$(quote_command "$@")" "$(shell_quote "$file")"
  else
    note "+ $(quote_command "$@") > $(shell_quote "$file")"
    "$@" >"$file"
  fi
}

# Workers prefix each output line with "[wN] " (see remote_run.sh). Split such
# output (FILE) into DIR/worker-N.log; unprefixed lines are gcloud's own.
split_worker_logs() {
  local file=$1 dir=$2
  # shellcheck disable=SC2016 # an awk program, not shell
  run awk -v dir="$dir" 'match($0, /^\[w[^]]+\] /) { print substr($0, RLENGTH + 1) > (dir "/worker-" substr($0, 3, RLENGTH - 4) ".log") }' "$file"
}

# The gcloud command that runs COMMAND on the selected workers, in SSH_COMMAND.
ssh_command() {
  location_flags
  SSH_COMMAND=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" --worker="$WORKER" --command="$1")
}

# tpu_ssh COMMAND: run COMMAND on the selected workers.
tpu_ssh() {
  ssh_command "$1"
  run "${SSH_COMMAND[@]}"
}

# The command line that runs tpu_scripts/remote_run.sh on a worker.
remote_run_command() {
  quote_command bash "$REMOTE_DIR/tpu_scripts/remote_run.sh" --log-dir "$REMOTE_RUNS" "$@"
}
