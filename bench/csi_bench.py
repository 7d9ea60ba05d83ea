#!/usr/bin/env python3
"""CSI controller benchmark: one command, prints figures and their ratio to the targets.

    .venv/bin/python bench/csi_bench.py [--nodes 1000] [--drives-per-node 10] [--creates 3000]

1. CreateVolume over the unix socket against `directpv-csi standalone` (a real child
   process, embedded SQLite store with synchronous=FULL) holding 10,000 drives on 1,000
   nodes; each request names one node in requisite+preferred (what external-provisioner
   sends with WaitForFirstConsumer). Serial p50/p99 and throughput, concurrent throughput,
   and the ratio to a no-op gRPC call (Identity.GetPluginInfo) on the same server in the
   same run. Targets: >= 1000/s, p99 <= 10 ms.
   Also shown, not a target: CreateVolume with no topology at all (every drive a candidate).
2. Scheduling decision alone (index lookup + choice) at 10,000 drives: target <= 0.2 ms.
3. RSS of the standalone server holding 10,000 drives: target <= 80 MiB.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "driver" / "src"))

import grpc  # noqa: E402
from directpv_csi.core.models import Drive  # noqa: E402
from directpv_csi.core.scheduler import Request, choose  # noqa: E402
from directpv_csi.csi.controller import ControllerServicer  # noqa: E402
from directpv_csi.csi.proto import csi_pb2 as pb  # noqa: E402
from directpv_csi.csi.proto import csi_pb2_grpc as pbg  # noqa: E402
from directpv_csi.store.embedded import EmbeddedStore  # noqa: E402

GiB = 1024**3
MiB = 1024**2
CAP = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
                          access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def seed(path: str, nodes: int, per_node: int) -> List[str]:
    store = EmbeddedStore(path, synchronous="NORMAL")
    rng = random.Random(1)
    names = [f"node-{n:04d}" for n in range(nodes)]
    for node in names:
        for i in range(per_node):
            store.put_drive(Drive(drive_id=f"{node}-d{i}", node=node, name=f"nvme{i}n1",
                                  total=rng.choice((1, 2, 4, 8)) * 1024 * GiB,
                                  topology={"directpv.dev/node": node}))
    store.close()
    return names


def fsync_floor(dirpath: Path, n: int = 300, tag: str = "a") -> Tuple[float, float]:
    """p50/p99 ms of one SQLite WAL commit with synchronous=FULL on this disk, now (the floor of a
    lone durable write; shown so the CreateVolume figures can be read against the machine's state)."""
    import sqlite3

    path = dirpath / f"fsync-{tag}.sqlite"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (b) VALUES ('x')")
        db.execute("COMMIT")
        lat.append(time.perf_counter() - t)
    db.close()
    return pct(lat, 50) * 1e3, pct(lat, 99) * 1e3


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def create_req(name: str, node: str = "") -> Any:
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[CAP],
                                 capacity_range=pb.CapacityRange(required_bytes=GiB))
    if node:
        seg = {"directpv.dev/node": node}
        req.accessibility_requirements.requisite.add(segments=seg)
        req.accessibility_requirements.preferred.add(segments=seg)
    return req


