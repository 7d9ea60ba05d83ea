"""core/units.py: sizes people type, sizes people read."""

from __future__ import annotations

import pytest
from directpv_csi.core.errors import InvalidArgument
from directpv_csi.core.units import MAX_SIZE, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1000", 1000),
        (" 42 ", 42),
        ("512Mi", 512 * 2**20),
        ("512MiB", 512 * 2**20),
        ("10Gi", 10 * 2**30),
        ("10GiB", 10 * 2**30),
        ("10gib", 10 * 2**30),
        ("1Ti", 2**40),
        ("1TiB", 2**40),
        ("4Ki", 4096),
        ("4KiB", 4096),
        ("10G", 10 * 10**9),
        ("10GB", 10 * 10**9),
        ("1k", 1000),
        ("1K", 1000),
        ("1KB", 1000),
        ("2M", 2 * 10**6),
        ("3T", 3 * 10**12),
        ("1.5Gi", 3 * 2**29),
        ("1.5G", 1_500_000_000),
        ("0.5Ki", 512),
        ("100B", 100),
        ("100 Mi", 100 * 2**20),
        (7, 7),
        (2**40, 2**40),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not a size"),
        ("abc", "not a size"),
        ("10X", "unknown unit"),
        ("10 Gigs", "unknown unit"),
        ("-1", "negative"),
        ("-5Gi", "negative"),
        (-1, "negative"),
        ("1.5", "fraction of a byte"),
        ("1e9", "not a size"),
        ("9Ei", "too large"),
        ("99999999999999999999", "too large"),
        (MAX_SIZE + 1, "too large"),
        ("1..5Gi", "not a size"),
        (True, "not a size"),
        (None, "not a size"),
        (1.5, "not a size"),
    ],
)
def test_parse_size_rejects_with_hint(text: object, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_size(text)  # type: ignore[arg-type]
    assert fragment in info.value.message
    assert info.value.hint, "every error says what to do"


def test_largest_size_is_accepted() -> None:
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    assert parse_size("7Ei") == 7 * 2**60


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (512 * 2**20, "512 MiB"),
        (10 * 2**30, "10 GiB"),
        (int(2.25 * 2**40), "2.2 TiB"),
        (2**60, "1 EiB"),
        (-2048, "-2 KiB"),
        (2**40 - 2**20, "1 TiB"),
        (1024 * 1024 - 1, "1 MiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("size", [0, 1, 4096, 512 * 2**20, 10 * 2**30, 3 * 2**40])
def test_format_then_parse_round_trips_exact_units(size: int) -> None:
    assert parse_size(format_size(size).replace(" ", "")) == size
