"""DirectPVInitRequest handled by a real `directpv-csi node` process on the real API server, on real
loop devices: a dry run plans and touches nothing; a device without its reviewed id, a device that
changed since its id was taken, and a mounted device are refused (even with force) and left as they
were; the selected device is formatted, becomes a Ready drive, and asking again does not format it
again.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from directpv_csi.kube.nodes import INIT_REQUESTS, NODES, init_request_body
from directpv_csi.kube.store import DRIVES, GROUP, VERSION
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testsupport import eventually, needs_root, needs_tool

from .cluster import node_process

pytestmark = [needs_root, needs_tool("mkfs.ext4"), pytest.mark.slow]


@pytest.fixture(name="workdir")
def workdir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpvir", dir="/tmp"))  # unix socket paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def blkid(dev: str) -> str:
    """The filesystem type on ``dev`` ("" when none), read by blkid (not our code)."""
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True)
    return out.stdout.strip()


def test_init_requests_format_only_the_reviewed_device(
    kube_store_cluster: Any, loopdev: Callable[..., str], workdir: Path
) -> None:
    cp = kube_store_cluster.control_plane
    api: Any = client.CustomObjectsApi(cp.api_client)
    node = f"init-{uuid.uuid4().hex[:6]}"
    a, b, c = (loopdev("600M") for _ in range(3))
    subprocess.run(["mkfs.ext4", "-q", "-F", c], check=True, capture_output=True)
    data = workdir / "c-mounted"
    data.mkdir()
    subprocess.run(["mount", c, str(data)], check=True)
    (data / "keep.txt").write_text("precious")
    requests: List[str] = []

    def submit(devices: List[Dict[str, str]], **spec: Any) -> str:
        name = f"{node}-{len(requests)}"
        body = init_request_body(name, devices)  # labelled directpv.dev/node=<node>: the node's scoped watch
        body["spec"].update(spec)
        api.create_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, body)
        requests.append(name)
        return name

    def finished(name: str) -> Optional[Dict[str, Any]]:
        obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, name)
        st = obj.get("status") or {}
        return st if st.get("status") in ("Processed", "Error") else None

    def wait_done(name: str) -> Dict[str, Any]:
        assert eventually(lambda: finished(name) is not None, 60), (name, proc.tail())
        st = finished(name)
        assert st is not None
        return st

    proc = node_process(cp.kubeconfig, workdir, node, [a, b, c])
    try:
        proc.start().wait_ready()

        def ids() -> Dict[str, str]:
            try:
                obj = api.get_cluster_custom_object(GROUP, VERSION, NODES, node)
            except ApiException:
                return {}
            return {r["name"]: r["id"] for r in (obj.get("status") or {}).get("devices") or []}

        assert eventually(lambda: len(ids()) == 3, 20), proc.tail()
        token = ids()
        name_a, name_b, name_c = (Path(d).name for d in (a, b, c))
        subprocess.run(["mkfs.ext4", "-q", "-F", b], check=True, capture_output=True)  # b changes after review

        planned = wait_done(submit([{"node": node, "name": name_a, "id": token[name_a]}], dryRun=True))
        assert planned["status"] == "Processed" and planned["requested"] == 1
        row = planned["results"][0]
        assert row["status"] == "Planned" and "mkfs.xfs" in row["message"] and row["driveID"], row
        assert blkid(a) == ""  # nothing ran

        no_id = wait_done(submit([{"node": node, "name": name_a}]))
        assert no_id["status"] == "Error" and "carries no id" in no_id["results"][0]["message"]
        assert blkid(a) == ""

        st = wait_done(submit([{"node": node, "name": name_a, "id": token[name_a]},
                               {"node": node, "name": name_b, "id": token[name_b]},
                               {"node": node, "name": name_c, "id": token[name_c]}], force=True))
        got = {r["name"]: r for r in st["results"]}
        assert st["status"] == "Error" and st["requested"] == 3
        assert got[name_a]["status"] == "Success" and got[name_a]["driveID"], got[name_a]
        assert got[name_b]["status"] == "Error" and "changed since" in got[name_b]["message"], got[name_b]
        assert got[name_c]["status"] == "Error" and "mounted" in got[name_c]["message"], got[name_c]
        assert blkid(a) == "xfs" and blkid(b) == "ext4" and blkid(c) == "ext4"
        assert (data / "keep.txt").read_text() == "precious"
        drive_id = got[name_a]["driveID"]

        def reasons(request: str) -> List[str]:
            events = client.EventsV1Api(cp.api_client).list_namespaced_event("default").items
            return sorted(str(e.reason) for e in events if e.regarding is not None and e.regarding.name == request)

        # `kubectl describe dpvi` tells the same story (the two refusals are one InitError series)
        assert eventually(lambda: reasons(requests[2]) == ["DeviceFormatted", "InitError"], 10), reasons(requests[2])
        assert reasons(requests[0]) == ["DeviceInitPlanned"]

        def ready() -> bool:
            try:
                obj = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, drive_id)
            except ApiException:
                return False
            return bool(obj["spec"]["node"] == node and (obj.get("status") or {}).get("status") == "Ready")

        assert eventually(ready, 30), proc.tail()  # the registry synced at once and registered it

        again = wait_done(submit([{"node": node, "name": name_a, "id": token[name_a]}], force=True))
        assert again["status"] == "Processed"
        assert again["results"][0]["driveID"] == drive_id and "nothing was formatted" in again["results"][0]["message"]
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True, check=False)
        subprocess.run(["umount", "-R", "-l", str(workdir / "state" / "mnt")], capture_output=True, check=False)
        for name in [*requests, node]:
            plural = NODES if name == node else INIT_REQUESTS
            try:
                api.delete_cluster_custom_object(GROUP, VERSION, plural, name)
            except ApiException as e:
                if e.status != 404:
                    raise
        kube_store_cluster.wipe()
