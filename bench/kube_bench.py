#!/usr/bin/env python3
"""Kube store benchmark: the controller on a real kube-apiserver + etcd (a private control plane
started here, as tests/kube/controlplane.py starts it). One command, prints figures and ratios.

    .venv/bin/python bench/kube_bench.py [--drives 1000] [--rss-drives 10000] [--clients 1,8,32]
                                         [--creates 400] [--quick]

1. CreateVolume throughput, kube store, --drives drives (10 per node, registered as the node's
   registry does: KubeStore.put_drive, Ready): a `directpv-csi controller` child process, N
   concurrent gRPC clients over its unix socket, each request naming one node in
   requisite+preferred (what external-provisioner sends with WaitForFirstConsumer). Prints
   volumes/s, p50/p99 latency, CPU per call of each process (controller, kube-apiserver, etcd,
   client: the machine's cores are what bounds the rate), the API requests per call and the 409s
   the API server served (its own apiserver_request_total), and the same figures for the
   embedded store (`directpv-csi standalone --no-node`, SQLite synchronous=FULL, the same drives)
   as a ratio. Then every volume is deleted concurrently (DeleteVolume rate).
   Events: once the controller has stopped (it sends its queued Events and series counts at
   exit), the VolumeProvisioned/VolumeReleased occurrences on the API server (one per Event, or
   its series.count) are counted against the calls made: none may be missing.
2. Controller RSS holding --rss-drives drives in its watch cache: drive objects created
   concurrently (spec, then status), a fresh controller started, waited for until GetCapacity
   reports the sum of all drives (its informer listed them), then VmRSS/VmHWM from
   /proc/<pid>/status; against the same controller with 0 drives (baseline), as bytes per drive,
   against a controller whose cache keeps the API's dicts as they came (DIRECTPV_CSI_CACHE_SLIM=0:
   the figure before the slim cache, in the same run), and against the embedded standalone server
   holding the same drives.
3. The floor: each API write a CreateVolume makes (the DirectPVVolume create, the drive's ledger
   status write, an Event create; and a small update, a volume's status) sent alone by 8 threads
   of this process, with the CPU the kube-apiserver and etcd spend per request, against a no-op
   GET /version: what the API server costs per CreateVolume before the controller does any work,
   and the rate the machine's CPUs allow at that cost.

No target is set for these figures: they are compared against other drivers on the same API
server later. Skips (exit 0, with the build command) when etcd/kube-apiserver are not built.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "driver" / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))  # testsupport

import grpc  # noqa: E402
from directpv_csi.core.models import Drive  # noqa: E402
from directpv_csi.csi.proto import csi_pb2 as pb  # noqa: E402
from directpv_csi.csi.proto import csi_pb2_grpc as pbg  # noqa: E402
from directpv_csi.kube import events as kube_events  # noqa: E402
from directpv_csi.kube.objects import DRIVES, GROUP, VERSION, VOLUMES  # noqa: E402
from directpv_csi.kube.store import KubeStore, apply_crds  # noqa: E402
from directpv_csi.store.embedded import EmbeddedStore  # noqa: E402
from kube.controlplane import ControlPlane, find_binaries, launch, shutdown, tools_dir  # noqa: E402
from kubernetes import client as k8s  # noqa: E402

from testsupport import DriverProcess  # noqa: E402

GiB = 1024**3
TiB = 1024**4
MiB = 1024**2
PER_NODE = 10
CRD_DIR = REPO / "deploy" / "crds"
MODE = pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
CAP = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"), access_mode=MODE)


def pct(values: Sequence[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def proc_status(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
    return out


def drive_set(count: int, first: int = 0, seed: int = 1) -> List[Drive]:
    """``count`` drives, 10 per node, 1-8 TiB (never filled by the benchmark)."""
    rng = random.Random(seed + first)
    out = []
    for i in range(first, first + count):
        node = f"node-{i // PER_NODE:04d}"
        out.append(Drive(drive_id=f"drive-{i:05d}", node=node, name=f"nvme{i % PER_NODE}n1",
                         total=rng.choice((1, 2, 4, 8)) * TiB, topology={"directpv.dev/node": node}))
    return out


def register_kube(cp: ControlPlane, drives: Sequence[Drive], threads: int = 16) -> float:
    """Create the drive objects concurrently, as each node's registry would; returns seconds."""
    store = KubeStore(cp.api_client, events=False)  # seeding is not measured: no drive-added Events
    try:
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(store.put_drive, drives))
        return time.perf_counter() - t
    finally:
        store.close()


