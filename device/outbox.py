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
* Message ids: the uplink packs records into messages and :meth:`Outbox.bind` stores
  each message's id with its records *before* the message is sent, so a resend after a
  reconnect or a restart carries the same id.
* Capacity: bounded by rows, bytes and free disk. Only routine records (no SOS session)
  are ever evicted, oldest first. Whatever leaves undelivered (evicted, or expired by the
  72-hour rule) is replaced, in the same transaction, by a ``gap`` record naming the
  ``seq`` ranges and why: it is delivered like any other record, so receivers can tell
  deliberate removal from loss.
* A full disk raises :class:`OutboxFull` with what to do; nothing already stored is lost.
  A corrupt database is moved aside (never deleted) with an error in the log, and a fresh
  one started under a new ``outbox_id`` so receivers see the ``seq`` numbering restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from device.clock import Clock, MonotonicClock
from device.records import Priority, Record, RecordKind

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    msg_id   TEXT,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    time     TEXT NOT NULL,
    session  TEXT,
    drill    INTEGER NOT NULL,
    data     TEXT NOT NULL,
    expires  REAL,
    state    INTEGER NOT NULL DEFAULT 0  -- 0 pending, 1 in flight, 2 delivered (kept)
);
CREATE INDEX IF NOT EXISTS records_order ON records (state, priority, seq);
CREATE INDEX IF NOT EXISTS records_session ON records (session);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, expires REAL NOT NULL);
"""


#: ``records.state``
PENDING, IN_FLIGHT, DELIVERED = 0, 1, 2


class OutboxFull(OSError):
    """The record could not be stored: the disk (or the configured cap) is full."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as committed: its ``seq`` is kept for life; ``msg_id`` is the id of the
    message that carries it, set by :meth:`Outbox.bind` before its first sending."""

    seq: int
    msg_id: str | None
    record: Record


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    #: keep at least this much free on the file system
    min_free_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OutboxStats:
    #: records waiting for the broker's acknowledgement (pending or in flight)
    depth: int
    inflight: int
    #: the oldest of them
    oldest: datetime | None
    bytes: int
    #: delivered records of SOS sessions, kept on the device until they expire
    kept: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    """What waits to be sent (not in flight): the uplink's batching decides on this."""

    #: SOS events, last gasp and live positions: sent at once
    urgent: int
    routine: int
    #: the time of the oldest routine record waiting, if any
    oldest_routine: datetime | None


