"""Configuration of one node server: who it is, where it keeps drive mounts, which
paths the container orchestrator may hand it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InvalidArgument, clip
from ..core.validation import check_path_string

TOPOLOGY_NODE_KEY = "directpv.dev/node"
DEFAULT_STATE_DIR = Path("/var/lib/directpv-csi")
DEFAULT_KUBELET_DIRS: tuple[Path, ...] = (Path("/var/lib/kubelet"),)
MOUNT_SUBDIR = "mnt"


def _no_symlink_below(prefix: str, rel: str) -> bool:
    """False when a component of ``rel`` under ``prefix`` is a symlink (it could lead a
    mount outside the kubelet dir). A few lstat calls: cheaper than realpath on the hot path."""
    cur = prefix.rstrip("/")
    for part in rel.split("/"):
        cur = cur + "/" + part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return True  # nothing below exists: nothing to follow
        if stat.S_ISLNK(st.st_mode):
            return False
    return True


@dataclass(frozen=True)
class NodeConfig:
    """``kubelet_dirs`` are the only roots under which staging and target paths are
    accepted; drives are mounted at ``state_dir/mnt/<drive_id>``."""

    node_id: str
    state_dir: Path = DEFAULT_STATE_DIR
    kubelet_dirs: tuple[Path, ...] = DEFAULT_KUBELET_DIRS
    topology: dict[str, str] = field(default_factory=dict)
    allow_loop: bool = False
    max_volumes_per_node: int = 0
    require_quota: bool = False
    # Only these drive ids (filesystem UUIDs) are used by this node, when given: lets a
    # standalone demo or test claim exactly the drives it formatted on a shared host.
    only_drives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.node_id:
            raise InvalidArgument("node id is empty", "give the node's name (--node-id, default: the host name)")
        if not Path(self.state_dir).is_absolute():
            raise InvalidArgument(f"state directory {self.state_dir} is not absolute", "give an absolute path")
        roots = tuple(Path(os.path.normpath(p)) for p in self.kubelet_dirs)
        for root in roots:
            if not root.is_absolute():
                raise InvalidArgument(f"kubelet directory {root} is not absolute", "give absolute paths")
        if self.max_volumes_per_node < 0:
            raise InvalidArgument("max volumes per node is negative", "give 0 (no limit) or a positive count")
        object.__setattr__(self, "state_dir", Path(os.path.normpath(self.state_dir)))
        object.__setattr__(self, "kubelet_dirs", roots)
        object.__setattr__(self, "only_drives", tuple(d.lower() for d in self.only_drives))
        if not self.topology:
            object.__setattr__(self, "topology", {TOPOLOGY_NODE_KEY: self.node_id})

    @property
    def mount_root(self) -> Path:
        """Directory under which every drive of this node is mounted."""
        return self.state_dir / MOUNT_SUBDIR

    def drive_mount_dir(self, drive_id: str) -> Path:
        """Where drive ``drive_id`` is mounted: ``state_dir/mnt/<drive_id>``."""
        if not drive_id or "/" in drive_id or drive_id in (".", "..") or "\0" in drive_id:
            raise InvalidArgument(f"drive id {drive_id!r} is not a valid directory name", "drive ids are UUIDs")
        return self.mount_root / drive_id

    def path_allowed(self, path: str) -> bool:
        """True when ``path`` is absolute, has no ``..`` and lies strictly under a kubelet dir."""
        if not path or not os.path.isabs(path) or "\0" in path:
            return False
        if ".." in path.split("/"):
            return False
        norm = os.path.normpath(path)
        for root in self.kubelet_dirs:
            prefix = str(root).rstrip("/") + "/"
            if norm.startswith(prefix):
                return _no_symlink_below(prefix, norm[len(prefix):])
        return False

    def root_of(self, path: str) -> str:
        """The kubelet dir that normalised ``path`` lies strictly under (check_path first)."""
        for root in self.kubelet_dirs:
            prefix = str(root).rstrip("/") + "/"
            if path.startswith(prefix):
                return str(root)
        raise InvalidArgument(f"{clip(path)!r} is not under an allowed kubelet directory", "check the path first")

    def check_path(self, path: str, what: str) -> str:
        """``path`` normalised, or InvalidArgument naming ``what`` and the allowed roots. This
        checks the string (and refuses symlinks seen now); device/paths.py resolves it safely."""
        if not path:
            raise InvalidArgument(f"{what} is missing", f"give the {what} (an absolute path)")
        check_path_string(path, what)
        if not os.path.isabs(path):
            raise InvalidArgument(f"{what} {clip(path)!r} is not absolute", f"give an absolute {what}")
        if ".." in path.split("/"):
            raise InvalidArgument(f"{what} {clip(path)!r} contains '..'", f"give a plain absolute {what}")
        try:
            allowed = self.path_allowed(path)
        except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES of the lstat walk
            raise InvalidArgument(f"{what} {clip(path)!r}: {exc.strerror}", f"give a plain absolute {what}") from None
        if not allowed:
            roots = ", ".join(str(r) for r in self.kubelet_dirs) or "(none configured)"
            raise InvalidArgument(
                f"{what} {clip(path)!r} is not under an allowed kubelet directory ({roots}), or passes "
                "through a symlink there",
                "use a path of plain directories under the kubelet directory, or add its root to the "
                "node's --kubelet-dir",
            )
        return os.path.normpath(path)
