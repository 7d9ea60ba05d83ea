#!/usr/bin/env bash
# Builds the driver image (deploy/Containerfile) with buildah, on a Debian 12 base made here from
# Debian packages (debootstrap --variant=minbase bookworm + python3): no registry is ever pulled.
# What `make image` runs. Needs root, buildah and debootstrap (scripts/setup-cluster.sh installs them).
#
#   IMAGE_CACHE   buildah storage and archives  (default: ~/.cache/directpv-csi/image)
#   IMAGE         the tag                       (default: what roles/install renders,
#                                                ghcr.io/directpv-csi/directpv-csi:<driver version>)
#   DEBIAN_MIRROR debootstrap mirror            (default: the first URI of this host's apt sources)
#
# The base is cached in the buildah storage under a tag derived from its package list; a second
# run reuses it, and skips the build when the context (deploy/Containerfile, constraints.txt,
# driver/) has not changed since the last one. Outputs: the image in the storage, $IMAGE_CACHE/directpv-csi.oci.tar (an OCI
# archive: `ctr images import`, or the directpv.csi.image role) and $IMAGE_CACHE/build.json
# (size, digest, build times).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi
IMAGE_CACHE=${IMAGE_CACHE:-$CACHE_ROOT/image}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' driver/pyproject.toml | head -1)
IMAGE=${IMAGE:-ghcr.io/directpv-csi/directpv-csi:$VERSION}
ARCHIVE=$IMAGE_CACHE/directpv-csi.oci.tar
# What the base holds besides minbase: Python and its venv module, and the device tools the driver
# runs (so the Containerfile's apt step has nothing to do).
BASE_PACKAGES=python3,python3-venv,xfsprogs,util-linux,libudev1,mount
BASE_TAG=localhost/directpv-csi-base:bookworm-$(printf '%s' "$BASE_PACKAGES" | sha256sum | cut -c1-12)

[ "$(id -u)" -eq 0 ] || { echo "build-image: needs root (buildah with chroot isolation, debootstrap)" >&2; exit 1; }
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool not found: run scripts/setup-cluster.sh --packages (apt-get install buildah debootstrap)" >&2; exit 1; }
done
mkdir -p "$IMAGE_CACHE"
exec 9>"$IMAGE_CACHE/.lock"
flock 9  # one build at a time per cache

BUILDAH=(buildah --root "$IMAGE_CACHE/storage" --runroot "$IMAGE_CACHE/run" --storage-driver overlay)

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | awk '{print $2}' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

t0=$SECONDS
if "${BUILDAH[@]}" inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
  echo "build-image: base $BASE_TAG cached"
  base_seconds=0
else
  echo "build-image: making the base $BASE_TAG (debootstrap --variant=minbase bookworm from $(mirror))"
  rootfs=$(mktemp -d "$IMAGE_CACHE/rootfs.XXXXXX")
  ctr=""
  cleanup() {
    [ -n "$ctr" ] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
    # debootstrap mounts proc/sys inside the rootfs while it runs; nothing may be left mounted below it
    if ! grep -q " $rootfs/" /proc/self/mounts; then rm -rf --one-file-system "$rootfs"; fi
  }
  trap cleanup EXIT
  nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$(mirror)" >"$IMAGE_CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$IMAGE_CACHE/debootstrap.log" >&2; echo "build-image: debootstrap failed (log: $IMAGE_CACHE/debootstrap.log)" >&2; exit 1; }
  # smaller: no apt lists, caches, docs or man pages in the image
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  ctr=$("${BUILDAH[@]}" from scratch)
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  "${BUILDAH[@]}" commit -q "$ctr" "$BASE_TAG" >/dev/null
  cleanup; trap - EXIT
  base_seconds=$((SECONDS - t0))
  echo "build-image: base ready in ${base_seconds} s"
fi

# The same inputs as the last build (context content, base, tag) and its archive still there: nothing to do.
inputs=$( { printf '%s %s\n' "$IMAGE" "$BASE_TAG"
            tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ \
                --exclude='*.egg-info' -cf - deploy/Containerfile constraints.txt driver; } | sha256sum | cut -c1-16)
if [ -s "$ARCHIVE" ] && [ -f "$IMAGE_CACHE/build.json" ] && grep -q "\"inputs\": \"$inputs\"" "$IMAGE_CACHE/build.json" \
   && "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "build-image: $IMAGE up to date (inputs $inputs); archive $ARCHIVE"
  exit 0
fi

t1=$SECONDS
echo "build-image: building $IMAGE from deploy/Containerfile"
# this host's CA bundle (it may trust a TLS-intercepting proxy) for pip, mounted for the build only
ca=()
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$host_ca" ] && ca=(--volume "$host_ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
"${BUILDAH[@]}" bud --isolation chroot --pull=never --layers=false "${ca[@]}" \
  --build-arg "BASE_IMAGE=$BASE_TAG" -f deploy/Containerfile -t "$IMAGE" "$REPO"
build_seconds=$((SECONDS - t1))
rm -f "$ARCHIVE.tmp"
"${BUILDAH[@]}" push -q "$IMAGE" "oci-archive:$ARCHIVE.tmp:$IMAGE"
mv "$ARCHIVE.tmp" "$ARCHIVE"
digest=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageDigest}}' "$IMAGE")
size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)
base_size=$("${BUILDAH[@]}" images --format '{{.Size}}' "$BASE_TAG" | head -1)
archive_bytes=$(stat -c %s "$ARCHIVE")
cat >"$IMAGE_CACHE/build.json" <<EOF
{"image": "$IMAGE", "inputs": "$inputs", "digest": "$digest", "size": "$size", "base": "$BASE_TAG", "base_size": "$base_size",
 "archive": "$ARCHIVE", "archive_bytes": $archive_bytes, "base_seconds": $base_seconds,
 "build_seconds": $build_seconds, "total_seconds": $((SECONDS - t0))}
EOF
echo "build-image: $IMAGE ($size, base $base_size) in $((SECONDS - t0)) s (base ${base_seconds} s, build ${build_seconds} s)"
echo "build-image: archive $ARCHIVE ($archive_bytes bytes); details in $IMAGE_CACHE/build.json"
