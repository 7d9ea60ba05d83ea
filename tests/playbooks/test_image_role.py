"""directpv.csi.image refusals that need no containerd (the side-load itself runs against the real
node's containerd in tests/realnode/test_e2e.py): a missing archive, a file that is not an OCI
image archive, a host whose containerd does not answer. Nothing is imported, nothing copied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from .conftest import REPO, Run

pytestmark = [pytest.mark.slow]


def _archive(tmp_path: Path) -> Path:
    payload = tmp_path / "hello"
    payload.write_text("#!/bin/sh\necho hello\n")
    out = tmp_path / "hello.oci.tar"
    subprocess.run([sys.executable, str(REPO / "scripts" / "pack-image.py"), "--ref", "localhost/dpv-test/hello:1",
                    "--file", f"{payload}:/hello", "--entrypoint", "/hello", "-o", str(out)], check=True)
    return out


def _messages(run: Run) -> str:
    return " ".join(msg for _h, _t, msg in run.failures())


def test_missing_and_invalid_archives_are_refused_by_name(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    bogus = tmp_path / "not-an-image.tar"
    bogus.write_text("hello")
    missing = tmp_path / "missing.oci.tar"
    inv = inventory({"localhost": {}}, {"directpv_image_archives": [str(_archive(tmp_path)), str(bogus), str(missing)]})
    run = playbook("image.yml", inv)
    assert run.rc != 0
    message = _messages(run)
    assert str(bogus) in message and str(missing) in message and "make image" in message, message
    assert "hello.oci.tar" not in message, "a valid archive was refused"  # only the bad ones are named


def test_a_host_without_containerd_is_refused(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    sock = tmp_path / "no-containerd.sock"
    inv = inventory({"localhost": {}}, {"directpv_image_archives": [str(_archive(tmp_path))],
                                        "directpv_image_containerd_address": str(sock)})
    run = playbook("image.yml", inv)
    assert run.rc != 0
    message = _messages(run)
    assert "No containerd reachable on localhost" in message and str(sock) in message, message
    assert not sock.exists()


def test_pack_image_is_deterministic(tmp_path: Path) -> None:
    a = _archive(tmp_path)
    first = a.read_bytes()
    a.unlink()
    assert _archive(tmp_path).read_bytes() == first
