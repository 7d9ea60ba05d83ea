"""Fixtures of the store tests: ``adapter`` runs each test once per store adapter
(store_adapters.ADAPTERS) and ``store`` is that adapter's store. This ``store`` overrides, for
this directory, the embedded-store ``store`` of node.node_helpers (registered by the root
conftest.py); test modules that define their own ``store`` override both."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

import pytest
from store.store_adapters import ADAPTERS


@pytest.fixture(name="adapter", params=sorted(ADAPTERS))
def adapter_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tuple[Any, Callable[[], Any]]]:
    store, reopen = ADAPTERS[request.param](tmp_path, request)
    yield store, reopen


@pytest.fixture(name="store")
def store_fixture(adapter: Tuple[Any, Callable[[], Any]]) -> Any:
    return adapter[0]
