#!/usr/bin/env python3
"""Writes tests/sanity/ignore-<ansible-core>.txt (or checks it with --check).

The tarball ships the driver's source (driver/src: the image is built from it, and
plugins/module_utils/_directpv/ links into its core/ and device/). `ansible-test sanity` runs on the
artifact as shipped, so it sees every file there:
  - the Ansible content (plugins/, roles/, playbooks/, meta/, and the driver files module_utils
    links to) gets every sanity test; the only entries for it: each module's GPLv3-header check
    (the collection is Apache-2.0);
  - the rest of driver/src (the CSI driver payload, never loaded by Ansible) skips the two style
    tests, pep8 and pylint: ruff and mypy --strict are its linters (scripts/lint.sh), and its
    generated protocol code follows protoc's style. Every other sanity test (compile,
    line-endings, no-smart-quotes, shebang, symlinks...) still runs on it.
The driver lines are generated from the files present, so a new driver file needs
`python3 scripts/sanity-ignores.py` (make lint says so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ["2.19"]  # every ansible-core version meta/runtime.yml's requires_ansible admits

GPL_REASON = "# the collection is Apache-2.0 (LICENSE, galaxy.yml), not GPL: README.md, Licence"


def listed(path: str) -> list[str]:
    """The files the tarball gets under ``path`` (scripts/build-collection.sh: tracked or new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", path],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    return sorted(p for p in out if p.endswith(".py") and (REPO / p).exists())


def module_lines() -> list[str]:
    """validate-modules asks every module for a GPLv3 header; ours carry the Apache-2.0 one."""
    return [f"{m} validate-modules:missing-gplv3-license {GPL_REASON}" for m in listed("plugins/modules")]
DRIVER_REASON = "# the CSI driver payload, not Ansible content: ruff + mypy --strict lint it (scripts/lint.sh)"


def linked_from_module_utils() -> set[str]:
    out = set()
    for link in (REPO / "plugins/module_utils").rglob("*.py"):
        if link.is_symlink():
            out.add(os.path.relpath(os.path.realpath(link), REPO))
    return out


def driver_lines() -> list[str]:
    content = linked_from_module_utils()
    lines = []
    for rel in listed("driver/src"):
        if rel in content or ".egg-info" in rel:
            continue
        for test in ("pep8", "pylint"):
            lines.append(f"{rel} {test}!skip {DRIVER_REASON}")
    return lines


def main() -> int:
    check = "--check" in sys.argv[1:]
    want = "\n".join(module_lines() + driver_lines()) + "\n"
    bad = 0
    for v in VERSIONS:
        path = REPO / f"tests/sanity/ignore-{v}.txt"
        have = path.read_text() if path.exists() else ""
        if have == want:
            continue
        if check:
            print(f"{path.relative_to(REPO)} is out of date (driver files added or removed?): "
                  "run python3 scripts/sanity-ignores.py", file=sys.stderr)
            bad = 1
        else:
            path.write_text(want)
            print(f"wrote {path.relative_to(REPO)}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
