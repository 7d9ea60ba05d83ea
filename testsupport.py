"""Helpers shared by every test tree (driver/tests, tests/): import them from here,
never from a conftest module (several conftest.py files exist; ``from conftest import``
would get whichever was imported first).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
FIXTURES = REPO / "tests" / "fixtures"


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (loop devices, mounts); CI runs as root")


def needs_tool(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"needs {name} on PATH (make setup installs it)")


def backing_file(dev: str) -> str:
    """The file a loop device is attached to now ("" when detached)."""
    try:
        with open(f"/sys/block/{os.path.basename(dev)}/loop/backing_file", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""
