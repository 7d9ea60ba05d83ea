"""Drive selection: which of a host's devices the inventory asks for, and why the others are not taken.

Pure (no OS access): the caller probes the devices, judges them (core/judge.py) and,
for references that are paths, resolves them on the host to ``"maj:min"`` first.
Shared by the Ansible collection (module ``directpv.csi.drive_select``) and the driver.

Three sources, all optional, combined:

* explicit references (``directpv_drives``): kernel names (``sdb``), device paths
  (``/dev/sdb``, ``/dev/disk/by-id/...``), serials and WWNs, each optionally with
  ``force``;
* a DirectPV ``drives.yaml`` (``version: v1``, ``select: "yes"``) for users coming from
  DirectPV: the entries of this node;
* filters (``directpv_drive_filters``: size range, vendor/model globs, rotational,
  transport, include/exclude name patterns), used only when auto-selection is on.

Rules: a device the user *named* that cannot be used is a problem (an error naming the
device and the reason), never a silent skip. A device a *filter* matched that cannot be
used is rejected with its reasons. Every device not selected is listed with a reason.
A device already ours is "adopted" (kept, not formatted). Formatting over an existing
filesystem or partition table needs ``force``; in safe mode, a global force applies
only to devices the user named, never to devices a filter picked.

Also here: the discovery exports (DirectPV-style table and ``drives.yaml``).
Python >= 3.9 syntax: this module ships inside the Ansible collection.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InvalidArgument
from .judge import FORMAT_ALLOWED, FORMAT_NEEDS_FORCE, format_permission
from .models import (
    REASON_DIRECTPV,
    REASON_HAS_DATA,
    REASON_LOOP,
    REASON_OURS,
    REASON_ROOT_DISK,
    REASON_UNREADABLE,
    REASON_UNVERIFIED,
    Device,
    Reason,
    Verdict,
)
from .units import format_size, parse_size

SOURCE_EXPLICIT = "directpv_drives"
SOURCE_YAML = "drives.yaml"
SOURCE_FILTER = "directpv_drive_filters"

ACTION_FORMAT = "format"
ACTION_ADOPT = "adopt"

REJECT_NOT_SELECTED = "not-selected"
REJECT_FILTERED_OUT = "filtered-out"
REJECT_NEEDS_FORCE = "needs-force"
REJECT_NEEDS_NAMED = "needs-named"  # holds files (or could not be read): never formatted unless named

DRIVES_YAML_VERSION = "v1"

TABLE_HEADER = ("ID", "NODE", "DRIVE", "SIZE", "FILESYSTEM", "MAKE", "AVAILABLE", "DESCRIPTION")

_FILTER_KEYS = ("min_size", "max_size", "vendor", "model", "rotational", "transport", "include", "exclude")
_MAJMIN_RE = re.compile(r"^[0-9]+:[0-9]+$")


# --- inputs ------------------------------------------------------------------


@dataclass(frozen=True)
class DriveRequest:
    """One device the user asked for by reference."""

    ref: str
    source: str = SOURCE_EXPLICIT
    force: bool = False
    expected_id: str = ""  # drives.yaml "id" (a state token "<maj:min>$<hash>")
    expected_size: int = 0  # drives.yaml "size"


@dataclass(frozen=True)
class DriveFilters:
    """Criteria for auto-selection. Empty fields match everything."""

    min_size: int = 0
    max_size: int = 0
    vendor: str = ""  # glob, case-insensitive
    model: str = ""  # glob, case-insensitive
    rotational: Optional[bool] = None
    transport: Tuple[str, ...] = ()
    include: Tuple[str, ...] = ()  # kernel name globs
    exclude: Tuple[str, ...] = ()  # kernel name globs

    def mismatch(self, device: Device) -> str:
        """Why ``device`` does not match, or "" when it matches."""
        if self.min_size and device.size < self.min_size:
            return f"size {format_size(device.size)} is below min_size {format_size(self.min_size)}"
        if self.max_size and device.size > self.max_size:
            return f"size {format_size(device.size)} is above max_size {format_size(self.max_size)}"
        if self.vendor and not fnmatch.fnmatchcase(device.vendor.lower(), self.vendor.lower()):
            return f"vendor {device.vendor!r} does not match {self.vendor!r}"
        if self.model and not fnmatch.fnmatchcase(device.model.lower(), self.model.lower()):
            return f"model {device.model!r} does not match {self.model!r}"
        if self.rotational is not None and device.rotational != self.rotational:
            return f"rotational is {str(device.rotational).lower()}, wanted {str(self.rotational).lower()}"
        if self.transport and device.transport.lower() not in self.transport:
            return "transport {!r} is not one of {}".format(device.transport, ", ".join(self.transport))
        if self.include and not any(fnmatch.fnmatchcase(device.name, p) for p in self.include):
            return "name matches no include pattern ({})".format(", ".join(self.include))
        for p in self.exclude:
            if fnmatch.fnmatchcase(device.name, p):
                return f"name matches exclude pattern {p!r}"
        return ""


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "on", "1", "no", "false", "off", "0"):
        return value.lower() in ("yes", "true", "on", "1")
    raise InvalidArgument(f"{what} must be true or false, not {value!r}", "write true or false")


def _as_patterns(value: Any, what: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{what} must be a list of non-empty strings, not {value!r}", "e.g. [nvme*, sd?]")
    return tuple(value)


def parse_filters(value: Optional[Mapping[str, Any]]) -> DriveFilters:
    """``directpv_drive_filters`` -> DriveFilters; InvalidArgument names the bad key."""
    if not value:
        return DriveFilters()
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f"directpv_drive_filters must be a mapping, not {type(value).__name__}",
            "e.g. {min_size: 100Gi, include: [nvme*]}",
        )
    unknown = sorted(str(k) for k in value if k not in _FILTER_KEYS)
    if unknown:
        raise InvalidArgument(
            "directpv_drive_filters has unknown key(s) {}".format(", ".join(unknown)),
            "known keys: {}".format(", ".join(_FILTER_KEYS)),
        )
    rotational = value.get("rotational")
    filters = DriveFilters(
        min_size=parse_size(value["min_size"]) if value.get("min_size") not in (None, "") else 0,
        max_size=parse_size(value["max_size"]) if value.get("max_size") not in (None, "") else 0,
        vendor=str(value.get("vendor") or ""),
        model=str(value.get("model") or ""),
        rotational=None if rotational is None else _as_bool(rotational, "directpv_drive_filters.rotational"),
        transport=tuple(t.lower() for t in _as_patterns(value.get("transport"), "directpv_drive_filters.transport")),
        include=_as_patterns(value.get("include"), "directpv_drive_filters.include"),
        exclude=_as_patterns(value.get("exclude"), "directpv_drive_filters.exclude"),
    )
    if filters.min_size and filters.max_size and filters.min_size > filters.max_size:
        raise InvalidArgument(
            f"directpv_drive_filters: min_size {format_size(filters.min_size)}"
            f" is above max_size {format_size(filters.max_size)}",
            "swap them or drop one",
        )
    return filters


def parse_requests(value: Any, source: str = SOURCE_EXPLICIT) -> List[DriveRequest]:
    """``directpv_drives``: a list of strings or of ``{device: REF, force: bool}`` mappings."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidArgument(
            f"{source} must be a list, not {type(value).__name__}",
            "e.g. [nvme0n1, /dev/disk/by-id/nvme-Samsung_SSD_S4EWNX0R123456]",
        )
    out: List[DriveRequest] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            ref, force = item.strip(), False
        elif isinstance(item, Mapping):
            unknown = sorted(str(k) for k in item if k not in ("device", "force"))
            if unknown:
                raise InvalidArgument(
                    f"{source}[{i}] has unknown key(s) {', '.join(unknown)}",
                    "an entry is a string or {device: REF, force: true|false}",
                )
            raw = item.get("device")
            if not isinstance(raw, str):
                raise InvalidArgument(
                    f"{source}[{i}] has no device", "an entry is a string or {device: REF, force: true|false}"
                )
            ref, force = raw.strip(), _as_bool(item.get("force", False), f"{source}[{i}].force")
        else:
            raise InvalidArgument(
                f"{source}[{i}] is {item!r}, not a device reference",
                "an entry is a string or {device: REF, force: true|false}",
            )
        if not ref:
            raise InvalidArgument(f"{source}[{i}] is empty", "remove the empty entry")
        if ".." in ref.split("/"):
            raise InvalidArgument(f"{source}[{i}] {ref!r} contains '..'", "give a canonical device path")
        out.append(DriveRequest(ref=ref, source=source, force=force))
    return out


