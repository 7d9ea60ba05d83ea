"""Harness self-test (tests/vm/run.sh --self-test): a deliberately broken guest test.

The self-test succeeds only if the harness reports exactly this failure. Never
selected by the normal guest run.
"""

from __future__ import annotations


def test_deliberately_broken() -> None:
    assert 1 + 1 == 3, "deliberately broken guest test (harness self-test)"
