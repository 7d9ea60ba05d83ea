#!/usr/bin/env python3
"""Probe benchmark: `probe()` in-process vs one `lsblk -J -b -O` process, same host, same run.

    .venv/bin/python bench/probe_bench.py [--count 64] [--runs 9]

Attaches COUNT loop devices over sparse files (1/3 XFS, 1/3 ext4, a few swap,
the rest empty), then times the median of RUNS calls of ``probe()`` (every block
device of the host, with filesystem signatures) and of RUNS ``lsblk -J -b -O``
processes (every block device of the host; without udev lsblk reports no
filesystem at all, so it does less work than the probe). Prints both, the ratio
and the target (<= 0.5x). Detaches exactly the devices it attached. Needs root.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "driver" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testsupport

from directpv_csi.device.probe import probe

from testsupport import backing_file

TARGET = 0.5


def _timed(fn: Callable[[], object]) -> Tuple[float, float]:
    """(wall ms, CPU ms of this process and its children) of one call."""
    r0c, r0s = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = (time.perf_counter() - t0) * 1000
    r1c, r1s = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = sum((b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime) for a, b in ((r0c, r1c), (r0s, r1s))) * 1000
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=64, help="loop devices to attach (default 64)")
    ap.add_argument("--runs", type=int, default=15, help="timed runs of each side (median; default 15)")
    ap.add_argument("--size", default="512M", help="size of each sparse backing file (default 512M)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("probe_bench: needs root (loop devices); skipped")
        return 0
    attached: List[str] = []
    images: Dict[str, str] = {}  # device -> our backing file (a device is detached only while it is still ours)
    with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        try:
            t0 = time.perf_counter()
            for i in range(args.count):
                img = os.path.join(tmp, f"d{i}.img")
                subprocess.run(["truncate", "-s", args.size, img], check=True)
                kind = i % 3
                if kind == 0:
                    subprocess.run(["mkfs.xfs", "-q", "-f", img], check=True)
                elif kind == 1:
                    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
                elif i % 6 == 5:
                    subprocess.run(["mkswap", img], check=True, capture_output=True)
                dev = subprocess.run(
                    ["losetup", "--find", "--show", img], check=True, capture_output=True, text=True
                ).stdout.strip()
                attached.append(dev)
                images[dev] = img
            setup = time.perf_counter() - t0
            names = {os.path.basename(d) for d in attached}
            if len(names) != len(attached):
                print(
                    f"WARNING: {len(attached) - len(names)} of our devices were detached by another process "
                    "during setup and their names reused"
                )
            print(f"attached {len(attached)} loop devices ({args.size} sparse each) in {setup:.1f} s")

            cold_t0 = time.perf_counter()
            devices = probe()
            cold = (time.perf_counter() - cold_t0) * 1000
            ours = [d for d in devices if d.name in names]
            found = {d.fs_type for d in ours}
            missing = sorted(names - {d.name for d in ours})
            if missing:
                # Another process may have detached a device of ours (a test detaching a reused name).
                gone = [n for n in missing if not os.path.exists(f"/sys/block/{n}/loop/backing_file")]
                print(f"WARNING: probe did not list {missing}; detached by someone else: {gone}")
                if len(gone) != len(missing):
                    print("probe_bench: probe missed attached devices")
                    return 1
            print(
                f"probe() saw {len(devices)} devices ({len(ours)} ours; filesystems {sorted(f or '-' for f in found)})"
            )

            def lsblk_all() -> None:
                subprocess.run(["lsblk", "-J", "-b", "-O"], check=True, capture_output=True)

            def lsblk_ours() -> None:
                subprocess.run(["lsblk", "-J", "-b", "-O", *attached], check=True, capture_output=True)

            lsblk_all()  # warm the binary and libraries like the probe's first call warmed its imports
            # Interleaved runs: other work on the host hits both sides alike.
            walls: Dict[str, List[float]] = {"probe": [], "lsblk": [], "lsblk_ours": []}
            cpus: Dict[str, List[float]] = {"probe": [], "lsblk": [], "lsblk_ours": []}
            for _ in range(args.runs):
                for key, fn in (("probe", probe), ("lsblk", lsblk_all), ("lsblk_ours", lsblk_ours)):
                    wall, cpu = _timed(fn)
                    walls[key].append(wall)
                    cpus[key].append(cpu)
            med = {k: statistics.median(v) for k, v in walls.items()}
            cmed = {k: statistics.median(v) for k, v in cpus.items()}
            ratio = med["probe"] / med["lsblk"]
            load = os.getloadavg()[0]
            print(f"host load average {load:.1f} on {os.cpu_count()} CPUs; {args.runs} interleaved runs, medians:")
            print(
                f"  probe() in-process, whole host      : {med['probe']:8.2f} ms wall {cmed['probe']:8.2f} ms CPU"
                f"  (first call {cold:.2f} ms)"
            )
            print(f"  lsblk -J -b -O, whole host          : {med['lsblk']:8.2f} ms wall {cmed['lsblk']:8.2f} ms CPU")
            print(
                f"  lsblk -J -b -O <our {len(attached)} devices>  : {med['lsblk_ours']:8.2f} ms wall"
                f" {cmed['lsblk_ours']:8.2f} ms CPU"
            )
            verdict = "OK" if ratio <= TARGET else "MISSED"
            print(f"ratio probe/lsblk wall = {ratio:.2f}x (target <= {TARGET}x): {verdict}")
            print(f"ratio probe/lsblk CPU  = {cmed['probe'] / cmed['lsblk']:.2f}x")
            return 0
        finally:
            for dev in dict.fromkeys(attached):
                if backing_file(dev) == images[dev]:
                    subprocess.run(["losetup", "--detach", dev], capture_output=True)
                else:
                    print(f"not detaching {dev}: no longer backed by our image (someone else detached it)")


if __name__ == "__main__":
    sys.exit(main())