def validate_drives_yaml(doc: Any, source: str = "drives.yaml") -> Dict[str, Any]:
    """Check a parsed DirectPV ``drives.yaml`` (version v1) and return it normalised.

    Normalised: ``{"version": "v1", "nodes": [{"name": str, "drives": [{"name", "id", "size",
    "make", "fs", "select"}]}]}``. InvalidArgument names the first problem and where it is.
    """
    hint = 'expected: {version: v1, nodes: [{name: NODE, drives: [{name: nvme0n1, select: "yes"}]}]}'
    if not isinstance(doc, Mapping):
        raise InvalidArgument(f"{source} is not a mapping (got {type(doc).__name__})", hint)
    version = doc.get("version")
    if version != DRIVES_YAML_VERSION:
        raise InvalidArgument(f"{source}: version is {version!r}, only {DRIVES_YAML_VERSION!r} is supported", hint)
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise InvalidArgument(f"{source}: 'nodes' must be a list", hint)
    out_nodes: List[Dict[str, Any]] = []
    seen_nodes = set()
    for i, node in enumerate(nodes):
        where = f"{source}: nodes[{i}]"
        if not isinstance(node, Mapping) or not isinstance(node.get("name"), str) or not node.get("name"):
            raise InvalidArgument(f"{where} has no name", hint)
        name = node["name"]
        if name in seen_nodes:
            raise InvalidArgument(f"{source}: node {name!r} is listed twice", "merge its drives into one entry")
        seen_nodes.add(name)
        drives = node.get("drives")
        if drives is None:
            drives = []
        if not isinstance(drives, list):
            raise InvalidArgument(f"{where} ({name}): 'drives' must be a list", hint)
        out_drives: List[Dict[str, Any]] = []
        for j, drive in enumerate(drives):
            dwhere = f"{where} ({name}): drives[{j}]"
            if not isinstance(drive, Mapping) or not isinstance(drive.get("name"), str) or not drive.get("name"):
                raise InvalidArgument(f"{dwhere} has no name", hint)
            select = drive.get("select", "")
            if isinstance(select, bool):  # select: yes (unquoted) parses as a boolean
                select = "yes" if select else "no"
            if not isinstance(select, str) or select not in ("yes", "no", ""):
                raise InvalidArgument(
                    '{} ({}): select is {!r}; use "yes" or "no"'.format(dwhere, drive["name"], select), hint
                )
            size = drive.get("size", 0)
            if size in (None, ""):
                size = 0
            try:
                size = parse_size(size)
            except InvalidArgument as exc:
                raise InvalidArgument("{} ({}): {}".format(dwhere, drive["name"], exc.message), exc.hint) from None
            ident = drive.get("id", "")
            if ident is None:
                ident = ""
            if not isinstance(ident, str):
                raise InvalidArgument("{} ({}): id must be a string".format(dwhere, drive["name"]), hint)
            out_drives.append(
                {
                    "id": ident,
                    "name": drive["name"],
                    "size": size,
                    "make": str(drive.get("make") or ""),
                    "fs": str(drive.get("fs") or ""),
                    "select": select,
                }
            )
        out_nodes.append({"name": name, "drives": out_drives})
    return {"version": DRIVES_YAML_VERSION, "nodes": out_nodes}


