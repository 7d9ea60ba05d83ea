#!/usr/bin/env python3
"""CSI controller benchmark: one command, prints figures and their ratio to the targets.

    .venv/bin/python bench/csi_bench.py [--nodes 1000] [--drives-per-node 10] [--creates 3000]

1. CreateVolume over the unix socket against `directpv-csi standalone` (a real child
   process, embedded SQLite store with synchronous=FULL) holding 10,000 drives on 1,000
   nodes; each request names one node in requisite+preferred (what external-provisioner
   sends with WaitForFirstConsumer). Serial p50/p99 and throughput, concurrent throughput,
   and their ratio to a no-op gRPC call (Identity.GetPluginInfo) on the same server in the
   same run, serial and at the same concurrency (--threads). Targets: >= 1000/s, p99 <= 10 ms.
   --metrics serves /metrics (a free port), so the CSI call counter interceptor is on the path.
   Also shown, not a target: CreateVolume with no topology at all (every drive a candidate).
2. Scheduling decision alone (index lookup + choice) at 10,000 drives: target <= 0.2 ms.
3. RSS of the standalone server holding 10,000 drives: target <= 80 MiB.
4. --profile: a second server, the same `directpv-csi standalone` command run in a child process
   (cmd.main, so app.run and its builders) with a cProfile profiler in each of its threads, gets
   the serial CreateVolume phase again (--profile-threads N: N client threads instead); prints
   the server's time per call by function (own and cumulative). Wall clock: with more than one
   client, time spent waiting for the GIL is charged to whichever function was waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

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


def cpu_ns(pid: int) -> int:
    """CPU time (ns) the threads of ``pid`` have run so far (schedstat; a CPU figure, unlike a rate,
    barely moves with the other load of a shared machine)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


