#!/usr/bin/env bash
# Creates (once) the project's virtual environment outside the repository and prints its path.
#
# Every dependency is pinned by uv.lock (`uv lock` after a change to pyproject.toml; an upgrade
# is a deliberate `uv lock --upgrade[-package X]` commit that reruns the whole suite, and
# tests/unit/test_lockfile.py fails while pyproject.toml and the lock disagree).
# The venv lives in $KUBEGRAFT_CACHE/venv-<hash of pyproject.toml and uv.lock> (default
# ~/.cache/kubegraft), so a change to either makes a new one and an unchanged project reuses it
# at no cost. uv installs exactly the locked versions, hash-checked (`uv export --frozen` of the
# operator, trainer, deepspeed and assets extras and the dev group), then the package itself
# editable, then the locked deepspeed sdist without build isolation, as its setup.py imports
# torch; uv's own cache (~/.cache/uv) makes even a new venv quick once the wheels were
# downloaded. The editable install points at the checkout that created the venv; hack/test.sh
# and hack/in-env.sh put the calling checkout first on PYTHONPATH, so every checkout runs its
# own code (tests/unit/test_layering.py checks it).
# Progress goes to stderr; the last stdout line is the venv path.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KUBEGRAFT_CACHE:-$HOME/.cache/kubegraft}
hash=$(cat "$root/pyproject.toml" "$root/uv.lock" | sha256sum | cut -c1-12)
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
extras=(--extra operator --extra trainer --extra deepspeed --extra assets)
log "installing the locked dependencies of kubegraft[operator,trainer,deepspeed,assets] and the dev group (cold: several minutes)"
"$uv" export --quiet --frozen --project "$root" --format requirements-txt "${extras[@]}" \
  --group dev --no-emit-project --no-emit-package deepspeed -o "$venv/requirements.txt" >&2
"$uv" pip install --require-hashes -r "$venv/requirements.txt" >&2
"$uv" pip install --no-deps -e "$root" >&2
# deepspeed's sdist, at the locked version and hash (its dependencies came with the rest).
"$venv/bin/python" - "$root/uv.lock" "$venv/deepspeed.txt" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    pkg = next(p for p in tomllib.load(f)["package"] if p["name"] == "deepspeed")
with open(sys.argv[2], "w") as out:
    out.write(f"deepspeed=={pkg['version']} --hash={pkg['sdist']['hash']}\n")
PY
log "installing $(cut -d' ' -f1 "$venv/deepspeed.txt") (DS_BUILD_OPS=0, no build isolation)"
DS_BUILD_OPS=0 "$uv" pip install --no-build-isolation --no-deps --require-hashes \
  -r "$venv/deepspeed.txt" >&2
touch "$stamp"
log "venv ready"
echo "$venv"