def requests_from_drives_yaml(doc: Any, node: str, force: bool = False) -> List[DriveRequest]:
    """The ``select: "yes"`` entries of ``node`` in a drives.yaml (validated here)."""
    norm = validate_drives_yaml(doc)
    out: List[DriveRequest] = []
    for n in norm["nodes"]:
        if n["name"] != node:
            continue
        for d in n["drives"]:
            if d["select"] == "yes":
                out.append(
                    DriveRequest(
                        ref=d["name"], source=SOURCE_YAML, force=force, expected_id=d["id"], expected_size=d["size"]
                    )
                )
    return out


# --- outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class Chosen:
    """A selected device and what will be done with it."""

    name: str
    path: str
    size: int
    action: str  # ACTION_FORMAT | ACTION_ADOPT
    source: str
    ref: str
    force: bool = False  # format over an existing filesystem/partition table
    expected_token: str = ""  # refuse to format when the device's state token differs

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "action": self.action,
            "source": self.source,
            "ref": self.ref,
            "force": self.force,
            "expected_token": self.expected_token,
        }


@dataclass(frozen=True)
class Rejected:
    """A device not selected, with every reason."""

    name: str
    path: str
    size: int
    codes: Tuple[str, ...]
    reasons: Tuple[str, ...]

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "codes": list(self.codes),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Problem:
    """Why the selection cannot be carried out: names the reference/device, says what to do."""

    ref: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


