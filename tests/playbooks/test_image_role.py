"""directpv.csi.image: refusals that need no containerd (the side-load itself runs against the real
node's containerd in tests/realnode/test_e2e.py) - a missing archive, a file that is not an OCI
image archive, a host whose containerd does not answer, push without a registry; and the push mode
against a real registry on loopback (Debian's docker-registry): check mode, push, no change the
second time, the digest in the registry equal to the archive's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .playbook_helpers import REPO, Run

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


def _registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1, storage in tmp_path; yields host:port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("docker-registry")),
                    reason="needs skopeo and docker-registry (make cluster-setup)")
def test_push_to_a_registry_on_loopback_idempotent_by_digest(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    archive = _archive(tmp_path)
    for registry in _registry(tmp_path):
        inv = inventory({"localhost": {}}, {"directpv_image_archives": [str(archive)], "directpv_image_mode": "push",
                                            "directpv_image_push_registry": registry,
                                            "directpv_image_push_tls_verify": False})
        dest = f"docker://{registry}/dpv-test/hello:1"

        def digest(dest: str = dest) -> str:
            out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", dest],
                                 capture_output=True, text=True, check=False)
            return out.stdout.strip() if out.returncode == 0 else ""

        check = playbook("image.yml", inv, "--check")
        assert check.rc == 0 and check.changed("localhost") >= 1, _messages(check) or check.stderr
        assert digest() == "", "check mode pushed"
        first = playbook("image.yml", inv)
        assert first.rc == 0, _messages(first) or first.stderr
        with tarfile.open(archive) as tar:
            member = tar.extractfile("index.json")
            assert member is not None
            assert digest() == json.load(member)["manifests"][0]["digest"]
        again = playbook("image.yml", inv)
        assert again.rc == 0 and again.changed("localhost") == 0, _messages(again)


def test_push_without_a_registry_is_refused(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    inv = inventory({"localhost": {}}, {"directpv_image_archives": [str(_archive(tmp_path))],
                                        "directpv_image_mode": "push"})
    run = playbook("image.yml", inv)
    assert run.rc != 0 and "directpv_image_push_registry is empty" in _messages(run), _messages(run)
