"""The real node's teardown helpers on their own (this file runs before the cluster starts): new
iptables chains and rules of ours (KUBE-*, CNI-*, DPVRN-*) are removed, anything else is left
alone and reported. The whole teardown is checked by the ``real_node`` fixture itself: after
stop() the host state (iptables, sysctls, cgroups, netns, links, mounts, fixed paths, processes)
must equal the state before start, or the session fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .realnode import HostState, RealNode

pytestmark = [pytest.mark.realnode]


def _ipt(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables (make cluster-setup)")
def test_teardown_removes_our_new_iptables_chains_and_reports_the_rest(tmp_path: Path) -> None:
    node = RealNode(tmp_path)
    node.before = HostState.take()
    _ipt("-N", "KUBE-DPVRN-SELFTEST")
    _ipt("-A", "KUBE-DPVRN-SELFTEST", "-s", "192.0.2.1/32", "-j", "DROP")
    _ipt("-A", "OUTPUT", "-d", "192.0.2.2/32", "-j", "KUBE-DPVRN-SELFTEST")
    _ipt("-t", "nat", "-N", "DPVRN-SELFTEST")
    _ipt("-N", "XDPV-NOT-OURS")
    try:
        assert len(node.before.differences(HostState.take())) == 5
        node._restore_iptables()
        left = node.before.differences(HostState.take())
        assert left == ["iptables filter: added -N XDPV-NOT-OURS"], left
    finally:  # whatever the outcome, nothing of this test stays
        for args in (["-D", "OUTPUT", "-d", "192.0.2.2/32", "-j", "KUBE-DPVRN-SELFTEST"],
                     ["-F", "KUBE-DPVRN-SELFTEST"], ["-X", "KUBE-DPVRN-SELFTEST"],
                     ["-t", "nat", "-X", "DPVRN-SELFTEST"], ["-X", "XDPV-NOT-OURS"]):
            subprocess.run(["iptables", "-w", *args], check=False, capture_output=True)
    assert not node.before.differences(HostState.take())