@dataclass(frozen=True)
class Selection:
    selected: Tuple[Chosen, ...] = ()
    rejected: Tuple[Rejected, ...] = ()
    problems: Tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> Dict[str, Any]:
        return {
            "selected": [c.as_dict() for c in self.selected],
            "rejected": [r.as_dict() for r in self.rejected],
            "problems": [str(p) for p in self.problems],
        }


# --- matching ----------------------------------------------------------------


def _norm_wwn(value: str) -> str:
    v = value.strip().lower()
    for prefix in ("wwn-", "0x", "naa.", "eui.", "t10."):
        if v.startswith(prefix):
            v = v[len(prefix) :]
    return v


def match_reference(ref: str, devices: Sequence[Device], resolved: Optional[Mapping[str, str]] = None) -> List[Device]:
    """Devices that ``ref`` names.

    ``resolved`` maps path references to ``"maj:min"`` as found on the host (the
    caller follows symlinks such as /dev/disk/by-id/*); a path not in it is matched
    against each device's path and by-id links. Whole disks win over partitions
    when a serial or WWN is shared.
    """
    resolved = resolved or {}
    if ref.startswith("/"):
        majmin = resolved.get(ref, "")
        if _MAJMIN_RE.match(majmin):
            return [d for d in devices if d.majmin == majmin]
        found = [d for d in devices if ref == d.dev_path or ref in d.by_id]
        if found or not ref.startswith("/dev/") or ref.startswith("/dev/disk/"):
            return found
        ref = ref[len("/dev/") :]  # /dev/sdb given but not resolved: try the kernel name
    by_name = [d for d in devices if d.name == ref]
    if by_name:
        return by_name
    low = ref.lower()
    found = [d for d in devices if d.serial and d.serial.lower() == low]
    if not found:
        w = _norm_wwn(ref)
        found = [d for d in devices if d.wwn and _norm_wwn(d.wwn) == w]
    if not found:
        found = [d for d in devices if any(link.rsplit("/", 1)[-1] == ref for link in d.by_id)]
    if len(found) > 1:
        disks = [d for d in found if not d.is_partition]
        if disks:
            found = disks
    return found


