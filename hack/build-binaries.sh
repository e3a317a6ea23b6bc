#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from the Go module proxy, once per version set.
#
# The binaries land in $KUBEGRAFT_CACHE/bin/<key>/, where <key> hashes the tools modules'
# go.mod/go.sum and the Go version: a cache hit costs nothing, a change to a pin rebuilds.
# Prints the binary directory on its last line of stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEGRAFT_CACHE:-$HOME/.cache/kubegraft}
k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/tools/k8s/go.mod")
[ -n "$k8s_version" ] || { echo "cannot read the k8s.io/kubernetes version from tools/k8s/go.mod" >&2; exit 1; }
key=$( (cat "$here"/tools/*/go.mod "$here"/tools/*/go.sum; go version) | sha256sum | cut -c1-16)
out="$cache/bin/$key"
want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

have_all() { for b in "${want[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi

mkdir -p "$out.partial"
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# A heartbeat so that a 20-minute cold build does not look like a hang.
( while sleep 60; do log "still building..."; done ) & beat=$!
trap 'kill $beat 2>/dev/null || true' EXIT

ver_flags="-X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$(echo "$k8s_version" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean"

if [ ! -x "$out.partial/etcd" ]; then
  log "building etcd (cold: a few minutes)"
  (cd "$here/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3)
fi
if [ ! -x "$out.partial/kwok" ]; then
  log "building kwok (cold: a few minutes)"
  (cd "$here/tools/kwok" && go build -trimpath -ldflags "-s -w" -o "$out.partial/kwok" sigs.k8s.io/kwok/cmd/kwok)
fi
if [ ! -x "$out.partial/kube-apiserver" ]; then
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $k8s_version (cold: 20-35 minutes on 2 cores)"
  (cd "$here/tools/k8s" && go build -trimpath -ldflags "-s -w $ver_flags" -o "$out.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
fi
# kwok's stage CRD and default stages ship in its module source, not in the binary.
kwok_dir=$(cd "$here/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
mkdir -p "$out.partial/kwok-kustomize"
cp -r "$kwok_dir/kustomize/." "$out.partial/kwok-kustomize/"
chmod -R u+w "$out.partial/kwok-kustomize"
rm -rf "$out" && mv "$out.partial" "$out"
log "binaries ready in $out"
echo "$out"
