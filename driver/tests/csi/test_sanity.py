"""csi-sanity (kubernetes-csi/csi-test) against `directpv-csi standalone` on real loop
drives formatted by our format code: every Identity, Controller and Node spec that
applies to our capabilities must pass (0 failures).

csi-sanity is built by `make tools` (scripts/build-tools.sh) into
~/.cache/directpv-csi/tools; the test skips with that hint when it is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, List

import pytest
from csi.csi_helpers import (
    Standalone,
    format_loop_drive,
    unmount_under,
)
from directpv_csi.kube.store import KubeStore
from directpv_csi.store.embedded import EmbeddedStore

TOOLS_DIR = Path(os.environ.get("TOOLS_DIR", Path.home() / ".cache" / "directpv-csi" / "tools"))
CSI_SANITY = TOOLS_DIR / "csi-sanity"

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.mark.skipif(not CSI_SANITY.exists(), reason=f"needs {CSI_SANITY} (make tools builds it)")
@pytest.mark.parametrize("store_kind", ["embedded", "kube"])
def test_csi_sanity_passes_with_zero_failures(
    loopdev: Callable[..., str], short_dir: Path, store_kind: str, request: pytest.FixtureRequest
) -> None:
    """``kube``: the same server on the Kubernetes store (CRDs on the real kube-apiserver of tests/kube)."""
    extra: List[str] = []
    cluster: Any = None
    if store_kind == "kube":
        cluster = request.getfixturevalue("kube_store_cluster")  # skips when kube-apiserver/etcd are not built
        cluster.wipe()
        extra = ["--store", "kube", "--kubeconfig", str(cluster.control_plane.kubeconfig)]
    devs = [loopdev("400M") for _ in range(2)]
    for d in devs:
        format_loop_drive(d)
    kubelet = short_dir / "kubelet"
    kubelet.mkdir()
    server = Standalone(short_dir / "state", devices=devs, kubelet_dir=kubelet, extra=extra)
    try:
        server.start()
        for attempt in range(3):
            proc = subprocess.run(
                [str(CSI_SANITY), "--csi.endpoint", server.endpoint,
                 "--csi.stagingdir", str(kubelet / "sanity-staging"), "--csi.mountdir", str(kubelet / "sanity-mount"),
                 "--csi.testvolumesize", str(16 * 2**20), "--csi.testvolumeexpandsize", str(32 * 2**20),
                 "--ginkgo.no-color", "--ginkgo.v", "--ginkgo.timeout", "10m"],
                capture_output=True, text=True, timeout=900,
            )
            out = proc.stdout + proc.stderr
            summary = re.search(r"(\d+) Passed \| (\d+) Failed", out)
            assert summary is not None, out[-5000:]
            passed, failed = int(summary.group(1)), int(summary.group(2))
            failures = re.findall(r"\[FAIL\].*", out)
            # csi-test's utils.Connect reads the channel state and then waits for it to *change*:
            # when the unix-socket connection is already Ready in between, it waits a minute and
            # reports "Connection timed out" (client-side race, about 1 run in 15 here). Only that
            # exact failure, alone, is retried; anything else fails the test at once.
            if failed == 1 and "Connection timed out" in out and "[BeforeEach]" in failures[0] and attempt < 2:
                continue
            break
        log = os.environ.get("CSI_SANITY_LOG")  # keep the full output somewhere when asked
        if log:
            Path(log).write_text(out)
        assert failed == 0 and proc.returncode == 0, "\n".join(failures) + "\n" + out[-8000:]
        assert passed >= 45, out[-3000:]  # identity + controller + node specs ran, not just a few
        node_specs = re.findall(r"^Node Service .*", out, re.M)
        assert len(node_specs) >= 10, out[-3000:]  # the node specs ran too
    finally:
        server.stop()
        unmount_under(short_dir)
    if cluster is not None:
        store: Any = KubeStore(cluster.new_client())
    else:
        store = EmbeddedStore(str(short_dir / "state" / "store.sqlite"), read_only=True)
    try:
        assert store.check() == []
        assert store.list_volumes() == []  # csi-sanity deleted what it made
        assert all(d.allocated == 0 for d in store.list_drives())
        assert len(store.list_drives()) == 2
    finally:
        store.close()
        if cluster is not None:
            cluster.wipe()  # the control plane is shared by the session: leave no drive objects behind
