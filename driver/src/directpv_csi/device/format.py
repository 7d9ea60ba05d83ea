"""Format a device as a DirectPV drive: plan first (the exact commands), then execute.

``plan_format`` re-probes the device, judges it and returns a ``FormatPlan`` with the
exact ``mkfs.xfs`` command line and the metadata to write, or raises
``DeviceRefused`` naming every reason. Never allowed, even with ``force``: mounted,
held by another device, swap, root/boot disk, read-only, CD-ROM, hidden, too small,
a loop device unless ``allow_loop``, a state that changed since discovery (stale
token). Allowed only with ``force``: an existing filesystem or partition table. A
device that already is one of our drives is *adopted* (plan without commands).

Our drives carry the XFS label ``DIRECTPV-CSI`` (core/identity.py); MinIO DirectPV's carry
``DIRECTPV``, as ours did before format version 2. A ``DIRECTPV``-labelled drive is ours only
when its files say so (device/ondisk.py reads them without writing); a MinIO DirectPV drive is
never adopted, and never formatted while it holds volume directories, force or not. Any other
filesystem holding files is formatted only with ``force``, and the plan says what it destroys
(``FormatPlan.destroys``: filesystem, label, files and directories counted read-only, bytes).

``execute_format`` checks the state token again right before running, holds an
advisory lock on the device node while it works, runs mkfs.xfs, mounts the new
filesystem in a private temporary directory, writes ``.directpv/meta.json`` (fsynced),
unmounts and reads the capacity back from the superblock.

The drive ID is the filesystem UUID we give mkfs.xfs: it survives renames
(sdb -> sdc, loop3 -> loop7) and is read back from the superblock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..core.errors import (
    Aborted,
    CommandFailed,
    DeviceRefused,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from ..core.identity import KIND_OURS, LEGACY_LABEL, OUR_LABEL, hardware_id, is_our_kind, state_token
from ..core.judge import (
    DEFAULT_MIN_SIZE,
    FORMAT_ALLOWED,
    FORMAT_NEEDS_FORCE,
    FORMAT_NEEDS_REVIEW,
    JudgePolicy,
    format_permission,
    is_ours,
    judge,
)
from ..core.models import (
    REASON_DIRECTPV,
    REASON_MOUNTED,
    REASON_OURS,
    REASON_UNVERIFIED,
    Device,
    Reason,
)
from ..core.units import format_size
from . import mount as _mount
from . import ondisk as _ondisk
from .probe import probe, probe_one
from .superblock import XfsSuperblock, read_xfs_superblock

META_DIR = _ondisk.META_DIR
META_FILE = _ondisk.META_FILE
FORMAT_VERSION = 2  # 2: label DIRECTPV-CSI (1: label DIRECTPV, shared with MinIO DirectPV)
MKFS = "mkfs.xfs"
# Where tools are looked for besides PATH: a non-root PATH often lacks the sbin directories.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
XFSPROGS_HINT = "install xfsprogs (Debian/Ubuntu: apt-get install xfsprogs; EL/Fedora: dnf install xfsprogs)"
REASON_STALE = "stale"  # the device changed since the caller discovered it

# Reasons an adoption of one of our own drives tolerates (reading it changes nothing).
_ADOPT_TOLERATES = frozenset({REASON_OURS, REASON_MOUNTED})
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,12}$")
_C_ENV = {"LC_ALL": "C", "LANG": "C", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


@dataclass(frozen=True)
class FormatPlan:
    """What ``execute_format`` will do. ``commands`` is empty when the drive is adopted."""

    device: Device
    drive_id: str
    commands: List[List[str]]
    metadata: Dict[str, Any]
    token: str = ""  # the device's state token when planned; execute refuses if it changed
    adopt: bool = False  # already our drive: nothing to run, metadata is read back
    force: bool = False
    forced_reasons: Tuple[str, ...] = ()  # forceable reason codes ``force`` overrode
    label: str = OUR_LABEL
    destroys: Dict[str, Any] = field(default_factory=dict)  # what the format erases (empty: nothing)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for an Ansible module's result or a JSON log line."""
        return {
            "device": self.device.dev_path,
            "name": self.device.name,
            "drive_id": self.drive_id,
            "commands": [list(c) for c in self.commands],
            "metadata": dict(self.metadata),
            "token": self.token,
            "adopt": self.adopt,
            "force": self.force,
            "forced_reasons": list(self.forced_reasons),
            "label": self.label,
            "destroys": dict(self.destroys),
        }