def timed_serial(fn: Callable[[int], Any], n: int) -> Tuple[List[float], float]:
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def timed_concurrent(fn: Callable[[int], Any], n: int, threads: int) -> float:
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            fn(i)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--drives-per-node", type=int, default=10)
    ap.add_argument("--creates", type=int, default=3000, help="CreateVolume calls per measured phase")
    ap.add_argument("--threads", type=int, default=8, help="client threads of the concurrent phase")
    ap.add_argument("--workers", type=int, default=16, help="the server's gRPC worker threads")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                    help="the server's SQLite durability (FULL is the product default; NORMAL shows its cost)")
    args = ap.parse_args()
    n_drives = args.nodes * args.drives_per_node

    work = Path(tempfile.mkdtemp(prefix="dpvb", dir="/tmp"))
    proc = None
    try:
        f50, f99 = fsync_floor(work)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"one durable SQLite commit (WAL, synchronous=FULL): p50 {f50:.2f} ms, p99 {f99:.2f} ms")
        t = time.perf_counter()
        nodes = seed(str(work / "store.sqlite"), args.nodes, args.drives_per_node)
        print(f"seeded {n_drives} drives on {args.nodes} nodes in {time.perf_counter() - t:.1f} s")

        # --- 2. scheduling decision alone (in process, same code as the server) --------------
        store = EmbeddedStore(str(work / "store.sqlite"), read_only=True)
        ctrl = ControllerServicer(store)
        rng = random.Random(2)
        req = Request(size=GiB)
        picks = [rng.choice(nodes) for _ in range(20000)]
        lat = []
        for node in picks:
            t = time.perf_counter()
            d = choose(ctrl._drives_for({"directpv.dev/node": node}), req)
            lat.append(time.perf_counter() - t)
            assert d.drive is not None
        all_drives = list(store.list_drives())
        lat_all = []
        for _ in range(200):
            t = time.perf_counter()
            choose(all_drives, req)
            lat_all.append(time.perf_counter() - t)
        store.close()
        sched_p50, sched_p99 = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
        print(f"\n== scheduling decision (store index lookup + choice), {n_drives} drives")
        print(f"   one node's drives ({args.drives_per_node}): p50 {sched_p50:.4f} ms, p99 {sched_p99:.4f} ms "
              f"-> target <= 0.2 ms: {verdict(sched_p50 <= 0.2)} (p50 is {sched_p50 / 0.2:.2f}x the target)")
        print(f"   (not a target) no topology, all {n_drives} drives: p50 {pct(lat_all, 50) * 1e3:.2f} ms")

        # --- 1. CreateVolume over the socket --------------------------------------------------
        sock = work / "csi.sock"
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen([sys.executable, "-m", "directpv_csi.cmd.main", "standalone", "--state-dir",
                                 str(work), "--endpoint", f"unix://{sock}", "--no-node", "--log-level", "WARNING",
                                 "--synchronous", args.synchronous, "--workers", str(args.workers)],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO / "driver" / "src")})
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ch = grpc.insecure_channel(f"unix://{sock}")
        grpc.channel_ready_future(ch).result(timeout=30)
        ident, ctl = pbg.IdentityStub(ch), pbg.ControllerStub(ch)
        rss_idle = rss_kib(proc.pid)

        for _ in range(300):  # warm-up
            ident.GetPluginInfo(pb.GetPluginInfoRequest())
        noop_lat, noop_total = timed_serial(lambda i: ident.GetPluginInfo(pb.GetPluginInfoRequest()), args.creates)
        noop_rate = args.creates / noop_total

        cv_nodes = [rng.choice(nodes) for _ in range(args.creates * 3)]
        cv_lat, cv_total = timed_serial(lambda i: ctl.CreateVolume(create_req(f"s-{i}", cv_nodes[i])), args.creates)
        cv_rate = args.creates / cv_total
        conc_total = timed_concurrent(
            lambda i: ctl.CreateVolume(create_req(f"c-{i}", cv_nodes[args.creates + i])), args.creates, args.threads)
        conc_rate = args.creates / conc_total
        n_notopo = max(100, args.creates // 10)
        nt_lat, nt_total = timed_serial(lambda i: ctl.CreateVolume(create_req(f"n-{i}")), n_notopo)
        rss_after = rss_kib(proc.pid)
        f50b, f99b = fsync_floor(work, tag="b")

        p50, p99 = pct(cv_lat, 50) * 1e3, pct(cv_lat, 99) * 1e3
        print(f"\n== CreateVolume over the socket, {n_drives} drives on {args.nodes} nodes, "
              f"store synchronous={args.synchronous} ({args.creates} calls per phase)")
        print(f"   no-op gRPC call (GetPluginInfo), serial: {noop_rate:.0f}/s, p50 {pct(noop_lat, 50) * 1e3:.2f} ms, "
              f"p99 {pct(noop_lat, 99) * 1e3:.2f} ms")
        print(f"   CreateVolume, serial:     {cv_rate:.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"({cv_rate / noop_rate:.2f}x the no-op rate)")
        print(f"   CreateVolume, {args.threads} client threads: {conc_rate:.0f}/s "
              f"({conc_rate / noop_rate:.2f}x the serial no-op rate)")
        best = max(cv_rate, conc_rate)
        print(f"   -> target >= 1000/s: {verdict(best >= 1000)} ({best / 1000:.2f}x the target); "
              f"p99 <= 10 ms: {verdict(p99 <= 10)} ({p99 / 10:.2f}x the limit)")
        print(f"   durable commit floor during the run: p50 {f50:.2f}/{f50b:.2f} ms, p99 {f99:.2f}/{f99b:.2f} ms "
              "(before/after); a serial CreateVolume pays one")
        print(f"   (not a target) CreateVolume without topology (all {n_drives} drives scanned): "
              f"{n_notopo / nt_total:.0f}/s, p50 {pct(nt_lat, 50) * 1e3:.2f} ms, p99 {pct(nt_lat, 99) * 1e3:.2f} ms")

        # --- 3. RSS -----------------------------------------------------------------------------
        mib_idle, mib_after = rss_idle / 1024, rss_after / 1024
        print(f"\n== standalone server RSS holding {n_drives} drives")
        print(f"   after start: {mib_idle:.1f} MiB; after {2 * args.creates + n_notopo} creates: {mib_after:.1f} MiB "
              f"-> target <= 80 MiB: {verdict(max(mib_idle, mib_after) <= 80)} "
              f"({max(mib_idle, mib_after) / 80:.2f}x the target)")
        ch.close()
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
