"""The collection as users get it: `ansible-galaxy collection build` (scripts/build-collection.sh),
install the tarball offline into an empty path, and use it from there only (sys.path scanning off):
it carries what users need and no tests or development files, module_utils file links into driver/
survive, a module runs, ansible-doc renders every module, the filter and the role spec. (CI also
runs ansible-test sanity on the installed copy: scripts/ansible-sanity.sh.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from testsupport import needs_root

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

MODULES = ["directpv.csi.drive", "directpv.csi.drive_info", "directpv.csi.drive_select"]

# What users need from the tarball (galaxy.yml's build_ignore decides), and what must stay out.
MUST_SHIP = [
    "LICENSE",
    "README.md",
    "CHANGELOG.rst",
    "changelogs/changelog.yaml",
    "requirements.txt",
    "bindep.txt",
    "meta/runtime.yml",
    "meta/execution-environment.yml",
    "plugins/modules/drive.py",
    "plugins/module_utils/_common.py",
    "roles/drives/tasks/main.yml",
    "roles/install/meta/argument_specs.yml",
    "playbooks/drives.yml",
    "docs/INSTALL.md",
    "deploy/Containerfile",
    "deploy/crds/directpvdrives.yaml",
    "driver/pyproject.toml",
    "driver/src/directpv_csi/cmd/main.py",
    "driver/src/directpv_csi/node/uevents.py",
    "tests/config.yml",
]
MUST_NOT_SHIP_PREFIXES = [
    "tests/fixtures/", "tests/unit/", "tests/playbooks/", "tests/kube/", "tests/vm/", "driver/tests/",
    "molecule/", "scripts/", "bench/", ".ci/", "changelogs/fragments/",
]
MUST_NOT_SHIP = [
    "Makefile", "conftest.py", "testsupport.py", "mypy.ini", "pytest.ini", "ruff.toml", ".ansible-lint",
    ".gitignore", "requirements-dev.txt", "requirements-demo.txt", "constraints.txt",
]


def sh(cmd: List[str], env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The tarball scripts/build-collection.sh builds (what CI sanity-tests), installed offline
    with --no-deps into an empty path, sys.path scanning off (the venv's development link of the
    checkout must not count)."""
    tmp = tmp_path_factory.mktemp("galaxy")
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_HOME=str(tmp / "home"))
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    built = sh(["bash", str(REPO / "scripts/build-collection.sh"), str(tmp / "dist")], env, REPO)
    assert built.returncode == 0, built.stderr
    tarball = Path(built.stdout.strip().splitlines()[-1])
    assert tarball.is_file(), built.stdout
    inst = tmp / "installed"
    done = sh(
        # --no-deps: kubernetes.core (galaxy.yml dependency) comes with the `ansible` package here, and
        # Galaxy is unreachable; this checks our own tarball (links into driver/, modules runnable).
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "-p", str(inst), str(tarball)],
        env,
        tmp,
    )
    assert done.returncode == 0, done.stderr
    env["ANSIBLE_COLLECTIONS_PATH"] = str(inst)
    return {"tarball": str(tarball), "root": str(inst / "ansible_collections" / "directpv" / "csi"), **env}


def test_tarball_carries_what_users_need_and_no_tests_or_dev_configs(installed: Dict[str, str]) -> None:
    with tarfile.open(installed["tarball"]) as t:
        names = {m.name for m in t.getmembers()}
    missing = [n for n in MUST_SHIP if n not in names]
    assert not missing, f"the tarball lacks {missing}"
    leaked = sorted(
        n for n in names
        if n in MUST_NOT_SHIP or any(n.startswith(p) for p in MUST_NOT_SHIP_PREFIXES)
        or "__pycache__" in n or n.endswith((".pyc", ".egg-info")) or ".egg-info/" in n
    )
    assert not leaked, f"the tarball carries test or development files: {leaked[:20]}"
    # tests/ holds only what ansible-test sanity needs to run on the installed artifact.
    shipped_tests = {n.split("/")[1] for n in names if n.startswith("tests/")}
    assert shipped_tests <= {"sanity", "config.yml"}, shipped_tests
    manifest = json.loads(t_extract(installed["tarball"], "MANIFEST.json"))["collection_info"]
    assert manifest["license"] == ["Apache-2.0"]
    for key in ("repository", "documentation", "issues"):
        assert manifest[key].startswith("https://"), key
    assert Path(installed["root"], "LICENSE").read_text().lstrip().startswith("Apache License")


