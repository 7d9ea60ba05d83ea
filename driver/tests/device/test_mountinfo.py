"""device/mountinfo.py: mountinfo and /proc/swaps parsers over captured text."""

from __future__ import annotations

from pathlib import Path

from directpv_csi.device.mountinfo import (
    mountpoints_by_majmin,
    parse_mountinfo,
    parse_mountinfo_line,
    parse_swaps,
    read_mountinfo,
    unescape,
)


def test_fields_and_escapes(fixtures_dir: Path) -> None:
    mounts = parse_mountinfo((fixtures_dir / "mountinfo" / "escapes.txt").read_text())
    by_id = {mi.mount_id: mi for mi in mounts}
    assert sorted(by_id) == [21, 36, 40, 41, 42, 43, 44], "the garbage line is skipped, the others kept"
    root = by_id[21]
    assert (root.parent_id, root.major, root.minor, root.majmin) == (1, 254, 0, "254:0")
    assert (root.root, root.mount_point, root.fs_type, root.source) == ("/", "/", "ext4", "/dev/vda")
    assert root.options == "rw,relatime" and root.super_options == "rw,discard"
    assert root.optional == ("shared:1",)
    assert not root.read_only
    bind = by_id[36]
    assert (bind.root, bind.mount_point, bind.source) == ("/mnt1", "/mnt2", "/dev/root")
    spaced = by_id[40]
    assert spaced.mount_point == "/mnt/with space"
    assert spaced.optional == ("shared:20", "master:3", "propagate_from:2")
    assert spaced.read_only and spaced.fs_type == "xfs" and spaced.source == "/dev/loop3"
    assert by_id[41].mount_point == "/mnt/tab\tand\nnewline\\back"
    assert by_id[42].root == "/volumes/pvc-1" and by_id[42].super_options == "rw,prjquota"
    assert by_id[43].mount_point == "/café"
    assert by_id[44].source == "" and by_id[44].super_options == ""


def test_unescape_plain_and_octal() -> None:
    assert unescape("/plain") == "/plain"
    assert unescape("/a\\040b") == "/a b"


def test_bad_line_raises_value_error() -> None:
    for line in ("", "1 2 3", "1 2 8:0 / /x rw shared:1 ext4 /dev/sda rw"):
        try:
            parse_mountinfo_line(line)
        except ValueError:
            continue
        raise AssertionError(f"accepted {line!r}")


def test_swaps() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/dm-0                               partition\t16777212\t0\t\t-2\n"
        "/swap\\040file                           file\t\t1048572\t\t0\t\t-3\n"
    )
    assert parse_swaps(text) == ["/dev/dm-0", "/swap file"]
    assert parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []


def test_both_namespaces_deduplicated(fixtures_dir: Path) -> None:
    proc = str(fixtures_dir / "sysfs" / "server1" / "proc")
    got = mountpoints_by_majmin(proc)
    assert got["259:2"] == ["/"], "present in both namespaces, listed once"
    assert got["253:1"] == ["/home"], "only in PID 1's namespace"
    assert got["9:0"] == ["/srv/data", "/var/backups"]
    assert got["8:32"] == ["/media/usb stick"]


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_mountinfo(str(tmp_path), "self") == []


def test_this_host_mountinfo_parses() -> None:
    mounts = read_mountinfo()
    assert any(mi.mount_point == "/" for mi in mounts)
    text = Path("/proc/self/mountinfo").read_text()
    assert len(mounts) == len([line for line in text.splitlines() if line.strip()])
