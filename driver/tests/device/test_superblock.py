"""XFS superblock reader: captured superblocks from real mkfs.xfs runs (checked against
xfs_db's reading of the same images, tests/fixtures/superblock/expected.json), damaged and
foreign ones, and a real filesystem on a loop device compared with blkid and statfs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
from directpv_csi.core.errors import DirectPVError, InvalidArgument, NotFound
from directpv_csi.device.superblock import crc32c, parse_xfs_superblock, read_xfs_superblock

from testsupport import FIXTURES, needs_tool

SB = FIXTURES / "superblock"
EXPECTED: Dict[str, Dict[str, Any]] = json.loads((SB / "expected.json").read_text())


def test_crc32c_known_vector() -> None:
    # The standard CRC-32C check value (RFC 3720 appendix B.4).
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=str)
def test_captured_superblocks_match_xfs_db(name: str) -> None:
    exp = EXPECTED[name]
    data = (SB / f"{name}.bin").read_bytes()
    assert len(data) == 512
    sb = parse_xfs_superblock(data)
    assert sb.uuid == exp["uuid"]
    assert sb.label == exp["label"]
    assert sb.block_size == exp["block_size"]
    assert sb.data_blocks == exp["data_blocks"]
    assert sb.log_blocks == exp["log_blocks"]
    assert sb.sector_size == exp["sector_size"]
    assert sb.version == int(exp["versionnum"], 16) & 0xF
    internal = exp["logstart"] != 0
    assert sb.internal_log is internal
    log = exp["log_blocks"] if internal else 0
    assert sb.capacity == (exp["data_blocks"] - log) * exp["block_size"]
    assert sb.device_bytes == exp["data_blocks"] * exp["block_size"]
    # v5 checksums are verified whenever the whole sector is at hand (512-byte sectors here)
    assert sb.checksum_verified is (sb.version == 5 and exp["sector_size"] <= 512)


def test_our_label_and_imaxpct_as_we_format() -> None:
    sb = parse_xfs_superblock((SB / "v5-300m-directpv.bin").read_bytes())
    assert sb.label == "DIRECTPV"
    assert sb.imax_pct == 50


def test_file_object_and_path_read_the_same() -> None:
    path = SB / "v5-2g-nolabel.bin"
    assert read_xfs_superblock(str(path)) == read_xfs_superblock(io.BytesIO(path.read_bytes()))
    with open(path, "rb") as f:
        assert read_xfs_superblock(f) == parse_xfs_superblock(path.read_bytes())


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("foreign-ext4.bin", NotFound, "no XFS superblock"),
        ("foreign-zeros.bin", NotFound, "no XFS superblock"),
        ("short-100.bin", InvalidArgument, "truncated"),
        ("corrupt-uuid-bitflip.bin", InvalidArgument, "checksum mismatch"),
        ("corrupt-blocksize.bin", InvalidArgument, "invalid block size 3000"),
    ],
)
def test_damaged_and_foreign_superblocks_give_clear_errors(name: str, error: type[DirectPVError], words: str) -> None:
    with pytest.raises(error) as exc:
        read_xfs_superblock(str(SB / name))
    assert words in str(exc.value)
    assert name in str(exc.value)  # names the source
    assert exc.value.hint  # says what to do


def test_empty_and_missing_inputs() -> None:
    with pytest.raises(NotFound):
        parse_xfs_superblock(b"")
    with pytest.raises(NotFound, match="no such device"):
        read_xfs_superblock("/nonexistent/device-for-superblock-test")
    v5 = (SB / "v5-300m-directpv.bin").read_bytes()
    with pytest.raises(InvalidArgument, match="v5 superblock truncated"):
        parse_xfs_superblock(v5[:240])


def test_unchecked_when_sector_is_not_complete() -> None:
    """A 4 KiB-sector superblock read as 512 bytes parses but says its checksum was not verified."""
    sb = parse_xfs_superblock((SB / "v5-600m-sect4k.bin").read_bytes())
    assert sb.sector_size == 4096
    assert sb.checksum_verified is False


@pytest.fixture
def mounted_points() -> Iterator[list[str]]:
    points: list[str] = []
    yield points
    for p in reversed(points):
        subprocess.run(["umount", "-l", p], capture_output=True)


@needs_tool("mkfs.xfs")
@needs_tool("blkid")
def test_real_filesystem_matches_blkid_and_statfs(
    loopdev: Callable[..., str], tmp_path: Path, mounted_points: list[str]
) -> None:
    dev = loopdev("700M")
    fs_uuid = str(uuid.uuid4())
    subprocess.run(["mkfs.xfs", "-q", "-m", f"uuid={fs_uuid}", "-L", "SBTEST", dev], check=True)
    sb = read_xfs_superblock(dev)
    blkid = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True, check=True).stdout
    props = dict(line.split("=", 1) for line in blkid.splitlines() if "=" in line)
    assert props["TYPE"] == "xfs"
    assert sb.uuid == props["UUID"] == fs_uuid
    assert sb.label == props["LABEL"] == "SBTEST"
    assert sb.checksum_verified
    assert sb.device_bytes <= 700 * 1024 * 1024
    mp = tmp_path / "mnt"
    mp.mkdir()
    subprocess.run(["mount", "-t", "xfs", dev, str(mp)], check=True)
    mounted_points.append(str(mp))
    st = os.statvfs(mp)
    assert sb.capacity == st.f_blocks * st.f_frsize  # capacity is what statfs reports