def t_extract(tarball: str, name: str) -> str:
    with tarfile.open(tarball) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read().decode()


def test_a_sanity_ignore_file_for_every_admitted_ansible_core() -> None:
    """meta/runtime.yml's requires_ansible admits only ansible-core versions with an ignore file
    (up to the newest installed here, which is what CI runs ansible-test sanity with)."""
    from ansible.release import __version__ as core
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(yaml.safe_load((REPO / "meta/runtime.yml").read_text())["requires_ansible"])
    major, minor = (int(x) for x in core.split(".")[:2])
    admitted = [f"{major}.{m}" for m in range(0, minor + 1) if spec.contains(f"{major}.{m}.0") or
                spec.contains(f"{major}.{m}.99")]
    assert f"{major}.{minor}" in admitted, f"the ansible-core that runs sanity here ({core}) is not admitted by {spec}"
    missing = [v for v in admitted if not (REPO / f"tests/sanity/ignore-{v}.txt").is_file()]
    assert not missing, f"requires_ansible {spec} admits {missing} without tests/sanity/ignore-<v>.txt"


def test_tarball_keeps_module_utils_links_into_the_driver(installed: Dict[str, str]) -> None:
    with tarfile.open(installed["tarball"]) as t:
        members = {m.name: m for m in t.getmembers()}
    link = members["plugins/module_utils/_directpv/device/probe.py"]
    assert link.issym() and link.linkname == "../../../../driver/src/directpv_csi/device/probe.py"
    assert "driver/src/directpv_csi/device/probe.py" in members
    root = Path(installed["root"])
    assert (root / "plugins/module_utils/_directpv/core/selection.py").is_symlink()
    assert (root / "plugins/module_utils/_directpv/core/selection.py").resolve().is_file()


@needs_root
def test_module_runs_from_the_installed_collection(installed: Dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in installed.items() if k not in ("tarball", "root")}
    out = sh(
        [
            str(BIN / "ansible"),
            "localhost",
            "-m",
            "directpv.csi.drive_info",
            "-a",
            "include_unavailable=true",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-o",
        ],
        env,
        tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.split("=>", 1)[1])
    assert result["summary"]["total"] >= 1 and result["devices"]
    assert result["table"].startswith("ID")


@pytest.mark.parametrize(
    "kind,name",
    [("module", m) for m in MODULES] + [("filter", "directpv.csi.drives_yaml"), ("role", "directpv.csi.drives")],
)
def test_ansible_doc_renders(installed: Dict[str, str], tmp_path: Path, kind: str, name: str) -> None:
    env = {k: v for k, v in installed.items() if k not in ("tarball", "root")}
    out = sh([str(BIN / "ansible-doc"), "-t", kind, name], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert name in out.stdout
    assert installed["root"] in out.stdout, "ansible-doc must read the installed copy"
    assert "OPTIONS" in out.stdout or "ENTRY POINT" in out.stdout


def _pins(path: Path) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            name, _sep, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_demo_requirements_are_the_demo_needs_within_the_dev_ones() -> None:
    """`make demo` installs requirements-demo.txt only: ansible-core and the driver's runtime deps,
    never the full ansible package, linters or test tools; requirements-dev.txt includes it; every
    pin equals constraints.txt's (one constraints file for both)."""
    demo = _pins(REPO / "requirements-demo.txt")
    dev_text = (REPO / "requirements-dev.txt").read_text()
    constraints = _pins(REPO / "constraints.txt")
    assert "-r requirements-demo.txt" in dev_text.splitlines()
    assert "ansible-core" in demo
    assert not {"ansible", "ansible-lint", "molecule", "mypy", "pytest", "ruff", "kubernetes"} & set(demo)
    driver_deps = {"grpcio", "grpcio-health-checking", "protobuf", "prometheus-client", "pyudev"}
    assert driver_deps <= set(demo), driver_deps - set(demo)
    for name, version in {**demo, **_pins(REPO / "requirements-dev.txt")}.items():
        pinned = constraints.get(name)
        assert pinned == version, f"{name}=={version} differs from constraints.txt ({pinned})"
