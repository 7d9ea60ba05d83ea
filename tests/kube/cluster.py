"""Helpers for the kube store adapter's tests: the CRDs applied once per session on the real
control plane, and a wipe of every DirectPV object between tests (cluster-scoped names would
otherwise leak from one test into the next)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from directpv_csi.store.kube import DRIVES, GROUP, VERSION, VOLUMES, apply_crds
from kubernetes import client
from kubernetes.client.exceptions import ApiException

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
