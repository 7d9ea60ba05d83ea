"""Fixtures of node_helpers.py (shared with driver/tests/csi/test_node*.py)."""

from node_helpers import config, make_drive, node_env, node_server, registry, store  # noqa: F401
