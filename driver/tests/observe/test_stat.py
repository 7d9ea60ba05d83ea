"""Pure parts of observability: the block stat line (device/sysfs.py) and --metrics-address."""

from __future__ import annotations

from pathlib import Path

import pytest
from directpv_csi.core.errors import InvalidArgument
from directpv_csi.device.sysfs import BlockStat, parse_block_stat, read_block_stat
from directpv_csi.observe.endpoints import parse_address

# A real line of this machine's /sys/class/block/loop0/stat (17 fields, kernel >= 5.5).
LINE_17 = ("  174488        0  6062074    78858    78912     8090 124751579    50463        0   105120   163995"
           "      949        0 933396712     1312    15054    33362\n")


def test_parse_17_fields() -> None:
    s = parse_block_stat(LINE_17)
    assert (s.read_ios, s.read_sectors, s.read_ticks_ms) == (174488, 6062074, 78858)
    assert (s.write_ios, s.write_merges, s.write_sectors, s.write_ticks_ms) == (78912, 8090, 124751579, 50463)
    assert (s.in_flight, s.io_ticks_ms, s.time_in_queue_ms) == (0, 105120, 163995)
    assert (s.discard_ios, s.discard_sectors, s.flush_ios, s.flush_ticks_ms) == (949, 933396712, 15054, 33362)
    # sectors are 512-byte units whatever the device's sector size
    assert s.read_bytes == 6062074 * 512 and s.write_bytes == 124751579 * 512


def test_parse_old_kernels_fill_zeros() -> None:
    eleven = "1 2 3 4 5 6 7 8 9 10 11"
    s = parse_block_stat(eleven)
    assert s == BlockStat(*range(1, 12))
    assert (s.discard_ios, s.flush_ios) == (0, 0)
    assert parse_block_stat(eleven + " 12 13 14 15").discard_ticks_ms == 15


def test_parse_ignores_fields_of_a_future_kernel() -> None:
    assert parse_block_stat(LINE_17.strip() + " 99 98").flush_ticks_ms == 33362


@pytest.mark.parametrize("text", ["", "1 2 3", "1 2 3 4 5 6 7 8 9 10 x", "1 2 3 4 5 6 7 8 9 10 -"])
def test_parse_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="block stat"):
        parse_block_stat(text)


def test_read_block_stat_from_a_tree(tmp_path: Path) -> None:
    dev = tmp_path / "class" / "block" / "sdx"
    dev.mkdir(parents=True)
    (dev / "stat").write_text(LINE_17)
    (tmp_path / "class" / "block" / "bad").mkdir()
    (tmp_path / "class" / "block" / "bad" / "stat").write_text("garbage\n")
    got = read_block_stat("sdx", str(tmp_path))
    assert got is not None and got.write_sectors == 124751579
    assert read_block_stat("missing", str(tmp_path)) is None
    assert read_block_stat("bad", str(tmp_path)) is None
    for name in ("", "..", "../block/sdx", "."):
        assert read_block_stat(name, str(tmp_path)) is None


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    (":10443", ("", 10443)),
    ("[::1]:9000", ("::1", 9000)),
    ("node-a.example:30443", ("node-a.example", 30443)),
])
def test_parse_address(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["10443", "host:", "host:port", ":70000", "::1:9000", "127.0.0.1:-1"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_address(text)
    assert "--metrics-address" in str(info.value) and "'' disables" in str(info.value)
