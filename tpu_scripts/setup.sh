#!/usr/bin/env bash
# Install e1jax on every worker of the TPU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME [flags]

Put e1jax on every worker (--worker, default all) and install it with its TPU
extras into a virtual environment:
  1. source: copy this checkout (tracked and untracked, not ignored files) to
     each worker, or with --repo clone a git URL there (--ref: branch, tag or
     commit), into ~/\$E1JAX_REMOTE_DIR (default ~/e1jax, replaced);
  2. Python: uv (installed on first use) creates ~/\$E1JAX_REMOTE_VENV
     (default ~/e1jax-venv) with Python --python (TPU VM images ship 3.10,
     e1jax needs 3.11 or 3.12);
  3. pip install -e '~/e1jax[EXTRAS]' and check that e1jax imports.

Flags:
  --repo URL        E1JAX_REPO     clone this git URL instead of copying the checkout
  --ref REF         E1JAX_REF      git branch, tag or commit to check out (default: the clone's HEAD)
  --python VERSION  E1JAX_PYTHON   Python version for the environment (default 3.11)
  --extras LIST     E1JAX_EXTRAS   pip extras (default tpu)
EOF
  common_usage
}

REPO_URL=${E1JAX_REPO:-}
REF=${E1JAX_REF:-}
PYTHON_VERSION=${E1JAX_PYTHON:-3.11}
EXTRAS=${E1JAX_EXTRAS:-tpu}

# shellcheck disable=SC2034 # FLAG_SHIFT is read by parse_flags in common.sh
script_flag() {
  case $1 in
    --repo | --ref | --python | --extras) need_value "$@" ;;
    *) return 1 ;;
  esac
  case $1 in
    --repo) REPO_URL=$2 ;;
    --ref) REF=$2 ;;
    --python) PYTHON_VERSION=$2 ;;
    --extras) EXTRAS=$2 ;;
  esac
  FLAG_SHIFT=2
}

parse_flags "$@"
no_positional
require_tpu_name
require_gcloud
[[ $PYTHON_VERSION =~ ^3\.(1[1-9])$ ]] || die "--python must be 3.11 or newer, got '$PYTHON_VERSION'"
[[ $EXTRAS =~ ^[a-z0-9_,-]*$ ]] || die "--extras must be a comma-separated list of names, got '$EXTRAS'"
[[ -z $REF || -n $REPO_URL ]] || die "--ref needs --repo"

steps=()
if [[ -n $REPO_URL ]]; then
  steps+=("rm -rf $REMOTE_DIR" "git clone -q $(shell_quote "$REPO_URL") $REMOTE_DIR")
  if [[ -n $REF ]]; then
    steps+=("git -C $REMOTE_DIR checkout -q $(shell_quote "$REF")")
  fi
else
  tarball=${TMPDIR:-/tmp}/e1jax-src-$TPU_NAME.tar.gz
  if git -C "$E1JAX_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked files that .gitignore does not exclude, skipping deleted ones.
    pack="git ls-files -z --cached --others --exclude-standard"
    pack+=" | while IFS= read -r -d '' f; do [[ -e \$f ]] && printf '%s\\0' \"\$f\"; done"
    pack+=" | tar -czf $(shell_quote "$tarball") --null -T -"
    run bash -c "cd $(shell_quote "$E1JAX_ROOT") && $pack"
  else
    run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ -C "$E1JAX_ROOT" .
  fi
  location_flags
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:e1jax-src.tar.gz" "${LOCATION_FLAGS[@]}" --worker="$WORKER"
  run rm -f "$tarball"
  steps+=("rm -rf $REMOTE_DIR" "mkdir -p $REMOTE_DIR" "tar -xzf e1jax-src.tar.gz -C $REMOTE_DIR" "rm e1jax-src.tar.gz")
fi
package="./$REMOTE_DIR"
[[ -n $EXTRAS ]] && package+="[$EXTRAS]"
steps+=(
  "export PATH=\$HOME/.local/bin:\$HOME/.cargo/bin:\$PATH"
  "{ command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
  "{ test -x $REMOTE_VENV/bin/python || uv venv -q --python $PYTHON_VERSION $REMOTE_VENV; }"
  "uv pip install -q --python $REMOTE_VENV/bin/python -e $(shell_quote "$package")"
  "$REMOTE_VENV/bin/python -c $(shell_quote 'import e1jax, jax, socket; print(socket.gethostname(), "e1jax ready, jax", jax.__version__)')"
)

remote=""
for step in "${steps[@]}"; do
  remote+="${remote:+ && }$step"
done
tpu_ssh "$remote"
