"""What the playbook tests share besides fixtures: the repository root, the venv's bin directory,
``blkid`` of a device and :class:`Run` (one ``ansible-playbook`` run as the test-only
``test_json`` callback reported it). Imported as ``from .playbook_helpers import Run``; the
fixtures that make runs (``playbook``, ``inventory``, ``collections_path``) live in conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def blkid(dev: str) -> Dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", dev], capture_output=True, text=True, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@dataclass
class Run:
    rc: int
    data: Dict[str, Any]
    stderr: str
    stdout: str = ""
    _failures: List[Tuple[str, str, str]] = field(default_factory=list)

    @property
    def stats(self) -> Dict[str, Dict[str, int]]:
        return dict(self.data.get("stats", {}))

    def changed(self, host: str) -> int:
        return int(self.stats[host]["changed"])

    def failures(self) -> List[Tuple[str, str, str]]:
        """(host, task name, message) of every failed task result."""
        out = []
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for host, res in task.get("hosts", {}).items():
                    if res.get("failed"):
                        out.append((host, task["task"]["name"], str(res.get("msg", ""))))
        return out

    def messages(self, host: str) -> List[str]:
        """Messages of the failed task results of ``host``."""
        return [msg for h, _task, msg in self.failures() if h == host]

    def results(self, task_name: str) -> Dict[str, Dict[str, Any]]:
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                name = task["task"]["name"]
                if name == task_name or name.endswith(" : " + task_name):  # role tasks: "<role> : <name>"
                    return dict(task["hosts"])
        raise KeyError(task_name)
