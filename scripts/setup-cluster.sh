#!/usr/bin/env bash
# What the real one-node cluster (tests/realnode) needs on this host, installed or built once:
#   - Debian packages: containerd, runc, containernetworking-plugins (bridge, host-local, loopback),
#     iptables, buildah and debootstrap (the driver image, scripts/build-image.sh), gcc + libc6-dev
#     (the static pause binary), skopeo and docker-registry (the image role's push, tested on loopback).
#     No service is
#     started (policy-rc.d), none is enabled: the fixture starts its own containerd and stops it.
#   - kube-scheduler and kubelet from the k8s.io/kubernetes module (scripts/build-kube-tools.sh,
#     which also holds etcd, kube-apiserver, kube-controller-manager and the sidecars);
#   - the pause image: pause.c from that module, `gcc -static`, packed by scripts/pack-image.py;
#   - the Go-built csi-provisioner and csi-resizer packed into images (FROM scratch) under the
#     names roles/install renders.
# Images land in $TOOLS_DIR/images/*.oci.tar. Idempotent; `make cluster-setup` runs it.
#   --packages   only the Debian packages
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/directpv-csi
TOOLS_DIR=${TOOLS_DIR:-$CACHE_ROOT/tools}
export GOPATH=${GOPATH:-$CACHE_ROOT/gopath} GOFLAGS="-mod=mod" GOTOOLCHAIN=local
KUBE_VERSION=$(sed -n 's/^KUBE_VERSION=\([^ ]*\).*/\1/p' scripts/build-kube-tools.sh)
PROVISIONER_VERSION=$(sed -n 's/^PROVISIONER_VERSION=\([^ ]*\).*/\1/p' scripts/build-kube-tools.sh)
RESIZER_VERSION=$(sed -n 's/^RESIZER_VERSION=\([^ ]*\).*/\1/p' scripts/build-kube-tools.sh)
PAUSE_REF=localhost/directpv-csi/pause:$KUBE_VERSION
PY=${PYTHON:-python3}

PKGS=(containerd runc containernetworking-plugins iptables buildah debootstrap gcc libc6-dev binutils skopeo docker-registry)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup-cluster: missing packages ${missing[*]}; run as root" >&2; exit 1; }
  echo "setup-cluster: installing ${missing[*]}"
  policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup-cluster: packages present"
fi
[ "${1:-}" = "--packages" ] && exit 0

bash scripts/build-kube-tools.sh kube-scheduler kubelet

mkdir -p "$TOOLS_DIR/images"
pause_bin=$TOOLS_DIR/pause-$KUBE_VERSION
if [ ! -x "$pause_bin" ]; then
  dir=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  gcc -static -Os -o "$pause_bin.tmp" "$dir/build/pause/linux/pause.c"
  strip "$pause_bin.tmp"
  mv "$pause_bin.tmp" "$pause_bin"
fi
pack() {  # pack NAME REF BINARY
  local out=$TOOLS_DIR/images/$1.oci.tar
  if [ ! -s "$out" ] || [ "$out" -ot "$3" ]; then
    "$PY" scripts/pack-image.py --ref "$2" --file "$3:/$1" --entrypoint "/$1" -o "$out.tmp"
    mv "$out.tmp" "$out"
  else echo "setup-cluster: $out ready"; fi
}
pack pause "$PAUSE_REF" "$pause_bin"
pack csi-provisioner "registry.k8s.io/sig-storage/csi-provisioner:$PROVISIONER_VERSION" "$(readlink -f "$TOOLS_DIR/csi-provisioner")"
pack csi-resizer "registry.k8s.io/sig-storage/csi-resizer:$RESIZER_VERSION" "$(readlink -f "$TOOLS_DIR/csi-resizer")"
echo "setup-cluster: ready (images in $TOOLS_DIR/images)"