class Cpu:
    """Server and client (this process) CPU per call over one phase, in microseconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server0, self.client0 = cpu_ns(pid), time.process_time()

    def per_call(self, calls: int) -> Tuple[float, float]:
        return ((cpu_ns(self.pid) - self.server0) / 1e3 / calls,
                (time.process_time() - self.client0) * 1e6 / calls)


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


PROFILE_CHILD = "--profile-child"
# Where a thread of the profiled server waits for work: not a cost of any call. The gRPC poller's
# wait is a Cython call cProfile does not see: it is the own time of _serve (grpc/_server.py).
IDLE = ("<method 'get' of '_queue.SimpleQueue' objects>", "<method 'poll' of", "<method 'wait' of",
        "<method 'acquire' of '_thread.lock' objects>")
IDLE_LOOPS = (("_serve", "_server.py"), ("_worker", "thread.py"),  # (function, file name): left out of the tables
              ("serve_forever", "socketserver.py"), ("select", "selectors.py"))


def profile_child(out: str, argv: List[str]) -> int:
    """`directpv-csi ARGV` (cmd.main: the standalone command, app.run and its builders) with a
    cProfile profiler in every thread it starts (gRPC workers, the gRPC poller); when it stops
    (SIGTERM), the merged statistics go to ``out``."""
    import cProfile
    import pstats

    from directpv_csi.cmd.main import main as cli

    profilers: List[cProfile.Profile] = []
    guard = threading.Lock()

    def bootstrap(frame: Any, event: str, arg: Any) -> None:  # first event of a new thread
        prof = cProfile.Profile()
        with guard:
            profilers.append(prof)
        prof.enable()  # this thread's profile function from now on

    threading.setprofile(bootstrap)
    rc = cli(argv)
    with guard:
        found = [p for p in profilers if p.getstats()]
    stats = pstats.Stats(found[0])
    for p in found[1:]:
        stats.add(p)
    stats.dump_stats(out)
    return rc


def start_server(work: Path, state: Path, args: argparse.Namespace, profile_out: str = "") -> Tuple[Any, Any]:
    """`directpv-csi standalone --no-node` on ``state`` (its store.sqlite seeded), a child process;
    returns (process, channel) once it answers. ``profile_out``: run it under profile_child."""
    sock = state / "csi.sock"
    cmd = ["standalone", "--state-dir", str(state), "--endpoint", f"unix://{sock}", "--no-node",
           "--log-level", "WARNING", "--synchronous", args.synchronous, "--workers", str(args.workers)]
    if args.metrics:
        cmd += ["--metrics-address", "127.0.0.1:0"]
    head = ([sys.executable, str(Path(__file__).resolve()), PROFILE_CHILD, profile_out, "--"] if profile_out
            else [sys.executable, "-m", "directpv_csi.cmd.main"])
    log = open(work / f"server-{state.name}.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(head + cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO / "driver" / "src")})
    log.close()
    deadline = time.monotonic() + 60
    while not sock.exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}): see {work}/server-{state.name}.log")
        time.sleep(0.05)
    ch = grpc.insecure_channel(f"unix://{sock}")
    grpc.channel_ready_future(ch).result(timeout=30)
    return proc, ch


def stop_server(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def print_profile(path: str, calls: int, top: int) -> None:
    """The profiled server's thread time per call, by function: own time and cumulative (waits for
    work excluded)."""
    import pstats

    stats = pstats.Stats(path)
    raw: Dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows: List[Tuple[str, int, float, float, bool]] = []  # where, calls, own, cumulative, driver code
    idle = 0.0
    for (file, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        short = "/".join(Path(file).parts[-2:])
        if file == "~" and func.startswith(IDLE):
            idle += tt
            continue
        if (func, Path(file).name) in IDLE_LOOPS:
            idle += tt  # a thread's loop: its own time is the wait; what it calls is counted where it is
            continue
        where = func if file == "~" else f"{func} ({short}:{line})"
        rows.append((where, nc, tt, ct, "directpv_csi" in file))
    busy = sum(r[2] for r in rows)
    print(f"   server thread time per call (profiled, wall clock, profiling slows every Python call): "
          f"{busy / calls * 1e6:.0f} us busy ({idle / calls * 1e6:.0f} us waiting for work or locks, not counted)")
    tables: Tuple[Tuple[str, Callable[[Tuple[str, int, float, float, bool]], float], bool], ...] = (
        ("own time", lambda r: r[2], False), ("cumulative", lambda r: r[3], False),
        ("cumulative, driver code", lambda r: r[3], True))
    for title, key, ours in tables:
        print(f"   top {top} by {title} (us per call, calls per call):")
        for row in sorted((r for r in rows if r[4] or not ours), key=key, reverse=True)[:top]:
            print(f"     {key(row) / calls * 1e6:8.1f}  x{row[1] / calls:<5.1f} {row[0]}")

def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == PROFILE_CHILD:
        return profile_child(sys.argv[2], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--drives-per-node", type=int, default=10)
    ap.add_argument("--creates", type=int, default=3000, help="CreateVolume calls per measured phase")
    ap.add_argument("--threads", type=int, default=8, help="client threads of the concurrent phases")
    ap.add_argument("--workers", type=int, default=16, help="the server's gRPC worker threads")
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                    help="the server's SQLite durability (FULL is the product default; NORMAL shows its cost)")
    ap.add_argument("--metrics", action="store_true",
                    help="the server serves /metrics: its CSI call counter (a gRPC interceptor) counts every call")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the server (a second one, under cProfile) during serial CreateVolume calls")
    ap.add_argument("--profile-threads", type=int, default=1, help="client threads of the profiled phase")
    ap.add_argument("--profile-top", type=int, default=20, help="functions shown per table")
    args = ap.parse_args()
    n_drives = args.nodes * args.drives_per_node

    work = Path(tempfile.mkdtemp(prefix="dpvb", dir="/tmp"))
    proc = None
    try:
        f50, f99 = fsync_floor(work)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"one durable SQLite commit (WAL, synchronous=FULL): p50 {f50:.2f} ms, p99 {f99:.2f} ms")
        t = time.perf_counter()
        state = work / "run"
        state.mkdir()
        nodes = seed(str(state / "store.sqlite"), args.nodes, args.drives_per_node)
        print(f"seeded {n_drives} drives on {args.nodes} nodes in {time.perf_counter() - t:.1f} s")
        if args.profile:
            (work / "prof").mkdir()
            shutil.copy(state / "store.sqlite", work / "prof" / "store.sqlite")

        # --- 2. scheduling decision alone (in process, same code as the server) --------------
        store = EmbeddedStore(str(state / "store.sqlite"), read_only=True)
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
        proc, ch = start_server(work, state, args)
        ident, ctl = pbg.IdentityStub(ch), pbg.ControllerStub(ch)
        rss_idle = rss_kib(proc.pid)

        def noop(i: int) -> None:
            ident.GetPluginInfo(pb.GetPluginInfoRequest())

        for i in range(300):  # warm-up
            noop(i)
        timed_concurrent(noop, 300, args.threads)
        n = args.creates
        cpu = Cpu(proc.pid)
        noop_lat, noop_total = timed_serial(noop, n)
        noop_cpu = cpu.per_call(n)
        noop_rate = n / noop_total
        cpu = Cpu(proc.pid)
        noop_conc_rate = n / timed_concurrent(noop, n, args.threads)
        noop_conc_cpu = cpu.per_call(n)

        cv_nodes = [rng.choice(nodes) for _ in range(n * 3)]
        cpu = Cpu(proc.pid)
        cv_lat, cv_total = timed_serial(lambda i: ctl.CreateVolume(create_req(f"s-{i}", cv_nodes[i])), n)
        cv_cpu = cpu.per_call(n)
        cv_rate = n / cv_total
        cpu = Cpu(proc.pid)
        conc_total = timed_concurrent(lambda i: ctl.CreateVolume(create_req(f"c-{i}", cv_nodes[n + i])), n,
                                      args.threads)
        conc_cpu = cpu.per_call(n)
        conc_rate = n / conc_total
        n_notopo = max(100, args.creates // 10)
        nt_lat, nt_total = timed_serial(lambda i: ctl.CreateVolume(create_req(f"n-{i}")), n_notopo)
        rss_after = rss_kib(proc.pid)
        f50b, f99b = fsync_floor(work, tag="b")

        p50, p99 = pct(cv_lat, 50) * 1e3, pct(cv_lat, 99) * 1e3
        print(f"\n== CreateVolume over the socket, {n_drives} drives on {args.nodes} nodes, "
              f"store synchronous={args.synchronous}, /metrics {'on' if args.metrics else 'off'} "
              f"({args.creates} calls per phase)")
        print(f"   no-op gRPC call (GetPluginInfo), serial: {noop_rate:.0f}/s, p50 {pct(noop_lat, 50) * 1e3:.2f} ms, "
              f"p99 {pct(noop_lat, 99) * 1e3:.2f} ms; {args.threads} client threads: {noop_conc_rate:.0f}/s")
        print(f"   CreateVolume, serial:     {cv_rate:.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"({cv_rate / noop_rate:.2f}x the serial no-op rate; "
              f"{(p50 - pct(noop_lat, 50) * 1e3):.2f} ms above its p50)")
        print(f"   CreateVolume, {args.threads} client threads: {conc_rate:.0f}/s "
              f"({conc_rate / noop_conc_rate:.2f}x the no-op rate at {args.threads} threads)")
        print("   server CPU per call (all its threads; client CPU in brackets), the figure least moved by other load:")
        print(f"     serial:    no-op {noop_cpu[0]:.0f} us ({noop_cpu[1]:.0f}), CreateVolume {cv_cpu[0]:.0f} us "
              f"({cv_cpu[1]:.0f}): {cv_cpu[0] / noop_cpu[0]:.2f}x, +{cv_cpu[0] - noop_cpu[0]:.0f} us")
        print(f"     {args.threads} threads: no-op {noop_conc_cpu[0]:.0f} us ({noop_conc_cpu[1]:.0f}), CreateVolume "
              f"{conc_cpu[0]:.0f} us ({conc_cpu[1]:.0f}): {conc_cpu[0] / noop_conc_cpu[0]:.2f}x, "
              f"+{conc_cpu[0] - noop_conc_cpu[0]:.0f} us")
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
        stop_server(proc)
        proc = None

        # --- 4. profile -------------------------------------------------------------------------
        if args.profile:
            out = str(work / "server.prof")
            proc, ch = start_server(work, work / "prof", args, profile_out=out)
            ctl = pbg.ControllerStub(ch)
            for i in range(50):  # warm-up (not profiled out: the same calls)
                ctl.CreateVolume(create_req(f"w-{i}", cv_nodes[i]))
            n = args.creates
            if args.profile_threads > 1:
                took = timed_concurrent(lambda i: ctl.CreateVolume(create_req(f"p-{i}", cv_nodes[i])), n,
                                        args.profile_threads)
            else:
                took = timed_serial(lambda i: ctl.CreateVolume(create_req(f"p-{i}", cv_nodes[i])), n)[1]
            ch.close()
            stop_server(proc)
            proc = None
            print(f"\n== profile: the server under cProfile, {n + 50} CreateVolume calls from "
                  f"{args.profile_threads} client thread(s): {n / took:.0f}/s profiled")
            print_profile(out, n + 50, args.profile_top)
        return 0
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
