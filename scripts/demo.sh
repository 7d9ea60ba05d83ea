#!/usr/bin/env bash
# `make demo`: the main job, end to end, on this machine, with real parts only:
#   1. three loop-backed drives (sparse files) and one decoy holding ext4 data;
#   2. the real playbooks on localhost: discover (table), drives in check mode (the plan),
#      drives for real (formats exactly the selected loop devices), drives again (no change);
#   3. the driver in standalone mode (Identity + Controller + Node over a unix socket,
#      embedded SQLite store) finds the formatted drives;
#   4. volumes created, staged and published through the real gRPC API by our CSI client,
#      data written and read back, a read-only publish refusing writes, an expansion;
#   5. an info table (drives, capacity, volumes, usage), then everything is torn down.
# Needs root. Leaves nothing behind: loop devices and mounts are removed by exact name.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH="$REPO/.venv/bin:$PATH"
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (loop devices, mounts); run: sudo make demo" >&2; exit 1; }

W=$(mktemp -d /tmp/directpv-demo.XXXXXX)
STATE=$W/state
KUBELET=$W/kubelet
SOCK=$W/csi.sock
EP=unix://$SOCK
LOOPS=()
SERVER_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  set +e
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  # Unmount what lives under the demo directory, deepest first, by exact mount point.
  awk -v w="$W" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT

say "1. Loop-backed drives"
for i in 1 2 3 4; do
  truncate -s 2G "$W/disk$i.img"
  LOOPS+=("$(losetup --find --show "$W/disk$i.img")")
done
DECOY=${LOOPS[3]}
mkfs.ext4 -q -F "$DECOY"
printf 'drives: %s %s %s (selected), %s (ext4 with data: not selected)\n' "${LOOPS[0]}" "${LOOPS[1]}" "${LOOPS[2]}" "$DECOY"
names=$(for l in "${LOOPS[@]:0:3}"; do printf '"%s",' "$(basename "$l")"; done)

cat > "$W/inventory.yml" <<INV
all:
  hosts:
    demo-node:
      ansible_connection: local
      ansible_python_interpreter: $REPO/.venv/bin/python
      directpv_allow_loop: true
      directpv_drives: [${names%,}]
INV
export ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0

say "2a. Discover (report only)"
ansible-playbook -i "$W/inventory.yml" playbooks/discover.yml -e directpv_allow_loop=true -e directpv_show_all=true

say "2b. Drives in check mode: the plan, nothing formatted"
ansible-playbook -i "$W/inventory.yml" playbooks/drives.yml --check --diff | tee "$W/check.log"
for l in "${LOOPS[@]:0:3}"; do
  [ -z "$(blkid -p -o value -s TYPE "$l" 2>/dev/null)" ] || { echo "demo: check mode changed $l" >&2; exit 1; }
done

say "2c. Drives for real"
ansible-playbook -i "$W/inventory.yml" playbooks/drives.yml

say "2d. Drives again: nothing to change"
ansible-playbook -i "$W/inventory.yml" playbooks/drives.yml | tee "$W/second.log"
grep -Eq 'changed=0 ' "$W/second.log" || { echo "demo: the second run changed something" >&2; exit 1; }
[ "$(blkid -p -o value -s TYPE "$DECOY")" = ext4 ] || { echo "demo: the decoy was touched" >&2; exit 1; }

say "3. Driver in standalone mode"
mkdir -p "$STATE" "$KUBELET"
devs=(); for l in "${LOOPS[@]:0:3}"; do devs+=(--device "$l"); done  # only this demo's drives
directpv-csi standalone --state-dir "$STATE" --endpoint "$EP" --node-id demo-node --allow-loop "${devs[@]}" \
  --kubelet-dir "$KUBELET" --sync-interval 2 --log-level WARNING &
SERVER_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "demo: the driver did not start" >&2; exit 1; }
c() { directpv-csi client --endpoint "$EP" "$@"; }
for _ in $(seq 50); do c capacity >/dev/null 2>&1 && break; sleep 0.2; done
c capacity

say "4. Volumes through the CSI API"
for v in minio-data-0 minio-data-1 postgres-0; do
  c create "$v" --size 256MiB --node demo-node
  c stage "$v" --staging-path "$KUBELET/staging/$v"
  c publish "$v" --staging-path "$KUBELET/staging/$v" --target-path "$KUBELET/pods/$v/mount"
  dd if=/dev/urandom of="$KUBELET/pods/$v/mount/data.bin" bs=1M count=16 status=none
  sha256sum "$KUBELET/pods/$v/mount/data.bin" | sed "s|$KUBELET/||"
done
c publish postgres-0 --staging-path "$KUBELET/staging/postgres-0" --target-path "$KUBELET/pods/reader/mount" --read-only
if ( : > "$KUBELET/pods/reader/mount/should-fail" ) 2>/dev/null; then
  echo "demo: a read-only publish accepted a write" >&2; exit 1
fi
echo "read-only publish of postgres-0 refuses writes: ok"
c expand minio-data-0 --size 512MiB --path "$KUBELET/pods/minio-data-0/mount"
c stats minio-data-0 --path "$KUBELET/pods/minio-data-0/mount"

say "5. Info"
c info --state-dir "$STATE"

say "6. Tear down through the API"
c unpublish postgres-0 --target-path "$KUBELET/pods/reader/mount"
for v in minio-data-0 minio-data-1 postgres-0; do
  c unpublish "$v" --target-path "$KUBELET/pods/$v/mount"
  c unstage "$v" --staging-path "$KUBELET/staging/$v"
  c delete "$v"
done
c capacity
echo
echo "demo: done (cleaning up loop devices and mounts)"
