#!/usr/bin/env bash
# Move data and checkpoints between this machine, the GCS bucket and the workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME ACTION [ARGS] [flags]

Actions (PATH in the bucket is relative to --bucket, or a full gs:// URL):
  make-bucket                create the bucket in the TPU's region
  upload LOCAL [PATH]        copy a local file or folder to the bucket
                             (default PATH: data/<basename of LOCAL>)
  download PATH LOCAL        copy from the bucket to a local folder (e.g. checkpoints)
  to-workers PATH REMOTE     copy from the bucket to REMOTE (relative to the home
                             folder) on every worker (--worker), e.g. model weights
  url [PATH]                 print the gs:// URL of PATH

Folders are synchronised with 'gcloud storage rsync --recursive' (only changed
files move); single files with 'gcloud storage cp'. e1jax reads and writes
gs:// paths directly, so checkpoints and outputs need not be copied: point the
run's output or checkpoint option at \$(tpu_scripts/data.sh url runs/NAME).
The workers' service account needs read/write access to the bucket.
EOF
  common_usage
}

parse_flags "$@"
require_bucket
((${#POSITIONAL[@]} >= 1)) || die "missing action: make-bucket, upload, download, to-workers or url"
action=${POSITIONAL[0]}
args=("${POSITIONAL[@]:1}")

# The gs:// URL of a path in the bucket (or the URL itself).
gcs_url() {
  local path=$1
  if [[ $path == gs://* ]]; then
    printf '%s' "${path%/}"
  else
    path=${path#/}
    printf '%s' "$BUCKET${path:+/${path%/}}"
  fi
}

expect_args() {
  local count=$1 usage_line=$2
  ((${#args[@]} == count)) || die "$action takes $usage_line"
}

case $action in
  make-bucket)
    expect_args 0 "no arguments"
    require_gcloud
    [[ $BUCKET =~ ^gs://[^/]+$ ]] || die "make-bucket needs a bare bucket (gs://NAME), got $BUCKET"
    project_flags=()
    [[ -n $PROJECT ]] && project_flags=(--project="$PROJECT")
    run gcloud storage buckets create "$BUCKET" --location="${ZONE%-*}" --uniform-bucket-level-access "${project_flags[@]}"
    ;;
  upload)
    ((${#args[@]} == 1 || ${#args[@]} == 2)) || die "upload takes LOCAL [PATH]"
    require_gcloud
    src=${args[0]}
    [[ -e $src ]] || die "no such file or folder: $src"
    dest=$(gcs_url "${args[1]:-data/$(basename "$src")}")
    if [[ -d $src ]]; then
      run gcloud storage rsync --recursive "$src" "$dest"
    else
      run gcloud storage cp "$src" "$dest"
    fi
    ;;
  download)
    expect_args 2 "PATH LOCAL"
    require_gcloud
    run mkdir -p "${args[1]}"
    run gcloud storage rsync --recursive "$(gcs_url "${args[0]}")" "${args[1]}"
    ;;
  to-workers)
    expect_args 2 "PATH REMOTE"
    require_tpu_name
    require_gcloud
    remote_path=${args[1]}
    [[ $remote_path =~ ^[A-Za-z0-9_.~/][A-Za-z0-9_./-]*$ ]] || die "REMOTE must be a plain path, got '$remote_path'"
    tpu_ssh "mkdir -p $remote_path && gcloud storage rsync --recursive $(shell_quote "$(gcs_url "${args[0]}")") $remote_path"
    ;;
  url)
    ((${#args[@]} <= 1)) || die "url takes [PATH]"
    printf '%s\n' "$(gcs_url "${args[0]:-}")"
    ;;
  *)
    die "unknown action '$action': make-bucket, upload, download, to-workers or url"
    ;;
esac