def register_embedded(path: Path, drives: Sequence[Drive]) -> None:
    store = EmbeddedStore(str(path), synchronous="NORMAL")
    try:
        for d in drives:
            store.put_drive(d)
    finally:
        store.close()


def api_requests(cp: ControlPlane) -> Dict[Tuple[str, str], int]:
    """The API server's own request counter (apiserver_request_total) by (resource, code), WATCH excluded."""
    ctx = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
    ctx.load_cert_chain(str(cp.pki.admin_cert), str(cp.pki.admin_key))
    with urllib.request.urlopen(cp.url + "/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    out: Dict[Tuple[str, str], int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("verb") == "WATCH":
            continue
        key = (labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else ""),
               labels.get("code", ""))
        out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def request_summary(before: Dict[Tuple[str, str], int], after: Dict[Tuple[str, str], int], calls: int) -> str:
    """``"2.10 API requests per call (directpvdrives/status 1.05, ...); 12 conflicts (409)"``."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    by_resource: Dict[str, int] = {}
    for (resource, _), n in delta.items():
        if n > 0 and resource:
            by_resource[resource] = by_resource.get(resource, 0) + n
    conflicts = sum(n for (_, code), n in delta.items() if code == "409")
    parts = ", ".join(f"{r} {n / calls:.2f}" for r, n in sorted(by_resource.items(), key=lambda kv: -kv[1]))
    return f"{sum(by_resource.values()) / calls:.2f} API requests per call ({parts}); {conflicts} conflicts (409)"


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of ``pid`` (its threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server(DriverProcess):
    """A `directpv-csi controller` (kube) or `standalone --no-node` (embedded) child process."""

    def __init__(self, workdir: Path, tag: str, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        super().__init__(argv[0], workdir / f"{tag}.sock", [*argv[1:], "--log-level", "WARNING"],
                         env={"PYTHONPATH": str(REPO / "driver" / "src"), **(env or {})})
        self.start()

    @classmethod
    def kube(cls, workdir: Path, tag: str, cp: ControlPlane, env: Optional[Dict[str, str]] = None) -> Server:
        # metrics on, as deployed, but on a free port (:30443 may be taken by anything on this host)
        return cls(workdir, tag, ["controller", "--kubeconfig", str(cp.kubeconfig),
                                  "--metrics-address", "127.0.0.1:0"], env)

    @classmethod
    def embedded(cls, workdir: Path, tag: str, state_dir: Path) -> Server:
        return cls(workdir, tag, ["standalone", "--no-node", "--state-dir", str(state_dir)])

    def wait(self, capacity: int, timeout_s: float = 120.0) -> float:
        """Wait until it serves and GetCapacity reports ``capacity``; returns the seconds it took."""
        t0 = time.monotonic()

        def holds() -> bool:
            got = self.controller.GetCapacity(pb.GetCapacityRequest(), timeout=5).available_capacity
            return bool(got == capacity)

        self.wait_ready(timeout_s, check=holds)
        return time.monotonic() - t0

    @property
    def controller(self) -> Any:
        return pbg.ControllerStub(self.channel)


def create_req(name: str, node: str) -> Any:
    req = pb.CreateVolumeRequest(name=name, volume_capabilities=[CAP],
                                 capacity_range=pb.CapacityRange(required_bytes=GiB))
    seg = {"directpv.dev/node": node}
    req.accessibility_requirements.requisite.add(segments=seg)
    req.accessibility_requirements.preferred.add(segments=seg)
    return req


def run_clients(fn: Callable[[int], Any], n: int, clients: int) -> Tuple[List[float], float, List[str]]:
    """``fn(i)`` for i in range(n) from ``clients`` threads; (latencies, wall seconds, errors)."""
    counter = iter(range(n))
    lock = threading.Lock()
    lat: List[float] = []
    errors: List[str] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                fn(i)
            except grpc.RpcError as e:
                with lock:
                    errors.append(f"{e.code().name}: {e.details()}")
                continue
            d = time.perf_counter() - t
            with lock:
                lat.append(d)

    ts = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return lat, time.perf_counter() - t0, errors


def throughput(server: Server, prefix: str, nodes: Sequence[str], clients_list: Sequence[int], creates: int,
               cp: Optional[ControlPlane], cpu_out: Optional[Dict[int, Dict[str, float]]] = None,
               ) -> Tuple[Dict[int, Tuple[float, float, float]], List[str]]:
    """CreateVolume rate and latency per client count; returns ({clients: (rate, p50, p99)}, names).
    ``cpu_out`` gets {clients: {process: CPU ms per call}}."""
    rng = random.Random(7)  # the same node sequence for both stores
    figures: Dict[int, Tuple[float, float, float]] = {}
    names: List[str] = []
    for clients in clients_list:
        picks = [rng.choice(nodes) for _ in range(creates)]
        batch = [f"{prefix}-c{clients}-{i:05d}" for i in range(creates)]
        pids = {"controller" if cp is not None else "standalone": server.pid}
        if cp is not None:
            pids.update({name: p.popen.pid for name, p in cp.procs.items()})
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client0 = time.process_time()
        req0 = api_requests(cp) if cp is not None else {}

        def call(i: int, b: List[str] = batch, p: List[str] = picks) -> Any:
            return server.controller.CreateVolume(create_req(b[i], p[i]), timeout=120)

        lat, wall, errors = run_clients(call, creates, clients)
        if errors:
            raise RuntimeError(f"{len(errors)} CreateVolume failed, first: {errors[0]}")
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) * 1e3 / creates for name, pid in pids.items()}
        cpu["client"] = (time.process_time() - client0) * 1e3 / creates
        names += batch
        rate, p50, p99 = creates / wall, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
        figures[clients] = (rate, p50, p99)
        if cpu_out is not None:
            cpu_out[clients] = cpu
        print(f"   {prefix}, {plural(clients, 'client')}: {rate:.1f} volumes/s, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({creates} calls)", flush=True)
        print("      CPU per call: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in cpu.items())
              + f" (sum {sum(cpu.values()):.1f} ms; {os.cpu_count()} CPUs shared with the machine's other work)")
        if cp is not None:
            print("      " + request_summary(req0, api_requests(cp), creates), flush=True)
    return figures, names


def event_occurrences(cp: ControlPlane, reasons: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """{reason: (occurrences, Event objects)} of the controller's Events (csi.directpv.dev) in ``default``."""
    listed = k8s.EventsV1Api(cp.api_client).list_namespaced_event("default")
    out = {r: (0, 0) for r in reasons}
    for e in listed.items:
        if e.reporting_controller == kube_events.REPORTING_CONTROLLER and e.reason in out:
            n, objs = out[e.reason]
            out[e.reason] = (n + (e.series.count if e.series is not None else 1), objs + 1)
    return out


