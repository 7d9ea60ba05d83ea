"""Figures on the real one-node cluster (tests/realnode/realnode.py): cluster start, install.yml to
Ready pods, PVC creation to a Running pod (p50/p90 of 20 one at a time, then 100 at once), teardown.

Needs root, `make cluster-setup` and `make image`; prints why and exits 0 when something is
missing. The pods run the pause image (the cost measured is the driver's and the kubelet's, not
an application's). Everything it creates goes away at the end: the cluster (RealNode.stop checks
the host), the loop drives by their exact names.

    .venv/bin/python bench/cluster_bench.py [--pvcs 20] [--burst 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from kube.controlplane import tools_dir  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from realnode.realnode import (  # noqa: E402
    NODE_NAME,
    RealNode,
    busy_reasons,
    image_ref,
    launch,
    missing_requirements,
    new_work_dir,
)

IMAGE = Path(os.environ.get("IMAGE_CACHE", str(Path.home() / ".cache" / "directpv-csi" / "image"))) \
    / "directpv-csi.oci.tar"
NS = "dpv-bench"


def playbook(name: str, variables: Dict[str, Any], work: Path) -> float:
    """Run playbooks/NAME on localhost with ``variables``; returns its wall time."""
    coll = work / "collections" / "ansible_collections" / "directpv"
    coll.mkdir(parents=True, exist_ok=True)
    if not (coll / "csi").exists():
        (coll / "csi").symlink_to(REPO)
    extra = work / f"{name}.vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(work / "collections"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(REPO / "playbooks" / name), "-e", f"@{extra}"],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return time.monotonic() - t0


def pod_with_pvc(name: str, pause: str) -> List[Dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "directpv",
                  "resources": {"requests": {"storage": "16Mi"}}}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
         "spec": {"terminationGracePeriodSeconds": 0,
                  "containers": [{"name": "pause", "image": pause, "imagePullPolicy": "Never",
                                  "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
                  "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": name}}]}},
    ]


def running(core: k8s.CoreV1Api, names: List[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(NS).items:
            if pod.metadata.name in pending and pod.status.phase == "Running":
                pending.discard(pod.metadata.name)
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"not Running after {timeout_s:.0f} s: {sorted(pending)[:10]}")


class Figures(Dict[str, float]):
    """Printed as they are measured (a later failure keeps the earlier figures)."""

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        print(f"cluster_bench: {key:<28} {value:8.1f}", flush=True)


def bench(node: RealNode, devs: List[str], work: Path, pvcs: int, burst: int, figures: Figures) -> None:
    figures["cluster_start_s"] = node.start_seconds
    archives = [IMAGE] + [tools_dir() / "images" / f"{n}.oci.tar" for n in ("csi-provisioner", "csi-resizer")]
    t0 = time.monotonic()
    for a in archives:
        node.import_image(a)
    figures["images_import_s"] = time.monotonic() - t0
    figures["drives_playbook_s"] = playbook("drives.yml", {
        "directpv_drives": [os.path.basename(d) for d in devs], "directpv_node_name": NODE_NAME,
        "directpv_allow_loop": True}, work)
    figures["install_to_ready_s"] = playbook("install.yml", {
        "directpv_kubeconfig": str(node.kubeconfig), "directpv_kubelet_dir": str(node.kubelet_dir),
        "directpv_state_dir": str(node.state_dir), "directpv_node_allow_loop": True, "directpv_node_devices": devs,
        "directpv_controller_replicas": 1, "directpv_image_pull_policy": "Never"}, work)
    assert node.api_client is not None
    core = k8s.CoreV1Api(node.api_client)
    core.create_namespace({"metadata": {"name": NS}})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", NS)
            break
        except k8s.ApiException:
            time.sleep(0.5)
    pause = image_ref(tools_dir() / "images" / "pause.oci.tar")
    one: List[float] = []
    for i in range(pvcs):
        name = f"one-{i}"
        pvc, pod = pod_with_pvc(name, pause)
        t0 = time.monotonic()
        core.create_namespaced_persistent_volume_claim(NS, pvc)
        core.create_namespaced_pod(NS, pod)
        running(core, [name], 120)
        one.append(time.monotonic() - t0)
    figures["pvc_to_running_p50_s"] = statistics.median(one)
    figures["pvc_to_running_p90_s"] = sorted(one)[int(0.9 * (len(one) - 1))]
    if burst:
        names = [f"burst-{i}" for i in range(burst)]
        t0 = time.monotonic()
        for name in names:
            pvc, pod = pod_with_pvc(name, pause)
            core.create_namespaced_persistent_volume_claim(NS, pvc)
            core.create_namespaced_pod(NS, pod)
        running(core, names, 900)
        figures[f"burst_{burst}_all_running_s"] = time.monotonic() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pvcs", type=int, default=20)
    p.add_argument("--burst", type=int, default=100)
    args = p.parse_args()
    missing = missing_requirements() + ([] if IMAGE.exists() else [f"{IMAGE} (make image)"])
    busy = busy_reasons()
    if missing or busy:
        print(f"cluster_bench: skipped: needs {', '.join(missing + busy)}")
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="dpvbench.", dir="/tmp"))
    devs: List[str] = []
    for i in range(2):
        backing = scratch / f"drive{i}.img"
        subprocess.run(["truncate", "-s", "8G", str(backing)], check=True)
        devs.append(subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                                   capture_output=True, text=True).stdout.strip())
    work = new_work_dir()
    node = None
    figures = Figures()
    try:
        node = launch(work)
        bench(node, devs, scratch, args.pvcs, args.burst, figures)
    finally:
        t0 = time.monotonic()
        problems = node.stop() if node is not None else []
        teardown = time.monotonic() - t0
        for dev in devs:
            subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)
        if not problems:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        figures["teardown_s"] = teardown
    if problems:
        print("cluster_bench: the host was left changed:\n" + "\n".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
