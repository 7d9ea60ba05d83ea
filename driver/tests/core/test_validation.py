"""core/validation.py: names, capabilities, capacity ranges, StorageClass parameters."""

from __future__ import annotations

import pytest
from directpv_csi.core.errors import InvalidArgument, OutOfRange
from directpv_csi.core.scheduler import PLACEMENT_MOST_FREE, PLACEMENT_SPREAD
from directpv_csi.core.validation import (
    DEFAULT_VOLUME_SIZE,
    MAX_NAME_LENGTH,
    capability_problem,
    check_capabilities,
    check_expand,
    check_volume_name,
    parse_parameters,
    size_fits,
    volume_size,
)

GiB = 1024**3


@pytest.mark.parametrize("name", ["pvc-1b2c", "a", "x" * MAX_NAME_LENGTH, "sanity-Controller-1.2_3"])
def test_good_names(name: str) -> None:
    assert check_volume_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_LENGTH + 1), "a/b", "..", ".hidden", "a b", "a\0b", "-x"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        check_volume_name(name)


@pytest.mark.parametrize("mode", ["SINGLE_NODE_WRITER", "SINGLE_NODE_READER_ONLY", "SINGLE_NODE_SINGLE_WRITER",
                                  "SINGLE_NODE_MULTI_WRITER"])
@pytest.mark.parametrize("fs", ["", "xfs", "XFS"])
def test_supported_capabilities(mode: str, fs: str) -> None:
    assert capability_problem(("mount", fs, mode)) is None
    check_capabilities([("mount", fs, mode)])


@pytest.mark.parametrize(
    "cap, words",
    [
        (("block", "", "SINGLE_NODE_WRITER"), "block"),
        (("", "", "SINGLE_NODE_WRITER"), "no access type"),
        (("mount", "ext4", "SINGLE_NODE_WRITER"), "ext4"),
        (("mount", "", "MULTI_NODE_MULTI_WRITER"), "MULTI_NODE_MULTI_WRITER"),
        (("mount", "", "MULTI_NODE_READER_ONLY"), "one drive of one node"),
        (("mount", "", "UNKNOWN"), "no access mode"),
    ],
)
def test_unsupported_capabilities(cap: tuple[str, str, str], words: str) -> None:
    problem = capability_problem(cap)
    assert problem is not None and words in problem[0]
    with pytest.raises(InvalidArgument):
        check_capabilities([("mount", "", "SINGLE_NODE_WRITER"), cap])


def test_capabilities_required() -> None:
    with pytest.raises(InvalidArgument):
        check_capabilities([])
    check_capabilities([], required=False)


@pytest.mark.parametrize(
    "required, limit, want",
    [(0, 0, DEFAULT_VOLUME_SIZE), (5, 0, 5), (0, 7, 7), (5, 7, 5), (7, 7, 7), (0, GiB // 2, GiB // 2)],
)
def test_volume_size(required: int, limit: int, want: int) -> None:
    assert volume_size(required, limit) == want
    assert size_fits(want, required, limit)


def test_volume_size_errors() -> None:
    with pytest.raises(OutOfRange):
        volume_size(8, 7)
    with pytest.raises(InvalidArgument):
        volume_size(-1, 0)
    with pytest.raises(InvalidArgument):
        volume_size(0, -1)
    assert not size_fits(5, 6, 0) and not size_fits(9, 0, 8)


def test_parse_parameters() -> None:
    req = parse_parameters({
        "directpv.dev/access-tier": "hot", "directpv.dev/placement": "spread", "directpv.dev/volume-claim-id": "c-1",
        "directpv.dev/rack": "r1", "csi.storage.k8s.io/pvc/name": "data-0", "other": "x",
    }, 3)
    assert (req.size, req.access_tier, req.placement, req.claim, req.labels) == (3, "Hot", PLACEMENT_SPREAD, "c-1",
                                                                                 {"rack": "r1"})
    assert parse_parameters({}, 1).placement == PLACEMENT_MOST_FREE


@pytest.mark.parametrize(
    "params",
    [
        {"directpv.dev/access-tier": "Lukewarm"},
        {"directpv.dev/placement": "random"},
        {"directpv.dev/volume-claim-id": ""},
        {"directpv.dev/": "x"},
        {"directpv.dev/a/b": "x"},
        {"directpv.dev/bad key": "x"},
        {"directpv.dev/rack": "not a value"},
    ],
)
def test_bad_parameters(params: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        parse_parameters(params, 1)


def test_check_expand() -> None:
    assert check_expand(2 * GiB, 0, GiB) == 2 * GiB
    assert check_expand(GiB // 2, 0, GiB) == GiB  # never shrinks
    with pytest.raises(InvalidArgument):
        check_expand(0, 0, GiB)
    with pytest.raises(OutOfRange):
        check_expand(0, GiB // 2, GiB)
    with pytest.raises(OutOfRange):
        check_expand(3, 2, 1)
