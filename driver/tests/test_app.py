"""The composition root (app.py): every collaborator passed in through constructors, wired once.

Built on the embedded store in a temporary state directory and never started: no device is
probed, nothing is mounted, no socket is bound (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from directpv_csi import app
from directpv_csi.core.errors import InvalidArgument
from directpv_csi.csi.controller import ControllerServicer
from directpv_csi.csi.node import NodeServicer


def _settings(tmp_path: Path, **kw: object) -> app.Settings:
    return app.Settings(role="standalone", state_dir=str(tmp_path / "state"), node_id="n1", **kw)  # type: ignore[arg-type]


def test_standalone_shares_one_inflight_table_and_wires_the_purge(tmp_path: Path) -> None:
    built = app.build_standalone(_settings(tmp_path))
    try:
        controller = next(s for s in built.servicers if isinstance(s, ControllerServicer))
        node = next(s for s in built.servicers if isinstance(s, NodeServicer))
        assert built.registry is not None
        assert controller.inflight is built.registry.inflight is node.inflight
        assert controller.on_delete is not None  # the registry purges a deleted volume's directory
        # the embedded store has no node agents: no DirectPVNode report hooks, no watches
        assert built.reporter is None and built.initializer is None and built.registry.on_probe is None
        assert [label for label, _ in built.identity.ready_checks] == ["store", "drive registry synced"]
        assert built.observe is None and built.reconciler is None and built.registration is None
    finally:
        built.stop()
        built.stop()  # idempotent


def test_no_node_builds_no_registry(tmp_path: Path) -> None:
    built = app.build_standalone(_settings(tmp_path, serve_node=False))
    try:
        assert built.registry is None and built.uevents is None
        assert [type(s).__name__ for s in built.servicers] == ["IdentityServicer", "ControllerServicer"]
        controller = built.servicers[1]
        assert isinstance(controller, ControllerServicer) and controller.on_delete is None
    finally:
        built.stop()


@pytest.mark.parametrize("kw, message", [
    ({"topology": ("zone=z1",)}, "--topology 'zone=z1' is not directpv.dev/<key>=<value>"),
    ({"metrics_address": "10443"}, "--metrics-address '10443' is not HOST:PORT"),
    ({"kubelet_registration_path": "/x"}, "--kubelet-registration-path needs --registration-dir"),
])
def test_bad_settings_refused_before_anything_exists(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        app.check(_settings(tmp_path, **kw))
    assert message in str(err.value)
    assert not (tmp_path / "state").exists()
