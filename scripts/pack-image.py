#!/usr/bin/env python3
"""Packs static binaries into a one-layer OCI image archive (`FROM scratch`), no registry, no
builder: what `ctr images import` and the directpv.csi.image role load. Used for the locally built
pause image and the Go-built CSI sidecars (csi-provisioner, csi-resizer).

    scripts/pack-image.py --ref registry.k8s.io/sig-storage/csi-resizer:v2.3.0 \\
        --file ~/.cache/directpv-csi/tools/csi-resizer:/csi-resizer --entrypoint /csi-resizer -o resizer.tar

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...) in a tar; the index
names the image by both annotations containerd reads (io.containerd.image.name: the full
reference; org.opencontainers.image.ref.name: the tag). Output is deterministic: the same inputs
give the same digest (fixed mtimes, sorted entries, uncompressed layer).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from typing import Dict, List, Tuple


def _layer(files: List[Tuple[str, str]]) -> bytes:
    """A tar layer holding each (source, path in image) with mode 0755, root-owned, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(dst.strip("/").split("/")[:i]) for _, dst in files
                       for i in range(1, len(dst.strip("/").split("/")))})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for src, dst in sorted(files, key=lambda f: f[1]):
            with open(src, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(dst.strip("/"))
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(blobs: Dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def pack(ref: str, files: List[Tuple[str, str]], entrypoint: List[str], out: str) -> str:
    """Write the archive; returns the manifest digest."""
    blobs: Dict[str, bytes] = {}
    layer = _layer(files)
    layer_digest = _blob(blobs, layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "scripts/pack-image.py " + " ".join(dst for _, dst in files)}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(blobs, config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": len(manifest_bytes), "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": tag}}],
    }
    entries = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
               "index.json": json.dumps(index, sort_keys=True).encode()}
    for digest, data in blobs.items():
        entries["blobs/sha256/" + digest.split(":", 1)[1]] = data
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(entries[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(entries[name]))
    return manifest_digest


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="image reference, e.g. registry.k8s.io/pause:3.10")
    p.add_argument("--file", action="append", required=True, metavar="SRC:DST",
                   help="a file and its absolute path in the image (repeatable)")
    p.add_argument("--entrypoint", required=True, help="the entrypoint, e.g. /pause")
    p.add_argument("-o", "--output", required=True, help="the archive to write")
    args = p.parse_args(argv)
    files = []
    for spec in args.file:
        src, sep, dst = spec.rpartition(":")
        if not sep or not src or not dst.startswith("/"):
            p.error(f"--file {spec!r} is not SRC:/ABSOLUTE/DST")
        files.append((src, dst))
    try:
        digest = pack(args.ref, files, [args.entrypoint], args.output)
    except OSError as exc:
        print(f"pack-image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {args.ref} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
