#!/usr/bin/env bash
# Installs the Debian packages the project, its tests and its demo need.
# Idempotent: packages already present are left alone. Needs root.
set -euo pipefail

PKGS=(
  xfsprogs util-linux e2fsprogs kmod cpio busybox-static
  qemu-system-x86 iproute2 openssh-server openssh-client
  python3-venv gdisk parted
  libsystemd-shared  # udevd inside the QEMU guest (tests/vm) runs against the host root
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: missing packages ${missing[*]}; run as root (apt-get install)" >&2
  exit 1
fi
echo "system packages: installing ${missing[*]}"
# Keep package postinst scripts from starting services (sshd) on this host.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
