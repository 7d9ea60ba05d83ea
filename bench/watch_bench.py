#!/usr/bin/env python3
"""Watch traffic per node on a real kube-apiserver + etcd (a private control plane started here):
what one node plugin's store receives when *another* node's objects change, and when its own do.

    .venv/bin/python bench/watch_bench.py [--drives 5000] [--nodes 1000] [--changes 500] [--quick]

--drives drives spread over --nodes simulated nodes, one volume reserved on each drive (so
2 x --drives objects). Two observers: a node plugin's store as `directpv-csi node` builds it
(`KubeStore(node=...)`: label selector directpv.dev/node) and a cluster-wide store (what every
node held before, and what the controller holds). Then --changes label updates on drives and
volumes of other nodes, then the same number on the observed node's own objects. For each
observer: watch events received and their bytes (each event's object as JSON, what the client
decoded), objects cached, time to the first sync. Figures before/after are the two observers in
the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "driver" / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))  # testsupport

from directpv_csi.core.models import Drive, Volume  # noqa: E402
from directpv_csi.kube.informer import Informer  # noqa: E402
from directpv_csi.kube.store import KubeStore, apply_crds  # noqa: E402
from kube.controlplane import ControlPlane, find_binaries, launch, shutdown, tools_dir  # noqa: E402

GiB = 1024**3
CRD_DIR = REPO / "deploy" / "crds"


class Tap:
    """Counts the events and bytes one informer's watch delivers (wraps its event callback)."""

    def __init__(self, informer: Informer) -> None:
        self.events = 0
        self.bytes = 0
        lw: Any = informer._lw
        inner = lw._on_event

        def on_event(kind: str, obj: Dict[str, Any]) -> None:
            self.events += 1
            self.bytes += len(json.dumps(obj))
            inner(kind, obj)

        lw._on_event = on_event


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def observe(store: KubeStore) -> Tuple[Tap, Tap]:
    return Tap(store._drives), Tap(store._volumes)


def totals(taps: Tuple[Tap, Tap]) -> Tuple[int, int]:
    return sum(t.events for t in taps), sum(t.bytes for t in taps)


def wait(pred: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the observers did not catch up")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drives", type=int, default=5000, help="drives (one volume each)")
    ap.add_argument("--nodes", type=int, default=1000, help="simulated nodes")
    ap.add_argument("--changes", type=int, default=500, help="label updates on other nodes' objects, then own")
    ap.add_argument("--quick", action="store_true", help="200 drives on 20 nodes, 50 changes")
    args = ap.parse_args()
    if args.quick:
        args.drives, args.nodes, args.changes = 200, 20, 50
    etcd, apiserver = find_binaries()
    if etcd is None or apiserver is None:
        print(f"watch_bench: needs etcd and kube-apiserver in {tools_dir()} "
              "(bash scripts/build-kube-tools.sh kube-apiserver etcd); skipped")
        return 0
    work = Path(tempfile.mkdtemp(prefix="dpvwb", dir="/tmp"))
    cp: Optional[ControlPlane] = None
    stores: List[KubeStore] = []
    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        cp = launch(etcd, apiserver, work / "cp")
        apply_crds(cp.api_client, CRD_DIR)
        admin = KubeStore.from_kubeconfig(str(cp.kubeconfig), events=False, pool_size=16)
        stores.append(admin)
        t0 = time.monotonic()

        def make(i: int) -> None:
            node = node_name(i % args.nodes)
            admin.put_drive(Drive(drive_id=f"d{i:06d}", node=node, name="sdb", total=100 * GiB))
            admin.reserve_volume(Volume(name=f"pvc-{i:06d}", drive_id=f"d{i:06d}", node="", size=GiB,
                                        project_id=0))

        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(make, range(args.drives)))
        print(f"{args.drives} drives and {args.drives} volumes on {args.nodes} nodes created in "
              f"{time.monotonic() - t0:.1f} s", flush=True)

        me = node_name(0)
        observers: Dict[str, KubeStore] = {}
        for label, node in (("node-scoped (after)", me), ("cluster-wide (before)", None)):
            t1 = time.monotonic()
            observers[label] = KubeStore.from_kubeconfig(str(cp.kubeconfig), events=False, node=node)
            stores.append(observers[label])
            s = observers[label]
            print(f"{label}: synced in {time.monotonic() - t1:.2f} s, caches {len(s._drives.all())} drives and "
                  f"{len(s._volumes.all())} volumes", flush=True)
        taps = {label: observe(s) for label, s in observers.items()}

        mine = [d.drive_id for d in admin.list_drives(me)]
        others = [f"d{i:06d}" for i in range(args.drives) if i % args.nodes != 0]

        def change(drive_ids: List[str], tag: str) -> None:
            for k in range(args.changes):
                drive_id = drive_ids[k % len(drive_ids)]
                if k % 2 == 0:
                    admin.update_drive(drive_id, labels={"bench": f"{tag}{k}"})
                else:
                    admin.update_volume(f"pvc-{drive_id[1:]}", labels={"bench": f"{tag}{k}"})

        def barrier(tag: str) -> None:  # one change to an own drive: when seen, all before it was too
            admin.update_drive(mine[0], labels={"bench": tag})
            def seen(s: KubeStore) -> bool:
                d = s.get_drive(mine[0])
                return d is not None and d.labels.get("bench") == tag

            for s in observers.values():
                wait(lambda s=s: seen(s))

        for phase, ids in (("another node's objects change", others), ("its own objects change", mine)):
            before = {label: totals(t) for label, t in taps.items()}
            change(ids, phase[:3])
            barrier(f"b-{phase[:3]}")
            print(f"{args.changes} changes, {phase}:")
            for label, t in taps.items():
                ev, by = totals(t)
                ev0, by0 = before[label]
                print(f"   {label}: {ev - ev0 - 1} events, {(by - by0) / 1024:.1f} KiB received "
                      "(the barrier's one event not counted; its bytes are)", flush=True)
        return 0
    finally:
        for s in stores:
            s.close()
        if cp is not None:
            cp.api_client.close()  # type: ignore[no-untyped-call]  # the kubernetes client leaves it unannotated
            shutdown(cp.procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
