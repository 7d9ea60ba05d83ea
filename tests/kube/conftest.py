"""Fixtures for tests against a real kube-apiserver (see controlplane.py)."""

from __future__ import annotations

from .controlplane import kube_control_plane

__all__ = ["kube_control_plane"]
