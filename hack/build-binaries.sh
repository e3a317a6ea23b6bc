#!/usr/bin/env bash
# Builds the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) and helm from the Go module proxy, once per version set, and
# fetches prometheus/promtool from Debian's package.
#
# The control plane lands in $KUBEGRAFT_CACHE/bin/<key>/, where <key> hashes the etcd, k8s and
# kwok tools modules' go.mod/go.sum and the Go version: a cache hit costs nothing, a change to
# a pin rebuilds. helm has its own key (tools/helm), lands in bin/helm-<key>/ and is linked into
# the control plane's directory, so that one directory on PATH gives kubectl and helm. Kueue's
# manager is built the same way (tools/kueue, bin/kueue-<key>/, linked in as kueue) together
# with a copy of its CRDs and webhook configurations (kueue-config/), which the dev cluster
# applies; KUBEGRAFT_SKIP_KUEUE=1 skips it.
# Prints the binary directory on its last line of stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEGRAFT_CACHE:-$HOME/.cache/kubegraft}
k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/tools/k8s/go.mod")
[ -n "$k8s_version" ] || { echo "cannot read the k8s.io/kubernetes version from tools/k8s/go.mod" >&2; exit 1; }
cp_modules=(etcd k8s kwok)
key=$( (for m in "${cp_modules[@]}"; do cat "$here/tools/$m/go.mod"; done
        for m in "${cp_modules[@]}"; do cat "$here/tools/$m/go.sum"; done
        go version) | sha256sum | cut -c1-16)
helm_key=$( (cat "$here/tools/helm/go.mod" "$here/tools/helm/go.sum"; go version) | sha256sum | cut -c1-16)
out="$cache/bin/$key"
helm_out="$cache/bin/helm-$helm_key"
kueue_key=$( (cat "$here/tools/kueue/go.mod" "$here/tools/kueue/go.sum"; go version) | sha256sum | cut -c1-16)
kueue_out="$cache/bin/kueue-$kueue_key"
want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod
log() { printf '[build-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
have_all() { for b in "${want[@]}"; do [ -x "$out/$b" ] || return 1; done; }

beat=
heartbeat() {
  # A heartbeat so that a 20-minute cold build does not look like a hang.
  [ -n "$beat" ] && return
  ( while sleep 60; do log "still building..."; done ) & beat=$!
  trap 'kill $beat 2>/dev/null || true' EXIT
}

ensure_helm() {
  if [ ! -x "$helm_out/helm" ]; then
    heartbeat
    log "building helm (cold: a few minutes)"
    mkdir -p "$helm_out.partial"
    helm_version=$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ {print $2; exit}' "$here/tools/helm/go.mod")
    (cd "$here/tools/helm" && go build -trimpath -o "$helm_out.partial/helm" \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      helm.sh/helm/v3/cmd/helm)
    rm -rf "$helm_out" && mv "$helm_out.partial" "$helm_out"
  fi
  if [ "$(readlink "$out/helm" 2>/dev/null)" != "$helm_out/helm" ]; then
    ln -sfn "$helm_out/helm" "$out/helm"
  fi
}

ensure_kueue() {
  [ "${KUBEGRAFT_SKIP_KUEUE:-}" = 1 ] && return
  if [ ! -x "$kueue_out/kueue" ]; then
    heartbeat
    log "building kueue (cold: 10-20 minutes on 2 cores)"
    mkdir -p "$kueue_out.partial"
    kueue_version=$(awk '$1 == "sigs.k8s.io/kueue" && $2 ~ /^v/ {print $2; exit}' "$here/tools/kueue/go.mod")
    (cd "$here/tools/kueue" && go build -trimpath -o "$kueue_out.partial/kueue" \
      -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$kueue_version" \
      sigs.k8s.io/kueue/cmd/kueue)
    # The CRDs and the webhook configurations ship in the module source, not in the binary.
    kueue_dir=$(cd "$here/tools/kueue" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
    mkdir -p "$kueue_out.partial/kueue-config"
    cp -r "$kueue_dir/config/components/crd/bases" "$kueue_out.partial/kueue-config/crd"
    cp "$kueue_dir/config/components/webhook/manifests.yaml" "$kueue_out.partial/kueue-config/webhook.yaml"
    chmod -R u+w "$kueue_out.partial/kueue-config"
    rm -rf "$kueue_out" && mv "$kueue_out.partial" "$kueue_out"
  fi
  if [ "$(readlink "$out/kueue" 2>/dev/null)" != "$kueue_out/kueue" ]; then
    ln -sfn "$kueue_out/kueue" "$out/kueue"
    ln -sfn "$kueue_out/kueue-config" "$out/kueue-config"
  fi
}

# prometheus and promtool: the Debian package (CONTROL-PLANE.md), unpacked, not installed;
# cached in bin/prometheus-<version>/ and linked into the control plane's directory.
prom_major=2
ensure_prometheus() {
  local dir tmp
  dir=$(ls -d "$cache"/bin/prometheus-"$prom_major".* 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$dir" ] || [ ! -x "$dir/prometheus" ]; then
    log "fetching prometheus (Debian package)"
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get download prometheus >&2 2>/dev/null \
       || { apt-get update -qq >&2 && apt-get download prometheus >&2; }; })
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    version=$("$tmp/x/usr/bin/prometheus" --version 2>&1 | awk 'NR == 1 {print $3}' | cut -d+ -f1)
    case "$version" in "$prom_major".*) ;; *) log "prometheus $version: want $prom_major.x"; return 1 ;; esac
    dir="$cache/bin/prometheus-$version"
    mkdir -p "$dir.partial"
    cp "$tmp/x/usr/bin/prometheus" "$tmp/x/usr/bin/promtool" "$dir.partial/"
    rm -rf "$dir" "$tmp" && mv "$dir.partial" "$dir"
  fi
  ln -sfn "$dir/prometheus" "$out/prometheus"
  ln -sfn "$dir/promtool" "$out/promtool"
}

if have_all; then ensure_helm; ensure_kueue; ensure_prometheus; echo "$out"; exit 0; fi

heartbeat
mkdir -p "$out.partial"
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
ensure_helm
ensure_kueue
ensure_prometheus
log "binaries ready in $out"
echo "$out"
