"""Helpers for the kube store adapter's tests: the CRDs applied once per session on the real
control plane, and a wipe of every DirectPV object between tests (cluster-scoped names would
otherwise leak from one test into the next)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Sequence

import pytest
from directpv_csi.kube.store import DRIVES, GROUP, VERSION, VOLUMES, apply_crds
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testsupport import DriverProcess

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"


@dataclass
class KubeStoreCluster:
    control_plane: Any  # tests/kube/controlplane.ControlPlane
    crds: List[str]

    @property
    def api_client(self) -> client.ApiClient:
        api: client.ApiClient = self.control_plane.api_client
        return api

    def new_client(self) -> client.ApiClient:
        """An API client of its own (own connection pool), as another controller replica would have."""
        return client.ApiClient(self.api_client.configuration)

    def wipe(self) -> None:
        """Delete every DirectPVDrive and DirectPVVolume, finalizers included."""
        api: Any = client.CustomObjectsApi(self.api_client)  # untyped dict answers
        for plural in (VOLUMES, DRIVES):
            for obj in api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]:
                name = obj["metadata"]["name"]
                try:
                    if obj["metadata"].get("finalizers"):
                        obj["metadata"]["finalizers"] = []
                        api.replace_cluster_custom_object(GROUP, VERSION, plural, name, obj)
                    api.delete_cluster_custom_object(GROUP, VERSION, plural, name)
                except ApiException as e:
                    if e.status != 404:
                        raise


@pytest.fixture(scope="session")
def kube_store_cluster(kube_control_plane: Any) -> Iterator[KubeStoreCluster]:
    crds = apply_crds(kube_control_plane.api_client, CRD_DIR)
    yield KubeStoreCluster(kube_control_plane, crds)


def node_process(kubeconfig: Path, workdir: Path, node: str, devices: Sequence[str],
                 sync_interval: float = 1.0) -> DriverProcess:
    """`directpv-csi node` on the kube store as node ``node`` (not started): only ``devices`` (loop
    devices allowed) feed its drive registry and device report; state and kubelet directories under
    ``workdir``; metrics on a free loopback port."""
    args = ["--kubeconfig", str(kubeconfig), "--node-id", node, "--state-dir", str(workdir / "state"),
            "--kubelet-dir", str(workdir / "kubelet"), "--allow-loop", "--sync-interval", str(sync_interval),
            "--metrics-address", "127.0.0.1:0"]
    for dev in devices:
        args += ["--device", dev]
    return DriverProcess("node", workdir / "node.sock", args)
