"""Operator feedback helpers, pure: the misspelled-variable filter and the discover summary line."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.directpv.csi.plugins.action.show_devices import summary_line
from ansible_collections.directpv.csi.plugins.filter.misspelled import misspelled

KNOWN = ["directpv_drives", "directpv_drives_yaml", "directpv_drive_filters", "directpv_allow_empty"]


def test_misspelled_names_the_variable_meant() -> None:
    given = ["directpv_drive", "directpv_drvies", "directpv_drives", "directpv_image", "ansible_host", "drives"]
    assert misspelled(given, KNOWN) == [
        {"given": "directpv_drive", "meant": "directpv_drives"},
        {"given": "directpv_drvies", "meant": "directpv_drives"},
    ]
    assert misspelled(["directpv_drive_filter"], KNOWN) == [
        {"given": "directpv_drive_filter", "meant": "directpv_drive_filters"}
    ]
    with pytest.raises(AnsibleFilterError):
        misspelled(given, "directpv_drives")


def row(node: str, available: bool = False, ours: bool = False, force: bool = False) -> Dict[str, Any]:
    return {"node": node, "available": available, "ours": ours, "available_with_force": force or available}


def test_summary_counts_only_the_rows_shown() -> None:
    rows = [row("w1", available=True), row("w1", ours=True), row("w2", force=True), row("w2")]
    assert summary_line(rows, hidden=0, hosts=2) == (
        "2 host(s), 4 device(s) shown: 1 available, 1 only with force, 1 DirectPV drive(s), 1 not usable"
    )
    assert summary_line(rows[:1], hidden=5, hosts=1).endswith(
        "; 5 more not shown (loop devices, or unusable ones without include_unavailable)"
    )
