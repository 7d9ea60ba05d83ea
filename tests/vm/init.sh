#!/bin/sh
# /init of the harness initramfs (busybox sh). Loads the boot modules, mounts the
# work share and the host root (9p), moves proc/sys/dev into it and switch_roots
# into the host root, where tests/vm/stage2.sh (host /bin/sh) runs the tests.
export PATH=/bin

die() {
  echo "vm-init: FATAL: $*"
  echo "vm-init: FATAL: $*" > /work/results/init-failed 2>/dev/null
  poweroff -f
  sleep 5
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "vm-init: kernel $(uname -r)"
for m in $(cat /modules.load); do
  insmod "/lib/modules/$m" 2>/dev/null || grep -q "^${m%.ko} " /proc/modules || echo "vm-init: insmod $m failed"
done

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work /work || die "cannot mount the work share"
[ -f /work/guest.env ] || die "no guest.env in the work share"
. /work/guest.env

# The host root, read-only. cache=loose: the guest caches what it read (Python imports
# over 9p are the slowest part of a run); the host root does not change during a run.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot \
  || die "cannot mount the host root share"
[ -d "/newroot$WORK" ] || die "work dir $WORK not visible in the host root"
mount --move /work "/newroot$WORK" || die "cannot move the work share to $WORK"
for d in proc sys dev; do
  mount --move "/$d" "/newroot/$d" || die "cannot move /$d"
done
[ -f "/newroot$REPO/tests/vm/stage2.sh" ] || die "no $REPO/tests/vm/stage2.sh in the host root"
exec switch_root /newroot /bin/sh "$REPO/tests/vm/stage2.sh"
