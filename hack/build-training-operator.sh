#!/usr/bin/env bash
# Builds Kubeflow's training-operator v1.8.1 (bench/operator_scale.py --peer kubeflow: the
# side-by-side baseline, never a dependency) from the Go module proxy, once per pin set.
#
# The binary lands in $KUBEGRAFT_CACHE/bin/training-operator-<key>/, where <key> hashes
# tools/training-operator's go.mod, go.sum and main.go and the Go version: its own key, so the
# control plane's cache (build-binaries.sh) is untouched. The PyTorchJob CRD and the RBAC
# manifests from the module source are copied next to it. Prints the directory on its last
# line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEGRAFT_CACHE:-$HOME/.cache/kubegraft}
mod="$here/tools/training-operator"
key=$( (cat "$mod/go.mod" "$mod/go.sum" "$mod/main.go"; go version) | sha256sum | cut -c1-16)
out="$cache/bin/training-operator-$key"
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
log() { printf '[build-training-operator %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ ! -x "$out/training-operator" ]; then
  log "building training-operator (cold: several minutes on 2 cores)"
  rm -rf "$out.partial" && mkdir -p "$out.partial"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$out.partial/training-operator" .)
  rm -rf "$out" && mv "$out.partial" "$out"
  log "training-operator ready in $out"
fi
if [ ! -f "$out/kubeflow.org_pytorchjobs.yaml" ] || [ ! -f "$out/rbac/role.yaml" ]; then
  dir=$(cd "$mod" && go list -m -f '{{.Dir}}' github.com/kubeflow/training-operator)
  mkdir -p "$out/rbac"
  cp "$dir/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$out/"
  cp "$dir/manifests/base/rbac/role.yaml" "$out/rbac/"
  chmod -R u+w "$out"
fi
echo "$out"
