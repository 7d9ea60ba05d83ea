#!/usr/bin/env bash
# Installs the Debian packages one need of the project has (one list per need).
# Idempotent: packages already present are left alone (a check of a few ms each). Needs root.
#   scripts/setup-system.sh demo   the demo and a node: XFS/ext4 tools, util-linux, python3-venv
#   scripts/setup-system.sh test   the demo's plus the test suite's (QEMU guest, sshd hosts, GPT)
#   scripts/setup-system.sh --list PROFILE   print the package list (bindep.txt says the same)
set -euo pipefail

DEMO=(xfsprogs util-linux e2fsprogs python3-venv git)
TEST=(
  "${DEMO[@]}" kmod cpio busybox-static
  qemu-system-x86 iproute2 openssh-server openssh-client
  gdisk parted
  libsystemd-shared  # udevd inside the QEMU guest (tests/vm) runs against the host root
)
list=0; [ "${1:-}" = "--list" ] && { list=1; shift; }
case "${1:-test}" in
  demo) PKGS=("${DEMO[@]}") ;;
  test) PKGS=("${TEST[@]}") ;;
  *) echo "setup-system: unknown profile '$1' (demo or test)" >&2; exit 2 ;;
esac
if [ "$list" = 1 ]; then printf '%s\n' "${PKGS[@]}"; exit 0; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages (${1:-test}): all present"
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
