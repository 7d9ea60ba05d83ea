"""The observability flags of each role: defaults, and bad values refused before anything starts."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from directpv_csi.cmd import standalone


def _parse(role: str, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    standalone.add_arguments(p, role=role)
    return p.parse_args(list(argv))


def test_defaults_per_role() -> None:
    # DirectPV's ports in the Kubernetes roles; off in standalone (tests and demos start many per host)
    assert _parse("node").metrics_address == ":10443"
    assert _parse("controller").metrics_address == ":30443"
    assert _parse("standalone", "--state-dir", "/x").metrics_address == ""
    ctl = _parse("controller")
    assert (ctl.reconcile_interval, ctl.reconcile_grace) == (300.0, None)
    assert not hasattr(_parse("node"), "reconcile_interval")  # the node never reconciles ledgers


@pytest.mark.parametrize("argv, message", [
    (["--metrics-address", "10443"], "--metrics-address '10443' is not HOST:PORT"),
    (["--reconcile-interval", "-1"], "--reconcile-interval -1.0 is negative"),
    (["--reconcile-grace", "-5"], "--reconcile-grace -5.0 is negative"),
])
def test_bad_values_exit_1_with_the_flag_named(argv: list[str], message: str) -> None:
    # refused before the kubeconfig is read: the nonexistent file is never reached
    res = subprocess.run([sys.executable, "-m", "directpv_csi.cmd.main", "controller", "--endpoint",
                          "unix:///nonexistent/csi.sock", "--kubeconfig", "/nonexistent/kubeconfig", *argv],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert message in res.stderr
    assert "cannot use the Kubernetes API" not in res.stderr
