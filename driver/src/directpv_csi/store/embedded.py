"""Embedded store: the Store port (store/base.py) on SQLite, for standalone mode.

Durability and consistency
  * WAL journal, ``synchronous=FULL`` by default: a write returns only once it is on
    disk, so an acknowledged volume survives kill -9 *and* a power cut. NORMAL survives
    kill -9 but may lose every commit since the last checkpoint on power loss (a lost
    record leaves an orphan directory: kept, never removed, but served by nothing until
    restored). NORMAL is accepted for benchmarks only.
  * Every write runs in a transaction with its own SAVEPOINT: a volume row and its
    drive's ``allocated``/``volume_count`` change together or not at all, so a crash
    can never leak or double a reservation. :meth:`check` verifies it.
  * Group commit: the caller holding the writer lock takes every queued write, runs
    them in one transaction and COMMITs once (one fsync per batch, not per write).
    Under a burst of CreateVolume calls the fsync cost is shared; a lone write pays
    one fsync and no thread hand-off.

Speed and concurrency
  * Drives are held in memory, indexed by id and by node, updated after each commit:
    ``list_drives(node)`` is O(drives on that node), never a table scan.
  * Reads of volumes use one read connection per thread (WAL: readers never block the
    writer and see committed data only).
  * One process owns the file (the standalone server). ``read_only=True`` opens it
    without writing (``directpv-csi client info --state-dir``) while the server runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from ..core.errors import (
    Conflict,
    DirectPVError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)
from ..core.models import Drive, Tombstone, Volume
from ..core.reservation import check_reservable, check_same_request, smallest_unused
from .base import (
    check_drive_changes,
    check_new_drive,
    check_new_volume,
    check_restored_volume,
    check_volume_changes,
    restored_already,
)

SCHEMA_VERSION = 2  # 2: volumes.uid, tombstones

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drives (
    drive_id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    name TEXT NOT NULL,
    total INTEGER NOT NULL,
    allocated INTEGER NOT NULL DEFAULT 0,
    volume_count INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    schedulable INTEGER NOT NULL,
    access_tier TEXT NOT NULL,
    make TEXT NOT NULL,
    mountpoint TEXT NOT NULL,
    message TEXT NOT NULL,
    labels TEXT NOT NULL,
    topology TEXT NOT NULL,
    generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS drives_node ON drives(node);
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    drive_id TEXT NOT NULL REFERENCES drives(drive_id),
    node TEXT NOT NULL,
    size INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    parameters TEXT NOT NULL,
    staging_path TEXT NOT NULL,
    target_paths TEXT NOT NULL,
    read_only_targets TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at REAL NOT NULL,
    generation INTEGER NOT NULL,
    UNIQUE (drive_id, project_id)
);
CREATE INDEX IF NOT EXISTS volumes_node ON volumes(node, name);
CREATE TABLE IF NOT EXISTS tombstones (
    drive_id TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    node TEXT NOT NULL,
    project_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (drive_id, name, uid)
);
"""

_DRIVE_COLS = (
    "drive_id, node, name, total, allocated, volume_count, status, schedulable, access_tier, make, "
    "mountpoint, message, labels, topology, generation"
)
_VOLUME_COLS = (
    "name, drive_id, node, size, project_id, status, parameters, staging_path, target_paths, "
    "read_only_targets, labels, created_at, generation, uid"
)
_TOMB_COLS = "drive_id, name, uid, node, project_id, size, deleted_at"
# The statements of the hot paths, made once (sqlite3 caches the prepared statement by its text).
_WRITE_DRIVE = f"INSERT OR REPLACE INTO drives({_DRIVE_COLS}) VALUES ({','.join('?' * 15)})"
_SELECT_VOLUME = f"SELECT {_VOLUME_COLS} FROM volumes WHERE name=?"
_INSERT_VOLUME = f"INSERT INTO volumes({_VOLUME_COLS}) VALUES ({','.join('?' * 14)})"
_WRITE_VOLUME = f"INSERT OR REPLACE INTO volumes({_VOLUME_COLS}) VALUES ({','.join('?' * 14)})"
_ALLOCATE = "UPDATE drives SET allocated=?, volume_count=?, generation=? WHERE drive_id=?"
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # one encoder, not one per value


