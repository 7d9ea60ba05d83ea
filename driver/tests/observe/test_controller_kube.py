"""`directpv-csi controller` as a process on the real kube-apiserver (tests/kube): the periodic
ledger reconcile, the Event recorder's counters on /metrics, and /readyz, /healthz while the API
server is reachable, cut off, and back.

No kubelet or scheduler is needed: the controller only talks to the API server. To cut it off
without stopping the control plane the whole session shares, it reaches the API server through
a TCP relay of this test (observe_helpers.TcpRelay), which the test closes and reopens.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List
from urllib.parse import urlparse

import pytest
from csi.csi_helpers import GiB, create_req
from directpv_csi.core.models import Drive, Volume
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.kube.store import DRIVES, GROUP, VERSION, KubeStore
from kubernetes import client
from observe.observe_helpers import TcpRelay, get, metrics_url, one, scrape, series, wait_for

from testsupport import DriverProcess

pytestmark = [pytest.mark.slow]


class Controller(DriverProcess):
    """`directpv-csi controller` as a child process, stopped by its own pid."""

    def __init__(self, workdir: Path, kubeconfig: Path, extra: List[str]) -> None:
        super().__init__("controller", workdir / "csi.sock",
                         ["--kubeconfig", str(kubeconfig), "--metrics-address", "127.0.0.1:0", *extra],
                         log=workdir / "controller.log")

    def start(self) -> str:  # type: ignore[override]
        """Start; returns the base URL of its metrics/health server once its CSI Probe says ready."""
        super().start()
        self.wait_ready()
        return metrics_url(self.log)


@pytest.fixture(name="workdir")
def workdir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpvobs", dir="/tmp"))  # unix socket paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(name="cluster")
def cluster_fixture(kube_store_cluster: Any) -> Iterator[Any]:
    kube_store_cluster.wipe()
    yield kube_store_cluster
    kube_store_cluster.wipe()  # the control plane is shared by the session


def _ledger(api: client.CustomObjectsApi, drive_id: str) -> Dict[str, Any]:
    obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, drive_id)  # type: ignore[assignment]
    return dict(obj["status"].get("volumes") or {})


def _orphan(api: client.CustomObjectsApi, drive_id: str, name: str, pid: int, reserved_at: float) -> None:
    """What step 1 of reserve_volume leaves when the process dies before step 2 (the volume object)."""
    obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, drive_id)  # type: ignore[assignment]
    obj["status"]["volumes"][name] = {"size": GiB, "projectID": pid, "reservedAt": reserved_at, "parameters": {}}
    obj["status"]["allocated"] += GiB
    obj["status"]["volumeCount"] += 1
    api.replace_cluster_custom_object_status(GROUP, VERSION, DRIVES, drive_id, obj)


def test_reconcile_releases_old_orphans_only(cluster: Any, workdir: Path) -> None:
    api = client.CustomObjectsApi(cluster.api_client)
    store = KubeStore(cluster.new_client())
    try:
        store.put_drive(Drive(drive_id="rd1", node="n1", name="sdb", total=8 * GiB))
        store.reserve_volume(Volume(name="live", drive_id="rd1", node="", size=GiB, project_id=0))
    finally:
        store.close()
    _orphan(api, "rd1", "orphan-old", 7, time.time() - 3600)
    _orphan(api, "rd1", "orphan-young", 8, time.time())
    assert set(_ledger(api, "rd1")) == {"live", "orphan-old", "orphan-young"}

    ctl = Controller(workdir, cluster.control_plane.kubeconfig,
                     ["--reconcile-interval", "0.5", "--reconcile-grace", "600"])
    try:
        base = ctl.start()
        wait_for("orphan-old released", lambda: "orphan-old" not in _ledger(api, "rd1"), log=ctl.log)
        runs = one(scrape(base), "directpv_reconcile_runs_total", outcome="ok")
        # two more full rounds after the release: the young record and the live volume stay
        wait_for("two more reconcile rounds",
                 lambda: one(scrape(base), "directpv_reconcile_runs_total", outcome="ok") >= runs + 2, log=ctl.log)
        ledger = _ledger(api, "rd1")
        assert set(ledger) == {"live", "orphan-young"}
        drive: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, "rd1")  # type: ignore[assignment]
        assert (drive["status"]["allocated"], drive["status"]["volumeCount"]) == (2 * GiB, 2)
        samples = scrape(base)
        assert one(samples, "directpv_reconcile_released_total") == 1
        assert series(samples, "directpv_reconcile_runs_total", outcome="error") == []
        assert "reconcile released 1 ledger record(s) without a volume object: orphan-old" in ctl.log.read_text()
    finally:
        ctl.stop()


def test_readiness_follows_the_api_server_liveness_does_not(cluster: Any, workdir: Path) -> None:
    store = KubeStore(cluster.new_client())
    try:  # one ledger record: each reconcile round then asks the API server about its volume object
        store.put_drive(Drive(drive_id="rd2", node="n1", name="sdb", total=8 * GiB))
        store.reserve_volume(Volume(name="live", drive_id="rd2", node="", size=GiB, project_id=0))
    finally:
        store.close()
    url = urlparse(cluster.control_plane.url)
    assert url.hostname is not None and url.port is not None
    relay = TcpRelay((url.hostname, url.port))
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(cluster.control_plane.kubeconfig.read_text().replace(
        cluster.control_plane.url, f"https://127.0.0.1:{relay.port}"))
    ctl = Controller(workdir, kubeconfig, ["--reconcile-interval", "0.5"])
    try:
        base = ctl.start()
        assert get(base + "/readyz") == (200, "ok\n")
        assert get(base + "/healthz") == (200, "ok\n")

        relay.cut()  # the API server is now unreachable for the controller
        answer = wait_for("/readyz 503", lambda: (a := get(base + "/readyz"))[0] == 503 and a, log=ctl.log)
        assert answer == (503, "not ready:\n- store\n")
        assert get(base + "/healthz") == (200, "ok\n")  # alive: kubelet must not restart it for an API outage
        wait_for("a failed reconcile round", lambda: series(scrape(base), "directpv_reconcile_runs_total",
                                                            outcome="error"), log=ctl.log)
        assert ctl.proc is not None and ctl.proc.poll() is None  # reconcile errors are never fatal

        relay = TcpRelay((url.hostname, url.port), port=relay.port)  # the API server is back
        wait_for("/readyz 200 again", lambda: get(base + "/readyz") == (200, "ok\n"), log=ctl.log)
        ok = one(scrape(base), "directpv_reconcile_runs_total", outcome="ok")
        wait_for("a good reconcile round again",
                 lambda: one(scrape(base), "directpv_reconcile_runs_total", outcome="ok") > ok, log=ctl.log)

        ctl.stop()  # SIGTERM: the HTTP server stops with the process
        assert get_refused(base)
    finally:
        ctl.stop()
        relay.cut()


def get_refused(base: str) -> bool:
    try:
        get(base + "/healthz", timeout=5)
    except OSError:
        return True
    return False


def test_event_counters_on_metrics(cluster: Any, workdir: Path) -> None:
    """12 CreateVolume calls for different volumes: 10 VolumeProvisioned Events of their own, then
    one combined series (kube/events.py), each outcome counted in directpv_events_total; nothing
    shed, nothing failed, nothing left queued."""
    store = KubeStore(cluster.new_client(), events=False)
    try:
        store.put_drive(Drive(drive_id="ev1", node="n1", name="sdb", total=64 * GiB))
    finally:
        store.close()
    ctl = Controller(workdir, cluster.control_plane.kubeconfig, [])
    try:
        base = ctl.start()
        stub = pbg.ControllerStub(ctl.channel)
        for i in range(12):
            stub.CreateVolume(create_req(f"pvc-ev-{i:02d}"), timeout=30)

        def counted(outcome: str) -> float:
            return one(scrape(base), "directpv_events_total", outcome=outcome)

        wait_for("11 Events created", lambda: counted("created") == 11, log=ctl.log)
        samples = scrape(base)
        assert one(samples, "directpv_events_total", outcome="combined") == 2
        assert [one(samples, "directpv_events_total", outcome=o) for o in ("shed", "failed")] == [0, 0]
        assert one(samples, "directpv_events_queued") == 0
    finally:
        ctl.stop()
