"""Harness self-test (tests/vm/run.sh --self-test): this one must pass in the guest."""

from __future__ import annotations

import os
import platform


def test_runs_on_the_guest_kernel() -> None:
    assert os.environ.get("DIRECTPV_VM") == "1"
    assert platform.release() != "", "no kernel release"
    with open("/proc/1/comm") as f:
        assert f.read().strip() != "systemd", "PID 1 is the host's init: this is not the guest"
