# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Options shared by every module that judges devices (module_utils/_common.DEVICE_POLICY_ARGS)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  allow_loop:
    description:
      - Treat loop devices as usable drives.
      - Loop devices are for tests and demos; production hosts leave this off.
    type: bool
    default: false
  min_size:
    description:
      - Smallest device size accepted as a drive, as bytes or with a unit (C(512Mi), C(10GiB), C(100G)).
    type: str
    default: 512Mi
  node:
    description:
      - Node name used in messages, the discovery table and C(drives.yaml).
      - Defaults to the host name of the managed host.
    type: str
"""
