# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Filter directpv.csi.drives_yaml: parse and check a DirectPV drives.yaml on the controller."""

from __future__ import annotations

from typing import Any, Dict

import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.errors import InvalidArgument
from ansible_collections.directpv.csi.plugins.module_utils._directpv.core.selection import validate_drives_yaml


def drives_yaml(text: Any, source: str = "drives.yaml", host: str = "") -> Dict[str, Any]:
    """The text of a drives.yaml -> the checked, normalised document; errors name the file and the problem."""
    where = f"host {host}: " if host else ""
    if not isinstance(text, str):
        raise AnsibleFilterError(f"{where}{source}: expected the file's text, got {type(text).__name__}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AnsibleFilterError(
            f"{where}{source} is not valid YAML{at}: {problem}; fix the file (see playbooks/discover.yml to write one)"
        ) from None
    try:
        checked: Dict[str, Any] = validate_drives_yaml(doc, source)
        return checked
    except InvalidArgument as exc:
        raise AnsibleFilterError(f"{where}{exc}") from None


class FilterModule:
    def filters(self) -> Dict[str, Any]:
        return {"drives_yaml": drives_yaml}
