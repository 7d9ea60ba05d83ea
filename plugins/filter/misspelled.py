# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Filter directpv.csi.misspelled: variables set on a host that look like a misspelled role variable."""

from __future__ import annotations

import difflib
from typing import Any, Dict, List

from ansible.errors import AnsibleFilterError


def misspelled(names: Any, known: Any, prefix: str = "directpv_", cutoff: float = 0.8) -> List[Dict[str, str]]:
    """``[{given, meant}]`` for each name starting with ``prefix`` that is not in ``known`` but close to one of it."""
    if not isinstance(known, (list, tuple)) or not all(isinstance(k, str) for k in known):
        raise AnsibleFilterError("misspelled: known must be a list of variable names")
    known_set = set(known)
    out: List[Dict[str, str]] = []
    for name in sorted(str(n) for n in names):
        if not name.startswith(prefix) or name in known_set:
            continue
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
        if close:
            out.append({"given": name, "meant": close[0]})
    return out


class FilterModule:
    def filters(self) -> Dict[str, Any]:
        return {"misspelled": misspelled}
