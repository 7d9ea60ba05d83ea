"""`directpv-csi devices`: the block devices of this node as the product sees them.

Probes every block device (no udevd needed), judges each, and prints a table
(ID NAME SIZE FILESYSTEM MAKE AVAILABLE DESCRIPTION; available ones only unless
--all) or, with --json, every probed field plus the verdict, state token and
hardware ID of each device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, Sequence

from ..core.errors import DirectPVError
from ..core.identity import hardware_id, state_token
from ..core.judge import DEFAULT_MIN_SIZE, JudgePolicy, judge
from ..core.models import Device, Verdict
from ..core.units import format_size, parse_size
from ..device.probe import probe

HELP = "list this node's block devices and whether each can become a drive (and why not)"

COLUMNS = ("ID", "NAME", "SIZE", "FILESYSTEM", "MAKE", "AVAILABLE", "DESCRIPTION")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list devices that are not available, with why")
    parser.add_argument("--allow-loop", action="store_true", help="loop devices may be drives (tests, demos)")
    parser.add_argument(
        "--min-size",
        default=str(DEFAULT_MIN_SIZE),
        metavar="SIZE",
        help="smallest usable device, e.g. 512Mi, 1Gi, 10G (default 512Mi)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list with every probed field")


def device_record(dev: Device, verdict: Verdict) -> Dict[str, Any]:
    """Every probed field of ``dev`` plus its verdict, state token and hardware ID (JSON-ready)."""
    rec: Dict[str, Any] = {}
    for f in dataclasses.fields(dev):
        value = getattr(dev, f.name)
        rec[f.name] = list(value) if isinstance(value, tuple) else value
    rec["majmin"] = dev.majmin
    rec["make"] = dev.make
    rec["available"] = verdict.available
    rec["available_with_force"] = verdict.available_with_force
    rec["reasons"] = [{"code": r.code, "text": r.text, "forceable": r.forceable} for r in verdict.reasons]
    rec["state_token"] = state_token(dev)
    rec["hardware_id"] = hardware_id(dev)
    return rec


def render_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (last column not padded)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def table_rows(devices: Sequence[Device], verdicts: Dict[str, Verdict], show_all: bool) -> List[List[str]]:
    rows: List[List[str]] = [list(COLUMNS)]
    for d in devices:
        v = verdicts[d.name]
        if not show_all and not v.available:
            continue
        avail = "YES" if v.available else ("FORCE" if v.available_with_force else "NO")
        rows.append(
            [state_token(d), d.name, format_size(d.size), d.fs_type or "-", d.make or "-", avail, v.description or "-"]
        )
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:  # `directpv-csi devices | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    try:
        min_size = parse_size(args.min_size)
    except DirectPVError as exc:
        print(f"directpv-csi devices: --min-size: {exc}", file=sys.stderr)
        return 2
    policy = JudgePolicy(min_size=min_size, allow_loop=args.allow_loop)
    unreadable: Dict[str, str] = {}
    devices = probe(errors=unreadable)
    verdicts = judge(devices, policy)
    if unreadable:
        hint = " (run as root)" if os.geteuid() != 0 else ""
        names = ", ".join(f"{n}: {why}" for n, why in sorted(unreadable.items()))
        print(f"warning: could not read {names}{hint}; their filesystem fields are empty", file=sys.stderr)
    if args.json:
        out = [device_record(d, verdicts[d.name]) for d in devices if args.all or verdicts[d.name].available]
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    rows = table_rows(devices, verdicts, args.all)
    if len(rows) == 1:
        print("no available devices" + ("" if args.all else " (--all lists the others with why)"))
        return 0
    print(render_table(rows))
    return 0
