"""`directpv-csi client`: a small CSI client over the real gRPC API.

    directpv-csi client --endpoint unix:///run/directpv-csi/csi.sock create data-0 --size 1GiB
    directpv-csi client --endpoint ... stage data-0 --staging-path /var/lib/kubelet/staging/data-0
    directpv-csi client --endpoint ... publish data-0 --staging-path ... --target-path ...
    directpv-csi client --endpoint ... info --state-dir /var/lib/directpv-csi
    directpv-csi client orphans --state-dir /var/lib/directpv-csi [--kubeconfig FILE]
    directpv-csi client orphans --state-dir ... --clean pvc-x --check   # preview: what would go
    directpv-csi client orphans --state-dir ... --clean pvc-x           # the node then removes it
    directpv-csi client orphans --state-dir ... --restore pvc-x         # record it again from its metadata

It does what a container orchestrator does, one call at a time: useful for demos,
for single-host use of standalone mode, and for poking at a running driver.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

HELP = ("call a CSI endpoint: create, delete, expand, stage, publish, unpublish, unstage, stats, list, capacity, "
        "info; list or clean orphan volume directories: orphans")

DEFAULT_ENDPOINT = os.environ.get("DIRECTPV_CSI_ENDPOINT", "unix:///var/lib/directpv-csi/csi.sock")
ACCESS_MODES = ("SINGLE_NODE_WRITER", "SINGLE_NODE_READER_ONLY", "SINGLE_NODE_SINGLE_WRITER",
                "SINGLE_NODE_MULTI_WRITER")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help="CSI socket (default $DIRECTPV_CSI_ENDPOINT or %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    c = sub.add_parser("create", help="CreateVolume")
    c.add_argument("name")
    c.add_argument("--size", default="", help="required bytes, e.g. 1GiB (default: the driver's default size)")
    c.add_argument("--limit", default="", help="limit bytes")
    c.add_argument("--param", action="append", default=[], metavar="K=V", help="StorageClass parameter")
    c.add_argument("--node", action="append", default=[], help="requisite node (repeatable; first is preferred)")
    c.add_argument("--access-mode", default="SINGLE_NODE_WRITER", choices=ACCESS_MODES)

    d = sub.add_parser("delete", help="DeleteVolume")
    d.add_argument("name")

    e = sub.add_parser("expand", help="ControllerExpandVolume, then NodeExpandVolume when --path is given")
    e.add_argument("name")
    e.add_argument("--size", required=True)
    e.add_argument("--path", default="", help="a published or staged path: also expand on the node")

    s = sub.add_parser("stage", help="NodeStageVolume")
    s.add_argument("name")
    s.add_argument("--staging-path", required=True)
    s.add_argument("--access-mode", default="SINGLE_NODE_WRITER", choices=ACCESS_MODES)

    u = sub.add_parser("publish", help="NodePublishVolume")
    u.add_argument("name")
    u.add_argument("--staging-path", required=True)
    u.add_argument("--target-path", required=True)
    u.add_argument("--read-only", action="store_true")
    u.add_argument("--access-mode", default="SINGLE_NODE_WRITER", choices=ACCESS_MODES)

    up = sub.add_parser("unpublish", help="NodeUnpublishVolume")
    up.add_argument("name")
    up.add_argument("--target-path", required=True)

    us = sub.add_parser("unstage", help="NodeUnstageVolume")
    us.add_argument("name")
    us.add_argument("--staging-path", required=True)

    st = sub.add_parser("stats", help="NodeGetVolumeStats")
    st.add_argument("name")
    st.add_argument("--path", required=True, help="published or staged path of the volume")

    sub.add_parser("list", help="ListVolumes")

    ca = sub.add_parser("capacity", help="GetCapacity")
    ca.add_argument("--node", default="", help="one node's segment (default: all)")
    ca.add_argument("--param", action="append", default=[], metavar="K=V")

    o = sub.add_parser("orphans", help="volume directories with no record and no tombstone (run on the node): "
                       "list them, or record tombstones for chosen ones so the node removes them")
    o.add_argument("--state-dir", required=True, help="the node's state dir (its drives are mounted under mnt/)")
    o.add_argument("--kubeconfig", default="", help="the kube store (default: STATE_DIR/store.sqlite)")
    o.add_argument("--node", default="", help="only this node's drives (default: every drive mounted here)")
    o.add_argument("--drive", default="", help="only this drive id")
    o.add_argument("--clean", action="append", default=[], metavar="NAME", help="orphan to remove (repeatable)")
    o.add_argument("--clean-all", action="store_true", help="remove every orphan listed")
    o.add_argument("--restore", action="append", default=[], metavar="NAME",
                   help="record the orphan again from its on-drive metadata (repeatable)")
    o.add_argument("--restore-all", action="store_true", help="restore every orphan that has metadata")
    o.add_argument("--check", action="store_true", help="with --clean/--restore: preview, record nothing")
    o.add_argument("--json", action="store_true", help="print JSON")

    i = sub.add_parser("info", help="plugin, drives, capacity, volumes and usage")
    i.add_argument("--state-dir", default="", help="standalone state dir: read its store (read-only) for drives")


# ----------------------------------------------------------------------------- helpers


def _params(items: Sequence[str]) -> Dict[str, str]:
    from ..core.errors import InvalidArgument

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"parameter {item!r} is not KEY=VALUE", "write --param directpv.dev/placement=spread")
        out[key] = value
    return out


def _size(text: str) -> int:
    from ..core.units import parse_size

    return parse_size(text) if text else 0


def _cap(mode: str) -> Any:
    from ..csi.proto import csi_pb2 as pb

    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain text table with a header and aligned columns."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


class Client:
    def __init__(self, endpoint: str, timeout: float) -> None:
        import grpc

        from ..csi.proto import csi_pb2_grpc as pbg
        from ..csi.server import socket_path

        self.address = "unix://" + socket_path(endpoint)
        self.channel = grpc.insecure_channel(self.address)
        self.timeout = timeout
        self.identity = pbg.IdentityStub(self.channel)
        self.controller = pbg.ControllerStub(self.channel)
        self.node = pbg.NodeStub(self.channel)

    def find(self, name: str) -> Optional[Any]:
        """The volume entry of ``name`` from ListVolumes (its volume_context is needed by stage/publish)."""
        from ..csi.proto import csi_pb2 as pb

        token = ""
        while True:
            resp = self.controller.ListVolumes(pb.ListVolumesRequest(max_entries=500, starting_token=token),
                                               timeout=self.timeout)
            for e in resp.entries:
                if e.volume.volume_id == name:
                    return e.volume
            if not resp.next_token:
                return None
            token = resp.next_token

    def context(self, name: str) -> Dict[str, str]:
        vol = self.find(name)
        return dict(vol.volume_context) if vol is not None else {}

    def all_volumes(self) -> List[Any]:
        from ..csi.proto import csi_pb2 as pb

        out: List[Any] = []
        token = ""
        while True:
            resp = self.controller.ListVolumes(pb.ListVolumesRequest(max_entries=500, starting_token=token),
                                               timeout=self.timeout)
            out += [e.volume for e in resp.entries]
            if not resp.next_token:
                return out
            token = resp.next_token

    def close(self) -> None:
        self.channel.close()


# ----------------------------------------------------------------------------- actions


def _describe(vol: Any) -> str:
    from ..core.units import format_size

    node = vol.volume_context.get("directpv.dev/node", "")
    drive = vol.volume_context.get("directpv.dev/drive-id", "")
    return f"volume {vol.volume_id}: {format_size(vol.capacity_bytes)} on node {node}, drive {drive}"


def do(args: argparse.Namespace, c: Client) -> int:
    from ..core.units import format_size
    from ..csi.proto import csi_pb2 as pb

    t = args.timeout
    a = args.action
    if a == "create":
        req = pb.CreateVolumeRequest(name=args.name, volume_capabilities=[_cap(args.access_mode)],
                                     parameters=_params(args.param))
        size, limit = _size(args.size), _size(args.limit)
        if size or limit:
            req.capacity_range.required_bytes = size
            req.capacity_range.limit_bytes = limit
        for n in args.node:
            req.accessibility_requirements.requisite.add(segments={"directpv.dev/node": n})
        if args.node:
            req.accessibility_requirements.preferred.add(segments={"directpv.dev/node": args.node[0]})
        print(_describe(c.controller.CreateVolume(req, timeout=t).volume))
    elif a == "delete":
        c.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=args.name), timeout=t)
        print(f"volume {args.name}: deleted")
    elif a == "expand":
        size = _size(args.size)
        resp = c.controller.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
            volume_id=args.name, capacity_range=pb.CapacityRange(required_bytes=size)), timeout=t)
        print(f"volume {args.name}: {format_size(resp.capacity_bytes)} reserved")
        if args.path and resp.node_expansion_required:
            n = c.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
                volume_id=args.name, volume_path=args.path, capacity_range=pb.CapacityRange(required_bytes=size)),
                timeout=t)
            print(f"volume {args.name}: {format_size(n.capacity_bytes)} on the node")
    elif a == "stage":
        os.makedirs(args.staging_path, exist_ok=True)  # the CO's part: the staging directory exists
        c.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=args.name, staging_target_path=args.staging_path, volume_capability=_cap(args.access_mode),
            volume_context=c.context(args.name)), timeout=t)
        print(f"volume {args.name}: staged at {args.staging_path}")
    elif a == "publish":
        os.makedirs(os.path.dirname(args.target_path.rstrip("/")), exist_ok=True)  # the CO's part: the parent
        c.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=args.name, staging_target_path=args.staging_path, target_path=args.target_path,
            volume_capability=_cap(args.access_mode), readonly=args.read_only,
            volume_context=c.context(args.name)), timeout=t)
        print(f"volume {args.name}: published at {args.target_path}{' read-only' if args.read_only else ''}")
    elif a == "unpublish":
        c.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=args.name, target_path=args.target_path),
                                   timeout=t)
        print(f"volume {args.name}: unpublished from {args.target_path}")
    elif a == "unstage":
        c.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=args.name,
                                                             staging_target_path=args.staging_path), timeout=t)
        print(f"volume {args.name}: unstaged from {args.staging_path}")
    elif a == "stats":
        resp = c.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=args.name, volume_path=args.path),
                                         timeout=t)
        print(_usage_text(resp))
    elif a == "list":
        vols = c.all_volumes()
        print(table([_volume_row(v) for v in vols], ("VOLUME", "SIZE", "NODE", "DRIVE")) if vols else "no volumes")
    elif a == "capacity":
        creq = pb.GetCapacityRequest(parameters=_params(args.param))
        if args.node:
            creq.accessible_topology.segments["directpv.dev/node"] = args.node
        resp = c.controller.GetCapacity(creq, timeout=t)
        print(f"available {format_size(resp.available_capacity)}, "
              f"largest volume {format_size(resp.maximum_volume_size.value)}")
    elif a == "info":
        print(info(c, args.state_dir))
    return 0


def _volume_row(v: Any) -> Tuple[str, str, str, str]:
    from ..core.units import format_size

    return (v.volume_id, format_size(v.capacity_bytes), v.volume_context.get("directpv.dev/node", ""),
            v.volume_context.get("directpv.dev/drive-id", ""))


def _usage_text(resp: Any) -> str:
    from ..core.units import format_size
    from ..csi.proto import csi_pb2 as pb

    parts = []
    for u in resp.usage:
        if u.unit == pb.VolumeUsage.BYTES:
            parts.append(f"bytes used {format_size(u.used)} of {format_size(u.total)} "
                         f"({format_size(u.available)} available)")
        elif u.unit == pb.VolumeUsage.INODES:
            parts.append(f"inodes used {u.used} of {u.total}")
    if resp.HasField("volume_condition"):
        cond = resp.volume_condition
        parts.append(("ABNORMAL: " + cond.message) if cond.abnormal else "condition normal")
    return "; ".join(parts)


def info(c: Client, state_dir: str = "") -> str:
    """Plugin, node, drives (from the store when ``state_dir``), capacity, volumes and usage."""
    import grpc

    from ..core.units import format_size
    from ..csi.proto import csi_pb2 as pb

    out: List[str] = []
    t = c.timeout
    pi = c.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=t)
    ready = c.identity.Probe(pb.ProbeRequest(), timeout=t).ready.value
    out.append(f"plugin {pi.name} {pi.vendor_version} at {c.address}: {'ready' if ready else 'NOT READY'}")
    try:
        ni = c.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=t)
        out.append(f"node {ni.node_id}, topology {dict(sorted(ni.accessible_topology.segments.items()))}")
    except grpc.RpcError:
        pass

    drives: List[Any] = []
    store_vols: Dict[str, Any] = {}
    if state_dir:
        from ..store.embedded import EmbeddedStore

        st = EmbeddedStore(os.path.join(state_dir, "store.sqlite"), read_only=True)
        try:
            drives = sorted(st.list_drives(), key=lambda d: (d.node, d.name, d.drive_id))
            store_vols = {v.name: v for v in st.iter_all_volumes()}
        finally:
            st.close()
        out.append("")
        out.append("DRIVES")
        rows = [(d.node, d.name or "-", d.drive_id, format_size(d.total), format_size(d.allocated),
                 format_size(d.free), d.volume_count, d.status + ("" if d.schedulable else ",cordoned"),
                 d.access_tier) for d in drives]
        out.append(table(rows, ("NODE", "DEVICE", "DRIVE ID", "SIZE", "ALLOCATED", "FREE", "VOLUMES", "STATUS",
                                "TIER")) if rows else "no drives")

    cap = c.controller.GetCapacity(pb.GetCapacityRequest(), timeout=t)
    out.append("")
    out.append(f"CAPACITY available {format_size(cap.available_capacity)}, "
               f"largest volume {format_size(cap.maximum_volume_size.value)}")

    vols = c.all_volumes()
    out.append("")
    out.append("VOLUMES")
    rows2 = []
    for v in vols:
        rec = store_vols.get(v.volume_id)
        path = ""
        if rec is not None:
            path = rec.target_paths[0] if rec.target_paths else rec.staging_path
        used = "-"
        if path:
            try:
                stats = c.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=v.volume_id,
                                                                               volume_path=path), timeout=t)
                b = [u for u in stats.usage if u.unit == pb.VolumeUsage.BYTES]
                used = format_size(b[0].used) if b else "-"
                if stats.HasField("volume_condition") and stats.volume_condition.abnormal:
                    used += " (ABNORMAL)"
            except grpc.RpcError as exc:
                used = f"? ({exc.code().name})"
        state = "-" if rec is None else ("published" if rec.target_paths else "staged" if rec.staging_path
                                         else "created")
        rows2.append((*_volume_row(v), state, used, path or "-"))
    out.append(table(rows2, ("VOLUME", "SIZE", "NODE", "DRIVE", "STATE", "USED", "PATH")) if rows2 else "no volumes")
    return "\n".join(out)


def orphans(args: argparse.Namespace) -> int:
    """List orphans of the drives mounted under STATE_DIR/mnt, or record tombstones for chosen ones."""
    import json
    from pathlib import Path

    from ..core.units import format_size
    from ..node import orphans as _orphans

    cleaning = bool(args.clean or args.clean_all)
    restoring = bool(args.restore or args.restore_all)
    if cleaning and restoring:
        print("directpv-csi client orphans: --clean and --restore exclude each other", file=sys.stderr)
        return 2
    store: Any
    if args.kubeconfig:
        from ..kube.store import KubeStore

        store = KubeStore.from_kubeconfig(args.kubeconfig, events=False)
    else:
        from ..store.embedded import EmbeddedStore

        store = EmbeddedStore(os.path.join(args.state_dir, "store.sqlite"), read_only=not (cleaning or restoring))
    try:
        node = args.node or None
        drive = args.drive or None
        if restoring:
            found = _orphans.restore(store, Path(args.state_dir), node, names=args.restore,
                                     everything=args.restore_all, check_mode=args.check)
        elif cleaning:
            found = _orphans.clean(store, Path(args.state_dir), node, names=args.clean, everything=args.clean_all,
                                   drive_id=drive, check_mode=args.check)
        else:
            found = [o for o in _orphans.list_orphans(store, Path(args.state_dir), node)
                     if drive is None or o.drive_id == drive]
    finally:
        store.close()
    if args.json:
        print(json.dumps({"orphans": [o.to_dict() for o in found], "changed": (cleaning or restoring)
                          and not args.check
                          and bool(found), "check_mode": bool(args.check)}, indent=1))
        return 0
    rows = [(o.name, o.drive_id, o.node, format_size(o.bytes_used), str(o.files),
             "yes" if o.has_metadata else "no") for o in found]
    if not found:
        print("no orphans" if not cleaning else "nothing to remove")
    else:
        print(table(rows, ("ORPHAN", "DRIVE", "NODE", "USED", "FILES", "METADATA")))
        if restoring:
            print(f"{len(found)} orphan(s) " + ("would be restored (check mode: nothing recorded)" if args.check
                                                else "restored: their volumes are recorded again"))
        elif cleaning:
            print(f"{len(found)} orphan(s) " + ("would be removed (check mode: nothing recorded)" if args.check
                                                else "recorded for removal: the node moves them to the trash at its "
                                                "next sync"))
    return 0


def run(args: argparse.Namespace) -> int:
    import grpc

    from ..core.errors import DirectPVError

    if args.action == "orphans":
        try:
            return orphans(args)
        except DirectPVError as exc:
            print(f"directpv-csi client orphans: {exc}", file=sys.stderr)
            return 2

    try:
        c = Client(args.endpoint, args.timeout)
    except DirectPVError as exc:
        print(f"directpv-csi client: {exc}", file=sys.stderr)
        return 2
    try:
        return do(args, c)
    except grpc.RpcError as exc:
        print(f"directpv-csi client {args.action}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except DirectPVError as exc:
        print(f"directpv-csi client {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        c.close()