def _reason_hint(reason: Reason) -> str:
    if reason.code == REASON_LOOP:
        return "loop devices are for tests: set allow_loop (role: directpv_allow_loop: true) to use one"
    if reason.code == REASON_ROOT_DISK:
        return "remove it from the selection: the root disk is never used"
    if reason.code == REASON_DIRECTPV:
        return "remove it from the selection: it is MinIO DirectPV's and holds its volumes (a migration path exists)"
    if reason.code == REASON_UNREADABLE:
        return "run the play with become: true so the device can be read"
    if reason.code == REASON_UNVERIFIED:
        return "run the play with become: true so its files tell whose drive it is"
    return "fix the device or remove it from the selection"


def _forceable_only(verdict: Verdict) -> bool:
    """Refused only for what force may override (core/judge.py format_permission)."""
    return format_permission(verdict.reasons, force=False)[0] == FORMAT_NEEDS_FORCE


def _has(verdict: Verdict, code: str) -> bool:
    return any(r.code == code for r in verdict.reasons)


def _holds_data(device: Device, verdict: Verdict) -> bool:
    """Files on its filesystem, or a filesystem whose contents were not counted."""
    if _has(verdict, REASON_HAS_DATA):
        return True
    return bool(device.fs_type) and (device.contents is None or not device.contents.walked)


def _where(node: str) -> str:
    return f" on node {node}" if node else ""


