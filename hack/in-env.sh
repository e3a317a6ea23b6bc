#!/usr/bin/env bash
# Runs a command inside the project's environment: the cached venv (hack/venv.sh) and, with
# --binaries, the built control-plane binaries, kubectl and helm (hack/build-binaries.sh) first
# on PATH and in $KUBEGRAFT_BIN_DIR.   Usage: hack/in-env.sh [--binaries] COMMAND [ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$("$here/venv.sh" | tail -1)
export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
# The venv is shared by every checkout with this pyproject.toml, and its editable install maps
# our packages to whichever checkout created it: this checkout's code must win.
root=$(cd "$here/.." && pwd)
export PYTHONPATH="$root:$root/operator:$root/trainer${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--binaries" ]; then
  shift
  KUBEGRAFT_BIN_DIR=$("$here/build-binaries.sh" | tail -1)
  export KUBEGRAFT_BIN_DIR PATH="$KUBEGRAFT_BIN_DIR:$PATH"
fi
cd "$here/.."
exec "$@"
