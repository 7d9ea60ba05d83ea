"""The one home of each reservation rule (core/reservation.py) and of the format safety policy
(core/judge.py format_permission): the stores, the controller, plan_format and the drive
selection all decide with these, so their cases are pinned here once."""

from __future__ import annotations

import pytest
from directpv_csi.core.errors import AlreadyExists, Conflict, InvalidArgument
from directpv_csi.core.judge import (
    FORMAT_ALLOWED,
    FORMAT_NEEDS_FORCE,
    FORMAT_NEEDS_REVIEW,
    FORMAT_NEVER,
    format_permission,
)
from directpv_csi.core.models import (
    DRIVE_LOST,
    REASON_HAS_DATA,
    REASON_HAS_FILESYSTEM,
    REASON_MOUNTED,
    Drive,
    Reason,
)
from directpv_csi.core.reservation import (
    check_reservable,
    check_same_request,
    request_difference,
    reservation_refusal,
    smallest_unused,
)
from directpv_csi.core.units import GiB
from directpv_csi.core.validation import MAX_NAME_LENGTH, check_volume_name, check_volume_name_length


def drive(**kw: object) -> Drive:
    base: dict[str, object] = dict(drive_id="d1", node="n1", name="sdb", total=10 * GiB, allocated=4 * GiB)
    base.update(kw)
    return Drive(**base)  # type: ignore[arg-type]


def test_smallest_unused_fills_the_first_gap_whatever_the_order() -> None:
    assert smallest_unused([]) == 1
    assert smallest_unused([1, 2, 3]) == 4
    assert smallest_unused([3, 1, 4]) == 2
    assert smallest_unused({2}) == 1
    assert smallest_unused(iter([1, 1, 2])) == 3


def test_same_request_exact_size_for_stores_range_for_the_controller() -> None:
    params = {"directpv.dev/access-tier": "Hot"}
    assert request_difference(GiB, params, GiB, GiB, dict(params)) == ""
    assert request_difference(GiB, params, GiB // 2, 2 * GiB, params) == ""  # within the range
    assert request_difference(GiB, params, 0, 0, params) == ""  # no bounds
    assert "requested 2" in request_difference(GiB, params, 2, 2, params)
    assert "outside the requested range" in request_difference(GiB, params, 2 * GiB, 0, params)
    assert "outside the requested range" in request_difference(2 * GiB, params, 0, GiB, params)
    assert "other parameters" in request_difference(GiB, params, GiB, GiB, {})
    check_same_request("pvc-1", GiB, params, GiB, GiB, params)
    with pytest.raises(AlreadyExists, match=r"volume pvc-1 \(on d1\) exists with 1073741824 bytes"):
        check_same_request("pvc-1", GiB, params, 2 * GiB, 2 * GiB, params, " (on d1)")


def test_reservation_check_order_and_messages() -> None:
    ok = drive()
    assert reservation_refusal(ok, 6 * GiB) == ""
    assert check_reservable(ok, "d1", 6 * GiB) is ok
    assert check_reservable(ok, "d1", GiB, ok.generation) is ok
    with pytest.raises(Conflict, match="drive d9 is not registered"):
        check_reservable(None, "d9", GiB)
    with pytest.raises(Conflict, match="is Ready, cordoned"):
        check_reservable(drive(schedulable=False), "d1", GiB)
    with pytest.raises(Conflict, match="is Lost"):
        check_reservable(drive(status=DRIVE_LOST), "d1", GiB)
    with pytest.raises(Conflict, match="changed since it was read"):
        check_reservable(ok, "d1", GiB, ok.generation + 1)
    with pytest.raises(Conflict, match="changed since it was read"):
        check_reservable(ok, "d1", GiB, ok.generation, reread=True)
    assert check_reservable(ok, "d1", GiB, None, reread=True) is ok  # no generation expected: re-reads are fine
    with pytest.raises(Conflict, match=f"has {6 * GiB} bytes free, needs {6 * GiB + 1}"):
        check_reservable(ok, "d1", 6 * GiB + 1)
    # status before generation before room: a cordoned full drive says cordoned
    with pytest.raises(Conflict, match="cordoned"):
        check_reservable(drive(schedulable=False, allocated=10 * GiB), "d1", GiB, 99)


def test_volume_name_rule_one_limit() -> None:
    name = "a" * MAX_NAME_LENGTH
    assert check_volume_name(name) == name and check_volume_name_length(name) == name
    for bad in ("a" * (MAX_NAME_LENGTH + 1), "é" * 65):  # 129 and 130 bytes
        with pytest.raises(InvalidArgument, match="bytes long"):
            check_volume_name_length(bad)
        with pytest.raises(InvalidArgument, match="bytes long"):
            check_volume_name(bad)
    with pytest.raises(InvalidArgument, match="missing"):
        check_volume_name_length("")
    assert check_volume_name_length("Sanity:Name") == "Sanity:Name"  # the stores record CSI names as they are
    for bad in ("Sanity:Name", ".hidden", "a/b", "..", "x\n"):
        with pytest.raises(InvalidArgument, match="directory name"):
            check_volume_name(bad)


def test_format_permission() -> None:
    mounted = Reason(REASON_MOUNTED, "mounted")
    fs = Reason(REASON_HAS_FILESYSTEM, "has a filesystem", forceable=True)
    data = Reason(REASON_HAS_DATA, "holds files", forceable=True)
    assert format_permission((), force=False) == (FORMAT_ALLOWED, ())
    assert format_permission((), force=False, reviewed=False, safe_mode=True) == (FORMAT_ALLOWED, ())
    for force in (False, True):
        assert format_permission((fs, mounted), force=force, safe_mode=False) == (FORMAT_NEVER, (mounted,))
    assert format_permission((fs, data), force=False) == (FORMAT_NEEDS_FORCE, (fs, data))
    assert format_permission((fs, data), force=True) == (FORMAT_ALLOWED, (fs, data))
    assert format_permission((fs,), force=True, reviewed=False, safe_mode=True) == (FORMAT_NEEDS_REVIEW, (fs,))
    assert format_permission((fs,), force=True, reviewed=True, safe_mode=True) == (FORMAT_ALLOWED, (fs,))
    assert format_permission((fs,), force=True, reviewed=False, safe_mode=False) == (FORMAT_ALLOWED, (fs,))
    assert format_permission((fs,), force=False, reviewed=False, safe_mode=True)[0] == FORMAT_NEEDS_FORCE
