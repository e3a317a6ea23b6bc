#!/usr/bin/env bash
# The test command (`make test`, which .ci/run calls): sets up everything it needs, then runs
# every check and every test tier except gpu.
#
#   1. environment   the cached venv (hack/venv.sh): kubegraft + extras + dev tools, deepspeed
#   2. binaries      etcd, kube-apiserver, controller-manager, scheduler, kwok, kubectl, helm
#                    (hack/build-binaries.sh: built once from the Go module proxy, then cached)
#   3. ruff          ruff check .
#   4. mypy          strict, on kubegraft, kubegraft_operator, kubegraft_trainer
#   5. import-linter the layering contracts in .importlinter
#   6. pytest        -m "not gpu and not images" (images: `make test-images`): unit,
#                    integration, trainer and e2e; the integration and e2e
#                    tiers start the real local control plane once (session fixture)
#
# Every stage runs even if an earlier check failed, so one run shows every problem; the exit
# code is non-zero if any stage failed. `hack/test.sh unit` runs only the unit tier.
# Extra arguments after the mode go to pytest (e.g. `hack/test.sh all -k control_plane`).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-all}
shift || true
declare -a summary=()
failed=0
t0=$SECONDS

stage() {  # stage NAME COMMAND...: run one stage with a header and record its result
  local name=$1; shift
  local start=$SECONDS rc
  printf '\n\033[1m==> [%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$name"
  "$@"; rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then summary+=("ok    ${took}s  $name")
  else summary+=("FAIL  ${took}s  $name (exit $rc)"); failed=1; fi
  return $rc
}

finish() {
  printf '\n\033[1m==> summary (%ss in all)\033[0m\n' "$((SECONDS - t0))"
  printf '  %s\n' "${summary[@]}"
  [ $failed -eq 0 ] && echo "ALL PASSED" || echo "FAILED"
  exit $failed
}

run_pytest() {
  python -m pytest "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then
    echo "pytest collected no tests for $*: that is a failure, not a pass" >&2
  fi
  return $rc
}

setup_venv() {
  local out
  out=$(hack/venv.sh) || return $?
  venv=$(tail -1 <<<"$out")
  export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
  # The venv is shared by every checkout with this pyproject.toml, and its editable install
  # maps our packages to whichever checkout created it: this checkout's code must win.
  export PYTHONPATH="$root:$root/operator:$root/trainer${PYTHONPATH:+:$PYTHONPATH}"
  echo "venv: $venv ($(python --version)); code from $root"
}

setup_binaries() {
  local out
  out=$(hack/build-binaries.sh) || return $?
  KUBEGRAFT_BIN_DIR=$(tail -1 <<<"$out")
  export KUBEGRAFT_BIN_DIR PATH="$KUBEGRAFT_BIN_DIR:$PATH"
  echo "binaries: $KUBEGRAFT_BIN_DIR"
  echo "kubectl: $(command -v kubectl) ($(kubectl version --client -o json | python -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'))"
  echo "helm: $(command -v helm) ($(helm version --short))"
}

stage "environment (venv)" setup_venv || finish
if [ "$mode" = "unit" ]; then
  stage "pytest -m unit" run_pytest -m unit "$@"
  finish
fi
stage "binaries (control plane, kubectl, helm)" setup_binaries || finish
stage "ruff check" ruff check .
stage "mypy (strict)" mypy -p kubegraft -p kubegraft_operator -p kubegraft_trainer
stage "import-linter (layering)" lint-imports
stage "pytest -m 'not gpu and not images' (unit, integration, trainer, e2e)" \
  run_pytest -m "not gpu and not images" --timeout=1800 --durations=15 "$@"
finish
