"""The CustomResourceDefinitions (deploy/crds): loaded from their files, applied and waited for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import yaml
from kubernetes import client as k8s

from ..core.errors import Conflict
from .errors import ApiConflict, translated
from .objects import Obj


def load_crds(directory: Path) -> List[Obj]:
    return [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.yaml"))]


def apply_crds(api_client: k8s.ApiClient, directory: Path, timeout_s: float = 60.0) -> List[str]:
    """Create or update every CRD in ``directory`` and wait until each is Established."""
    ext = k8s.ApiextensionsV1Api(api_client)
    names: List[str] = []
    for body in load_crds(directory):
        name = body["metadata"]["name"]
        names.append(name)
        resource = "customresourcedefinitions.apiextensions.k8s.io"
        try:
            with translated("create", resource, name):
                ext.create_custom_resource_definition(body)  # type: ignore[arg-type]
        except ApiConflict:
            with translated("update", resource, name):
                cur = ext.read_custom_resource_definition(name)
                body["metadata"]["resourceVersion"] = cur.metadata.resource_version if cur.metadata else None
                ext.replace_custom_resource_definition(name, body)  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            with translated("get", "customresourcedefinitions.apiextensions.k8s.io", name):
                crd = ext.read_custom_resource_definition(name)
            conds = {c.type: c.status for c in ((crd.status.conditions if crd.status else None) or [])}
            if conds.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise Conflict(f"CRD {name} not Established after {timeout_s:.0f} s ({conds})",
                               "look at the API server log")
            time.sleep(0.1)
    return names