def _dumps(value: object) -> str:
    if not value and isinstance(value, (dict, list)):  # most maps and lists of a new volume are empty
        return "[]" if isinstance(value, list) else "{}"
    return _ENCODE(value)


def _drive_row(d: Drive) -> Tuple[object, ...]:
    return (
        d.drive_id, d.node, d.name, d.total, d.allocated, d.volume_count, d.status, int(d.schedulable),
        d.access_tier, d.make, d.mountpoint, d.message, _dumps(d.labels), _dumps(d.topology), d.generation,
    )


def _drive_of(row: Sequence[Any]) -> Drive:
    return Drive(
        drive_id=row[0], node=row[1], name=row[2], total=row[3], allocated=row[4], volume_count=row[5],
        status=row[6], schedulable=bool(row[7]), access_tier=row[8], make=row[9], mountpoint=row[10],
        message=row[11], labels=json.loads(row[12]), topology=json.loads(row[13]), generation=row[14],
    )


def _volume_row(v: Volume) -> Tuple[object, ...]:
    return (
        v.name, v.drive_id, v.node, v.size, v.project_id, v.status, _dumps(v.parameters), v.staging_path,
        _dumps(list(v.target_paths)), _dumps(list(v.read_only_targets)), _dumps(v.labels), v.created_at,
        v.generation, v.uid,
    )


def _volume_of(row: Sequence[Any]) -> Volume:
    return Volume(
        name=row[0], drive_id=row[1], node=row[2], size=row[3], project_id=row[4], status=row[5],
        parameters=json.loads(row[6]), staging_path=row[7], target_paths=tuple(json.loads(row[8])),
        read_only_targets=tuple(json.loads(row[9])), labels=json.loads(row[10]), created_at=row[11],
        generation=row[12], uid=row[13],
    )


def _tombstone_of(row: Sequence[Any]) -> Tombstone:
    return Tombstone(drive_id=row[0], name=row[1], uid=row[2], node=row[3], project_id=row[4], size=row[5],
                     deleted_at=row[6])


def _new_uid() -> str:
    """A random (version 4) UUID as 32 hex digits: ``uuid.uuid4().hex`` without the UUID object."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


R = TypeVar("R", Drive, Volume)


def _changed(record: R, **changes: Any) -> R:
    """``dataclasses.replace(record, **changes)`` for the hot path of reserve_volume: Drive and
    Volume are frozen dataclasses whose __init__ only assigns (no __post_init__, checked below), so
    the copy is their field dict with the changes, made without replace()'s per-field introspection
    and __init__'s per-field object.__setattr__."""
    new = object.__new__(type(record))
    fields = new.__dict__
    fields.update(record.__dict__)
    fields.update(changes)
    return new


assert not any(hasattr(c, "__post_init__") for c in (Drive, Volume)), "_changed would skip __post_init__"


