"""Every place in driver/src that removes, renames or formats is a known, reviewed one.

Nothing on a drive is deleted unless the store recorded that it may be (a tombstone): the
functions below are the only ones allowed to remove, rename, truncate or format, each for the
reason given. The test reads the code (AST) and fails when such a call appears anywhere else,
so the rule cannot erode silently: a new site must be added here, with its reason, in review.

What counts as a site: ``os.remove/unlink/rmdir/removedirs/rename/renames/replace/truncate``,
``shutil.rmtree/move``, the methods ``.unlink() .rmdir() .rename() .unlinkat() .renameat()
.renameat2()``, ``.replace(x)`` with one argument (``Path.replace``; ``str.replace`` takes two),
and string constants naming a destructive tool (``mkfs.*``, ``wipefs``, ``rm``, ``dd``,
``blkdiscard``, ``sgdisk``, ``shred``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

SRC = Path(__file__).resolve().parents[1] / "src" / "directpv_csi"

OS_FUNCS = {"remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate"}
SHUTIL_FUNCS = {"rmtree", "move"}
METHODS = {"unlink", "rmdir", "rename", "unlinkat", "renameat", "renameat2"}
TOOLS = {"wipefs", "rm", "dd", "blkdiscard", "sgdisk", "shred"}

# qualified name (module path under directpv_csi + enclosing functions/classes) -> why it may
ALLOWED: Dict[str, str] = {
    "node.volumes.move_to_trash": "moves a volume directory + metadata file to .deleted/ (tombstones only)",
    "node.volumes.purge_trash": "empties .deleted/ (only what move_to_trash put there)",
    "device.format": "the mkfs.xfs command name (format execution)",
    "device.format.write_json_durably": "temp file renamed over our own metadata file (meta.json, volume metadata)",
    "device.format._with_mounted": "rmdir of its own private temporary mount point",
    "device.ondisk.readonly_root": "rmdir of its own private temporary mount point",
    "device.paths.rmdir_child": "target/staging cleanup of csi/node.py: an empty directory it made, by fd",
    "node.made.MadeRecords.add": "temp file renamed over its own record of a directory it made",
    "node.made.MadeRecords.remove": "its own record of a directory it made",
    "csi.server._clear_stale_socket": "a stale unix socket of the driver's own endpoint",
}


def _what(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Attribute):
            base = f.value.id if isinstance(f.value, ast.Name) else ""
            if base == "os" and f.attr in OS_FUNCS:
                return f"os.{f.attr}"
            if base == "shutil" and f.attr in SHUTIL_FUNCS:
                return f"shutil.{f.attr}"
            if base not in ("os", "shutil") and f.attr in METHODS:
                return f".{f.attr}()"
            if f.attr == "replace" and len(node.args) == 1 and not node.keywords:
                return ".replace(target)"
        elif isinstance(f, ast.Name) and f.id in {"rmtree", "unlink", "rmdir", "rename", "remove"}:
            return f"{f.id}()"
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
            node.value in TOOLS or node.value.startswith("mkfs.")):
        return f"tool {node.value!r}"
    return ""


def deletion_sites() -> List[Tuple[str, str, str]]:
    """(qualified function, what, file:line) for every site under driver/src."""
    out: List[Tuple[str, str, str]] = []
    for path in sorted(SRC.rglob("*.py")):
        if "proto" in path.relative_to(SRC).parts:
            continue  # generated gRPC code
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        _walk(tree, [module], str(path.relative_to(SRC)), out)
    return out


def _walk(node: ast.AST, scope: List[str], where: str, out: List[Tuple[str, str, str]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _walk(child, [*scope, child.name], where, out)
            continue
        what = _what(child)
        if what:
            out.append((".".join(scope), what, f"{where}:{child.lineno}"))  # type: ignore[attr-defined]  # _what matched a call: it has one
        _walk(child, scope, where, out)


def test_only_reviewed_functions_remove_rename_or_format() -> None:
    unexpected = [s for s in deletion_sites() if s[0] not in ALLOWED]
    assert not unexpected, (
        "code that removes, renames or formats outside the reviewed functions (add it to ALLOWED with "
        "its reason only if the store decided the deletion):\n" + "\n".join(f"  {q}: {w} ({where})"
                                                                           for q, w, where in unexpected))


def test_the_scanner_sees_the_known_sites() -> None:
    """The scanner would see a site: the trash functions are found (a scanner that finds nothing
    would pass the test above for the wrong reason)."""
    found = {q for q, _, _ in deletion_sites()}
    assert {"node.volumes.move_to_trash", "node.volumes.purge_trash", "device.format"} <= found


def test_the_scanner_flags_a_new_site(tmp_path: Path) -> None:
    code = "import os, shutil\ndef gc(p):\n    shutil.rmtree(p)\n    os.unlink(p)\n    p.rename(p)\n" \
           "    'a-b'.replace('-', '_')\n    run(['wipefs', '-a', p])\n"
    tree = ast.parse(code)
    found = sorted(w for w in (_what(n) for n in ast.walk(tree)) if w)
    assert found == [".rename()", "os.unlink", "shutil.rmtree", "tool 'wipefs'"]
