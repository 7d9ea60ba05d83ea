"""playbooks/clean-orphans.yml (module directpv.csi.orphans) against a real `directpv-csi standalone`
process on a loop drive formatted by us: the listing, the check-mode preview (nothing recorded,
nothing removed), the removal (the node consumes the tombstone), and a second run with no change.
The orphan's data is checked byte for byte until the removal."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
from csi.csi_helpers import Standalone, format_loop_drive, unmount_under

from testsupport import PYTHON, needs_root, needs_tool

from .playbook_helpers import Run

pytestmark = [needs_root, needs_tool("mkfs.xfs"), pytest.mark.slow]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_clean_orphans_playbook(
    loopdev: Callable[..., str], inventory: Callable[..., Path], playbook: Callable[..., Run], tmp_path: Path
) -> None:
    dev = loopdev("400M")
    drive = format_loop_drive(dev)
    short = Path(tempfile.mkdtemp(prefix="dpv-orph-"))  # unix socket paths are short
    state = short / "state"
    server = Standalone(state, devices=[dev], kubelet_dir=None, node_id="orphan-host")
    try:
        server.start()
        mnt = state / "mnt" / drive
        (mnt / "pvc-orphan").mkdir()
        (mnt / "pvc-orphan" / "data.bin").write_bytes(os.urandom(2 * 2**20))
        digest = _sha(mnt / "pvc-orphan" / "data.bin")
        inv = inventory({"orphan-host": {"directpv_state_dir": str(state),
                                         "directpv_command": [PYTHON, "-m", "directpv_csi.cmd.main"]}})
        listed = playbook("clean-orphans.yml", inv)
        assert listed.rc == 0, listed.failures() or listed.stderr
        assert listed.changed("orphan-host") == 0
        assert listed.results("Show the orphans")["orphan-host"]["msg"] == ["pvc-orphan"]

        extra = ["-e", '{"directpv_orphans": ["pvc-orphan"]}']
        preview = playbook("clean-orphans.yml", inv, "--check", *extra)
        assert preview.rc == 0, preview.failures() or preview.stderr
        assert preview.results("Show what is (or would be) removed")["orphan-host"]["msg"] == ["pvc-orphan"]
        assert preview.changed("orphan-host") == 1
        assert _sha(mnt / "pvc-orphan" / "data.bin") == digest

        done = playbook("clean-orphans.yml", inv, *extra)
        assert done.rc == 0, done.failures() or done.stderr
        assert done.changed("orphan-host") == 1
        deadline = time.monotonic() + 30
        while (mnt / "pvc-orphan").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (mnt / "pvc-orphan").exists()

        again = playbook("clean-orphans.yml", inv, *extra)
        assert again.rc == 0, again.failures() or again.stderr
        assert again.changed("orphan-host") == 0

        # a live volume named as an orphan: the task fails, nothing is recorded or removed
        made = subprocess.run([PYTHON, "-m", "directpv_csi.cmd.main", "client", "--endpoint", server.endpoint,
                               "create", "pvc-live", "--size", "16MiB"], capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        refused = playbook("clean-orphans.yml", inv, "-e", '{"directpv_orphans": ["pvc-live"]}')
        assert refused.rc != 0
        assert any("not an orphan" in m for m in refused.messages("orphan-host")), refused.failures()
    finally:
        server.stop()
        unmount_under(short)
        shutil.rmtree(short, ignore_errors=True)