def select(
    devices: Sequence[Device],
    verdicts: Mapping[str, Verdict],
    *,
    requests: Sequence[DriveRequest] = (),
    filters: Optional[DriveFilters] = None,
    auto_select: bool = False,
    force: bool = False,
    safe_mode: bool = True,
    strict_ids: bool = False,
    resolved: Optional[Mapping[str, str]] = None,
    node: str = "",
) -> Selection:
    """Select devices; see the module docstring for the rules.

    ``verdicts`` is ``judge(devices, policy)``; ``resolved`` maps path references
    to ``"maj:min"`` or to an error text (e.g. "not a block device") found on the host.
    """
    resolved = resolved or {}
    problems: List[Problem] = []
    chosen: Dict[str, Chosen] = {}
    chosen_by: Dict[str, str] = {}
    at = _where(node)

    for req in requests:
        label = f"{req.source} entry {req.ref!r}"
        res = resolved.get(req.ref, "")
        if req.ref.startswith("/") and res and not _MAJMIN_RE.match(res):
            problems.append(Problem(req.ref, f"{label}{at}: {res}", "give a block device (see discover)"))
            continue
        found = match_reference(req.ref, devices, resolved)
        if not found:
            problems.append(
                Problem(
                    req.ref,
                    f"{label}{at}: no such block device",
                    "run playbooks/discover.yml to list this node's devices (names, by-id paths, serials, WWNs)",
                )
            )
            continue
        if len(found) > 1:
            problems.append(
                Problem(
                    req.ref,
                    "{}{} is ambiguous: it matches {}".format(label, at, ", ".join(d.name for d in found)),
                    "name the device by kernel name or by-id path instead",
                )
            )
            continue
        dev = found[0]
        if dev.name in chosen:
            problems.append(
                Problem(
                    req.ref,
                    f"{label}{at}: device {dev.name} is listed twice (also as {chosen_by[dev.name]!r})",
                    "list each device once",
                )
            )
            continue
        verdict = verdicts.get(dev.name, Verdict(dev.name))
        if req.expected_size and req.expected_size != dev.size:
            problems.append(
                Problem(
                    req.ref,
                    f"{label}{at}: device {dev.name} is {format_size(dev.size)} now,"
                    f" drives.yaml says {format_size(req.expected_size)}",
                    "the device changed since discovery: re-run discover and review drives.yaml",
                )
            )
            continue
        token = ""
        if req.expected_id:
            majmin = req.expected_id.split("$", 1)[0]
            if _MAJMIN_RE.match(majmin) and majmin != dev.majmin:
                problems.append(
                    Problem(
                        req.ref,
                        f"{label}{at}: device {dev.name} is {dev.majmin} now, drives.yaml id says {majmin}",
                        "the device changed since discovery: re-run discover and review drives.yaml",
                    )
                )
                continue
            if strict_ids:
                token = req.expected_id
        if _has(verdict, REASON_OURS):
            chosen[dev.name] = Chosen(dev.name, dev.dev_path, dev.size, ACTION_ADOPT, req.source, req.ref)
            chosen_by[dev.name] = req.ref
            continue
        if verdict.available:
            chosen[dev.name] = Chosen(
                dev.name, dev.dev_path, dev.size, ACTION_FORMAT, req.source, req.ref, False, token
            )
            chosen_by[dev.name] = req.ref
            continue
        if _forceable_only(verdict):
            if format_permission(verdict.reasons, force=req.force or force)[0] == FORMAT_ALLOWED:
                chosen[dev.name] = Chosen(
                    dev.name, dev.dev_path, dev.size, ACTION_FORMAT, req.source, req.ref, True, token
                )
                chosen_by[dev.name] = req.ref
                continue
            problems.append(
                Problem(
                    req.ref,
                    f"{label}{at}: refusing to format {dev.dev_path}: {verdict.description}",
                    "formatting would destroy what it holds: choose an empty device. Only if its contents are "
                    "backed up or no longer needed, mark this entry of directpv_drives "
                    f"({{device: {req.ref}, force: true}}) or set directpv_force: true",
                )
            )
            continue
        hard = [r for r in verdict.reasons if not r.forceable]
        problems.append(
            Problem(
                req.ref,
                "{}{}: {} cannot be used: {}".format(label, at, dev.dev_path, "; ".join(r.text for r in hard)),
                _reason_hint(hard[0]),
            )
        )

    rejected: List[Rejected] = []
    filter_matched = 0
    filters_on = auto_select
    flt = filters or DriveFilters()
    for dev in devices:
        if dev.name in chosen:
            continue
        verdict = verdicts.get(dev.name, Verdict(dev.name))
        codes = [r.code for r in verdict.reasons]
        texts = [r.text for r in verdict.reasons]
        if not filters_on:
            codes.insert(0, REJECT_NOT_SELECTED)
            texts.insert(0, "not selected (not listed in directpv_drives or drives.yaml; auto-selection is off)")
            rejected.append(Rejected(dev.name, dev.dev_path, dev.size, tuple(codes), tuple(texts)))
            continue
        why = flt.mismatch(dev)
        if why:
            codes.insert(0, REJECT_FILTERED_OUT)
            texts.insert(0, "filtered out: " + why)
            rejected.append(Rejected(dev.name, dev.dev_path, dev.size, tuple(codes), tuple(texts)))
            continue
        filter_matched += 1
        if _has(verdict, REASON_OURS):
            chosen[dev.name] = Chosen(dev.name, dev.dev_path, dev.size, ACTION_ADOPT, SOURCE_FILTER, dev.name)
            continue
        if verdict.available:
            chosen[dev.name] = Chosen(dev.name, dev.dev_path, dev.size, ACTION_FORMAT, SOURCE_FILTER, dev.name)
            continue
        if _forceable_only(verdict) and _holds_data(dev, verdict):
            codes.insert(0, REJECT_NEEDS_NAMED)
            texts.insert(
                0,
                "matched the filters but its filesystem holds files (or could not be read): a filter never picks "
                "such a device, force or not; only a device named in directpv_drives with force: true is formatted "
                "over its contents",
            )
            rejected.append(Rejected(dev.name, dev.dev_path, dev.size, tuple(codes), tuple(texts)))
            continue
        # a filter-picked device is not a reviewed one: safe mode never forces it
        permission = format_permission(verdict.reasons, force=force, reviewed=False, safe_mode=safe_mode)[0]
        if _forceable_only(verdict) and permission == FORMAT_ALLOWED:
            chosen[dev.name] = Chosen(dev.name, dev.dev_path, dev.size, ACTION_FORMAT, SOURCE_FILTER, dev.name, True)
            continue
        if _forceable_only(verdict):
            codes.insert(0, REJECT_NEEDS_FORCE)
            texts.insert(
                0,
                "matched the filters but needs force (safe mode never forces a filter-picked device: name it "
                "in directpv_drives with force: true)",
            )
        rejected.append(Rejected(dev.name, dev.dev_path, dev.size, tuple(codes), tuple(texts)))

    if filters_on and not any(c.source == SOURCE_FILTER for c in chosen.values()):
        if filter_matched == 0:
            problems.append(
                Problem(
                    "directpv_drive_filters",
                    f"directpv_drive_filters{at} match no device",
                    "loosen the filters or list the drives in directpv_drives (see the rejected list for why)",
                )
            )
        else:
            problems.append(
                Problem(
                    "directpv_drive_filters",
                    f"directpv_drive_filters{at} matched {filter_matched} device(s) but none is usable",
                    "see the rejected list for the reasons",
                )
            )

    ordered = [chosen[d.name] for d in devices if d.name in chosen]
    return Selection(tuple(ordered), tuple(rejected), tuple(problems))


