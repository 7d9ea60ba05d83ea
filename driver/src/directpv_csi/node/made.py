"""What the node made on the host, so that teardown removes only that.

NodePublishVolume creates the target directory when the container orchestrator has not;
NodeUnpublishVolume must remove it again (CSI spec) - and nothing else: not a kubelet
file, not a directory someone else made, not anything inside a volume. Each directory the
node creates is recorded here, before it is mounted on, with the volume it was made for
and the directory's device and inode numbers and birth time; cleanup removes a path only when it is
recorded for that volume and still *is* that directory (same device, inode and birth), and only
with rmdir (empty directories only).

The record is node-local and survives restarts: one small JSON file per path in
``STATE_DIR/made/`` named by the SHA-256 of the path, written atomically (temp file,
rename). No fsync on the hot path: a record lost to a power cut only leaves an empty
directory behind (never removes anything), and a torn file reads as "not made by us".
Calls on one volume are serialised by the in-flight table; distinct paths are distinct files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MADE_SUBDIR = "made"


@dataclass(frozen=True)
class Made:
    path: str
    volume_id: str
    kind: str  # "dir" (block volumes would add "file")
    dev: int
    ino: int
    born: int = 0  # birth time (ns) of the directory, or its ctime: an inode number can be reused


class MadeRecords:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / MADE_SUBDIR

    def _file(self, path: str) -> Path:
        return self.dir / (hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest() + ".json")

    def add(self, made: Made) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._file(made.path)
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        data = json.dumps({"path": made.path, "volume_id": made.volume_id, "kind": made.kind,
                           "dev": made.dev, "ino": made.ino, "born": made.born}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def get(self, path: str) -> Optional[Made]:
        try:
            raw = json.loads(self._file(path).read_bytes())
            made = Made(path=str(raw["path"]), volume_id=str(raw["volume_id"]), kind=str(raw["kind"]),
                        dev=int(raw["dev"]), ino=int(raw["ino"]), born=int(raw.get("born", 0)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: treated as not made by us (nothing is removed)
        return made if made.path == path else None

    def remove(self, path: str) -> None:
        try:
            os.unlink(self._file(path))
        except FileNotFoundError:
            return

    def paths(self) -> list[str]:
        """Every recorded path (for tests and diagnostics)."""
        out = []
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json"):
                try:
                    out.append(str(json.loads((self.dir / name).read_bytes())["path"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out
