"""The durable outbox: every record the device promised to deliver, on disk until the
broker acknowledged it.

* SQLite in WAL mode with ``synchronous=FULL``: a committed record survives power loss.
* One writer thread owns the connection; adds that arrive while a commit is running are
  committed together (group commit), so a slow fsync never blocks the event loop and a
  burst of fixes costs one fsync, not one each.
* Each record gets its ``seq`` inside the transaction that stores it: device-wide,
  strictly increasing, gap-free, never reused (the last value is kept in ``counters``,
  so deleting delivered records cannot bring an old number back).
* Upload order: priority (SOS and last gasp, then live positions, then routine), then
  ``seq``. A record leaves only through :meth:`Outbox.ack`; whatever was handed out and
  not acknowledged returns to pending on :meth:`Outbox.requeue` (reconnect) and on open.
* Capacity: bounded by rows, bytes and free disk. Only routine records (no SOS session)
  are ever evicted, oldest first; the evicted ``seq`` ranges are kept so the uplink can
  publish them and receivers can tell thinning from loss.
* A full disk raises :class:`OutboxFull` with what to do; nothing already stored is lost.
  A corrupt database is moved aside (never deleted) with an error in the log, and a fresh
  one started under a new ``outbox_id`` so receivers see the ``seq`` numbering restart.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from device.records import Priority, Record, RecordKind

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    msg_id   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    time     TEXT NOT NULL,
    session  TEXT,
    drill    INTEGER NOT NULL,
    data     TEXT NOT NULL,
    expires  REAL,
    inflight INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_order ON records (inflight, priority, seq);
CREATE INDEX IF NOT EXISTS records_session ON records (session);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evictions (
    first INTEGER NOT NULL, last INTEGER NOT NULL, at REAL NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
"""


class OutboxFull(OSError):
    """The record could not be stored: the disk (or the configured cap) is full."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as committed: its ``seq`` and message id are kept for life."""

    seq: int
    msg_id: str
    record: Record


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    #: keep at least this much free on the file system
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    inflight: int
    oldest: datetime | None
    bytes: int


