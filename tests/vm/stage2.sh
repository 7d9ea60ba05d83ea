#!/bin/sh
# PID 1 of the guest after switch_root, run by the host's /bin/sh on the host root
# (read-only over 9p). Makes the writable places, optionally starts udevd, runs each
# pytest suite named in guest.env, writes <suite>.rc/.xml/.out to $WORK/results and
# powers off. Never exits without powering off (an exit of PID 1 panics the kernel,
# which also ends QEMU because of -no-reboot panic=-1).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# guest.env is found through the mount table: the work share is the 9p mount tagged "work".
WORK=$(awk '$1 == "work" && $3 == "9p" {print $2; exit}' /proc/mounts)
. "$WORK/guest.env"
RESULTS="$WORK/results"

off() {
  sync
  /bin/busybox poweroff -f
  echo o > /proc/sysrq-trigger
  sleep 30
}
say() { echo "vm-stage2 [$(cut -d' ' -f1 /proc/uptime) s]: $*"; }

mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
# /tmp becomes a tmpfs unless the repo or the work dir live under it.
case "$REPO/ $WORK/" in
  /tmp/*|*" /tmp/"*) mkdir -p /run/tmp && chmod 1777 /run/tmp && export TMPDIR=/run/tmp ;;
  *) mount -t tmpfs -o mode=1777 tmpfs /tmp ;;
esac
# The guest kernel's full module tree (in the cache) for on-demand loading: the host
# root may have no /lib/modules/<guest version>, so the kernel's modprobe helper is a
# wrapper pointing kmod at the cache (`modprobe -d`).
mkdir -p /run/dpv-bin
printf '#!/bin/sh\nexec /sbin/modprobe -d %s "$@"\n' "$KROOT" > /run/dpv-bin/modprobe
chmod 755 /run/dpv-bin/modprobe
echo /run/dpv-bin/modprobe > /proc/sys/kernel/modprobe
PATH="/run/dpv-bin:$PATH"
hostname directpv-vm 2>/dev/null
ip link set lo up 2>/dev/null

if [ -n "$UDEV" ]; then
  t0=$(cut -d. -f1 /proc/uptime)
  mount --bind "$UDEV/lib/udev" /usr/lib/udev || say "cannot bind $UDEV/lib/udev over /usr/lib/udev"
  mkdir -p /run/udev /run/dpv-udev
  ln -s "$UDEV/bin/udevadm" /run/dpv-udev/systemd-udevd
  ln -s "$UDEV/bin/udevadm" /run/dpv-udev/udevadm
  export PATH="/run/dpv-udev:$PATH"
  if systemd-udevd --daemon; then
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    udevadm settle --timeout=120 || say "udevadm settle timed out"
    say "udevd started and settled in $(( $(cut -d. -f1 /proc/uptime) - t0 )) s"
  else
    say "systemd-udevd failed to start"
  fi
fi

export HOME=/run/home PYTHONDONTWRITEBYTECODE=1 DIRECTPV_VM=1 DIRECTPV_VM_WORK="$WORK"
PATH="$(dirname "$PYTHON"):$PATH"
export PATH
mkdir -p "$HOME"
cd "$REPO" || { say "no repo at $REPO"; off; }
run_suite() {  # name, then "fg" (output also on the console) or "bg" (output to its file only)
  eval "args=\$ARGS_$1"
  say "suite $1: pytest $args"
  t0=$(cut -d. -f1 /proc/uptime)
  # shellcheck disable=SC2086
  eval "set -- $1 $2 $args"
  s=$1 mode=$2; shift 2
  if [ "$mode" = fg ]; then
    { "$PYTHON" -m pytest -p no:cacheprovider -v -rA --durations=8 --junitxml="$RESULTS/$s.xml" "$@"; echo $? > "$RESULTS/$s.rc"; } \
      2>&1 | tee "$RESULTS/$s.out"
  else
    "$PYTHON" -m pytest -p no:cacheprovider -v -rA --durations=8 --junitxml="$RESULTS/$s.xml" "$@" > "$RESULTS/$s.out" 2>&1
    echo $? > "$RESULTS/$s.rc"
  fi
  say "suite $s: exit $(cat "$RESULTS/$s.rc" 2>/dev/null) in $(( $(cut -d. -f1 /proc/uptime) - t0 )) s"
}

# Background suites (the canary) run on the second vCPU while the others run in turn.
for s in ${BG_SUITES:-}; do run_suite "$s" bg & done
for s in $SUITES; do run_suite "$s" fg; done
wait
off
