"""Adapters under the store contract (imported by name: no conftest.py, which would shadow
the root one for ``from conftest import``). A new adapter (store/kube.py) adds one entry to
ADAPTERS: a factory ``(tmp_path) -> (store, reopen)`` where ``reopen()`` closes the
store and returns a fresh instance over the same data (for durability tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
from directpv_csi.store.embedded import EmbeddedStore

Factory = Callable[[Path], Tuple[Any, Callable[[], Any]]]


def _embedded(tmp_path: Path) -> Tuple[Any, Callable[[], Any]]:
    path = str(tmp_path / "store.sqlite")
    holder = {"store": EmbeddedStore(path)}

    def reopen() -> Any:
        holder["store"].close()
        holder["store"] = EmbeddedStore(path)
        return holder["store"]

    return holder["store"], reopen


ADAPTERS: Dict[str, Factory] = {"embedded": _embedded}


@pytest.fixture(name="adapter", params=sorted(ADAPTERS))
def adapter_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tuple[Any, Callable[[], Any]]]:
    store, reopen = ADAPTERS[request.param](tmp_path)
    yield store, reopen


@pytest.fixture(name="store")
def store_fixture(adapter: Tuple[Any, Callable[[], Any]]) -> Any:
    return adapter[0]
