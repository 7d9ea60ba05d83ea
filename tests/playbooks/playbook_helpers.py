"""What the tests that run the real ``ansible-playbook`` of the venv on this host share: the
fixtures ``playbook`` (one run), ``inventory`` and ``collections_path``, registered for every test
by the root conftest.py's ``pytest_plugins`` (tests/playbooks and tests/realnode use them), and
:class:`Run` (one run as the test-only ``test_json`` callback, callback_plugins/, reported it),
``blkid`` of a device, the repository root. Tests import the helpers
(``from playbooks.playbook_helpers import Run``), never the fixtures.

Every inventory host uses ``ansible_connection: local`` and this interpreter; each host
gets its own loop devices (attached by the ``loopdev`` fixture of the root conftest)
through its host_vars.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml

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


@pytest.fixture
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collections path holding this working tree as directpv.csi (a link, like the venv's)."""
    root = tmp_path_factory.mktemp("collections")
    (root / "ansible_collections" / "directpv").mkdir(parents=True)
    (root / "ansible_collections" / "directpv" / "csi").symlink_to(REPO)
    return root


@pytest.fixture
def playbook(tmp_path: Path, collections_path: Path) -> Callable[..., Run]:
    """``playbook(name, inventory, *extra_args) -> Run``; ``name`` is a file in playbooks/ or a path."""

    def run(name: str, inventory: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Run:
        path = Path(name) if os.path.isabs(name) else REPO / "playbooks" / name
        e = dict(os.environ)
        e.update(
            PATH=f"{BIN}:{e.get('PATH', '')}",
            ANSIBLE_COLLECTIONS_PATH=str(collections_path),
            ANSIBLE_STDOUT_CALLBACK="test_json",
            ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).resolve().parent / "callback_plugins"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_FORKS="10",
            ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
            ANSIBLE_HOME=str(tmp_path / "ansible-home"),
        )
        e.update(env or {})
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), str(path), *args],
            capture_output=True,
            text=True,
            env=e,
            cwd=tmp_path,
            timeout=600,
            check=False,
        )
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            data = {}
        return Run(proc.returncode, data, proc.stderr, proc.stdout)

    return run


@pytest.fixture
def inventory(tmp_path: Path) -> Callable[..., Path]:
    """``inventory({host: host_vars}, group_vars) -> dir`` written the way a user would:
    hosts.yml plus one host_vars/<host>.yml per host."""

    def make(hosts: Dict[str, Dict[str, Any]], group_vars: Optional[Dict[str, Any]] = None) -> Path:
        d = tmp_path / "inventory"
        (d / "host_vars").mkdir(parents=True, exist_ok=True)
        (d / "group_vars").mkdir(exist_ok=True)
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "directpv_allow_loop": True,
        }
        common.update(group_vars or {})
        (d / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {h: None for h in hosts}}}))
        (d / "group_vars" / "all.yml").write_text(yaml.safe_dump(common))
        for h, hv in hosts.items():
            (d / "host_vars" / f"{h}.yml").write_text(yaml.safe_dump(hv or {}))
        return d

    return make