class _Op:
    """One write, run by the writer thread inside the current batch's transaction. ``done`` is set
    by the thread that committed it, while it holds the writer lock; its submitter reads it after
    holding that lock in turn (a flag, never waited on: waiting is for the writer lock)."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection, Dict[str, Optional[Drive]]], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None


class EmbeddedStore:
    """SQLite adapter of the Store port, for one process (the standalone server)."""

    MAX_BATCH = 256

    def __init__(self, path: str, *, read_only: bool = False, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise InvalidArgument(f"synchronous={synchronous!r} is not supported", "use FULL (default) or NORMAL")
        if not path or ":memory:" in path:
            raise InvalidArgument(f"store path {path!r} is not a file", "give a file path (readers use their own "
                                  "connections, which an in-memory database would not share)")
        self.path = path
        self.read_only = read_only
        self._lock = threading.RLock()  # guards the in-memory drive index
        self._readers: List[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        self._pending: List[_Op] = []
        self._pending_lock = threading.Lock()
        self._writing = threading.Lock()  # held by the thread committing a batch
        self._db: Optional[sqlite3.Connection] = None
        if not read_only:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._migrate(db)
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._db = db
        self._drives: Dict[str, Drive] = {}
        self._by_node: Dict[str, Dict[str, Drive]] = {}
        self._load()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Schema 1 -> 2: every volume gets a uid (its incarnation); the tombstones table is made by _SCHEMA."""
        cols = {r[1] for r in db.execute("PRAGMA table_info(volumes)")}
        if "uid" not in cols:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ALTER TABLE volumes ADD COLUMN uid TEXT NOT NULL DEFAULT ''")
            db.execute("UPDATE volumes SET uid=lower(hex(randomblob(16))) WHERE uid=''")
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")

    # ------------------------------------------------------------------ plumbing
    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection: sees committed (durable) data only."""
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise FailedPrecondition(f"store {self.path} is closed", "open it again")
            if self.read_only:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _submit(self, fn: Callable[[sqlite3.Connection, Dict[str, Optional[Drive]]], Any]) -> Any:
        """Run ``fn(db, overlay)`` in a write transaction and return once it is committed.

        Group commit, leader style: the write is queued; the first caller to get the
        writer lock takes every queued write, runs each under its own SAVEPOINT (a
        failing write is rolled back alone) and COMMITs once: one fsync for the batch.
        Callers that find their write already committed by a leader return at once. A
        lone writer commits its own write with no thread hand-off. ``overlay`` holds the
        drives changed so far in the batch (None = deleted); the index is updated from
        it after the commit."""
        if self.read_only:
            raise FailedPrecondition(f"store {self.path} is open read-only", "open it without read_only to change it")
        op = _Op(fn)
        with self._pending_lock:
            self._pending.append(op)
        with self._writing:
            if not op.done:
                if self._closed or self._db is None:
                    raise FailedPrecondition(f"store {self.path} is closed", "open it again")
                with self._pending_lock:
                    batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH:]
                self._run_batch(self._db, batch)
        if not op.done:  # more than MAX_BATCH were queued: commit the rest
            return self._wait_rest(op)
        if op.error is not None:
            raise op.error
        return op.result

    def _wait_rest(self, op: _Op) -> Any:
        while not op.done:
            with self._writing:
                if op.done:
                    break
                assert self._db is not None
                with self._pending_lock:
                    batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH:]
                self._run_batch(self._db, batch)
        if op.error is not None:
            raise op.error
        return op.result

    def _run_batch(self, db: sqlite3.Connection, batch: List[_Op]) -> None:
        overlay: Dict[str, Optional[Drive]] = {}
        if len(batch) == 1:  # a lone write: its own transaction, no savepoint needed
            op = batch[0]
            try:
                db.execute("BEGIN IMMEDIATE")
                op.result = op.fn(db, overlay)
                db.execute("COMMIT")
            except DirectPVError as exc:  # refused by the write itself: nothing was changed
                if db.in_transaction:
                    db.execute("ROLLBACK")
                op.error, overlay = exc, {}
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                op.error, overlay = DirectPVError(f"store {self.path}: write failed: {exc}",
                                                  "check the disk holding the state directory"), {}
            self._apply(overlay)
            op.done = True
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                saved = dict(overlay)
                db.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(db, overlay)
                    db.execute("RELEASE op")
                except BaseException as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    overlay.clear()
                    overlay.update(saved)
                    op.error = exc
            db.execute("COMMIT")
        except BaseException as exc:  # the commit (or the transaction itself) failed: nothing is durable
            if db.in_transaction:
                db.execute("ROLLBACK")
            for op in batch:
                if op.error is None:
                    op.error = exc if isinstance(exc, DirectPVError) else DirectPVError(
                        f"store {self.path}: write failed: {exc}", "check the disk holding the state directory")
                op.result = None
            overlay = {}
        self._apply(overlay)
        for op in batch:
            op.done = True

    def _apply(self, overlay: Dict[str, Optional[Drive]]) -> None:
        """Committed drive changes into the in-memory index."""
        if not overlay:
            return
        with self._lock:
            for drive_id, drive in overlay.items():
                if drive is None:
                    self._unindex(drive_id)
                else:
                    self._index(drive)

    def _cur(self, overlay: Dict[str, Optional[Drive]], drive_id: str) -> Optional[Drive]:
        if drive_id in overlay:
            return overlay[drive_id]
        with self._lock:
            return self._drives.get(drive_id)

    def _load(self) -> None:
        rows = (self._db or self._reader()).execute(f"SELECT {_DRIVE_COLS} FROM drives").fetchall()
        with self._lock:
            self._drives.clear()
            self._by_node.clear()
            for row in rows:
                self._index(_drive_of(row))

    def reload(self) -> None:
        """Re-read the drives from the file (read-only openers that want fresh data)."""
        self._load()

    def _index(self, drive: Drive) -> None:
        old = self._drives.get(drive.drive_id)
        if old is not None and old.node != drive.node:
            self._by_node.get(old.node, {}).pop(drive.drive_id, None)
            if not self._by_node.get(old.node):
                self._by_node.pop(old.node, None)
        self._drives[drive.drive_id] = drive
        self._by_node.setdefault(drive.node, {})[drive.drive_id] = drive

    def _unindex(self, drive_id: str) -> None:
        old = self._drives.pop(drive_id, None)
        if old is not None:
            node = self._by_node.get(old.node, {})
            node.pop(drive_id, None)
            if not node:
                self._by_node.pop(old.node, None)

    @staticmethod
    def _write_drive(db: sqlite3.Connection, drive: Drive) -> None:
        db.execute(_WRITE_DRIVE, _drive_row(drive))

    @staticmethod
    def _volume_row_of(db: sqlite3.Connection, name: str) -> Optional[Volume]:
        row = db.execute(_SELECT_VOLUME, (name,)).fetchone()
        return None if row is None else _volume_of(row)

    # ------------------------------------------------------------------ drives
    def put_drive(self, drive: Drive) -> Drive:
        check_new_drive(drive)

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Drive:
            old = self._cur(ov, drive.drive_id)
            if old is None:
                new = replace(drive, allocated=0, volume_count=0, generation=1,
                              labels=dict(drive.labels), topology=dict(drive.topology))
            else:
                new = replace(
                    old, node=drive.node, name=drive.name, total=drive.total, status=drive.status, make=drive.make,
                    mountpoint=drive.mountpoint, message=drive.message, topology=dict(drive.topology),
                    generation=old.generation + 1,
                )
                if new == replace(old, generation=new.generation):
                    return old  # nothing changed: no write, no new generation
            self._write_drive(db, new)
            ov[new.drive_id] = new
            return new

        result: Drive = self._submit(op)
        return result

    def get_drive(self, drive_id: str) -> Optional[Drive]:
        with self._lock:
            return self._drives.get(drive_id)

    def list_drives(self, node: Optional[str] = None) -> Sequence[Drive]:
        with self._lock:
            if node is None:
                return list(self._drives.values())
            return list(self._by_node.get(node, {}).values())

    def nodes(self) -> Sequence[str]:
        with self._lock:
            return sorted(self._by_node)

    def update_drive(self, drive_id: str, expected_generation: Optional[int] = None, **changes: object) -> Drive:
        check_drive_changes(drive_id, changes)
        if "labels" in changes:
            changes["labels"] = dict(changes["labels"])  # type: ignore[call-overload]

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Drive:
            old = self._cur(ov, drive_id)
            if old is None:
                raise NotFound(f"drive {drive_id} not found", "list drives to see the known ids")
            if expected_generation is not None and old.generation != expected_generation:
                raise Conflict(f"drive {drive_id} changed (generation {old.generation}, expected "
                               f"{expected_generation})", "re-read the drive and retry")
            new = replace(old, generation=old.generation + 1, **changes)  # type: ignore[arg-type]
            self._write_drive(db, new)
            ov[drive_id] = new
            return new

        result: Drive = self._submit(op)
        return result

    def delete_drive(self, drive_id: str) -> None:
        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> None:
            if self._cur(ov, drive_id) is None:
                return
            n = db.execute("SELECT COUNT(*) FROM volumes WHERE drive_id=?", (drive_id,)).fetchone()[0]
            if n:
                raise FailedPrecondition(f"drive {drive_id} still holds {n} volume(s)", "delete its volumes first")
            db.execute("DELETE FROM drives WHERE drive_id=?", (drive_id,))
            ov[drive_id] = None

        self._submit(op)

    # ------------------------------------------------------------------ volumes
    def reserve_volume(self, volume: Volume, expected_drive_generation: Optional[int] = None) -> Volume:
        check_new_volume(volume)

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Volume:
            existing = self._volume_row_of(db, volume.name)
            if existing is not None:
                check_same_request(volume.name, existing.size, existing.parameters, volume.size, volume.size,
                                   volume.parameters)
                return existing
            drive = check_reservable(self._cur(ov, volume.drive_id), volume.drive_id, volume.size,
                                     expected_drive_generation)
            new = _changed(
                volume, node=drive.node, project_id=smallest_unused(self._used_project_ids(db, drive.drive_id)),
                generation=1, uid=_new_uid(),
                created_at=volume.created_at or time.time(),
                parameters=dict(volume.parameters), labels=dict(volume.labels),
            )
            self._insert_allocated(db, ov, drive, new)
            return new

        result: Volume = self._submit(op)
        return result

    @staticmethod
    def _insert_allocated(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]], drive: Drive, new: Volume) -> None:
        """Record ``new`` and add its size to ``drive``'s allocation (inside the caller's transaction)."""
        db.execute(_INSERT_VOLUME, _volume_row(new))
        new_drive = _changed(drive, allocated=drive.allocated + new.size,
                             volume_count=drive.volume_count + 1, generation=drive.generation + 1)
        db.execute(_ALLOCATE, (new_drive.allocated, new_drive.volume_count, new_drive.generation, drive.drive_id))
        ov[drive.drive_id] = new_drive

    def get_volume(self, name: str) -> Optional[Volume]:
        return self._volume_row_of(self._reader(), name)

    def read_volume(self, name: str) -> Optional[Volume]:
        return self.get_volume(name)  # the database is the store of record: no cache to lag

    def list_volumes(self, drive_id: Optional[str] = None, node: Optional[str] = None,
                     start_after: str = "", limit: int = 0) -> Sequence[Volume]:
        where: List[str] = []
        args: List[object] = []
        if drive_id is not None:
            where.append("drive_id=?")
            args.append(drive_id)
        if node is not None:
            where.append("node=?")
            args.append(node)
        if start_after:
            where.append("name>?")
            args.append(start_after)
        sql = f"SELECT {_VOLUME_COLS} FROM volumes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY name"
        if limit > 0:
            sql += " LIMIT ?"
            args.append(limit)
        return [_volume_of(r) for r in self._reader().execute(sql, args).fetchall()]

    def update_volume(self, name: str, expected_generation: Optional[int] = None, **changes: object) -> Volume:
        check_volume_changes(name, changes)
        for key in ("target_paths", "read_only_targets"):
            if key in changes:
                changes[key] = tuple(changes[key])  # type: ignore[arg-type]
        if "labels" in changes:
            changes["labels"] = dict(changes["labels"])  # type: ignore[call-overload]

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Volume:
            old = self._volume_row_of(db, name)
            if old is None:
                raise NotFound(f"volume {name} not found", "create it first")
            if expected_generation is not None and old.generation != expected_generation:
                raise Conflict(f"volume {name} changed (generation {old.generation}, expected "
                               f"{expected_generation})", "re-read the volume and retry")
            new = replace(old, generation=old.generation + 1, **changes)  # type: ignore[arg-type]
            db.execute(_WRITE_VOLUME, _volume_row(new))
            return new

        result: Volume = self._submit(op)
        return result

    def expand_volume(self, name: str, new_size: int) -> Volume:
        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Volume:
            old = self._volume_row_of(db, name)
            if old is None:
                raise NotFound(f"volume {name} not found", "create it first")
            if new_size <= old.size:
                return old  # retry of an expansion already done, or a shrink request: never reserve twice
            drive = self._cur(ov, old.drive_id)
            if drive is None:
                raise FailedPrecondition(f"volume {name}: its drive {old.drive_id} is not registered",
                                         "restore the drive, then retry")
            delta = new_size - old.size
            if drive.free < delta:
                raise OutOfRange(
                    f"volume {name}: drive {drive.drive_id} on node {drive.node} has {drive.free} bytes free, "
                    f"growing to {new_size} needs {delta} more",
                    "ask for less, or free space on that drive (volumes cannot move between drives)",
                )
            new = replace(old, size=new_size, generation=old.generation + 1)
            new_drive = replace(drive, allocated=drive.allocated + delta, generation=drive.generation + 1)
            db.execute("UPDATE volumes SET size=?, generation=? WHERE name=?", (new.size, new.generation, name))
            db.execute("UPDATE drives SET allocated=?, generation=? WHERE drive_id=?",
                       (new_drive.allocated, new_drive.generation, drive.drive_id))
            ov[drive.drive_id] = new_drive
            return new

        result: Volume = self._submit(op)
        return result

    def delete_volume(self, name: str) -> Optional[Volume]:
        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Optional[Volume]:
            old = self._volume_row_of(db, name)
            if old is None:
                return None
            db.execute("DELETE FROM volumes WHERE name=?", (name,))
            db.execute(f"INSERT OR REPLACE INTO tombstones({_TOMB_COLS}) VALUES (?,?,?,?,?,?,?)",
                       (old.drive_id, old.name, old.uid, old.node, old.project_id, old.size, time.time()))
            drive = self._cur(ov, old.drive_id)
            if drive is not None:
                new_drive = replace(drive, allocated=max(0, drive.allocated - old.size),
                                    volume_count=max(0, drive.volume_count - 1), generation=drive.generation + 1)
                db.execute("UPDATE drives SET allocated=?, volume_count=?, generation=? WHERE drive_id=?",
                           (new_drive.allocated, new_drive.volume_count, new_drive.generation, drive.drive_id))
                ov[drive.drive_id] = new_drive
            return old

        result: Optional[Volume] = self._submit(op)
        return result

    @staticmethod
    def _used_project_ids(db: sqlite3.Connection, drive_id: str) -> List[int]:
        """Project ids taken on a drive (live volumes and tombstones), ascending."""
        return [r[0] for r in db.execute(
            "SELECT project_id FROM volumes WHERE drive_id=? UNION SELECT project_id FROM tombstones "
            "WHERE drive_id=? ORDER BY 1", (drive_id, drive_id))]

    # ------------------------------------------------------------------ tombstones
    def list_tombstones(self, drive_id: Optional[str] = None) -> Sequence[Tombstone]:
        sql = f"SELECT {_TOMB_COLS} FROM tombstones"
        args: Tuple[object, ...] = ()
        if drive_id is not None:
            sql += " WHERE drive_id=?"
            args = (drive_id,)
        return [_tombstone_of(r) for r in self._reader().execute(sql + " ORDER BY name, uid", args).fetchall()]

    def add_tombstone(self, tombstone: Tombstone) -> Tombstone:
        if not tombstone.drive_id or not tombstone.name:
            raise InvalidArgument("a tombstone needs a drive id and a volume name", "name the orphan to remove")

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Tombstone:
            drive = self._cur(ov, tombstone.drive_id)
            if drive is None:
                raise NotFound(f"drive {tombstone.drive_id} not found", "list drives to see the known ids")
            live = self._volume_row_of(db, tombstone.name)
            if live is not None and live.drive_id == tombstone.drive_id and tombstone.uid in ("", live.uid):
                raise FailedPrecondition(f"volume {tombstone.name} is recorded on drive {tombstone.drive_id}",
                                         "delete it with DeleteVolume (delete its PVC), not as an orphan")
            new = replace(tombstone, node=drive.node, deleted_at=tombstone.deleted_at or time.time())
            db.execute(f"INSERT OR REPLACE INTO tombstones({_TOMB_COLS}) VALUES (?,?,?,?,?,?,?)",
                       (new.drive_id, new.name, new.uid, new.node, new.project_id, new.size, new.deleted_at))
            return new

        result: Tombstone = self._submit(op)
        return result

    def clear_tombstone(self, drive_id: str, name: str, uid: str) -> bool:
        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> bool:
            cur = db.execute("DELETE FROM tombstones WHERE drive_id=? AND name=? AND uid=?", (drive_id, name, uid))
            return bool(cur.rowcount)

        result: bool = self._submit(op)
        return result

    def restore_volume(self, volume: Volume) -> Volume:
        check_restored_volume(volume)

        def op(db: sqlite3.Connection, ov: Dict[str, Optional[Drive]]) -> Volume:
            existing = restored_already(self._volume_row_of(db, volume.name), volume)
            if existing is not None:
                return existing
            drive = self._cur(ov, volume.drive_id)
            if drive is None:
                raise NotFound(f"drive {volume.drive_id} is not registered", "register the drive first")
            if volume.project_id in self._used_project_ids(db, drive.drive_id):
                raise Conflict(f"volume {volume.name}: project id {volume.project_id} is taken on drive "
                               f"{drive.drive_id}", "both are kept; look at the drive's volumes")
            new = replace(volume, node=drive.node, generation=1, created_at=volume.created_at or time.time(),
                          parameters=dict(volume.parameters), labels=dict(volume.labels), staging_path="",
                          target_paths=(), read_only_targets=())
            self._insert_allocated(db, ov, drive, new)
            return new

        result: Volume = self._submit(op)
        return result

    def report_orphans(self, drive_id: str, names: Sequence[str]) -> None:
        return None  # the node logs and lists them (no one else to tell in standalone mode)

    # ------------------------------------------------------------------ upkeep
    def check(self) -> List[str]:
        """Problems found by recomputing every drive's allocation from its volumes ([] = consistent)."""
        problems: List[str] = []
        db = self._reader()
        sums = {r[0]: (r[1], r[2]) for r in db.execute(
            "SELECT drive_id, SUM(size), COUNT(*) FROM volumes GROUP BY drive_id")}
        disk = {d.drive_id: d for d in (_drive_of(r) for r in db.execute(f"SELECT {_DRIVE_COLS} FROM drives"))}
        for drive_id, (_size, count) in sums.items():
            if drive_id not in disk:
                problems.append(f"{count} volume(s) on unknown drive {drive_id}")
        for d in disk.values():
            size, count = sums.get(d.drive_id, (0, 0))
            if d.allocated != size or d.volume_count != count:
                problems.append(f"drive {d.drive_id}: allocated {d.allocated}/{d.volume_count} volumes recorded, "
                                f"volumes sum to {size}/{count}")
            if d.allocated > d.total:
                problems.append(f"drive {d.drive_id}: over-committed ({d.allocated} > {d.total})")
            if not self.read_only and self.get_drive(d.drive_id) != d:
                problems.append(f"drive {d.drive_id}: memory index differs from the file")
        return problems

    def ping(self) -> bool:
        """True when the database answers and the writer runs (Identity.Probe)."""
        try:
            self._reader().execute("SELECT 1").fetchone()
        except (sqlite3.Error, DirectPVError):
            return False
        return self.read_only or not self._closed

    def iter_all_volumes(self, page: int = 1000) -> Iterator[Volume]:
        after = ""
        while True:
            batch = self.list_volumes(start_after=after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].name

    def close(self) -> None:
        if self._closed:
            return
        with self._writing:
            self._closed = True
            if self._db is not None:
                self._db.close()
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
