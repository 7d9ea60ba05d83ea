"""Embedded-adapter specifics (the shared contract is in test_store_contract.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from directpv_csi.core.errors import FailedPrecondition, InvalidArgument
from directpv_csi.core.models import Drive, Volume
from directpv_csi.store.embedded import EmbeddedStore

GiB = 1024**3


def test_refuses_memory_and_bad_sync(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        EmbeddedStore(":memory:")
    with pytest.raises(InvalidArgument):
        EmbeddedStore(str(tmp_path / "s.sqlite"), synchronous="OFF")


def test_wal_and_full_sync_on_disk(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    st = EmbeddedStore(path)
    st.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=GiB))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT node, total FROM drives").fetchall() == [("n1", GiB)]  # committed, visible outside
    raw.close()
    st.close()


def test_read_only_open_sees_a_live_writer_and_cannot_write(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    st = EmbeddedStore(path)
    st.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    st.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
    ro = EmbeddedStore(path, read_only=True)
    assert ro.get_drive("d1").allocated == GiB and [v.name for v in ro.list_volumes()] == ["v1"]
    with pytest.raises(FailedPrecondition):
        ro.reserve_volume(Volume(name="v2", drive_id="d1", node="", size=GiB, project_id=0))
    st.reserve_volume(Volume(name="v2", drive_id="d1", node="", size=GiB, project_id=0))
    assert [v.name for v in ro.list_volumes()] == ["v1", "v2"]  # volumes are read live
    ro.reload()
    assert ro.get_drive("d1").allocated == 2 * GiB  # drives after reload()
    assert ro.check() == [] and st.check() == []
    ro.close()
    st.close()


def test_group_commit_keeps_each_write_atomic(tmp_path: Path) -> None:
    """Many writers at once: batches are committed together, yet a refused write in a batch
    leaves no trace and the others all land."""
    st = EmbeddedStore(str(tmp_path / "s.sqlite"))
    st.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=50 * GiB))
    batches = []
    run = st._run_batch

    def spy(db: sqlite3.Connection, batch: list) -> None:  # type: ignore[type-arg]
        batches.append(len(batch))
        run(db, batch)

    st._run_batch = spy  # type: ignore[method-assign]
    errors = []

    def worker(i: int) -> None:
        try:
            st.reserve_volume(Volume(name=f"v{i}", drive_id="d1", node="", size=GiB, project_id=0))
        except Exception as exc:
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(errors) == ["Conflict"] * 30  # 50 fit, 30 refused
    assert sum(batches) == 80
    d = st.get_drive("d1")
    assert (d.allocated, d.volume_count) == (50 * GiB, 50)
    assert sorted(v.project_id for v in st.list_volumes()) == list(range(1, 51))
    assert st.check() == []
    st.close()
    with pytest.raises(FailedPrecondition):
        st.put_drive(Drive(drive_id="d2", node="n1", name="sdc", total=GiB))


def test_schema_1_store_gains_uids_and_tombstones(tmp_path: Path) -> None:
    """A store written by a version before tombstones (schema 1: no uid column, no tombstones table)
    opens with a uid for every volume (distinct), its allocations unchanged, and deletes with tombstones."""
    path = str(tmp_path / "old.sqlite")
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE drives (drive_id TEXT PRIMARY KEY, node TEXT NOT NULL, name TEXT NOT NULL,
            total INTEGER NOT NULL, allocated INTEGER NOT NULL DEFAULT 0, volume_count INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL, schedulable INTEGER NOT NULL, access_tier TEXT NOT NULL, make TEXT NOT NULL,
            mountpoint TEXT NOT NULL, message TEXT NOT NULL, labels TEXT NOT NULL, topology TEXT NOT NULL,
            generation INTEGER NOT NULL);
        CREATE TABLE volumes (name TEXT PRIMARY KEY, drive_id TEXT NOT NULL REFERENCES drives(drive_id),
            node TEXT NOT NULL, size INTEGER NOT NULL, project_id INTEGER NOT NULL, status TEXT NOT NULL,
            parameters TEXT NOT NULL, staging_path TEXT NOT NULL, target_paths TEXT NOT NULL,
            read_only_targets TEXT NOT NULL, labels TEXT NOT NULL, created_at REAL NOT NULL,
            generation INTEGER NOT NULL, UNIQUE (drive_id, project_id));
        INSERT INTO drives VALUES ('d1', 'n1', 'sdb', 10737418240, 2147483648, 2, 'Ready', 1, 'Default', '', '',
                                   '', '{}', '{}', 3);
        INSERT INTO volumes VALUES ('v1', 'd1', 'n1', 1073741824, 1, 'Ready', '{}', '', '[]', '[]', '{}', 1.0, 1);
        INSERT INTO volumes VALUES ('v2', 'd1', 'n1', 1073741824, 2, 'Pending', '{}', '', '[]', '[]', '{}', 2.0, 1);
    """)
    old.commit()
    old.close()
    st = EmbeddedStore(path)
    try:
        uids = {v.name: v.uid for v in st.list_volumes()}
        assert set(uids) == {"v1", "v2"} and all(len(u) == 32 for u in uids.values()) and len(set(uids.values())) == 2
        assert st.check() == [] and st.get_drive("d1").allocated == 2 * GiB
        st.delete_volume("v1")
        assert [(t.name, t.uid) for t in st.list_tombstones("d1")] == [("v1", uids["v1"])]
    finally:
        st.close()
    again = EmbeddedStore(path)  # migrated once: the uids stay
    try:
        assert again.get_volume("v2").uid == uids["v2"]
    finally:
        again.close()
