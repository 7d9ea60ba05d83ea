#!/usr/bin/env python3
"""Benchmark: the drives playbook over 20 inventory hosts x 4 loop drives (local connection).

Runs, on the same inventory:
  ours      playbooks/drives.yml (role directpv.csi.drives): first run formats 80 drives,
            second run adopts them (no change)
  baseline  the same play, task for task, with ansible.builtin.command: /bin/true in place of
            each of our module calls (drive_info, drive_select, drive x4 per host)

Prints wall times and the ratios ours/baseline (target <= 1.5x). Needs root (loop devices).
Every loop device is attached by this script and detached by its exact name at the end.
Environment: BENCH_HOSTS (20), BENCH_DRIVES (4), BENCH_FORKS (10).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOSTS = int(os.environ.get("BENCH_HOSTS", "20"))
DRIVES = int(os.environ.get("BENCH_DRIVES", "4"))
FORKS = os.environ.get("BENCH_FORKS", "10")
TARGET = 1.5

# The role's tasks (validate, discover, select, format) with /bin/true where our modules are.
BASELINE = """
- name: Baseline (ansible.builtin.command /bin/true in place of the directpv.csi modules)
  hosts: all
  gather_facts: false
  tasks:
    - name: Check the selection variables
      ansible.builtin.assert:
        that:
          - directpv_drives is sequence and directpv_drives is not string
        quiet: true
    - name: Check that no device is listed twice
      ansible.builtin.assert:
        that: directpv_drives | length == directpv_drives | unique | length
        quiet: true
    - name: Discover the block devices
      ansible.builtin.command: /bin/true
      register: directpv_discovery
      changed_when: false
      check_mode: false
    - name: Show the devices of this host
      ansible.builtin.debug:
        msg: "{{ directpv_discovery.stdout_lines }}"
    - name: Select the drives of this host
      ansible.builtin.command: /bin/true
      register: directpv_selection
      changed_when: false
      check_mode: false
    - name: Stop every host when selection failed on any host
      ansible.builtin.fail:
        msg: failed
      vars:
        _failed: "{{ ansible_play_hosts_all | difference(ansible_play_hosts) }}"
      when: _failed | length > 0
    - name: Show the selection of this host
      ansible.builtin.debug:
        msg: "{{ directpv_drives }}"
    - name: Format or adopt each selected drive
      ansible.builtin.command: /bin/true
      loop: "{{ directpv_drives }}"
      changed_when: true
    - name: Show the plan (check mode)
      ansible.builtin.debug:
        msg: plan
      when: ansible_check_mode
"""


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def run_playbook(playbook: Path, inventory: Path, env: Dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)], capture_output=True, text=True, env=env
    )
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"{playbook.name} failed (exit {proc.returncode})")
    return elapsed


def main() -> int:
    if os.geteuid() != 0:
        print("playbook_bench: needs root (loop devices); skipped")
        return 0
    loops: List[str] = []
    with tempfile.TemporaryDirectory(prefix="directpv-pbbench-") as tmp:
        work = Path(tmp)
        try:
            hosts: Dict[str, List[str]] = {}
            for h in range(HOSTS):
                devs = []
                for d in range(DRIVES):
                    img = work / f"h{h}d{d}.img"
                    sh("truncate", "-s", "600M", str(img))
                    dev = sh("losetup", "--find", "--show", str(img))
                    loops.append(dev)
                    devs.append(dev)
                hosts[f"node{h:02d}"] = devs
            inv = {
                "all": {
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "directpv_allow_loop": True,
                        "directpv_show_table": False,
                    },
                    "hosts": {h: {"directpv_drives": devs} for h, devs in hosts.items()},
                }
            }
            inventory = work / "inventory.json"
            inventory.write_text(json.dumps(inv))
            baseline = work / "baseline.yml"
            baseline.write_text(BASELINE)
            coll = work / "collections" / "ansible_collections" / "directpv"
            coll.mkdir(parents=True)
            (coll / "csi").symlink_to(REPO)
            env = dict(os.environ)
            env.update(
                PATH=f"{BIN}:{env.get('PATH', '')}",
                ANSIBLE_COLLECTIONS_PATH=str(work / "collections"),
                ANSIBLE_FORKS=FORKS,
                ANSIBLE_NOCOLOR="1",
                ANSIBLE_HOME=str(work / "ansible-home"),
            )
            drives_yml = REPO / "playbooks" / "drives.yml"
            base1 = run_playbook(baseline, inventory, env)
            ours1 = run_playbook(drives_yml, inventory, env)
            ours2 = run_playbook(drives_yml, inventory, env)
            base2 = run_playbook(baseline, inventory, env)
            base = min(base1, base2)
            n = HOSTS * DRIVES
            print(f"playbook_bench: {HOSTS} hosts x {DRIVES} loop drives = {n} drives, forks {FORKS}")
            print(f"  baseline (/bin/true)        {base:7.2f} s   (runs: {base1:.2f}, {base2:.2f})")
            print(f"  drives.yml, formats {n:3d}     {ours1:7.2f} s   ratio {ours1 / base:.2f}x")
            print(f"  drives.yml, again (no-op)   {ours2:7.2f} s   ratio {ours2 / base:.2f}x")
            verdict = "meets" if ours2 / base <= TARGET else "MISSES"
            print(f"  target <= {TARGET}x (repeat run): {verdict}; first run adds {n} real mkfs.xfs")
        finally:
            for dev in loops:
                subprocess.run(["losetup", "--detach", dev], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
