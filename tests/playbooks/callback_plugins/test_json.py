# Copyright: directpv.csi maintainers
# Apache License 2.0 (see LICENSE)
"""Test-only stdout callback: the whole run as one JSON document (plays -> tasks -> hosts, stats).

ansible-core 2.19 no longer ships the json callback (it moved to ansible.posix), and the
tests read results, not text. Shape: {"plays": [{"play": {"name"}, "tasks": [{"task":
{"name"}, "hosts": {HOST: RESULT}}]}], "stats": {HOST: {"ok", "changed", ...}}}.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: test_json
type: stdout
short_description: the run as one JSON document (tests only)
description:
  - Collects every task result per host and prints one JSON document at the end.
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible is untyped here
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "test_json"

    def __init__(self) -> None:
        super().__init__()
        self.plays: List[Dict[str, Any]] = []

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task(self, task: Any) -> Dict[str, Any]:
        tasks: List[Dict[str, Any]] = self.plays[-1]["tasks"]
        if not tasks or tasks[-1]["_uuid"] != task._uuid:
            tasks.append({"_uuid": task._uuid, "task": {"name": task.get_name()}, "hosts": {}})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task(task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task(task)

    def _record(self, result: Any, **extra: Any) -> None:
        data = dict(self._convert(result._result))
        data.update(extra)
        self._task(result._task)["hosts"][result._host.get_name()] = data

    @staticmethod
    def _convert(value: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = json.loads(json.dumps(value, default=str))
        return out

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record(result, unreachable=True, failed=True)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = sorted(stats.processed.keys())
        out = {
            "plays": [
                {"play": p["play"], "tasks": [{k: v for k, v in t.items() if k != "_uuid"} for t in p["tasks"]]}
                for p in self.plays
            ],
            "stats": {h: stats.summarize(h) for h in hosts},
        }
        self._display.display(json.dumps(out))