class Outbox:
    """Use :meth:`open` (an async context manager) rather than the constructor."""

    def __init__(self, path: Path, limits: Limits, clock: Clock) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Record, asyncio.Future[Stored]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.outbox_id = ""
        self.commits = 0
        #: rows in the table, counted once at open and kept up to date by every write
        #: (``count(*)`` scans the whole table, too slow for every commit)
        self._rows = 0
        self._watchers: list[asyncio.Event] = []

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path | str, limits: Limits | None = None, *, clock: Clock | None = None
    ) -> Outbox:
        box = cls(Path(path), limits or Limits(), clock or MonotonicClock())
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
                self.outbox_id = uuid.uuid4().hex[:16]  # 64 bits: unique enough per device
                db.execute("INSERT INTO meta VALUES ('outbox_id', ?)", (self.outbox_id,))
            else:
                self.outbox_id = row[0]
            # Whatever was handed to the uplink before a restart was not acknowledged.
            db.execute("UPDATE records SET state=0 WHERE state=1")
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
            self._notify()

    def watch(self) -> asyncio.Event:
        """An event of one's own, set whenever records were added or became pending
        again (clear it, look, then wait on it: no change is ever missed)."""
        ev = asyncio.Event()
        self._watchers.append(ev)
        return ev

    def _notify(self) -> None:
        for ev in self._watchers:
            ev.set()

    def _insert_sync(self, records: list[Record]) -> list[Stored]:
        db = self.db
        self._make_room_sync(len(records))
        out: list[Stored] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            seq = self._get_seq()
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
                db.execute(
                    "INSERT INTO records (seq, kind, priority, time, session, drill,"
                    " data, expires) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        seq,
                        r.kind.value,
                        int(r.priority),
                        r.time.isoformat(),
                        r.session,
                        int(r.drill),
                        json.dumps(r.data, separators=(",", ":")),
                        exp_ts,
                    ),
                )
                out.append(Stored(seq, None, r))
            self._set_seq(seq)
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
        # One more than the excess (the gap record written in their place may take a row),
        # and at least 1% of the row cap: evicting in chunks keeps evictions, and gap
        # records, rare.
        n = max(excess_rows, -(-excess_bytes // avg) if excess_bytes > 0 else 0) + 1
        n = max(n, lim.max_rows // 100)
        victims = [
            r[0]
            for r in db.execute(
                "SELECT seq FROM records WHERE session IS NULL AND priority=? AND state=0 "
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
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.executemany("DELETE FROM records WHERE seq=?", [(v,) for v in victims])
            self._rows -= cur.rowcount
            self._insert_gap_sync(victims, "evicted", self._clock.now())
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            db.execute("ROLLBACK")
            raise
        log.warning(
            "outbox full: evicted %d routine records (oldest first); the evicted "
            "seq ranges will be published",
            len(victims),
        )

    def _insert_gap_sync(self, seqs: list[int], reason: str, at: datetime) -> None:
        """Inside the caller's transaction: a ``gap`` record naming ``seqs``. A gap record
        of the same reason that waits unsent (no message formed yet) is extended instead,
        so a long offline spell leaves one gap record, not one per eviction."""
        db = self.db
        old = db.execute(
            "SELECT seq, data FROM records WHERE kind=? AND state=0 AND msg_id IS NULL "
            "AND json_extract(data, '$.reason')=? ORDER BY seq DESC LIMIT 1",
            (RecordKind.GAP.value, reason),
        ).fetchone()
        if old is not None:
            named = [(a, b) for a, b in json.loads(old[1])["ranges"]]
            ranges = _merge(named + _ranges(sorted(seqs)))
            data = {"ranges": [list(r) for r in ranges], "reason": reason}
            db.execute(
                "UPDATE records SET data=?, time=? WHERE seq=?",
                (json.dumps(data, separators=(",", ":")), at.isoformat(), old[0]),
            )
            return
        seq = self._get_seq() + 1
        data = {"ranges": [list(r) for r in _ranges(sorted(seqs))], "reason": reason}
        db.execute(
            "INSERT INTO records (seq, kind, priority, time, session, drill, data) "
            "VALUES (?,?,?,?,NULL,0,?)",
            (
                seq,
                RecordKind.GAP.value,
                int(Priority.LIVE),
                at.isoformat(),
                json.dumps(data, separators=(",", ":")),
            ),
        )
        self._set_seq(seq)
        self._rows += 1

    def _get_seq(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name='seq'").fetchone()
        return int(row[0]) if row else 0

    def _set_seq(self, seq: int) -> None:
        self.db.execute(
            "INSERT INTO counters VALUES ('seq', ?) ON CONFLICT(name) DO UPDATE "
            "SET value=excluded.value",
            (seq,),
        )

    def _size_sync(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    # -- handing out and acknowledging -------------------------------------------------

    async def take(
        self,
        limit: int = 1000,
        *,
        first: Priority = Priority.SOS,
        last: Priority = Priority.ROUTINE,
    ) -> list[Stored]:
        """The next records to upload with a priority from ``first`` to ``last``, by
        priority then seq; they become in flight."""
        return await self._run(lambda: self._take_sync(limit, first, last))

    def _take_sync(self, limit: int, first: Priority, last: Priority) -> list[Stored]:
        db = self.db
        rows = db.execute(
            "SELECT seq, msg_id, kind, priority, time, session, drill, data, expires "
            "FROM records WHERE state=0 AND priority BETWEEN ? AND ? "
            "ORDER BY priority, seq LIMIT ?",
            (int(first), int(last), limit),
        ).fetchall()
        if rows:
            with self._light():
                db.executemany(
                    "UPDATE records SET state=1 WHERE seq BETWEEN ? AND ? AND state=0",
                    _ranges(sorted(r[0] for r in rows)),
                )
        return [_row(r) for r in rows]

    @contextlib.contextmanager
    def _light(self) -> Iterator[None]:
        """A transaction for bookkeeping (in flight, message ids, acknowledgements) with
        ``synchronous=NORMAL``: it survives a crash of the daemon; a power cut may undo
        it, which only means a resend (a duplicate the receiver drops by seq), never a
        loss. Records themselves are always committed with ``synchronous=FULL``."""
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.execute("PRAGMA synchronous=FULL")

    async def bind(self, messages: dict[str, list[int]]) -> None:
        """Store the message id of each group of records, before the message is sent."""

        def run() -> None:
            with self._light():
                self.db.executemany(
                    "UPDATE records SET msg_id=? WHERE seq BETWEEN ? AND ?",
                    [
                        (mid, a, b)
                        for mid, seqs in messages.items()
                        for a, b in _ranges(sorted(seqs))
                    ],
                )

        await self._run(run)

    async def pending(self, cap: int = 1_000_000) -> Pending:
        """Counts of what waits (each at most ``cap``: enough to decide, without counting
        a whole backlog), and the oldest routine record's time. Index lookups only."""

        def run() -> Pending:
            db = self.db
            routine = int(Priority.ROUTINE)
            urgent = db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM records WHERE state=0 AND priority<? LIMIT ?)",
                (routine, cap),
            ).fetchone()[0]
            n_routine = db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM records WHERE state=0 AND priority=? LIMIT ?)",
                (routine, cap),
            ).fetchone()[0]
            oldest = db.execute(
                "SELECT time FROM records WHERE state=0 AND priority=? ORDER BY seq LIMIT 1",
                (routine,),
            ).fetchone()
            return Pending(
                int(urgent), int(n_routine), datetime.fromisoformat(oldest[0]) if oldest else None
            )

        return await self._run(run)

    async def ack(self, seqs: list[int]) -> None:
        """The broker acknowledged these: now, and only now, they leave the upload queue.
        Records of an SOS session stay on the device, delivered, until their expiry (the
        route stays available for export for the 72 hours); the rest are deleted."""

        def run() -> None:
            db = self.db
            ranges = _ranges(sorted(seqs))
            with self._light():
                db.executemany(
                    "UPDATE records SET state=2 WHERE seq BETWEEN ? AND ? AND session IS NOT NULL",
                    ranges,
                )
                cur = db.executemany(
                    "DELETE FROM records WHERE seq BETWEEN ? AND ? AND session IS NULL", ranges
                )
            self._rows -= cur.rowcount

        await self._run(run)

    async def requeue(self, seqs: list[int] | None = None) -> None:
        """Back to pending (a failure reason code, or all of them on reconnect)."""

        def run() -> None:
            db = self.db
            if seqs is None:
                db.execute("UPDATE records SET state=0 WHERE state=1")
            else:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "UPDATE records SET state=0 WHERE seq=? AND state=1", [(s,) for s in seqs]
                )
                db.execute("COMMIT")

        await self._run(run)
        self._notify()

    async def export(self) -> list[tuple[Stored, bool]]:
        """Everything stored, in seq order, with whether it was delivered."""

        def run() -> list[tuple[Stored, bool]]:
            rows = self.db.execute(
                "SELECT seq, msg_id, kind, priority, time, session, drill, data, expires, state "
                "FROM records ORDER BY seq"
            ).fetchall()
            return [(_row(r[:9]), r[9] == DELIVERED) for r in rows]

        return await self._run(run)

    async def wipe(self) -> int:
        """Delete every record (``sosctl purge``: the owner's choice). What had not been
        delivered yet is named by a ``gap`` record (reason ``purged``), so receivers see
        a deliberate deletion, not a loss; the seq counter is kept."""

        def run() -> int:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            undelivered = [r[0] for r in db.execute("SELECT seq FROM records WHERE state<2")]
            cur = db.execute("DELETE FROM records")
            self._rows = 0
            if undelivered:
                self._insert_gap_sync(undelivered, "purged", self._clock.now())
            db.execute("COMMIT")
            return cur.rowcount

        n = await self._run(run)
        self._notify()
        return n

    async def last_seq(self) -> int:
        """The highest seq ever given (0 for a new outbox)."""
        return await self._run(self._get_seq)

    async def has_undelivered(self) -> bool:
        """Whether anything waits for the broker (an index lookup, cheap at any depth)."""
        return await self._run(
            lambda: (
                self.db.execute("SELECT EXISTS(SELECT 1 FROM records WHERE state<2)").fetchone()[0]
                == 1
            )
        )

    async def get_meta(self, key: str) -> str | None:
        def run() -> str | None:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(run)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(
            lambda: self.db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                "SET value=excluded.value",
                (key, value),
            )
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
        """Delete expired records, delivered or not: past expiry nobody may see them.
        Those that never reached the broker are named by a ``gap`` record."""

        def run() -> int:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT seq, state FROM records WHERE expires IS NOT NULL AND expires<=?",
                (now.timestamp(),),
            ).fetchall()
            if rows:
                cur = db.executemany("DELETE FROM records WHERE seq=?", [(r[0],) for r in rows])
                self._rows -= cur.rowcount
                undelivered = [seq for seq, state in rows if state != DELIVERED]
                if undelivered:
                    self._insert_gap_sync(undelivered, "expired", now)
            db.execute("COMMIT")
            return len(rows)

        n = await self._run(run)
        if n:
            self._notify()
        return n

    async def next_expiry(self) -> datetime | None:
        def run() -> datetime | None:
            row = self.db.execute("SELECT min(expires) FROM records").fetchone()
            return datetime.fromtimestamp(row[0], UTC) if row and row[0] else None

        return await self._run(run)

    async def stats(self) -> OutboxStats:
        def run() -> OutboxStats:
            db = self.db
            depth, inflight, oldest, kept = db.execute(
                "SELECT coalesce(sum(state<2),0), coalesce(sum(state=1),0), "
                "min(CASE WHEN state<2 THEN time END), coalesce(sum(state=2),0) FROM records"
            ).fetchone()
            return OutboxStats(
                depth,
                inflight,
                datetime.fromisoformat(oldest) if oldest else None,
                self._size_sync(),
                kept,
            )

        return await self._run(run)


_KINDS = {k.value: k for k in RecordKind}
_PRIORITIES = {int(p): p for p in Priority}


def _row(r: tuple[Any, ...]) -> Stored:
    seq, msg_id, kind, priority, t, session, drill, data, expires = r
    rec = Record(
        kind=_KINDS[kind],
        time=datetime.fromisoformat(t),
        data=json.loads(data),
        priority=_PRIORITIES[priority],
        session=session,
        drill=bool(drill),
        expires=datetime.fromtimestamp(expires, UTC) if expires else None,
    )
    return Stored(seq, msg_id, rec)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, touching ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
