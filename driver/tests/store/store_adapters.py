"""Adapters under the store contract; driver/tests/store/conftest.py turns them into the
parametrised ``adapter`` and ``store`` fixtures of this directory. Each adapter is one entry in ADAPTERS: a factory
``(tmp_path, request) -> (store, reopen)`` where ``reopen()`` closes the store and returns a
fresh instance over the same data (for durability tests).

``kube`` runs on the real kube-apiserver (tests/kube/controlplane.py, a fixture of the root
conftest.py): the CRDs of deploy/crds are applied once per session and every
DirectPV object is wiped before each test. It skips when kube-apiserver/etcd are not built."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import pytest
from directpv_csi.store.embedded import EmbeddedStore

Factory = Callable[[Path, pytest.FixtureRequest], Tuple[Any, Callable[[], Any]]]


def _embedded(tmp_path: Path, request: pytest.FixtureRequest) -> Tuple[Any, Callable[[], Any]]:
    path = str(tmp_path / "store.sqlite")
    holder = {"store": EmbeddedStore(path)}

    def reopen() -> Any:
        holder["store"].close()
        holder["store"] = EmbeddedStore(path)
        return holder["store"]

    return holder["store"], reopen


def _kube(tmp_path: Path, request: pytest.FixtureRequest) -> Tuple[Any, Callable[[], Any]]:
    from directpv_csi.kube.store import KubeStore

    cluster = request.getfixturevalue("kube_store_cluster")
    cluster.wipe()
    holder = {"store": KubeStore(cluster.api_client)}

    def reopen() -> Any:
        holder["store"].close()
        holder["store"] = KubeStore(cluster.new_client())
        return holder["store"]

    request.addfinalizer(lambda: holder["store"].close())
    return holder["store"], reopen


ADAPTERS: Dict[str, Factory] = {"embedded": _embedded, "kube": _kube}