# --- discovery exports -------------------------------------------------------


def device_row(device: Device, verdict: Verdict, node: str, token: str) -> Dict[str, Any]:
    """One discovery row (what drive_info returns per device and the table shows)."""
    return {
        "id": token,
        "node": node,
        "name": device.name,
        "path": device.dev_path,
        "majmin": device.majmin,
        "size": device.size,
        "size_human": format_size(device.size),
        "filesystem": device.fs_type,
        "make": device.make,
        "available": verdict.available,
        "available_with_force": verdict.available_with_force,
        "ours": _has(verdict, REASON_OURS),
        "description": verdict.description,
        "reasons": [{"code": r.code, "text": r.text, "forceable": r.forceable} for r in verdict.reasons],
    }


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] = TABLE_HEADER) -> str:
    """Columns padded to their widest cell, two spaces apart (kubectl-style)."""
    all_rows = [list(header)] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in all_rows]
    return "\n".join(lines)


def table_cells(row: Mapping[str, Any]) -> List[str]:
    if row["available"]:
        avail = "YES"
    elif row["ours"]:
        avail = "OURS"
    elif row["available_with_force"]:
        avail = "FORCE"
    else:
        avail = "NO"
    return [
        row["id"],
        row["node"],
        row["name"],
        row["size_human"],
        row["filesystem"] or "-",
        row["make"] or "-",
        avail,
        row["description"] or "-",
    ]


def drives_yaml_node(node: str, rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """This node's entry of a DirectPV drives.yaml: available devices, ``select: "yes"``."""
    drives = [
        {
            "id": r["id"],
            "name": r["name"],
            "size": r["size"],
            "make": r["make"],
            "fs": r["filesystem"],
            "select": "yes",
        }
        for r in rows
        if r["available"]
    ]
    return {"name": node, "drives": drives}


def drives_yaml_document(nodes: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    return {"version": DRIVES_YAML_VERSION, "nodes": [dict(n) for n in nodes]}


__all__ = [
    "ACTION_ADOPT",
    "ACTION_FORMAT",
    "SOURCE_EXPLICIT",
    "SOURCE_FILTER",
    "SOURCE_YAML",
    "TABLE_HEADER",
    "Chosen",
    "DriveFilters",
    "DriveRequest",
    "Problem",
    "Rejected",
    "Selection",
    "device_row",
    "drives_yaml_document",
    "drives_yaml_node",
    "format_table",
    "match_reference",
    "parse_filters",
    "parse_requests",
    "requests_from_drives_yaml",
    "select",
    "table_cells",
    "validate_drives_yaml",
]
