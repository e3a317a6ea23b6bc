#!/usr/bin/env bash
# Builds the operator and trainer images with buildah (no daemon), as `docker build` would.
#
#   hack/build-images.sh [operator] [trainer] [--trainer-variant cuda|cpu]   (default: both, cuda)
#   hack/build-images.sh --base       make the offline base image first (debootstrap)
#
# No registry is reachable on the development machines, so the FROM image
# (docker.io/library/python:3.11-slim-bookworm) cannot be pulled there: --base creates a
# stand-in offline, a minimal Debian bookworm (debootstrap, Debian's python3.11) imported under
# that name. A proxy CA in /etc/ssl/certs is handed to pip as a build secret only.
# Prints "image NAME SIZE SECONDS" per image on stdout (the README's table).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(awk -F'"' '/^version *=/ {print $2; exit}' pyproject.toml)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
registry=${KUBEGRAFT_REGISTRY:-ghcr.io/kubegraft}
base=docker.io/library/python:3.11-slim-bookworm
variant=cuda
targets=()
make_base=0
while [ $# -gt 0 ]; do
  case $1 in
    --base) make_base=1 ;;
    --trainer-variant) variant=$2; shift ;;
    operator|trainer) targets+=("$1") ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#targets[@]} -gt 0 ] || targets=(operator trainer)
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_FORMAT=oci
log() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ $make_base = 1 ] || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { log "apt-get install debootstrap buildah podman"; exit 1; }
  work=$(mktemp -d /var/tmp/kubegraft-base.XXXXXX)
  log "debootstrap bookworm + python3.11 into $work (a few minutes)"
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    bookworm "$work/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar --numeric-owner -C "$work/rootfs" -c . | podman --storage-driver "$STORAGE_DRIVER" import \
    --change 'CMD ["python3.11"]' --change 'ENV LANG=C.UTF-8' - "$base" >&2
  rm -rf "$work"
fi

secret=()
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] && secret=(--secret "id=pip-ca,src=$ca")
for t in "${targets[@]}"; do
  tag="$registry/$t:$version"
  args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision"
        --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  if [ "$t" = trainer ]; then
    args+=(--build-arg "TORCH_VARIANT=$variant" --build-arg "ASSETS=${KUBEGRAFT_IMAGE_ASSETS:-0}")
    [ "$variant" = cuda ] || tag="$tag-$variant"
  fi
  log "building $tag"
  start=$SECONDS
  buildah bud --pull=false --layers=false --network=host "${secret[@]}" "${args[@]}" \
    -f "images/$t/Dockerfile" -t "$tag" . >&2
  size=$(podman image inspect --format '{{.Size}}' "$tag")
  echo "image $tag $((size / 1000000))MB $((SECONDS - start))s"
done
