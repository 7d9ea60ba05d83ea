"""Fixtures of the CSI tests live in csi_helpers.py (importable by name from the tests)."""

from __future__ import annotations

from csi_helpers import csi, short_dir  # noqa: F401 - fixtures
