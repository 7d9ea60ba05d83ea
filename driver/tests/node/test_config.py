"""NodeConfig: defaults, validation, path rules (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from directpv_csi.core.errors import InvalidArgument
from directpv_csi.node.config import NodeConfig


def test_defaults_and_mount_dir(tmp_path: Path) -> None:
    c = NodeConfig(node_id="n1", state_dir=tmp_path / "s", kubelet_dirs=(tmp_path / "k",))
    assert c.topology == {"directpv.dev/node": "n1"}
    assert c.drive_mount_dir("abc") == tmp_path / "s" / "mnt" / "abc"
    assert not c.allow_loop and c.max_volumes_per_node == 0 and not c.require_quota
    assert NodeConfig(node_id="n1", state_dir=tmp_path, topology={"zone": "a"}).topology == {"zone": "a"}


@pytest.mark.parametrize("kwargs", [
    {"node_id": ""},
    {"node_id": "n", "state_dir": Path("relative")},
    {"node_id": "n", "kubelet_dirs": (Path("rel"),)},
    {"node_id": "n", "max_volumes_per_node": -1},
])
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        NodeConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("drive_id", ["", "a/b", "..", "."])
def test_bad_drive_id_is_refused(tmp_path: Path, drive_id: str) -> None:
    with pytest.raises(InvalidArgument):
        NodeConfig(node_id="n", state_dir=tmp_path).drive_mount_dir(drive_id)


def test_path_rules(tmp_path: Path) -> None:
    k = tmp_path / "kubelet"
    (k / "pods").mkdir(parents=True)
    c = NodeConfig(node_id="n", state_dir=tmp_path / "s", kubelet_dirs=(k,))
    good = str(k / "pods" / "x" / "mount")
    assert c.check_path(good, "target_path") == good
    assert c.check_path(good + "/", "target_path") == good
    for bad in ("", "pods/x", str(k), str(k) + "/../k/pods", "/etc/x", str(k) + "x/pods"):
        with pytest.raises(InvalidArgument):
            c.check_path(bad, "target_path")
    # a symlink inside the kubelet dir that leads outside it is refused
    os.symlink(tmp_path, k / "pods" / "escape")
    assert not c.path_allowed(str(k / "pods" / "escape" / "x"))
    with pytest.raises(InvalidArgument) as e:
        c.check_path(str(k / "pods" / "escape" / "x"), "staging_target_path")
    assert "staging_target_path" in str(e.value) and str(k) in str(e.value)
