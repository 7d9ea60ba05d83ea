"""Registers the real control plane fixture (tests/kube/controlplane.py) for the store tests.

Tests never import from here (``from conftest import`` would find the root conftest.py);
fixtures only. The ``kube`` store adapter (store_adapters.py) asks for ``kube_store_cluster``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[3] / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from kube.controlplane import kube_control_plane  # noqa: E402
from kube_store_support import kube_store_cluster  # noqa: E402

__all__ = ["kube_control_plane", "kube_store_cluster"]