def floor(cp: ControlPlane, drive_ids: Sequence[str], n: int, threads: int = 8) -> Dict[str, float]:
    """API server + etcd CPU (ms) per request of each write a CreateVolume makes, sent alone by
    ``threads`` threads (raw client calls, no controller): the cost below which no controller gets."""
    api = k8s.CustomObjectsApi(cp.api_client)
    events_api = k8s.EventsV1Api(cp.api_client)
    version_api = k8s.VersionApi(cp.api_client)
    pids = {name: p.popen.pid for name, p in cp.procs.items()}
    tag = f"{random.getrandbits(32):08x}"
    drives: List[Dict[str, Any]] = [cast(Dict[str, Any], api.get_cluster_custom_object(GROUP, VERSION, DRIVES, d))
                                    for d in drive_ids[:n]]

    def volume_create(i: int) -> Any:
        name = f"floor-{tag}-{i:05d}"
        return api.create_cluster_custom_object(GROUP, VERSION, VOLUMES, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVVolume",
            "metadata": {"name": name, "labels": {"directpv.dev/node": "node-0000",
                                                   "directpv.dev/drive": drive_ids[0]}},
            "spec": {"name": name, "driveID": drive_ids[0], "node": "node-0000", "size": GiB, "projectID": i + 1,
                     "parameters": {}, "labels": {}, "createdAt": time.time(), "uid": tag}})

    def ledger_write(i: int) -> Any:
        d = drives[i % len(drives)]
        st = dict(d["status"])
        st["volumes"] = dict(st.get("volumes") or {}, **{f"floor-{tag}-{i}": {
            "size": GiB, "projectID": 9000 + i, "reservedAt": time.time(), "parameters": {}, "uid": tag}})
        st["allocated"] = int(st.get("allocated") or 0) + GiB
        st["volumeCount"] = len(st["volumes"])
        return api.replace_cluster_custom_object_status(GROUP, VERSION, DRIVES, d["metadata"]["name"],
                                                         dict(d, status=st))

    def event_create(i: int) -> Any:
        return events_api.create_namespaced_event("default", cast(k8s.EventsV1Event, k8s.EventsV1Event.from_dict({
            "metadata": {"name": f"floor-{tag}-{i}", "namespace": "default"},
            "eventTime": kube_events.micro_time(time.time()), "reportingController": "bench",
            "reportingInstance": "bench", "action": "Provision", "reason": "Floor", "type": "Normal",
            "note": f"floor event {i}", "regarding": {"apiVersion": f"{GROUP}/{VERSION}",
                                                     "kind": "DirectPVVolume", "name": f"floor-{tag}-{i}"}})))

    def volume_status(i: int) -> Any:  # an update of a small object: what any update costs
        return api.replace_cluster_custom_object_status(GROUP, VERSION, VOLUMES, f"floor-{tag}-{i:05d}",
                                                         dict(created[i], status={"status": "Ready"}))

    created: List[Dict[str, Any]] = []
    out: Dict[str, float] = {}
    for what, fn, count in (("GET /version (no-op)", lambda i: version_api.get_code(), n),
                            ("DirectPVVolume create", volume_create, n),
                            ("DirectPVVolume status write (a small update)", volume_status, n),
                            ("DirectPVDrive status write (+1 ledger record)", ledger_write, len(drives)),
                            ("Event create", event_create, n)):
        if fn is volume_status:  # the objects just created, read before the clock starts
            created[:] = [cast(Dict[str, Any], api.get_cluster_custom_object(GROUP, VERSION, VOLUMES,
                                                                              f"floor-{tag}-{i:05d}"))
                          for i in range(n)]
        req0 = api_requests(cp)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        _, wall, errors = run_clients(fn, count, threads)
        if errors:
            raise RuntimeError(f"floor {what}: {len(errors)} failed, first: {errors[0]}")
        per = {name: (cpu_seconds(pid) - cpu0[name]) * 1e3 / count for name, pid in pids.items()}
        out[what] = sum(per.values())
        print(f"   {what}: {count / wall:.0f}/s with {threads} threads; per request " + ", ".join(
            f"{name} {ms:.2f} ms" for name, ms in per.items()) + f" (sum {out[what]:.2f} ms); "
            + request_summary(req0, api_requests(cp), count).split(" (", 1)[0], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drives", type=int, default=1000, help="drives registered for the throughput phase")
    ap.add_argument("--rss-drives", type=int, default=10000, help="drives held by the controller for RSS")
    ap.add_argument("--clients", default="1,8,32", help="concurrent gRPC clients, comma-separated")
    ap.add_argument("--creates", type=int, default=400, help="CreateVolume calls per client count and store")
    ap.add_argument("--quick", action="store_true", help="small numbers: a smoke run in well under a minute")
    args = ap.parse_args()
    if args.quick:
        args.drives, args.rss_drives, args.clients, args.creates = 30, 200, "1,4", 40
    clients_list = [int(c) for c in args.clients.split(",")]
    if args.rss_drives < args.drives:
        ap.error("--rss-drives must be >= --drives (the RSS phase adds drives to those of the first phase)")

    etcd, apiserver = find_binaries()
    if etcd is None or apiserver is None:
        print(f"kube_bench: needs etcd and kube-apiserver in {tools_dir()} "
              "(bash scripts/build-kube-tools.sh kube-apiserver etcd); skipped")
        return 0

    work = Path(tempfile.mkdtemp(prefix="dpvkb", dir="/tmp"))  # unix socket paths are short
    servers: List[Server] = []
    cp: Optional[ControlPlane] = None

    def start(server: Server) -> Server:
        servers.append(server)
        return server

    def stop(server: Server) -> None:
        server.stop()
        servers.remove(server)

    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        try:
            cp = launch(etcd, apiserver, work / "cp1")
        except RuntimeError:  # a free port taken between choosing and binding: once more
            cp = launch(etcd, apiserver, work / "cp2")
        apply_crds(cp.api_client, CRD_DIR)
        print(f"control plane (etcd + kube-apiserver) ready in {cp.start_seconds:.1f} s, CRDs applied", flush=True)

        # --- baseline: the controller holding no drive --------------------------------------
        base = start(Server.kube(work, "base", cp))
        base.wait(0)
        time.sleep(1.0)
        rss0 = proc_status(base.pid)
        stop(base)

        # --- 1. CreateVolume throughput -----------------------------------------------------
        drives = drive_set(args.drives)
        nodes = sorted({d.node for d in drives})
        secs = register_kube(cp, drives)
        print(f"registered {len(drives)} drives on {len(nodes)} nodes in {secs:.1f} s "
              f"({2 * len(drives) / secs:.0f} API writes/s)", flush=True)
        print(f"\n== CreateVolume, {len(drives)} drives on {len(nodes)} nodes, one node per request, 1 GiB each")
        kube = start(Server.kube(work, "kube", cp))
        kube.wait(sum(d.total for d in drives))
        kube_cpu: Dict[int, Dict[str, float]] = {}
        kube_fig, kube_names = throughput(kube, "kube", nodes, clients_list, args.creates, cp, kube_cpu)

        state = work / "embedded"
        state.mkdir()
        register_embedded(state / "store.sqlite", drives)
        emb = start(Server.embedded(work, "emb", state))
        emb.wait(sum(d.total for d in drives))
        emb_fig, _ = throughput(emb, "embedded", nodes, clients_list, args.creates, None)
        stop(emb)
        for c in clients_list:
            (kr, k50, k99), (er, e50, e99) = kube_fig[c], emb_fig[c]
            print(f"   ratio kube/embedded, {plural(c, 'client')}: "
                  f"throughput {kr / er:.2f}x, p50 {k50 / e50:.2f}x, p99 {k99 / e99:.2f}x")

        top = max(clients_list)
        req0 = api_requests(cp)
        lat, wall, errors = run_clients(
            lambda i: kube.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=kube_names[i]), timeout=120),
            len(kube_names), top)
        if errors:
            raise RuntimeError(f"{len(errors)} DeleteVolume failed, first: {errors[0]}")
        print(f"   kube DeleteVolume, {plural(top, 'client')}: {len(kube_names) / wall:.1f} volumes/s, "
              f"p50 {pct(lat, 50) * 1e3:.2f} ms, p99 {pct(lat, 99) * 1e3:.2f} ms ({len(kube_names)} calls)")
        print("      " + request_summary(req0, api_requests(cp), len(kube_names)), flush=True)
        kube.wait(sum(d.total for d in drives))  # every reservation released
        stop(kube)  # SIGTERM: the recorder sends what is queued and the series counts

        got = event_occurrences(cp, (kube_events.VOLUME_PROVISIONED, kube_events.VOLUME_RELEASED))
        for reason, calls in ((kube_events.VOLUME_PROVISIONED, len(kube_names)),
                              (kube_events.VOLUME_RELEASED, len(kube_names))):
            occurrences, objects = got[reason]
            print(f"   Events {reason}: {occurrences} occurrence(s) in {objects} Event object(s) for {calls} calls "
                  f"-> {'none lost' if occurrences == calls else f'{calls - occurrences} MISSING'}")


        # --- 2. RSS holding --rss-drives drives ------------------------------------------------
        more = drive_set(args.rss_drives - args.drives, first=args.drives)
        if more:
            secs = register_kube(cp, more)
            print(f"\nregistered {len(more)} more drives in {secs:.1f} s ({2 * len(more) / secs:.0f} API writes/s)")
        every = drives + more
        big = start(Server.kube(work, "rss", cp))
        ready_s = big.wait(sum(d.total for d in every))
        time.sleep(1.0)
        rss = proc_status(big.pid)
        stop(big)
        # before, in the same run: the cache keeping the API's dicts as they came (no slim copies)
        full = start(Server.kube(work, "rss-full", cp, env={"DIRECTPV_CSI_CACHE_SLIM": "0"}))
        full.wait(sum(d.total for d in every))
        time.sleep(1.0)
        rss_full = proc_status(full.pid)
        stop(full)

        state2 = work / "embedded-rss"
        state2.mkdir()
        register_embedded(state2 / "store.sqlite", every)
        emb2 = start(Server.embedded(work, "emb-rss", state2))
        emb2.wait(sum(d.total for d in every))
        time.sleep(1.0)
        rss_emb = proc_status(emb2.pid)
        stop(emb2)

        n = len(every)
        per_drive = (rss["VmRSS"] - rss0["VmRSS"]) * 1024 / n
        print(f"\n== controller RSS holding {n} drives in its watch cache (serving {ready_s:.1f} s after start)")
        print(f"   baseline, 0 drives: VmRSS {rss0['VmRSS'] / 1024:.1f} MiB, VmHWM {rss0['VmHWM'] / 1024:.1f} MiB")
        print(f"   {n} drives: VmRSS {rss['VmRSS'] / 1024:.1f} MiB, VmHWM {rss['VmHWM'] / 1024:.1f} MiB")
        print(f"   per drive: {per_drive:.0f} bytes (VmRSS above the baseline / {n}); "
              f"peak per drive {(rss['VmHWM'] - rss0['VmHWM']) * 1024 / n:.0f} bytes")
        print(f"   before (DIRECTPV_CSI_CACHE_SLIM=0: the API's dicts as they came, same run): VmRSS "
              f"{rss_full['VmRSS'] / 1024:.1f} MiB, VmHWM {rss_full['VmHWM'] / 1024:.1f} MiB, per drive "
              f"{(rss_full['VmRSS'] - rss0['VmRSS']) * 1024 / n:.0f} bytes")
        print(f"   embedded standalone (--no-node) holding the same {n} drives: VmRSS "
              f"{rss_emb['VmRSS'] / 1024:.1f} MiB -> kube/embedded {rss['VmRSS'] / rss_emb['VmRSS']:.2f}x")

        # --- 3. the floor (last: its writes change the drives' allocations) --------------------
        print("\n== the floor: each write of a CreateVolume sent alone (API server + etcd CPU per request)")
        costs = floor(cp, [d.drive_id for d in drives], min(1000, len(drives)))
        per_create = costs["DirectPVVolume create"] + costs["DirectPVDrive status write (+1 ledger record)"]
        cpus = os.cpu_count() or 1
        print(f"   a CreateVolume writes the volume object and its drive's ledger (Events: combined past 10): "
              f"{per_create:.2f} ms of API server + etcd CPU -> at most {cpus * 1e3 / per_create:.0f}/s on "
              f"{cpus} CPUs with a controller costing nothing; one write alone (the volume object) "
              f"{cpus * 1e3 / costs['DirectPVVolume create']:.0f}/s")
        for c in clients_list:  # the floor plus what the controller and the clients spent per call in phase 1
            own = kube_cpu[c]["controller"] + kube_cpu[c]["client"]
            print(f"   with the controller and client CPU measured at {plural(c, 'client')} ({own:.1f} ms per call): "
                  f"at most {cpus * 1e3 / (per_create + own):.0f}/s; measured {kube_fig[c][0]:.0f}/s")
        return 0
    finally:
        for s in list(servers):
            s.stop()
        if cp is not None:
            cp.api_client.close()  # type: ignore[no-untyped-call]
            shutdown(cp.procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