class Outbox:
    """Use :meth:`open` (an async context manager) rather than the constructor."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Record, asyncio.Future[Stored]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.outbox_id = ""
        self.commits = 0
        #: rows in the table, counted once at open and kept up to date by every write
        #: (``count(*)`` scans the whole table, too slow for every commit)
        self._rows = 0

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str, limits: Limits | None = None) -> Outbox:
        box = cls(Path(path), limits or Limits())
        await box._run(box._open_sync)
        return box

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._flushing is not None:
            await self._flushing
        await self._run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            self._move_aside(str(exc))
            self._connect()

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='outbox_id'").fetchone()
            if row is None:
                self.outbox_id = uuid.uuid4().hex
                db.execute("INSERT INTO meta VALUES ('outbox_id', ?)", (self.outbox_id,))
            else:
                self.outbox_id = row[0]
            # Whatever was handed to the uplink before a restart was not acknowledged.
            db.execute("UPDATE records SET inflight=0 WHERE inflight=1")
            self._rows = db.execute("SELECT count(*) FROM records").fetchone()[0]
        except sqlite3.DatabaseError:
            db.close()
            raise
        self._db = db

    def _move_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(f"{self.path}.corrupt-{stamp}{suffix}"))
        log.error(
            "ALARM: the outbox %s is corrupt (%s). It was moved aside to %s.corrupt-%s "
            "(nothing deleted: records in it may be recoverable with sqlite3 .recover) and "
            "a fresh outbox was started; seq numbering restarts under a new outbox_id.",
            self.path,
            why,
            self.path,
            stamp,
        )

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is closed")
        return self._db

    # -- storing -----------------------------------------------------------------------

    async def add(self, record: Record) -> None:
        """Store durably (the Recorder Protocol); see :meth:`store` for the seq."""
        await self.store(record)

    async def store(self, record: Record) -> Stored:
        """Commit ``record``; returns once it is on disk, with its seq and message id."""
        fut: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                stored = await self._run(
                    functools.partial(self._insert_sync, [r for r, _ in batch])
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), s in zip(batch, stored, strict=True):
                if not fut.done():
                    fut.set_result(s)

    def _insert_sync(self, records: list[Record]) -> list[Stored]:
        db = self.db
        self._make_room_sync(len(records))
        out: list[Stored] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM counters WHERE name='seq'").fetchone()
            seq = row[0] if row else 0
            for r in records:
                seq += 1
                expires = r.expires
                if expires is None and r.session is not None:
                    hit = db.execute(
                        "SELECT expires FROM sessions WHERE session=?", (r.session,)
                    ).fetchone()
                    exp_ts = hit[0] if hit else None
                else:
                    exp_ts = expires.timestamp() if expires else None
                msg_id = uuid.uuid4().hex
                db.execute(
                    "INSERT INTO records (seq, msg_id, kind, priority, time, session, drill,"
                    " data, expires) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        seq,
                        msg_id,
                        r.kind.value,
                        int(r.priority),
                        r.time.isoformat(),
                        r.session,
                        int(r.drill),
                        json.dumps(r.data, separators=(",", ":")),
                        exp_ts,
                    ),
                )
                out.append(Stored(seq, msg_id, r))
            db.execute(
                "INSERT INTO counters VALUES ('seq', ?) ON CONFLICT(name) DO UPDATE "
                "SET value=excluded.value",
                (seq,),
            )
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if "full" in str(exc).lower():
                raise OutboxFull(
                    f"cannot store {len(records)} record(s): {exc}. Free space on the "
                    f"file system of {self.path} or raise outbox.max_bytes; records already "
                    "stored are safe."
                ) from exc
            raise
        self.commits += 1
        self._rows += len(out)
        return out

    def _make_room_sync(self, incoming: int) -> None:
        """Evict routine records (never SOS) to stay within rows, bytes and free disk."""
        db = self.db
        lim = self.limits
        rows = self._rows
        excess_rows = rows + incoming - lim.max_rows
        size = self._size_sync()
        free = shutil.disk_usage(self.path.parent).free
        excess_bytes = max(size - lim.max_bytes, lim.min_free_bytes - free)
        if excess_rows <= 0 and excess_bytes <= 0:
            return
        avg = max(1, size // max(1, rows))
        n = max(excess_rows, -(-excess_bytes // avg) if excess_bytes > 0 else 0)
        victims = [
            r[0]
            for r in db.execute(
                "SELECT seq FROM records WHERE session IS NULL AND priority=? AND inflight=0 "
                "ORDER BY seq LIMIT ?",
                (int(Priority.ROUTINE), n),
            )
        ]
        if not victims:
            log.warning(
                "outbox over its limits but holds no routine records to evict; "
                "SOS records are never evicted"
            )
            return
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        for first, last in _ranges(victims):
            cur = db.execute(
                "DELETE FROM records WHERE seq BETWEEN ? AND ? AND session IS NULL AND priority=?",
                (first, last, int(Priority.ROUTINE)),
            )
            self._rows -= cur.rowcount
            db.execute("INSERT INTO evictions (first, last, at) VALUES (?,?,?)", (first, last, now))
        db.execute("COMMIT")
        log.warning(
            "outbox full: evicted %d routine records (oldest first); the evicted "
            "seq ranges will be published",
            len(victims),
        )

    def _size_sync(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    # -- handing out and acknowledging -------------------------------------------------

    async def take(self, limit: int = 1000) -> list[Stored]:
        """The next records to upload, by priority then seq; they become in flight."""
        return await self._run(lambda: self._take_sync(limit))

    def _take_sync(self, limit: int) -> list[Stored]:
        db = self.db
        rows = db.execute(
            "SELECT seq, msg_id, kind, priority, time, session, drill, data, expires "
            "FROM records WHERE inflight=0 ORDER BY priority, seq LIMIT ?",
            (limit,),
        ).fetchall()
        if rows:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE records SET inflight=1 WHERE seq=?", [(r[0],) for r in rows])
            db.execute("COMMIT")
        return [_row(r) for r in rows]

    async def ack(self, seqs: list[int]) -> None:
        """The broker acknowledged these: now, and only now, they leave the outbox."""

        def run() -> None:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            cur = db.executemany("DELETE FROM records WHERE seq=?", [(s,) for s in seqs])
            db.execute("COMMIT")
            self._rows -= cur.rowcount

        await self._run(run)

    async def requeue(self, seqs: list[int] | None = None) -> None:
        """Back to pending (a failure reason code, or all of them on reconnect)."""

        def run() -> None:
            db = self.db
            if seqs is None:
                db.execute("UPDATE records SET inflight=0 WHERE inflight=1")
            else:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("UPDATE records SET inflight=0 WHERE seq=?", [(s,) for s in seqs])
                db.execute("COMMIT")

        await self._run(run)

    async def evictions(self) -> list[tuple[int, int]]:
        """Evicted seq ranges not yet published."""
        return await self._run(
            lambda: [
                (a, b)
                for a, b in self.db.execute(
                    "SELECT first, last FROM evictions WHERE published=0 ORDER BY first"
                )
            ]
        )

    # -- expiry and stats --------------------------------------------------------------

    async def expire_session(self, session: str, at: datetime) -> None:
        def run() -> None:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO sessions VALUES (?, ?) ON CONFLICT(session) DO UPDATE "
                "SET expires=excluded.expires",
                (session, at.timestamp()),
            )
            db.execute("UPDATE records SET expires=? WHERE session=?", (at.timestamp(), session))
            db.execute("COMMIT")

        await self._run(run)

    async def purge(self, now: datetime) -> int:
        """Delete expired records (delivered or not: past expiry nobody may see them)."""

        def run() -> int:
            cur = self.db.execute(
                "DELETE FROM records WHERE expires IS NOT NULL AND expires<=?", (now.timestamp(),)
            )
            self._rows -= cur.rowcount
            return cur.rowcount

        return await self._run(run)

    async def stats(self) -> OutboxStats:
        def run() -> OutboxStats:
            db = self.db
            depth, inflight, oldest = db.execute(
                "SELECT count(*), coalesce(sum(inflight),0), min(time) FROM records"
            ).fetchone()
            return OutboxStats(
                depth,
                inflight,
                datetime.fromisoformat(oldest) if oldest else None,
                self._size_sync(),
            )

        return await self._run(run)


def _row(r: tuple[Any, ...]) -> Stored:
    seq, msg_id, kind, priority, t, session, drill, data, expires = r
    rec = Record(
        kind=RecordKind(kind),
        time=datetime.fromisoformat(t),
        data=json.loads(data),
        priority=Priority(priority),
        session=session,
        drill=bool(drill),
        expires=datetime.fromtimestamp(expires, UTC) if expires else None,
    )
    return Stored(seq, msg_id, rec)


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
