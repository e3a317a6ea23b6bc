#!/usr/bin/env bash
# Creates (once) the project's virtual environment outside the repository and prints its path.
#
# The venv lives in $KUBEGRAFT_CACHE/venv-<hash of pyproject.toml> (default ~/.cache/kubegraft),
# so a change to the dependencies makes a new one and an unchanged project reuses it at no cost.
# uv installs everything (the package editable with its operator, trainer and assets extras,
# the dev group, then deepspeed without build isolation, as its setup.py imports torch); uv's
# own cache (~/.cache/uv) makes even a new venv quick once the wheels were downloaded.
# The editable install points at the checkout that created the venv; hack/test.sh and
# hack/in-env.sh put the calling checkout first on PYTHONPATH, so every checkout runs its own code
# (tests/unit/test_layering.py checks it).
# Progress goes to stderr; the last stdout line is the venv path.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KUBEGRAFT_CACHE:-$HOME/.cache/kubegraft}
hash=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv="$cache/venv-$hash"
stamp="$venv/.kubegraft-complete"
log() { printf '[venv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi

mkdir -p "$cache"
exec 9>"$venv.lock"
flock 9  # two test runs at once: the second waits for the first's venv
if [ -f "$stamp" ]; then echo "$venv"; exit 0; fi

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  log "installing uv (python3 -m pip install --user uv)"
  python3 -m pip install --user --quiet uv >&2
  uv="$(python3 -m site --user-base)/bin/uv"
fi

# Python 3.11: $KUBEGRAFT_PYTHON, else python3.11 on PATH, else pyenv's, else uv finds one.
python=${KUBEGRAFT_PYTHON:-}
if [ -z "$python" ]; then python=$(command -v python3.11 || true); fi
if [ -z "$python" ] && command -v pyenv >/dev/null; then
  python=$(ls -d "$(pyenv root)"/versions/3.11*/bin/python3.11 2>/dev/null | sort -V | tail -1 || true)
fi
python=${python:-3.11}

log "creating $venv (Python $python)"
"$uv" venv --quiet --clear --python "$python" "$venv" >&2
export VIRTUAL_ENV="$venv"
dev=$("$venv/bin/python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f).get("dependency-groups", {}).get("dev", [])))
PY
)
mapfile -t dev_pkgs <<<"$dev"
log "installing kubegraft[operator,trainer,assets] and the dev group (cold: several minutes)"
"$uv" pip install -e "$root[operator,trainer,assets]" "${dev_pkgs[@]}" setuptools wheel >&2
deepspeed=$("$venv/bin/python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"].get("deepspeed", [])))
PY
)
if [ -n "$deepspeed" ]; then
  log "installing $deepspeed (DS_BUILD_OPS=0, no build isolation)"
  # shellcheck disable=SC2086
  DS_BUILD_OPS=0 "$uv" pip install --no-build-isolation $deepspeed >&2
fi
touch "$stamp"
log "venv ready"
echo "$venv"
