"""The real one-node cluster (realnode.py) as a session fixture, opt-in.

These tests change the host's network (a bridge, iptables rules, the kubelet's KUBE-* chains), so
they never run with the rest of the suite: the directory is collected only with
``DIRECTPV_REALNODE=1``, and `make test` runs it as its own stage (`make test-cluster`) after the
others. Tests here carry the ``realnode`` marker.
"""

from __future__ import annotations

import os
import subprocess
from typing import Iterator, List

import pytest

from .realnode import RealNode, busy_reasons, launch, missing_requirements, new_work_dir, skip_or_fail

ENABLED = os.environ.get("DIRECTPV_REALNODE") == "1"

if not ENABLED:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "realnode: needs the real one-node cluster (tests/realnode; make test-cluster)")


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    """A running one-node cluster for the session; the host is checked after it is gone."""
    missing = missing_requirements()
    if missing:
        skip_or_fail(f"needs {', '.join(missing)}")
    busy = busy_reasons()
    if busy:
        skip_or_fail(f"host not free for a real node: {', '.join(busy)}")
    work = new_work_dir()
    node = launch(work)
    problems: List[str] = []
    try:
        yield node
    finally:
        problems = node.stop()
        if not problems and not os.environ.get("REALNODE_KEEP_WORKDIR"):
            # stop() unmounted everything below it (or reported a problem); never cross a mount anyway
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    assert not problems, f"the real node left the host changed (work dir {work} kept):\n" + "\n".join(problems)
