"""Validation of CSI requests, on plain data. Pure: no grpc, no os.

The controller turns protobuf messages into these plain values (strings, ints,
tuples) and calls the checks here; each raises a domain error with a hint, which
csi/errors.py turns into the gRPC code.

StorageClass parameters with our prefix ``directpv.dev/``:

* ``directpv.dev/access-tier``: Default | Hot | Warm | Cold (any case).
* ``directpv.dev/placement``: most-free (default) | bin-pack | spread.
* ``directpv.dev/volume-claim-id``: at most one volume of this claim per drive.
* ``directpv.dev/<label>``: any other name is a drive label that must match
  (``directpv.dev/rack: r1`` picks drives labelled ``rack=r1``).

A key with our prefix whose name is not a valid label name (empty, a slash, spaces)
is INVALID_ARGUMENT, as is a bad value of a known key. Keys without our prefix
(``csi.storage.k8s.io/pvc/name``...) are recorded and otherwise ignored.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Sequence, Tuple

from .errors import InvalidArgument, OutOfRange, clip
from .scheduler import PLACEMENT_MOST_FREE, PLACEMENTS, Request
from .units import GiB, format_size

PREFIX = "directpv.dev/"
PARAM_ACCESS_TIER = PREFIX + "access-tier"
PARAM_PLACEMENT = PREFIX + "placement"
PARAM_CLAIM = PREFIX + "volume-claim-id"
TOPOLOGY_NODE = PREFIX + "node"

ACCESS_TIERS = ("Default", "Hot", "Warm", "Cold")

# No capacity range in CreateVolume: this size, never "the whole drive".
DEFAULT_VOLUME_SIZE = 1 * GiB

MAX_NAME_LENGTH = 128
# Size limits checked before any store or API call (docs/CSI.md "Limits"). IDs are the names
# CreateVolume returned (at most MAX_NAME_LENGTH bytes; the CSI spec's 128-byte string limit).
MAX_ID_BYTES = 128
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX
MAX_PARAMETERS = 128  # entries of a parameters map
MAX_PARAMETERS_BYTES = 16 * 1024  # keys + values of a parameters map
# The name becomes a directory on the drive: no slash, no "..", no control characters.
# Every pattern is used with fullmatch: "$" alone would accept a trailing newline.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")

# Access modes by their CSI enum names.
SINGLE_NODE_MODES = (
    "SINGLE_NODE_WRITER",
    "SINGLE_NODE_READER_ONLY",
    "SINGLE_NODE_SINGLE_WRITER",
    "SINGLE_NODE_MULTI_WRITER",
)
SUPPORTED_FS_TYPES = ("", "xfs")


def check_volume_name(name: str, what: str = "volume name") -> str:
    """The one volume-name rule, for every caller (CreateVolume, both stores' reserve/restore, the
    node's volume directories and orphan names; the kube store maps a valid name that is not a
    Kubernetes object name to ``v-<sha256>``): set, at most MAX_NAME_LENGTH (128) bytes — the CSI
    spec's string limit, the strictest of the limits the copies had (128, 253, 255, 1024) — and one
    path component of letters, digits, '.', '_', '-' starting with a letter or digit. The stores
    check the length part only (:func:`check_volume_name_length`): they record CSI names as the
    strings they are."""
    check_volume_name_length(name, what)
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"{what} {clip(name)!r} has characters we cannot use in a directory name",
                              "use letters, digits, '.', '_' and '-', starting with a letter or digit")
    return name


def check_volume_name_length(name: str, what: str = "volume name") -> str:
    """The length part of the volume-name rule: set and at most MAX_NAME_LENGTH bytes."""
    if not name:
        raise InvalidArgument(f"{what} is missing", "pass the volume name")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{what} {clip(name, 40)!r} is {size} bytes long", f"use at most {MAX_NAME_LENGTH} bytes")
    return name


def check_required(value: str, what: str, limit: int = MAX_ID_BYTES) -> str:
    """``value`` when it is set, at most ``limit`` bytes and free of NUL bytes; else InvalidArgument.
    The default limit is the one of ids (volume_id, node_id)."""
    if not value:
        raise InvalidArgument(f"{what} is missing", f"pass {what}")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > limit:
        raise InvalidArgument(f"{what} {clip(value, 40)!r} is {size} bytes long", f"pass at most {limit} bytes")
    if "\0" in value:
        raise InvalidArgument(f"{what} {clip(value)!r} contains a NUL byte", f"pass a valid {what}")
    return value


def check_volume_id(value: str, what: str = "volume_id") -> str:
    """A volume id from a request: set, at most MAX_ID_BYTES, and shaped like the names
    CreateVolume accepts (every id this driver issues is one): InvalidArgument otherwise."""
    check_required(value, what)
    if not _NAME_RE.fullmatch(value):
        raise InvalidArgument(f"{what} {clip(value)!r} is not a volume id this driver issues",
                              "pass the volume id CreateVolume returned (letters, digits, '.', '_', '-')")
    return value


def check_path_string(value: str, what: str) -> str:
    """A path from a request: set, at most PATH_MAX bytes, components at most NAME_MAX bytes."""
    check_required(value, what, MAX_PATH_BYTES)
    for part in value.split("/"):
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise InvalidArgument(f"{what} {clip(value)!r} has a component longer than {MAX_COMPONENT_BYTES} bytes",
                                  f"use path components of at most {MAX_COMPONENT_BYTES} bytes")
    return value


def check_parameters_size(parameters: Mapping[str, str], what: str = "parameters") -> None:
    """At most MAX_PARAMETERS entries and MAX_PARAMETERS_BYTES of keys and values."""
    if len(parameters) > MAX_PARAMETERS:
        raise InvalidArgument(f"{what} has {len(parameters)} entries", f"pass at most {MAX_PARAMETERS}")
    size = sum(len(k.encode("utf-8", "surrogateescape")) + len(v.encode("utf-8", "surrogateescape"))
               for k, v in parameters.items())
    if size > MAX_PARAMETERS_BYTES:
        raise InvalidArgument(f"{what} hold {size} bytes of keys and values",
                              f"pass at most {MAX_PARAMETERS_BYTES} bytes")


# A capability as plain data: (access type "mount" | "block" | "", fs_type, access mode enum name).
Capability = Tuple[str, str, str]


def check_capabilities(caps: Sequence[Capability], *, required: bool = True) -> None:
    """Mount access with xfs (or no fs type), single-node access modes only."""
    if not caps:
        if required:
            raise InvalidArgument("volume capabilities are missing", "pass at least one volume capability")
        return
    for access_type, fs_type, mode in caps:
        problem = capability_problem((access_type, fs_type, mode))
        if problem:
            raise InvalidArgument(problem[0], problem[1])


def capability_problem(cap: Capability) -> Optional[Tuple[str, str]]:
    """``(message, hint)`` when ``cap`` is not supported, else None."""
    access_type, fs_type, mode = cap
    if access_type == "block":
        return ("block access type is not supported", "request a mount volume (volumeMode: Filesystem)")
    if access_type != "mount":
        return ("volume capability has no access type", "set the mount access type")
    if fs_type.lower() not in SUPPORTED_FS_TYPES:
        return (f"fs_type {clip(fs_type)!r} is not supported", "use xfs (or leave fs_type empty)")
    if mode == "UNKNOWN" or not mode:
        return ("volume capability has no access mode", "set an access mode such as SINGLE_NODE_WRITER")
    if mode not in SINGLE_NODE_MODES:
        return (f"access mode {mode} is not supported: a volume lives on one drive of one node",
                f"use one of {', '.join(SINGLE_NODE_MODES)} (ReadWriteOnce / ReadWriteOncePod)")
    return None


def volume_size(required: int, limit: int, default: int = DEFAULT_VOLUME_SIZE) -> int:
    """Bytes to reserve for a capacity range: ``required``, else ``limit``, else ``default``
    (capped at ``limit``). Raises InvalidArgument for negatives, OutOfRange for required > limit."""
    if required < 0 or limit < 0:
        raise InvalidArgument(f"capacity range {required}..{limit} is negative", "ask for zero or more bytes")
    if limit and required > limit:
        raise OutOfRange(f"required bytes {required} exceed limit bytes {limit}",
                         "make required_bytes at most limit_bytes")
    if required:
        return required
    if limit:
        return limit
    return default


def size_fits(size: int, required: int, limit: int) -> bool:
    """True when an existing volume of ``size`` satisfies the range."""
    return size >= required and (not limit or size <= limit)


def parse_parameters(parameters: Mapping[str, str], size: int) -> Request:
    """The scheduler request for StorageClass ``parameters`` and ``size`` bytes."""
    tier = ""
    placement = PLACEMENT_MOST_FREE
    claim = ""
    labels: Dict[str, str] = {}
    for key, value in parameters.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        if key == PARAM_ACCESS_TIER:
            match = [t for t in ACCESS_TIERS if t.lower() == value.lower()]
            if not match:
                raise InvalidArgument(f"parameter {key}={clip(value)!r} is not an access tier",
                                      f"use one of {', '.join(ACCESS_TIERS)}")
            tier = match[0]
        elif key == PARAM_PLACEMENT:
            if value not in PLACEMENTS:
                raise InvalidArgument(f"parameter {key}={clip(value)!r} is not a placement policy",
                                      f"use one of {', '.join(PLACEMENTS)}")
            placement = value
        elif key == PARAM_CLAIM:
            if not value or not _LABEL_NAME_RE.fullmatch(value):
                raise InvalidArgument(f"parameter {key}={clip(value)!r} is not a valid claim id",
                                      "use 1-63 letters, digits, '.', '_' or '-'")
            claim = value
        elif not _LABEL_NAME_RE.fullmatch(name):
            raise InvalidArgument(
                f"parameter {clip(key)!r} is not a known parameter nor a valid drive label name",
                f"use {PARAM_ACCESS_TIER}, {PARAM_PLACEMENT}, {PARAM_CLAIM} or {PREFIX}<label> "
                "with a label name of 1-63 letters, digits, '.', '_' or '-'",
            )
        elif not _LABEL_VALUE_RE.fullmatch(value):
            raise InvalidArgument(f"parameter {key}={clip(value)!r}: not a valid label value",
                                  "use up to 63 letters, digits, '.', '_' or '-'")
        else:
            labels[name] = value
    return Request(size=size, access_tier=tier, labels=labels, claim=claim, placement=placement)


def check_expand(required: int, limit: int, current: int) -> int:
    """New size for ControllerExpandVolume (never smaller than ``current``)."""
    if required <= 0 and limit <= 0:
        raise InvalidArgument("capacity range is missing", "pass required_bytes for the new size")
    new = volume_size(required, limit)
    if limit and current > limit:
        raise OutOfRange(f"volume is already {format_size(current)}, above the limit {format_size(limit)}",
                         "volumes cannot shrink")
    return max(new, current)
