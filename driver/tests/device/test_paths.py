"""device/paths.py: resolution beneath a root without following symlinks, by openat2 and by
the O_PATH|O_NOFOLLOW walk used where openat2 is refused (both run here on real directories)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from directpv_csi.core.errors import FailedPrecondition, InvalidArgument, NotFound
from directpv_csi.device import paths


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "walk":
        monkeypatch.setattr(paths, "_openat2_works", False)
    yield request.param


def test_resolves_plain_directories_and_refuses_symlinks(mode: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "a" / "link")
    os.symlink("../..", root / "a" / "up")
    fd = paths.open_dir(str(root), ["a", "b"], "p")
    try:
        assert paths.where(fd) == str(root / "a" / "b")
        assert paths.mkdir_child(fd, "made") is True
        assert paths.mkdir_child(fd, "made") is False  # already there: no change
        child = paths.open_child(fd, "made")
        assert child is not None
        os.close(child)
        assert paths.open_child(fd, "missing") is None
        assert paths.rmdir_child(fd, "made") is True
        assert not (root / "a" / "b" / "made").exists()
    finally:
        os.close(fd)
    for parts in (["a", "link"], ["a", "link", "x"], ["a", "up"]):
        with pytest.raises(InvalidArgument):
            paths.open_dir(str(root), parts, "p")
    with pytest.raises(NotFound):
        paths.open_dir(str(root), ["a", "nope"], "p")
    with pytest.raises(FailedPrecondition):
        paths.open_dir(str(root), ["file"], "p")
    assert os.listdir(outside) == []


def test_rmdir_child_removes_only_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("kept")
    (tmp_path / "file").write_text("kept")
    fd = paths.open_dir(str(tmp_path), [], "p")
    try:
        assert paths.rmdir_child(fd, "full") is False
        assert paths.rmdir_child(fd, "file") is False
        assert paths.rmdir_child(fd, "missing") is False
    finally:
        os.close(fd)
    assert (tmp_path / "full" / "f").read_text() == "kept" and (tmp_path / "file").read_text() == "kept"


@pytest.mark.parametrize("bad", ["relative", "/other/x", "/R/../x", "/R", "/R/a\0b"])
def test_split_beneath_refuses_paths_outside_the_root(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        paths.split_beneath("/R", bad, "target_path")
    assert paths.split_beneath("/R", "/R/a//b/", "target_path") == ["a", "b"]
