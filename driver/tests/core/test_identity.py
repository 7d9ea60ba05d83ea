"""core/identity.py: the staleness token and the hardware ID."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import fields, replace

import pytest
from directpv_csi.core.identity import canonical_state, hardware_id, state_token, token_majmin
from directpv_csi.core.models import Device

BASE = Device(name="sdb", major=8, minor=16, size=4 * 2**30, serial="S1", wwn="0x5000c500a1b2c3d4")


def test_token_shape() -> None:
    tok = state_token(BASE)
    head, _, digest = tok.partition("$")
    assert head == "8:16" and token_majmin(tok) == "8:16"
    raw = base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4))
    assert len(raw) == hashlib.sha256().digest_size
    assert "/" not in digest and "+" not in digest and "=" not in digest


def test_token_is_deterministic() -> None:
    assert state_token(BASE) == state_token(replace(BASE))


@pytest.mark.parametrize(
    "change",
    [
        {"name": "sdc"},
        {"minor": 17},
        {"size": 5 * 2**30},
        {"read_only": True},
        {"holders": ("dm-0",)},
        {"slaves": ("sda",)},
        {"partitions": ("sdb1",)},
        {"partition_table": "gpt"},
        {"mountpoints": ("/mnt",)},
        {"swap": True},
        {"fs_type": "xfs"},
        {"fs_uuid": "8b3aafd9-af63-4f6e-8601-4c3c31444eb6"},
        {"fs_label": "DIRECTPV"},
        {"dm_name": "vg-lv"},
        {"serial": "S2"},
        {"wwn": ""},
        {"loop_backing_file": "/x.img"},
    ],
)
def test_token_changes_when_state_that_matters_changes(change: dict) -> None:  # type: ignore[type-arg]
    assert state_token(replace(BASE, **change)) != state_token(BASE)


def test_token_ignores_udev_and_list_order() -> None:
    a = replace(BASE, holders=("dm-0", "dm-1"), mountpoints=("/a", "/b"), udev={"A": "1", "B": "2"})
    b = replace(BASE, holders=("dm-1", "dm-0"), mountpoints=("/b", "/a"), udev={"B": "2", "A": "1", "C": "3"})
    assert state_token(a) == state_token(b)


def test_canonical_state_names_only_device_fields() -> None:
    names = {f.name for f in fields(Device)}
    assert set(canonical_state(BASE)) - {"majmin"} <= names
    assert "udev" not in canonical_state(BASE)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"wwn": "0x5000c500a1b2c3d4", "serial": "S1", "by_id": ("/dev/disk/by-id/ata-X",)}, "0x5000c500a1b2c3d4"),
        ({"serial": "S1", "by_id": ("/dev/disk/by-id/ata-X",)}, "S1"),
        ({"by_id": ("/dev/disk/by-id/wwn-b", "/dev/disk/by-id/ata-a")}, "ata-a"),
        ({}, ""),
    ],
)
def test_hardware_id_preference(kw: dict, expected: str) -> None:  # type: ignore[type-arg]
    assert hardware_id(Device(name="sdb", major=8, minor=16, size=1, **kw)) == expected


def test_token_majmin_without_separator() -> None:
    assert token_majmin("garbage") == ""


def test_classify_drive_rules() -> None:
    from directpv_csi.core import identity

    c = identity.classify_drive
    assert c("xfs", identity.OUR_LABEL) == identity.KIND_OURS
    assert c("xfs", "DIRECTPV", meta={"drive_id": "x"}) == identity.KIND_OURS_V1
    assert c("xfs", "DIRECTPV", directpv_marks=True) == identity.KIND_DIRECTPV
    # Versions before 2 wrote meta.json beside DirectPV's marks when "adopting": still DirectPV's.
    assert c("xfs", "DIRECTPV", meta={"drive_id": "x"}, directpv_marks=True) == identity.KIND_DIRECTPV
    imported = {"drive_id": "x", "imported_from": identity.IMPORTED_FROM_DIRECTPV}
    assert c("xfs", "DIRECTPV", meta=imported, directpv_marks=True) == identity.KIND_IMPORTED
    assert c("xfs", "DIRECTPV") == identity.KIND_UNCLAIMED
    assert c("ext4", "DIRECTPV", directpv_marks=True) == ""
    assert c("xfs", "data") == ""
    assert len(identity.OUR_LABEL) <= 12 and identity.OUR_LABEL != identity.LEGACY_LABEL