@dataclass(frozen=True)
class FormattedDrive:
    """A drive that now carries our filesystem (formatted now, or adopted)."""

    drive_id: str
    device: Device
    fs_uuid: str
    capacity: int  # bytes, from the superblock (what statfs reports)
    metadata: Dict[str, Any] = field(default_factory=dict)
    adopted: bool = False
    superblock: Optional[XfsSuperblock] = None
    metadata_written: bool = False  # True after a format, or an adoption that wrote missing meta.json


# --- tool probing (once per process) ------------------------------------------------------


def find_tool(name: str) -> Optional[str]:
    """Absolute path of a tool, searching PATH and then the sbin directories (like Ansible's
    ``get_bin_path``), or None."""
    found = shutil.which(name)
    if found:
        return found
    return shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


@functools.cache
def mkfs_version() -> str:
    """``mkfs.xfs -V`` output, e.g. "mkfs.xfs version 6.1.0" ("" when not installed)."""
    exe = find_tool(MKFS)
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, env=_C_ENV, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


@functools.cache
def mkfs_supports_reflink() -> bool:
    """Whether this mkfs.xfs accepts ``-m reflink=1`` (dry run ``-N`` on a sparse temp file)."""
    exe = find_tool(MKFS)
    if exe is None:
        return False
    with tempfile.TemporaryDirectory(prefix="directpv-reflink-") as d:
        img = os.path.join(d, "probe.img")
        with open(img, "wb") as f:
            f.truncate(512 * 1024 * 1024)
        try:
            out = subprocess.run(
                [exe, "-N", "-f", "-m", "reflink=1", img], capture_output=True, env=_C_ENV, timeout=60, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0


def _require_mkfs() -> str:
    exe = find_tool(MKFS)
    if exe is None:
        raise Unsupported(f"{MKFS} is not installed (searched PATH and {', '.join(SBIN_DIRS)})", XFSPROGS_HINT)
    return exe


# --- planning ---------------------------------------------------------------------------


def _check_drive_id(drive_id: Optional[str]) -> Optional[str]:
    if drive_id is None:
        return None
    try:
        return str(_uuid.UUID(str(drive_id)))
    except ValueError:
        raise InvalidArgument(f"drive id {drive_id!r} is not a UUID", "leave it unset to get a fresh one") from None


def _check_label(label: str) -> str:
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise InvalidArgument(
            f"filesystem label {label!r} is invalid",
            f"use 1-12 characters from A-Z a-z 0-9 _ . - (default {OUR_LABEL})",
        )
    if label == LEGACY_LABEL:
        raise InvalidArgument(
            f"filesystem label {LEGACY_LABEL} is MinIO DirectPV's: drives made with it cannot be told from DirectPV's",
            f"leave the label unset (default {OUR_LABEL})",
        )
    return label


def _describe(dev: Device) -> str:
    parts = [dev.dev_path]
    if dev.size:
        parts.append(f"({dev.size} bytes)")
    return " ".join(parts)


# What to do about each never-allowed reason (force does not override these).
_REMEDY = {
    "mounted": "unmount it",
    "held": "remove what holds it (LVM volume group, md array, dm mapping)",
    "swap": "swapoff it",
    "root-disk": "it holds the system's own filesystems: choose another device",
    "read-only": "make it writable",
    "cdrom": "choose another device",
    "hidden": "choose another device",
    "not-a-disk": "choose a disk or partition",
    "too-small": "choose a larger device (or lower min_size)",
    "loop": "set allow_loop to use loop devices",
    "removable": "allow removable devices",
    "partitioned": "format one of its partitions instead",
    REASON_OURS: "it already is a DirectPV drive",
    REASON_DIRECTPV: (
        "it is a MinIO DirectPV drive holding volumes: leave it to DirectPV until the migration path takes it "
        "over, and choose another device"
    ),
    REASON_UNVERIFIED: "run where the device can be read (as root) so its files tell whose drive it is",
}


def _refuse(dev: Device, reasons: Sequence[Reason], forceable_only: bool) -> DeviceRefused:
    what = "; ".join(r.text for r in reasons)
    codes = tuple(r.code for r in reasons)
    if forceable_only:
        return DeviceRefused(
            f"refusing to format {dev.dev_path}: {what}",
            f"formatting would destroy what is on {dev.dev_path}: choose an empty device; force (with this device "
            "named) is only for a device whose contents are backed up or no longer needed",
            codes,
        )
    remedies: List[str] = []
    for code in codes:
        r = _REMEDY.get(code, "choose another device")
        if r not in remedies:
            remedies.append(r)
    return DeviceRefused(
        f"refusing to format {dev.dev_path}: {what}",
        "force does not override this: " + "; ".join(remedies),
        codes,
    )


def _context(dev: Device) -> List[Device]:
    """Every device of the host (for root-disk and holder relations), with ``dev`` as just probed."""
    try:
        others = probe(run_blkid=False, identify=False)  # relations only: no need to look into other drives
    except Exception:  # the target was probed fully; context only sharpens the root-disk check
        others = []
    return [dev] + [d for d in others if d.name != dev.name]


def _verdict_reasons(dev: Device, policy: JudgePolicy) -> Tuple[Reason, ...]:
    return judge(_context(dev), policy)[dev.name].reasons


def destroyed(dev: Device) -> Dict[str, Any]:
    """What formatting ``dev`` erases, as counted read-only (empty when it holds no filesystem)."""
    if not dev.fs_type and not dev.partition_table:
        return {}
    out: Dict[str, Any] = {
        "filesystem": dev.fs_type,
        "label": dev.fs_label,
        "fs_uuid": dev.fs_uuid,
        "partition_table": dev.partition_table,
    }
    c = dev.contents
    if c is not None and c.walked:
        out.update(
            files=c.files,
            directories=c.directories,
            data_bytes=c.data_bytes,
            used_bytes=c.used_bytes,
            counts_are_minimums=c.truncated,
            summary="{}{} file(s), {} director{}, {} in files, {} in use".format(
                "at least " if c.truncated else "",
                c.files,
                c.directories,
                "y" if c.directories == 1 else "ies",
                format_size(c.data_bytes),
                format_size(c.used_bytes),
            ),
        )
    elif dev.fs_type:
        out["summary"] = "contents not inspected" + (f": {dev.inspect_error}" if dev.inspect_error else "")
    return out


def plan_format(
    device_ref: str,
    *,
    force: bool = False,
    allow_loop: bool = False,
    expected_token: Optional[str] = None,
    drive_id: Optional[str] = None,
    label: str = OUR_LABEL,
    owner: str = "",
    reflink: Optional[bool] = None,
    min_size: Optional[int] = None,
    node: Optional[str] = None,
    safe_mode: bool = False,
) -> FormatPlan:
    """Plan the format of one device. Raises DeviceRefused (``reasons`` lists the codes),
    InvalidArgument (bad input: a regular file, a path with "..", not a block device, a bad
    drive id or label), NotFound (no such device). Runs no mutating command.

    ``safe_mode``: ``force`` applies only to a reviewed device state, so a format over what the
    device holds also needs ``expected_token`` (core/judge.py format_permission)."""
    did = _check_drive_id(drive_id)
    label = _check_label(label)
    if reflink is not None and not isinstance(reflink, bool):
        raise InvalidArgument(f"reflink must be true, false or unset, not {reflink!r}", "leave it unset to probe")
    dev = probe_one(device_ref)
    token = state_token(dev)
    if dev.fs_type and not dev.mountpoints and not is_ours(dev, label):
        dev = _ondisk.inspect(dev)  # count what a format would destroy (read-only)
    if expected_token is not None and expected_token != token:
        raise DeviceRefused(
            f"refusing to format {dev.dev_path}: device changed since it was discovered",
            "re-run discovery and plan again with the new ID",
            (REASON_STALE,),
        )
    policy = JudgePolicy(
        min_size=DEFAULT_MIN_SIZE if min_size is None else int(min_size), allow_loop=allow_loop, our_label=label
    )
    reasons = _verdict_reasons(dev, policy)
    codes = {r.code for r in reasons}
    meta_common: Dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "owner": owner,
        "node": node if node is not None else socket.gethostname(),
        "device": dev.name,
        "device_path": dev.dev_path,
        "major_minor": dev.majmin,
        "hardware_id": hardware_id(dev),
        "size": dev.size,
        "label": label,
    }
    if REASON_OURS in codes:
        blocking = [r for r in reasons if r.code not in _ADOPT_TOLERATES]
        if blocking:
            raise _refuse(dev, blocking, forceable_only=False)
        sb = read_xfs_superblock(dev.dev_path)
        if did is not None and did != sb.uuid:
            raise DeviceRefused(
                f"{dev.dev_path} already is DirectPV drive {sb.uuid}, not {did}",
                "adopt it under its own id (leave drive_id unset); a drive of ours is never formatted again",
                (REASON_OURS,),
            )
        return FormatPlan(
            device=dev,
            drive_id=sb.uuid,
            commands=[],
            metadata=dict(meta_common, drive_id=sb.uuid, fs_uuid=sb.uuid),
            token=token,
            adopt=True,
            force=force,
            label=label,
        )
    verdict, soft = format_permission(reasons, force=force, reviewed=expected_token is not None, safe_mode=safe_mode)
    if verdict == FORMAT_NEEDS_REVIEW:
        raise DeviceRefused(
            f"safe_mode: refusing to format {dev.dev_path} over existing data "
            f"({', '.join(r.code for r in soft)}) without expected_token",
            "pass the device's reviewed state token as expected_token (drive_info 'id', drive_select 'token', "
            "the DirectPVNode report's id) so force applies only to that state, or set safe_mode: false",
            tuple(r.code for r in soft),
        )
    if verdict != FORMAT_ALLOWED:
        raise _refuse(dev, soft, forceable_only=verdict == FORMAT_NEEDS_FORCE)
    exe = _require_mkfs()
    if reflink is True and not mkfs_supports_reflink():
        raise Unsupported(
            f"this {MKFS} ({mkfs_version() or 'unknown version'}) cannot make reflink filesystems",
            "leave reflink unset or upgrade xfsprogs",
        )
    new_id = did or str(_uuid.uuid4())
    cmd = [os.path.basename(exe), "-i", "maxpct=50", "-m", f"uuid={new_id}", "-L", label]
    if reflink is None and mkfs_supports_reflink():
        cmd += ["-m", "reflink=1"]
    elif reflink is not None and mkfs_supports_reflink():
        cmd += ["-m", "reflink=1" if reflink else "reflink=0"]
    if force:
        cmd.append("-f")
    cmd.append(dev.dev_path)
    metadata = dict(
        meta_common,
        drive_id=new_id,
        fs_uuid=new_id,
        tool=MKFS,
        tool_version=mkfs_version(),
        formatted_at="",  # filled in by execute_format
    )
    return FormatPlan(
        device=dev,
        drive_id=new_id,
        commands=[cmd],
        metadata=metadata,
        token=token,
        adopt=False,
        force=force,
        forced_reasons=tuple(r.code for r in soft),
        label=label,
        destroys=destroyed(dev),
    )


