"""Layering contract, enforced: which package may import what.

- core/ is pure: stdlib data/text modules only (no os, subprocess, socket, ctypes,
  grpc, kubernetes) and nothing from device/, store/, csi/, cmd/.
- core/ and device/ ship inside the Ansible collection (file symlinks): stdlib at
  import time, relative imports only, no store/csi/cmd.
- Only kube/ may import the Kubernetes client.

The layers themselves (cmd > app > observe > csi > node | kube > store | concurrency > device > core)
are import-linter contracts in .importlinter, run by `make lint` and by the last test here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "directpv_csi"

CORE_ALLOWED = {
    "__future__", "typing", "dataclasses", "re", "hashlib", "base64", "json", "fnmatch", "math",
    "enum", "collections", "itertools", "functools", "bisect", "heapq", "string", "uuid", "datetime",
}
SHARED_FORBIDDEN_PKGS = {"store", "kube", "csi", "cmd", "node", "observe", "app"}


def imports(path: Path) -> Iterator[Tuple[int, str, int]]:
    """(level, module, lineno) for every import at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", node.lineno


def top_level_imports(path: Path) -> Iterator[Tuple[int, str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", node.lineno


def files(sub: str) -> list[Path]:
    return sorted((PKG / sub).glob("*.py"))


@pytest.mark.parametrize("path", files("core"), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    for level, mod, line in imports(path):
        if level == 0:
            assert mod.split(".")[0] in CORE_ALLOWED, f"{path.name}:{line} imports {mod}: core/ must stay pure"
        else:
            assert level == 1 or mod.split(".")[0] == "core", f"{path.name}:{line} imports {'.' * level}{mod}"


@pytest.mark.parametrize("path", files("core") + files("device"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shared_code_fits_the_collection(path: Path) -> None:
    if path.name == "__init__.py":
        assert path.read_text() == "", f"{path}: must stay empty (ansible-test empty-init)"
        return
    for level, mod, line in imports(path):
        assert not mod.startswith("directpv_csi"), f"{path.name}:{line}: use relative imports (shipped in module_utils)"
        if level >= 2:
            assert mod.split(".")[0] in {"core", "device"}, f"{path.name}:{line} imports ..{mod}"
        assert mod.split(".")[0] not in SHARED_FORBIDDEN_PKGS or level == 0
    for level, mod, line in top_level_imports(path):
        if level == 0:
            top = mod.split(".")[0]
            assert top not in {"grpc", "kubernetes", "pyudev", "yaml", "google"}, (
                f"{path.name}:{line} imports {mod} at module level: stdlib only at import time"
            )


def test_only_kube_adapter_imports_kubernetes() -> None:
    for path in PKG.rglob("*.py"):
        if path.parent.name == "kube":
            continue
        for _, mod, line in imports(path):
            assert mod.split(".")[0] != "kubernetes", f"{path}:{line}: only kube/ may import kubernetes"


def test_no_subprocess_forks_instead_of_vforking() -> None:
    """The driver's processes hold live gRPC channels and servers: a subprocess started with
    ``preexec_fn`` (or user/group changes) makes Python fork() instead of vfork(), and a forked child
    of a gRPC process can abort before exec (grpcio >= 1.80, grpc/grpc#43055)."""
    forcing = {"preexec_fn", "user", "group", "extra_groups", "umask", "process_group"}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if "proto" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                found += [f"{path.relative_to(PKG)}:{node.lineno} {kw.arg}=" for kw in node.keywords
                          if kw.arg in forcing]
            if isinstance(node, ast.Attribute) and node.attr == "fork" and getattr(node.value, "id", "") == "os":
                found.append(f"{path.relative_to(PKG)}:{node.lineno} os.fork")
    assert found == []


def test_import_linter_contracts_hold() -> None:
    """The contracts of .importlinter (layers, kube/ the only Kubernetes client user, pure core)."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip("lint-imports is not installed (make setup installs import-linter)")
    repo = PKG.parents[2]
    run = subprocess.run([str(exe), "--config", str(repo / ".importlinter"), "--no-cache"], cwd=repo,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "3 kept, 0 broken" in run.stdout
