"""/proc/<pid>/mountinfo and /proc/swaps: pure parsers plus thin readers.

mountinfo line (proc(5)):
``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue``
mount_id parent_id major:minor root mount_point options [optional fields...] - fs_type source super_options.
Paths are octal-escaped (space \\040, tab \\011, newline \\012, backslash \\134).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Set, Tuple

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(text: str) -> str:
    """Decode the kernel's octal escapes (``\\040`` -> space); bytes beyond ASCII decoded as UTF-8."""
    if "\\" not in text:
        return text
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/<pid>/mountinfo."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: str
    fs_type: str
    source: str
    super_options: str
    optional: Tuple[str, ...] = ()

    @property
    def majmin(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def parse_mountinfo_line(line: str) -> MountInfo:
    """Parse one mountinfo line; ValueError when it is not one."""
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line without separator: {line!r}") from None
    if sep < 6 or len(fields) < sep + 2:
        raise ValueError(f"mountinfo line too short: {line!r}")
    major, _colon, minor = fields[2].partition(":")
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major=int(major),
        minor=int(minor),
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=fields[5],
        optional=tuple(fields[6:sep]),
        fs_type=unescape(fields[sep + 1]),
        source=unescape(fields[sep + 2]) if sep + 2 < len(fields) else "",
        super_options=fields[sep + 3] if sep + 3 < len(fields) else "",
    )


def parse_mountinfo(text: str) -> List[MountInfo]:
    """Every mount in a mountinfo text; malformed lines are skipped."""
    out: List[MountInfo] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse_mountinfo_line(line))
        except ValueError:
            continue
    return out


def parse_swaps(text: str) -> List[str]:
    """File names of active swap areas in a /proc/swaps text (header skipped, escapes decoded)."""
    out: List[str] = []
    for i, line in enumerate(text.splitlines()):
        if i == 0 and line.startswith("Filename"):
            continue
        fields = line.split()
        if fields:
            out.append(unescape(fields[0]))
    return out


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return ""


def read_mountinfo(proc_root: str = "/proc", pid: str = "self") -> List[MountInfo]:
    """Mounts of ``pid``'s mount namespace ([] when unreadable, e.g. no permission for PID 1)."""
    return parse_mountinfo(_read(os.path.join(proc_root, str(pid), "mountinfo")))


def read_swaps(proc_root: str = "/proc") -> List[str]:
    return parse_swaps(_read(os.path.join(proc_root, "swaps")))


def mountpoints_by_majmin(proc_root: str = "/proc", pids: Tuple[str, ...] = ("self", "1")) -> Dict[str, List[str]]:
    """``{"maj:min": [mount points...]}`` over the mount namespaces of ``pids``, deduplicated, sorted."""
    found: Dict[str, Set[str]] = {}
    for pid in pids:
        for m in read_mountinfo(proc_root, pid):
            found.setdefault(m.majmin, set()).add(m.mount_point)
    return {k: sorted(v) for k, v in found.items()}