# --- execution --------------------------------------------------------------------------


LOCK_WAIT_S = 10.0  # udevd holds a shared lock for a moment while it probes a new or written device


def _lock_device(path: str, wait_s: Optional[float] = None) -> int:
    """Open the device node and take an exclusive advisory lock (the udev convention).

    A holder that keeps the lock longer than ``wait_s`` (another format, a partitioning
    tool) is another operation in flight: Aborted. udevd's short probe lock is waited out.
    """
    if wait_s is None:
        wait_s = LOCK_WAIT_S
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Aborted(
                    f"{path} is locked by another operation (waited {wait_s:g} s)", "wait for it to finish and retry"
                ) from None
            time.sleep(0.05)


def _recheck(plan: FormatPlan) -> Device:
    dev = probe_one(plan.device.dev_path)
    if state_token(dev) != plan.token:
        raise DeviceRefused(
            f"refusing to format {dev.dev_path}: device changed since it was discovered",
            "re-run discovery and plan again",
            (REASON_STALE,),
        )
    return dev


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path: str, data: Dict[str, Any], tmp: str, indent: int = 2) -> None:
    """The one home of our durable metadata writes: ``data`` as JSON into ``tmp`` (same
    directory), fsync, rename over ``path``, fsync the directory. A crash leaves the old file
    or the new one, never a torn one."""
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def write_metadata(mountpoint: str, metadata: Dict[str, Any]) -> str:
    """Write ``<mountpoint>/.directpv/meta.json`` atomically (temp file, fsync, rename, fsync dir)."""
    d = os.path.join(mountpoint, META_DIR)
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, META_FILE)
    write_json_durably(path, metadata, path + ".tmp")
    fsync_dir(mountpoint)
    return path


