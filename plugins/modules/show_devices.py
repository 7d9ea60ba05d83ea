#!/usr/bin/python
# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""directpv.csi.show_devices: documentation of the action plugin of the same name."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: show_devices
short_description: Print one readable table of the devices found on every host
version_added: 0.2.0
description:
  - Formats the devices M(directpv.csi.drive_info) returned on one or more hosts as one DirectPV-style table
    (C(ID NODE DRIVE SIZE FILESYSTEM MAKE AVAILABLE DESCRIPTION)) with a summary line that counts only the
    devices shown, and prints it as plain text under the task when the stdout callback prints text
    (C(default), C(minimal)). Other callbacks get it in the result (RV(table), RV(lines)).
  - Runs on the controller; changes nothing.
author:
  - directpv.csi maintainers (@directpv-csi)
attributes:
  action:
    support: full
    description: Runs on the controller as an action plugin.
  check_mode:
    support: full
    description: Changes nothing either way.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  devices:
    description:
      - The C(devices) of one or more M(directpv.csi.drive_info) results, concatenated.
    type: list
    elements: dict
    required: true
  hidden:
    description:
      - How many devices the hosts probed but did not list (the summary says so).
    type: int
    default: 0
  hosts:
    description:
      - How many hosts were asked. Default - the number of nodes in O(devices).
    type: int
"""

EXAMPLES = r"""
- name: Discover
  directpv.csi.drive_info:
    include_unavailable: true
  register: found

- name: Show one table for every host
  directpv.csi.show_devices:
    devices: "{{ ansible_play_hosts | map('extract', hostvars, ['found', 'devices']) | flatten }}"
    hosts: "{{ ansible_play_hosts | length }}"
  run_once: true
"""

RETURN = r"""
table:
  description: The table, one line per device after the header.
  returned: always
  type: str
lines:
  description: The table's lines.
  returned: always
  type: list
  elements: str
msg:
  description: The summary - counts of the devices shown (available, only with force, DirectPV drives, not usable).
  returned: always
  type: str
"""
