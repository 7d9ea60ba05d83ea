"""Bind mount + unmount pairs: our syscall path vs mount(8)/umount(8) processes.

    .venv/bin/python bench/mount_bench.py [--pairs 2000] [--proc-pairs 50]   (root)

Measures, on a private temporary directory pair:
  - directpv_csi.device.mount.bind() + unmount() (the node server's publish/unpublish path,
    including bind()'s "already mounted here?" statx check), read-write and read-only
  - `mount --bind SRC TGT` + `umount TGT` as processes
and prints median / p99 per pair and the ratio. Target: <= 0.1 ms per pair (median).
Exit status 1 when the target is missed. Cleans up its mounts by exact path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "driver" / "src"))

from directpv_csi.device import mount as m

TARGET_MS = 0.1


def pct(xs: List[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(pairs: int, one: Callable[[], None], warmup: int = 20) -> List[float]:
    for _ in range(min(warmup, pairs)):
        one()
    out = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        one()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def show(name: str, xs: List[float]) -> None:
    print(
        f"  {name:<36} n={len(xs):<5} median {statistics.median(xs):8.4f} ms"
        f"   p99 {pct(xs, 99):8.4f} ms   mean {statistics.fmean(xs):8.4f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--proc-pairs", type=int, default=50)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("mount_bench: needs root (bind mounts)")
        return 2
    work = tempfile.mkdtemp(prefix="directpv-mount-bench-")
    src, tgt = os.path.join(work, "src"), os.path.join(work, "tgt")
    os.mkdir(src)
    os.mkdir(tgt)
    try:

        def ours() -> None:
            m.bind(src, tgt)
            m.unmount(tgt)

        def ours_ro() -> None:
            m.bind(src, tgt, read_only=True)
            m.unmount(tgt)

        lib = m._lib()
        bsrc, btgt = os.fsencode(src), os.fsencode(tgt)

        def floor() -> None:  # bare mount(2) + umount2(2): what the kernel costs, for reference
            lib.mount(bsrc, btgt, None, m.MS_BIND, None)
            lib.umount2(btgt, 0)

        def procs() -> None:
            subprocess.run(["mount", "--bind", src, tgt], check=True)
            subprocess.run(["umount", tgt], check=True)

        print(f"mount_bench: bind + unmount pairs on {work} ({len(m.mounts())} mounts in this namespace)")
        show("floor: bare mount(2) + umount2(2)", run(args.pairs, floor))
        rw = run(args.pairs, ours)
        show("syscalls: bind + unmount", rw)
        ro = run(args.pairs, ours_ro)
        show("syscalls: read-only bind + unmount", ro)
        pr = run(args.proc_pairs, procs, warmup=3)
        show("processes: mount --bind + umount", pr)
        med = statistics.median(rw)
        ratio = med / statistics.median(pr)
        print(f"  ratio syscalls/processes (median): {ratio:.4f}  ({1 / ratio:.0f}x faster)")
        ok = med <= TARGET_MS
        print(f"  target: bind+unmount median <= {TARGET_MS} ms: {'MET' if ok else 'MISSED'} ({med:.4f} ms)")
        return 0 if ok else 1
    finally:
        for _ in range(3):
            if subprocess.run(["umount", "-l", tgt], capture_output=True).returncode != 0:
                break
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