def read_metadata(mountpoint: str) -> Optional[Dict[str, Any]]:
    """The drive's ``.directpv/meta.json`` as a dict, None when absent. A file that is not a
    JSON object raises FailedPrecondition."""
    path = os.path.join(mountpoint, META_DIR, META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise FailedPrecondition(f"{path} is unreadable: {e}", "check the drive (xfs_repair -n) ") from None
    if not isinstance(data, dict):
        raise FailedPrecondition(f"{path} is not a JSON object", "check the drive; it may not be ours")
    return data


def _with_mounted(dev: Device, fn: Any) -> Any:
    """Call ``fn(mountpoint)`` with the device mounted: at an existing mount point if it has
    one, else in a private temporary directory that is unmounted and removed afterwards."""
    for mp in dev.mountpoints:
        m = _mount.mount_of(mp)
        here = m is not None and m.mount_point == os.path.realpath(mp) and m.root == "/"
        if here and m is not None and (m.major, m.minor) == (dev.major, dev.minor):
            return fn(mp)
    tmp = tempfile.mkdtemp(prefix="directpv-format-")
    try:
        _mount.mount(dev.dev_path, tmp, "xfs", flags=_mount.MS_NOATIME)
        try:
            return fn(tmp)
        finally:
            _mount.unmount(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


def _run(cmd: List[str]) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=_C_ENV, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{cmd[0]} timed out", "check the device's health (dmesg)", tuple(cmd)) from None
    if out.returncode != 0:
        err = (out.stderr or out.stdout).strip()
        raise CommandFailed(
            f"{' '.join(cmd)} failed (exit {out.returncode}): {err.splitlines()[0] if err else 'no output'}",
            "see stderr; the device may be in use or damaged",
            tuple(cmd),
            out.returncode,
            out.stderr,
        )


def execute_format(plan: FormatPlan) -> FormattedDrive:
    """Run a plan: recheck the state token, mkfs.xfs, write and fsync the metadata file,
    read the capacity back from the superblock. An adoption runs no mkfs; it reads the
    metadata (and writes it if it is missing: a format interrupted before it was written)."""
    if not isinstance(plan, FormatPlan):
        raise InvalidArgument(f"not a FormatPlan: {type(plan).__name__}", "pass what plan_format returned")
    try:
        fd = _lock_device(plan.device.dev_path)
    except FileNotFoundError:
        raise NotFound(f"device {plan.device.dev_path} disappeared since it was planned", "re-run discovery") from None
    try:
        dev = _recheck(plan)
        if plan.adopt:
            wrote: List[bool] = []

            def adopt(mp: str) -> Dict[str, Any]:
                meta = read_metadata(mp)
                if meta is None:
                    meta = dict(plan.metadata, formatted_at="", adopted_at=_now())
                    write_metadata(mp, meta)
                    wrote.append(True)
                return meta

            meta = _with_mounted(dev, adopt)
            sb = read_xfs_superblock(dev.dev_path)
            return FormattedDrive(
                sb.uuid, dev, sb.uuid, sb.capacity, meta, adopted=True, superblock=sb, metadata_written=bool(wrote)
            )
        for cmd in plan.commands:
            exe = find_tool(cmd[0]) or cmd[0]
            _run([exe, *cmd[1:]])
        meta = dict(plan.metadata, formatted_at=_now())
        _with_mounted(dataclasses.replace(dev, mountpoints=()), lambda mp: write_metadata(mp, meta))
        sb = read_xfs_superblock(dev.dev_path)
        if sb.uuid != plan.drive_id:
            raise CommandFailed(
                f"{dev.dev_path}: superblock UUID {sb.uuid} is not the drive id {plan.drive_id} after mkfs.xfs",
                "the device was changed by someone else during the format; inspect it before use",
            )
        dev = dataclasses.replace(dev, fs_type="xfs", fs_uuid=sb.uuid, fs_label=sb.label)
        return FormattedDrive(
            plan.drive_id, dev, sb.uuid, sb.capacity, meta, adopted=False, superblock=sb, metadata_written=True
        )
    finally:
        os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def format_drive(device_ref: str, *, dry_run: bool = False, **kwargs: Any) -> Union[FormatPlan, FormattedDrive]:
    """Plan and execute; ``dry_run=True`` returns the plan and runs nothing."""
    plan = plan_format(device_ref, **kwargs)
    if dry_run:
        return plan
    return execute_format(plan)


# --- recognising our drives ----------------------------------------------------------------


def find_our_drives(devices: Sequence[Device], label: str = OUR_LABEL) -> List[Device]:
    """Our drives among ``devices``, and only ours: XFS whose superblock carries our label, or
    the ``DIRECTPV`` label of an earlier version of ours with our ``.directpv/meta.json`` (the
    files are read without writing, device/ondisk.py). A MinIO DirectPV drive, or a
    ``DIRECTPV``-labelled drive whose files cannot be read, is never returned. The superblock is
    read here (no blkid or udev needed, so a renamed device is recognised); each returned Device
    has ``fs_uuid`` (the drive id), ``fs_label``, ``fs_type`` and ``drive_kind`` set from it."""
    found: List[Device] = []
    for dev in devices:
        if dev.cdrom or dev.size == 0 or dev.partitions or (dev.fs_type not in ("", "xfs")):
            continue
        try:
            sb = read_xfs_superblock(dev.dev_path)
        except Exception:  # not XFS, unreadable, vanished: not one of ours
            continue
        seen = dataclasses.replace(dev, fs_type="xfs", fs_uuid=sb.uuid, fs_label=sb.label)
        if sb.label == LEGACY_LABEL:
            if dev.fs_label != LEGACY_LABEL or not dev.drive_kind:  # not identified by the probe
                seen = _ondisk.inspect(dataclasses.replace(seen, drive_kind=""), walk=False)
            else:
                seen = dataclasses.replace(seen, drive_kind=dev.drive_kind)
            if is_our_kind(seen.drive_kind):
                found.append(seen)
        elif sb.label == label:
            found.append(dataclasses.replace(seen, drive_kind=KIND_OURS))
    return found
