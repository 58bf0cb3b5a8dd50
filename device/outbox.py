"""The durable outbox: every record the device promised to deliver, on disk until the
broker acknowledged it.

* SQLite in WAL mode with ``synchronous=FULL``: a committed record survives power loss.
* One writer thread owns the writing connection; adds that arrive while a commit is
  running are committed together (group commit), so a slow fsync never blocks the event
  loop and a burst of fixes costs one fsync, not one each. Acknowledgements are grouped
  the same way.
* A second connection, in a thread of its own, does the reading (what to send next,
  counts, export): WAL lets it run beside the writer, so during a drain the next
  records are read while the previous ones are deleted, and a count over a large
  backlog never holds up a commit. Reads see committed records only.
* Each record gets its ``seq`` inside the transaction that stores it: device-wide,
  strictly increasing, gap-free, never reused (the last value is kept in ``counters``,
  so deleting delivered records cannot bring an old number back).
* Upload order: priority (SOS and last gasp, then live positions, then routine), then
  ``seq``. A record leaves only through :meth:`Outbox.ack`; whatever was handed out and
  not acknowledged returns to pending on :meth:`Outbox.requeue` (reconnect) and on open.
  Which records are in flight is kept in memory, not in the table: after a restart
  nothing is in flight anyway, and a drain then writes each row once (its message id)
  before deleting it.
* A fix is also stored as its ``track`` row (:func:`device.wire.track_row`), and as
  that row's difference from the fix before it in its stream
  (:func:`device.wire.row_delta`): a drain takes runs of fixes (:class:`FixRun`) and
  joins their messages from stored text, never decoding the records' JSON.
* Checkpoints run in a thread of their own, never inside a commit (:class:`_Checkpoints`).
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
import bisect
import contextlib
import functools
import inspect
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from device.clock import Clock, MonotonicClock
from device.errors import SosbeaconError
from device.records import FixRun, Item, Priority, Record, RecordKind, Stored, TrackRow
from device.salvage import RECORD_COLUMNS, read_readable
from device.storage import CorruptOutbox, Fault, Reserve, classify
from device.wire import row_delta, seq_ranges, track_row

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the message id of records first..last (Outbox.bind): one row per message, so naming a
#: message never rewrites its records
_BINDINGS = """
CREATE TABLE IF NOT EXISTS bindings (
    first  INTEGER PRIMARY KEY,
    last   INTEGER NOT NULL,
    msg_id TEXT NOT NULL
);
"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq      INTEGER PRIMARY KEY,
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    time     TEXT NOT NULL,
    session  TEXT,
    drill    INTEGER NOT NULL,
    data     TEXT NOT NULL,
    expires  REAL,
    state    INTEGER NOT NULL DEFAULT 0,  -- 0 not delivered, 2 delivered (kept)
    -- a fix as its track row (device.wire.track_row): time ms, lat and lon micro-degrees,
    -- the rest as JSON text; NULL for anything else
    row_t    INTEGER,
    row_lat  INTEGER,
    row_lon  INTEGER,
    row_tail TEXT,
    -- the fix before it in its stream (priority, session, drill, expiry), when stored,
    -- and this row as its difference from that one (device.wire.row_delta)
    row_prev  INTEGER,
    row_delta TEXT,
    -- when this outbox committed it, by the device's clock (seconds since the epoch):
    -- what batching and expiry countdowns measure ages from, never the receiver's time
    committed REAL
);
CREATE INDEX IF NOT EXISTS records_order ON records (state, priority, seq);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session) WHERE session IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, expires REAL NOT NULL);
{_BINDINGS}"""
#: ``PRAGMA user_version`` of the schema above; older outboxes are brought up to it
SCHEMA_VERSION = 3


#: ``records.state`` (1, in flight, was written by version 0)
PENDING, IN_FLIGHT, DELIVERED = 0, 1, 2
#: the WAL is copied back into the database once it holds this much (SQLite's default),
#: or less on a small disk (:func:`wal_limit`)
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
#: ... but never less than this
WAL_MIN_BYTES = 64 * 1024
#: kept back for opening the outbox on a full disk (its -shm takes 32 KiB)
OPEN_RESERVE_BYTES = 96 * 1024
#: a chain of fixes: priority, session, drill, expiry (what a track message shares)
_Stream = tuple[int, str | None, bool, float | None]
_MAX_STREAMS = 64
#: beyond any seq
_END = 2**63 - 1
_COLUMNS = (
    "seq, kind, priority, time, session, drill, data, expires, row_t, row_lat, row_lon, row_tail,"
    " committed"
)


class OutboxError(SosbeaconError, OSError):
    """The outbox could not do what was asked: the database refused (its ``__cause__``
    is SQLite's own error). ``fault`` says what kind (full, locked, I/O, read-only, ...).
    Every public method of :class:`Outbox` raises this, never ``sqlite3``'s errors, so
    nothing outside the outbox needs to know it is SQLite."""

    fault: Fault = Fault.OTHER

    @classmethod
    def of(cls, exc: sqlite3.Error) -> OutboxError:
        fault = classify(exc)
        err = (OutboxFull if fault is Fault.FULL else OutboxError)(f"outbox: {exc}")
        err.fault = fault
        return err


class OutboxFull(OutboxError):
    """The record could not be stored: the disk (or the configured cap) is full."""

    fault = Fault.FULL


class OutboxUnavailable(OutboxError):
    """The outbox cannot be opened, for a reason that says nothing about its contents
    (a full disk, a lock held too long, an I/O error, a read-only file system): the
    file is left as it is, and the message says what to do."""

    def __init__(self, path: Path, fault: Fault, exc: BaseException) -> None:
        self.fault = fault
        hint = {
            Fault.FULL: "free some space on that file system",
            Fault.LOCKED: "another process holds it: stop it (another sosd? an sqlite3 shell?)",
            Fault.IO: "check the storage (dmesg; an SD card that fails I/O needs replacing)",
            Fault.READONLY: "the file system is read-only: remount it read-write",
        }.get(fault, "see the error above")
        super().__init__(
            f"the outbox {path} cannot be opened ({fault.value}: {exc}); it was left "
            f"untouched. {hint[0].upper()}{hint[1:]}, then start sosd again."
        )


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 1_000_000
    max_bytes: int = 256 * 1024 * 1024
    #: keep at least this much free on the file system
    min_free_bytes: int = 64 * 1024 * 1024
    #: disk space kept back (a file beside the outbox) for SOS records and the outbox's
    #: opening on a full disk; 0: none
    reserve_bytes: int = 256 * 1024
    #: records held in memory while the disk is full (SOS records are kept first)
    hold_records: int = 5000


@dataclass(frozen=True, slots=True)
class OutboxStats:
    #: records waiting for the broker's acknowledgement (pending or in flight)
    depth: int
    inflight: int
    #: when the oldest of them was committed (the device's clock)
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
    #: when the oldest routine record waiting was committed (the device's clock), if any
    oldest_routine: datetime | None


class Outbox:
    """Use :meth:`open` (an async context manager) rather than the constructor."""

    def __init__(self, path: Path, limits: Limits, clock: Clock, lock_wait: float = 60.0) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._lock_wait = lock_wait
        self._reserve = Reserve(Path(f"{path}.reserve"), limits.reserve_bytes)
        #: a smaller one for opening alone (SQLite makes its -shm and -wal files then):
        #: a restart on a disk that filled up, its SOS reserve used, still opens
        self._open_reserve = Reserve(
            Path(f"{path}.reserve-open"), min(OPEN_RESERVE_BYTES, limits.reserve_bytes)
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpoints: _Checkpoints | None = None
        #: adds, and acknowledgements, that arrive while a commit runs go in the next one
        self._adds: _Grouped[Record, Stored] = _Grouped(
            self._pool, lambda rs: self._writing(self._insert_sync, rs), after=self._notify
        )
        self._acks: _Grouped[list[int], None] = _Grouped(
            self._pool, lambda acks: self._writing(self._ack_sync, acks)
        )
        self.outbox_id = ""
        self.commits = 0
        #: rows in the table, counted once at open and kept up to date by every write
        #: (``count(*)`` scans the whole table, too slow for every commit)
        self._rows = 0
        self._watchers: list[asyncio.Event] = []
        #: handed out by take(), neither acknowledged nor requeued yet
        self._inflight: set[int] = set()
        #: by priority: every record not delivered up to this seq is in flight, so take()
        #: starts after it; a requeue moves it back
        self._taken: dict[int, int] = {}
        #: the last fix stored in each stream, which the next one's row difference is
        #: from (writer thread only)
        self._chain: dict[_Stream, tuple[int, TrackRow]] = {}
        #: held over a take (its read included) and over anything else that reads or
        #: changes what is in flight, eviction included: the reader and the writer
        #: threads then never hand out a record twice, or evict one being handed out
        self._handout = threading.RLock()
        #: inside :meth:`_withdrawing` (writer thread only)
        self._withdrawals = 0
        #: what waits in memory for room on a full disk (:meth:`add`), in order
        self._held: deque[_Held] = deque()
        self.held_dropped = 0
        #: acknowledged by the broker, the deletion not committed yet (a full disk)
        self._unsaved_acks: set[int] = set()
        self._flusher: asyncio.Task[None] | None = None
        #: held over storing what is held (the flusher, or an SOS record arriving)
        self._flushing = asyncio.Lock()
        #: since when the outbox cannot be written (by its clock), or None; and why
        #: ("disk full", "storage locked by another process", ...)
        self.full_since: datetime | None = None
        self.fault = ""
        #: set while the outbox can be written; cleared by a fault until it is over
        self.writable = asyncio.Event()
        self.writable.set()
        #: warnings said once per outage (:meth:`_say_once`), and how often they recurred
        self._quiet: dict[str, int] = {}
        #: writes held in memory in this outage
        self._held_total = 0
        #: the ``alarm`` meta value (:attr:`alarm`)
        self._alarm = ""

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path | str,
        limits: Limits | None = None,
        *,
        clock: Clock | None = None,
        lock_wait: float = 60.0,
    ) -> Outbox:
        """Open (creating, migrating or salvaging as needed). Raises
        :class:`OutboxUnavailable` when the file cannot be used for now."""
        box = cls(Path(path), limits or Limits(), clock or MonotonicClock(), lock_wait)
        try:
            await box._run(box._open_sync)
            await box._read(box._open_reader)
        except BaseException:
            box._pool.shutdown(wait=False)
            box._read_pool.shutdown(wait=False)
            raise
        return box

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._held:  # a last try: the disk may have room by now
            with contextlib.suppress(OSError, sqlite3.OperationalError):
                await self._store_held()
            if self._held:
                log.error(
                    "stopping with %d record(s) held in memory that could not be stored (the "
                    "disk is still full): they are lost. An SOS stop is remembered anyway.",
                    len(self._held),
                )
        await self._adds.settled()
        await self._acks.settled()
        await self._read(self._close_reader)
        self._read_pool.shutdown(wait=True)
        await self._run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _open_sync(self) -> None:
        """Open, telling the faults apart. Only proven corruption moves the file aside,
        and only after everything readable was salvaged into a fresh one. A lock held
        by another process is waited for (up to ``lock_wait``); a full disk gives up the
        reserve and tries again; the rest is raised as :class:`OutboxUnavailable`, with
        what to do, and the file is left as it is."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self._lock_wait
        said_locked = False
        while True:
            try:
                self._connect()
                break
            except sqlite3.DatabaseError as exc:
                fault = classify(exc)
                if fault is Fault.CORRUPT:
                    self._salvage(str(exc))
                    self._connect()
                    break
                if fault is Fault.LOCKED and time.monotonic() < deadline:
                    if not said_locked:
                        log.warning(
                            "the outbox %s is locked by another process (%s); waiting up to "
                            "%.0f s for it. Is another sosd, or an sqlite3 shell, using it?",
                            self.path,
                            exc,
                            self._lock_wait,
                        )
                        said_locked = True
                    time.sleep(0.2)
                    continue
                if fault in (Fault.FULL, Fault.IO) and (
                    self._open_reserve.release() or self._reserve.release()
                ):
                    continue
                raise OutboxUnavailable(self.path, fault, exc) from exc
        # a fresh reserve once there is room again (a full disk may have used it)
        if not (self._open_reserve.take() and self._reserve.take()):
            log.warning(
                "no room for the %d KiB kept in reserve beside %s: free some space, or an "
                "SOS on a full disk may not be storable",
                self._reserve.size // 1024,
                self.path,
            )

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # checkpoints run in a thread of their own (_Checkpoints), never in a commit
            db.execute("PRAGMA wal_autocheckpoint=0")
            limit = wal_limit(self.limits.min_free_bytes, _free(self.path.parent))
            db.execute(f"PRAGMA journal_size_limit={limit}")
            db.execute("PRAGMA busy_timeout=5000")  # a checkpoint of its own may wait
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise CorruptOutbox(f"integrity check failed: {ok}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and _has_table(db, "records"):
                _migrate_from_0(db)
                version = 1
            if version == 1:
                _migrate_from_1(db)
                version = 2
            if version == 2:
                _migrate_from_2(db, self._clock.now())
            db.executescript(SCHEMA)
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            alarm = db.execute("SELECT value FROM meta WHERE key='alarm'").fetchone()
            self._alarm = alarm[0] if alarm else ""
            row = db.execute("SELECT value FROM meta WHERE key='outbox_id'").fetchone()
            if row is None:
                self.outbox_id = uuid.uuid4().hex[:16]  # 64 bits: unique enough per device
                db.execute("INSERT INTO meta VALUES ('outbox_id', ?)", (self.outbox_id,))
            else:
                self.outbox_id = row[0]
            # Version 0 marked records in flight in the table; after a restart nothing
            # is in flight. Names of messages whose records are all gone (delivered,
            # expired, purged) are tidied away. Neither is needed to run: on a full disk
            # they wait for the next start.
            with contextlib.suppress(sqlite3.OperationalError):
                db.execute(f"UPDATE records SET state={PENDING} WHERE state={IN_FLIGHT}")
                db.execute(
                    "DELETE FROM bindings WHERE NOT EXISTS (SELECT 1 FROM records "
                    "WHERE seq BETWEEN bindings.first AND bindings.last AND state<2)"
                )
            self._rows = db.execute("SELECT count(*) FROM records").fetchone()[0]
            # Can this connection write? A WAL database opens and reads under another
            # process's write lock; every store would then wait and fail.
            with _transaction(db):
                pass
        except sqlite3.DatabaseError:
            db.close()
            raise
        self._db = db
        self._checkpoints = _Checkpoints(self.path, self.limits.min_free_bytes, limit)

    def _salvage(self, why: str) -> None:
        """Everything readable of a corrupt outbox goes into a fresh one (the same
        ``outbox_id`` and seqs when the seq counter could be read, else a new id), with
        a ``gap`` record (reason ``corrupt``) naming every seq up to the last that will
        not be sent from it; then the corrupt file is set aside (never deleted) and an
        alarm is raised until the owner acknowledges it."""
        got = read_readable(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        fresh = Path(f"{self.path}.salvage-{stamp}")
        same_box = got.last_seq is not None and "outbox_id" in got.meta
        box = got.meta["outbox_id"] if same_box else uuid.uuid4().hex[:16]
        db = sqlite3.connect(fresh, isolation_level=None)
        try:
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            with _transaction(db):
                meta = dict(got.meta) if same_box else {}
                if "active_session" in got.meta:
                    meta["active_session"] = got.meta["active_session"]
                meta["outbox_id"] = box
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", got.sessions)
                if same_box:
                    db.executemany("INSERT OR REPLACE INTO bindings VALUES (?,?,?)", got.bindings)
                now = self._clock.now()
                cols = ", ".join(RECORD_COLUMNS)
                marks = ",".join("?" * len(RECORD_COLUMNS))
                committed = RECORD_COLUMNS.index("committed")
                db.executemany(
                    f"INSERT INTO records ({cols}) VALUES ({marks})",
                    [
                        r if r[committed] is not None else (*r[:committed], now.timestamp())
                        for r in got.records
                    ],
                )
                state = RECORD_COLUMNS.index("state")
                sent = {r[0] for r in got.records if r[state] == PENDING}
                top = max(got.last_seq or 0, max((r[0] for r in got.records), default=0))
                lost = _complement(sent, top)  # ranges: top may be in the millions
                if lost:
                    top += 1
                    _insert_gap_row(db, top, lost, "corrupt", now, now.timestamp())
                db.execute("INSERT OR REPLACE INTO counters VALUES ('seq', ?)", (top,))
                alarm = (
                    f"the outbox was corrupt ({why}); {len(got.records)} record(s) and "
                    f"{'the' if 'active_session' in got.meta else 'no'} active SOS session "
                    f"salvaged, {got.unreadable} unreadable; the damaged file is kept as "
                    f"{self.path}.corrupt-{stamp}"
                    + ("" if same_box else "; seq numbering restarts under a new outbox_id")
                )
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('alarm', ?)",
                    (json.dumps({"at": now.isoformat(), "what": alarm}),),
                )
        finally:
            db.close()
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(f"{self.path}.corrupt-{stamp}{suffix}"))
        fresh.rename(self.path)
        log.error("ALARM: %s. Acknowledge with `sosctl alarm --ack`.", alarm)

    def _close_sync(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None
        if self._db is not None:
            # a clean stop leaves no WAL behind (SQLite would try too, as the last
            # connection; this says so when it cannot, e.g. on a full disk)
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log.warning("the outbox's WAL could not be emptied at stop: %s", exc)
            self._db.close()
            self._db = None

    def _open_reader(self) -> None:
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout=5000")

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._writing, fn)

    def _writing(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the writer thread, then a checkpoint if the WAL has grown
        enough."""
        try:
            return fn(*args)
        finally:
            if self._checkpoints is not None:
                self._checkpoints.poke(self.db)

    async def _full_is_outbox_full(self, fn: Callable[[], T], what: str) -> T:
        """Run a write in the writer thread; a full disk is :class:`OutboxFull`, with
        what to do (nothing was changed: the write is one transaction)."""
        try:
            return await self._run(fn)
        except sqlite3.OperationalError as exc:
            raise self._as_full(exc, what) from exc

    def _as_full(self, exc: sqlite3.OperationalError, what: str) -> BaseException:
        """A failed write as :class:`OutboxFull` (with what to do) when the disk is full;
        anything else as it is."""
        if classify(exc) is not Fault.FULL:
            return exc
        return OutboxFull(
            f"cannot {what}: {exc}. Nothing was changed and what is stored is safe; free "
            f"some space on the file system of {self.path}."
        )

    async def _read(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn)

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("outbox is closed")
        return self._reader

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is closed")
        return self._db

    # -- storing -----------------------------------------------------------------------

    async def add(self, record: Record) -> None:
        """Store durably (the Recorder Protocol); see :meth:`store` for the seq.

        On a full disk this does not fail: an SOS must carry on. The record is held in
        memory, in order behind anything held before it, and stored once there is room
        (:meth:`_flush_held`); SOS records are kept first when more than
        ``limits.hold_records`` wait. A held record has no seq yet: it was never
        acknowledged as stored."""
        if not self._held:
            try:
                await self.store(record)
                return
            except (OutboxFull, sqlite3.OperationalError) as exc:
                if not _holdable(exc):
                    raise
                self._disk_full(exc)
        self._hold(_Held(record=record))
        if record.priority is Priority.SOS:
            # an SOS record does not wait for the next retry: it may use the reserve
            with contextlib.suppress(OSError, sqlite3.OperationalError):
                await self._store_held()

    async def store(self, record: Record) -> Stored:
        """Commit ``record``; returns once it is on disk, with its seq and message id."""
        return await self._adds.submit(record)

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
        chained: dict[_Stream, tuple[int, TrackRow]] = {}

        def write() -> list[Stored]:
            chained.clear()
            with _transaction(db):
                first = self._get_seq() + 1
                at = self._clock.now().timestamp()
                out = [self._insert(seq, r, at, chained) for seq, r in enumerate(records, first)]
                self._set_seq(first + len(records) - 1)
            return out

        try:
            # an SOS record may use the reserve; telemetry waits for room
            urgent = any(r.priority is Priority.SOS for r in records)
            out = self._may_use_reserve(write) if urgent else write()
        except sqlite3.OperationalError as exc:
            raise self._as_full(exc, f"store {len(records)} record(s)") from exc
        if len(self._chain) + len(chained) > _MAX_STREAMS:
            self._chain.clear()  # ended sessions' streams: their next fix starts a run
        self._chain.update(chained)
        self.commits += 1
        self._rows += len(out)
        return out

    def _insert(
        self, seq: int, r: Record, at: float, chained: dict[_Stream, tuple[int, TrackRow]]
    ) -> Stored:
        """One record, committed at ``at``, inside :meth:`_insert_sync`'s transaction; a
        fix's row difference is from the last fix of its stream (stored in this
        transaction, or before)."""
        db = self.db
        if r.expires is None and r.session is not None:
            hit = db.execute(
                "SELECT expires FROM sessions WHERE session=?", (r.session,)
            ).fetchone()
            exp_ts = hit[0] if hit else None
        else:
            exp_ts = r.expires.timestamp() if r.expires else None
        row = track_row(r)
        prev_seq = delta = None
        if row is not None:
            stream = (int(r.priority), r.session, r.drill, exp_ts)
            prev = chained.get(stream) or self._chain.get(stream)
            if prev is not None:
                prev_seq, delta = prev[0], row_delta(*prev, seq, row)
            chained[stream] = seq, row
        db.execute(
            "INSERT INTO records (seq, kind, priority, time, session, drill, data, expires,"
            " row_t, row_lat, row_lon, row_tail, row_prev, row_delta, committed)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                seq,
                r.kind.value,
                int(r.priority),
                r.time.isoformat(),
                r.session,
                int(r.drill),
                json.dumps(r.data, separators=(",", ":")),
                exp_ts,
                *(row or (None, None, None, None)),
                prev_seq,
                delta,
                at,
            ),
        )
        return Stored(seq, None, r, row, at)

    def _make_room_sync(self, incoming: int) -> None:
        """Evict routine records (never SOS) to stay within rows, bytes and free disk."""
        lim = self.limits
        rows = self._rows
        excess_rows = rows + incoming - lim.max_rows
        size = self._size_sync()
        disk = shutil.disk_usage(self.path.parent)
        # min_free_bytes beyond a tenth of the file system (64 MiB on a 2 MB card) would
        # evict every routine record at every store: keep a tenth free instead
        min_free = min(lim.min_free_bytes, disk.total // 10)
        if min_free < lim.min_free_bytes:
            self._say_once(
                "min_free",
                log.warning,
                "outbox.min_free_bytes (%d) is more than a tenth of the file system of %s "
                "(%d bytes): keeping %d bytes free instead",
                lim.min_free_bytes,
                self.path,
                disk.total,
                min_free,
            )
        excess_bytes = max(size - lim.max_bytes, min_free - disk.free)
        if excess_rows <= 0 and excess_bytes <= 0:
            self._quiet_end("no_victims", "the outbox is within its limits again")
            return
        avg = max(1, size // max(1, rows))
        # One more than the excess (the gap record written in their place may take a row),
        # and at least 1% of the row cap: evicting in chunks keeps evictions, and gap
        # records, rare.
        n = max(excess_rows, -(-excess_bytes // avg) if excess_bytes > 0 else 0) + 1
        n = max(n, lim.max_rows // 100)
        self._evict(n)

    def _evict(self, n: int) -> None:
        with self._withdrawing() as db:
            inflight = self._inflight
            victims = [
                r[0]
                for r in db.execute(
                    "SELECT seq FROM records WHERE session IS NULL AND priority=? AND state=0 "
                    "ORDER BY seq LIMIT ?",
                    (int(Priority.ROUTINE), n + len(inflight)),
                )
                if r[0] not in inflight
            ][:n]
            if not victims:
                self._say_once(
                    "no_victims",
                    log.warning,
                    "outbox over its limits but holds no routine records to evict; "
                    "SOS records are never evicted (said once until the outbox is within "
                    "its limits again)",
                )
                return
            self._quiet_end("no_victims", "the outbox is within its limits again")
            cur = db.executemany("DELETE FROM records WHERE seq=?", [(v,) for v in victims])
            change = self._insert_gap_sync(victims, "evicted", self._clock.now()) - cur.rowcount
        self._rows += change
        log.warning(
            "outbox full: evicted %d routine records (oldest first); the evicted "
            "seq ranges will be published",
            len(victims),
        )

    @contextlib.contextmanager
    def _withdrawing(self) -> Iterator[sqlite3.Connection]:
        """The transaction of a write that takes records away undelivered (eviction,
        expiry, wipe) and names them in a ``gap`` record (:meth:`_insert_gap_sync`).
        It holds the hand-out lock from its first read to its commit: such a write may
        rewrite a gap record that waits to be sent, and a take beside it would hand out
        that record's old ranges (deleted at their PUBACK, the new ones with them: a
        loss at the receiver). So a take sees the table wholly before such a write or
        wholly after it."""
        with self._handout, _transaction(self.db):
            self._withdrawals += 1
            try:
                yield self.db
            finally:
                self._withdrawals -= 1

    def _insert_gap_sync(self, seqs: list[int], reason: str, at: datetime) -> int:
        """Inside :meth:`_withdrawing`: a ``gap`` record naming ``seqs``. A gap record of
        the same reason that waits unsent (not in flight, no message formed yet) is
        extended instead, so a long offline spell leaves one gap record, not one per
        eviction. Returns the rows it added (0 or 1), for the caller to count once its
        transaction commits."""
        if not self._withdrawals:
            raise RuntimeError("a gap record is written only inside _withdrawing()")
        if not seqs:
            return 0
        db = self.db
        old = db.execute(
            "SELECT seq, data FROM records WHERE kind=? AND state=0 "
            "AND json_extract(data, '$.reason')=? ORDER BY seq DESC LIMIT 1",
            (RecordKind.GAP.value, reason),
        ).fetchone()
        if old is not None and old[0] not in self._inflight and _message_id(db, old[0]) is None:
            named = [(a, b) for a, b in json.loads(old[1])["ranges"]]
            ranges = _merge(named + seq_ranges(seqs))
            data = {"ranges": [list(r) for r in ranges], "reason": reason}
            db.execute(
                "UPDATE records SET data=?, time=? WHERE seq=?",
                (json.dumps(data, separators=(",", ":")), at.isoformat(), old[0]),
            )
            return 0
        seq = self._get_seq() + 1
        _insert_gap_row(db, seq, seq_ranges(seqs), reason, at, self._clock.now().timestamp())
        self._set_seq(seq)
        return 1

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

    # -- a full disk -------------------------------------------------------------------

    def _disk_full(self, exc: BaseException) -> None:
        """A write could not be done for now (a full disk, mostly): say so once."""
        if self.full_since is None:
            self.full_since = self._clock.now()
            self.writable.clear()
            fault = Fault.FULL if isinstance(exc, OutboxFull) else classify(exc)
            self.fault = "disk full" if fault is Fault.FULL else f"storage {fault.value}"
            log.error(
                "%s: %s Records are held in memory (SOS records first, up to %d) and stored "
                "once the outbox %s can be written again; nothing already stored is lost.%s",
                self.fault.upper(),
                str(exc).rstrip(".") + ".",
                self.limits.hold_records,
                self.path,
                " Free some space on that file system."
                if fault is Fault.FULL and not isinstance(exc, OutboxFull)
                else "",
            )

    def _hold(self, op: _Held) -> None:
        held = self._held
        held.append(op)
        self._held_total += 1
        while len(held) > max(1, self.limits.hold_records):
            victim = next((h for h in held if h.droppable), None)
            if victim is None:
                break  # only SOS records and expiries: kept, whatever it costs in memory
            held.remove(victim)
            self.held_dropped += 1
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_held())

    async def _flush_held(self) -> None:
        """Store what was held, in order, and commit the acknowledgements that could not
        be, once there is room: tried every second or so, on the outbox's clock."""
        delay = 0.5
        while self._held or self._unsaved_acks:
            await self._clock.sleep(delay)
            delay = min(5.0, delay * 2)
            try:
                await self._store_held()
                if self._unsaved_acks:
                    with self._handout:
                        acks = sorted(self._unsaved_acks)
                    await self._acks.submit(acks)
                    with self._handout:
                        self._unsaved_acks.difference_update(acks)
            except Exception as exc:  # a bug must not strand what is held either
                if not _holdable(exc):  # else still no room (or still locked): later
                    log.exception("storing the records held in memory failed; retrying")
            else:
                delay = 0.5
        self._disk_back()

    def _say_once(self, key: str, level: Callable[..., None], msg: str, *args: Any) -> None:
        """Log ``msg`` once until ``key`` is cleared (the condition ended): one line per
        outage, not one per write."""
        n = self._quiet.get(key, 0)
        self._quiet[key] = n + 1
        if n == 0:
            level(msg, *args)

    def _quiet_end(self, key: str, what: str) -> None:
        """The condition of ``key`` ended: said with how often it recurred."""
        n = self._quiet.pop(key, 0)
        if n > 1:
            log.info("%s (the warning above recurred %d times, said once)", what, n)

    async def _store_held(self) -> None:
        """What is held, stored: SOS records and session expiries first (in their own
        order: an end record is stored after its session's expiry), which may use the
        reserve, then the rest in order. Raises at the first write that fails."""
        async with self._flushing:
            for urgent in (True, False):
                for op in [h for h in self._held if h.droppable is not urgent]:
                    if op.record is not None:
                        await self.store(op.record)
                    elif op.expire is not None:
                        await self._expire_session(*op.expire)
                    self._held.remove(op)

    def _disk_back(self) -> None:
        if self.full_since is None:
            return
        log.warning(
            "the outbox can be written again (%s for %.0f s): the %d write(s) held in memory "
            "meanwhile are stored%s",
            self.fault,
            (self._clock.now() - self.full_since).total_seconds(),
            self._held_total,
            f" ({self.held_dropped} routine record(s) had to be dropped)"
            if self.held_dropped
            else "",
        )
        self.full_since = None
        self._held_total = 0
        self._open_reserve.take()
        self._reserve.take()
        self.writable.set()

    @property
    def held(self) -> int:
        """Records (and session expiries) held in memory, waiting for room."""
        return len(self._held)

    @property
    def alarm(self) -> str | None:
        """What the owner must know about the store (a corrupt file salvaged), until
        acknowledged with :meth:`ack_alarm`: read from ``meta`` at open, kept here, so
        a status never waits on the writer for it."""
        raw = self._alarm
        if not raw:
            return None
        try:
            d = json.loads(raw)
            return f"{d['at']}: {d['what']}"
        except (ValueError, KeyError, TypeError):
            return raw

    async def ack_alarm(self) -> bool:
        """The owner saw the alarm; returns whether there was one."""
        had = bool(self._alarm)
        if had:
            await self.set_meta("alarm", "")
            self._alarm = ""
        return had

    # -- handing out and acknowledging -------------------------------------------------

    async def take(
        self,
        limit: int = 1000,
        *,
        first: Priority = Priority.SOS,
        last: Priority = Priority.ROUTINE,
        run: int = 1,
    ) -> list[Item]:
        """The next records to upload with a priority from ``first`` to ``last``, by
        priority then seq; they become in flight. With ``run`` above 1, fixes of one
        stream that follow one another (and would share a message) come as one
        :class:`FixRun` of at most ``run`` records."""
        return await self._read(lambda: self._take_sync(limit, first, last, run))

    def _take_sync(self, limit: int, first: Priority, last: Priority, run: int) -> list[Item]:
        with self._handout:
            return self._hand_out(limit, first, last, run)

    def _hand_out(self, limit: int, first: Priority, last: Priority, run: int) -> list[Item]:
        db = self.reader
        inflight = self._inflight
        picked: list[tuple[int, int | None, str | None, int]] = []

        def read(priority: int, upto: int, n: int) -> int:
            rows = db.execute(
                "SELECT seq, row_prev, row_delta, row_t IS NOT NULL FROM records "
                "WHERE state=0 AND priority=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
                (priority, self._taken.get(priority, 0), upto, n),
            ).fetchall()
            if rows:
                self._taken[priority] = rows[-1][0]
                # after a requeue, records still in flight may follow the cursor
                picked.extend(r for r in rows if r[0] not in inflight)
            return len(rows)

        db.execute("BEGIN")  # one snapshot for the reads below
        try:
            for priority in range(first, last + 1):
                while len(picked) < limit and read(priority, _END, limit - len(picked)):
                    pass
            if len(picked) >= limit:
                # a message formed before goes out whole, with the same records under the
                # same id, even when the limit falls inside it
                rest = self._rest_of_message(picked[-1][0])
                if rest is not None:
                    read(*rest)
            out = self._group(picked, run) if picked else []
        finally:
            db.execute("COMMIT")
        inflight.update(r[0] for r in picked)
        return out

    def _rest_of_message(self, seq: int) -> tuple[int, int, int] | None:
        """If ``seq`` was bound to a message that goes on after it: its priority, its
        last seq, and how many seqs lie between (for :meth:`_hand_out`'s ``read``)."""
        db = self.reader
        mid = _message_id(db, seq)
        if mid is None:
            return None
        end = db.execute("SELECT max(last) FROM bindings WHERE msg_id=?", (mid,)).fetchone()[0]
        if end <= seq:
            return None
        priority = db.execute("SELECT priority FROM records WHERE seq=?", (seq,)).fetchone()[0]
        return priority, end, end - seq

    def _group(self, picked: list[tuple[int, int | None, str | None, int]], run: int) -> list[Item]:
        """Fixes whose stored difference is from the fix just before them in the run (no
        record of the chain deleted, in flight, or named by another message) join it;
        everything else stands alone. Only the records at the runs' ends are read whole,
        with their message ids from ``bindings``."""
        seqs = [r[0] for r in picked]
        bound = self.reader.execute(
            "SELECT first, last, msg_id FROM bindings WHERE first<=? AND last>=? ORDER BY first",
            (max(seqs), min(seqs)),
        ).fetchall()
        firsts = [b[0] for b in bound]

        def name(seq: int) -> str | None:
            i = bisect.bisect_right(firsts, seq) - 1
            return bound[i][2] if i >= 0 and seq <= bound[i][1] else None

        plan: list[tuple[list[int], list[str], str | None]] = []
        current: tuple[list[int], list[str], str | None] | None = None
        for seq, prev, delta, has_row in picked:
            mid = name(seq) if bound else None
            if (
                current is not None
                and prev == current[0][-1]
                and mid == current[2]
                and len(current[0]) < run
            ):
                current[0].append(seq)
                current[1].append(delta)  # type: ignore[arg-type]  # set with row_prev
                continue
            entry: tuple[list[int], list[str], str | None] = ([seq], [], mid)
            plan.append(entry)
            if has_row:
                current = entry  # anything else leaves the current run open
        loaded = self._load({e[0][0] for e in plan} | {e[0][-1] for e in plan})
        out: list[Item] = []
        for run_seqs, deltas, mid in plan:
            head = loaded[run_seqs[0]]
            head.msg_id = mid
            if len(run_seqs) == 1:
                out.append(head)
            else:
                tail = loaded[run_seqs[-1]]
                tail.msg_id = mid
                out.append(FixRun(head, tail, run_seqs, deltas))
        return out

    def _load(self, seqs: set[int]) -> dict[int, Stored]:
        """Whole records by seq (reader thread)."""
        out: dict[int, Stored] = {}
        wanted = sorted(seqs)
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.reader.execute(
                f"SELECT {_COLUMNS} FROM records WHERE seq IN ({marks})", chunk
            ):
                out[r[0]] = _Row(r)
        return out

    async def cut(self, run: FixRun) -> tuple[Item, Item]:
        """A run of fixes too large for one message, in two: the records at the cut are
        read back whole to become the halves' ends."""
        k = len(run.seqs) // 2

        def read() -> tuple[Item, Item]:
            ends = self._load({run.seqs[k - 1], run.seqs[k]})
            for s in ends.values():
                s.msg_id = run.msg_id
            return run.halves(ends[run.seqs[k - 1]], ends[run.seqs[k]])

        return await self._read(read)

    @contextlib.contextmanager
    def _light(self) -> Iterator[None]:
        """A transaction for bookkeeping (in flight, message ids, acknowledgements) with
        ``synchronous=NORMAL``: it survives a crash of the daemon; a power cut may undo
        it, which only means a resend (a duplicate the receiver drops by seq), never a
        loss. Records themselves are always committed with ``synchronous=FULL``."""
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with _transaction(db):
                yield
        finally:
            db.execute("PRAGMA synchronous=FULL")

    async def bind(self, messages: dict[str, list[int]]) -> None:
        """Store the message id of each group of records, before the message is sent.
        A record named again (its message was too large and is formed anew) takes the
        new name; a name that no longer covers a record is dropped with it."""

        def run() -> None:
            ranges = [(a, b, mid) for mid, seqs in messages.items() for a, b in seq_ranges(seqs)]
            with self._light():
                self.db.executemany(
                    "DELETE FROM bindings WHERE first BETWEEN ? AND ?",
                    [(a, b) for a, b, _ in ranges],
                )
                self.db.executemany("INSERT INTO bindings VALUES (?,?,?)", ranges)

        await self._run(run)

    async def pending(self, cap: int = 1_000_000) -> Pending:
        """Counts of what waits to be taken (each at most ``cap``: enough to decide,
        without counting a whole backlog), and when the oldest routine record was
        committed. Index lookups only. Just after a requeue they may include records
        still in flight, which the next take skips."""

        def run() -> Pending:
            db = self.reader
            with self._handout:
                taken = dict(self._taken)
            count = (
                "SELECT count(*) FROM (SELECT 1 FROM records "
                "WHERE state=0 AND priority=? AND seq>? LIMIT ?)"
            )
            n = {
                p: db.execute(count, (p, taken.get(p, 0), cap)).fetchone()[0]
                for p in map(int, Priority)
            }
            routine = int(Priority.ROUTINE)
            oldest = db.execute(
                "SELECT committed FROM records WHERE state=0 AND priority=? AND seq>? "
                "ORDER BY seq LIMIT 1",
                (routine, taken.get(routine, 0)),
            ).fetchone()
            return Pending(
                min(cap, sum(v for p, v in n.items() if p != routine)),
                n[routine],
                _moment(oldest[0]) if oldest else None,
            )

        return await self._read(run)

    async def ack(self, seqs: list[int]) -> None:
        """The broker acknowledged these: now, and only now, they leave the upload queue.
        Records of an SOS session stay on the device, delivered, until their expiry (the
        route stays available for export for the 72 hours); the rest are deleted.
        Acknowledgements that arrive together are committed together.

        If the acknowledgement cannot be committed (a full disk), the records stay in
        flight, never handed out again, and the commit is retried once there is room: no
        record is stuck in flight, and none is sent twice meanwhile."""
        try:
            await self._acks.submit(seqs)
        except sqlite3.OperationalError as exc:
            if not _holdable(exc):
                raise
            with self._handout:
                self._unsaved_acks.update(seqs)
            self._disk_full(exc)
            self._start_flusher()

    def _ack_sync(self, acks: list[list[int]]) -> list[None]:
        db = self.db
        seqs = [s for group in acks for s in group]
        ranges = seq_ranges(seqs)
        with self._light():
            cur = db.executemany(
                "DELETE FROM records WHERE seq BETWEEN ? AND ? AND session IS NULL", ranges
            )
            deleted = cur.rowcount
            db.executemany(
                "DELETE FROM bindings WHERE first BETWEEN ? AND ? AND last<=?",
                [(a, b, b) for a, b in ranges],
            )
            if deleted < sum(b - a + 1 for a, b in ranges):
                db.executemany(
                    "UPDATE records SET state=2 WHERE seq BETWEEN ? AND ? AND session IS NOT NULL",
                    ranges,
                )
        self._rows -= deleted
        with self._handout:  # after the commit: a take reading meanwhile skips them
            self._inflight.difference_update(seqs)
        return [None] * len(acks)

    async def requeue(self, seqs: list[int] | None = None) -> None:
        """Back to pending (a failure reason code, or all of them on reconnect)."""

        def run() -> None:  # in the reader thread: never beside a take
            with self._handout:
                if seqs is None:
                    # acknowledged, the deletion not committed yet: never sent again
                    self._inflight = set(self._unsaved_acks)
                    self._taken.clear()
                elif seqs:
                    self._inflight.difference_update(seqs)
                    back = min(seqs) - 1
                    for p, after in self._taken.items():
                        self._taken[p] = min(after, back)

        await self._read(run)
        self._notify()

    async def export(self) -> list[tuple[Stored, bool]]:
        """Everything stored, in seq order, with whether it was delivered."""

        def run() -> list[tuple[Stored, bool]]:
            rows = self.reader.execute(f"SELECT {_COLUMNS}, state FROM records ORDER BY seq")
            return [(_Row(r[:-1]), r[-1] == DELIVERED) for r in rows]

        return await self._read(run)

    async def wipe(self) -> int:
        """Delete every record (``sosctl purge``: the owner's choice). What had not been
        delivered yet is named by a ``gap`` record (reason ``purged``), so receivers see
        a deliberate deletion, not a loss; the seq counter is kept."""

        def run() -> int:
            with self._withdrawing() as db:  # no take sees the records meanwhile
                undelivered = [r[0] for r in db.execute("SELECT seq FROM records WHERE state<2")]
                cur = db.execute("DELETE FROM records")
                db.execute("DELETE FROM bindings")
                added = self._insert_gap_sync(undelivered, "purged", self._clock.now())
            with self._handout:  # after the commit, as every write
                self._rows = added
                self._inflight.clear()
                self._taken.clear()
            return cur.rowcount

        n = await self._full_is_outbox_full(run, "purge the outbox")
        self._notify()
        return n

    async def last_seq(self) -> int:
        """The highest seq ever given (0 for a new outbox)."""
        return await self._run(self._get_seq)

    async def has_undelivered(self) -> bool:
        """Whether anything waits for the broker (an index lookup, cheap at any depth)."""
        return await self._read(
            lambda: (
                self.reader.execute(
                    "SELECT EXISTS(SELECT 1 FROM records WHERE state<2)"
                ).fetchone()[0]
                == 1
            )
        )

    async def has_end(self, session: str) -> bool:
        """Whether the ``sos-end`` record of ``session`` is stored."""
        return await self._read(
            lambda: (
                self.reader.execute(
                    "SELECT EXISTS(SELECT 1 FROM records WHERE session=? AND kind=?)",
                    (session, RecordKind.SOS_END.value),
                ).fetchone()[0]
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
        """Give every record of ``session`` (and any stored later) the expiry ``at``. On
        a full disk it is held, in order with the records, like :meth:`add`."""
        if not self._held:
            try:
                await self._expire_session(session, at)
                return
            except sqlite3.OperationalError as exc:
                if not _holdable(exc):
                    raise
                self._disk_full(exc)
        self._hold(_Held(expire=(session, at)))

    async def _expire_session(self, session: str, at: datetime) -> None:
        def run() -> None:
            db = self.db
            with _transaction(db):
                db.execute(
                    "INSERT INTO sessions VALUES (?, ?) ON CONFLICT(session) DO UPDATE "
                    "SET expires=excluded.expires",
                    (session, at.timestamp()),
                )
                db.execute(
                    "UPDATE records SET expires=? WHERE session=?", (at.timestamp(), session)
                )

        await self._run(lambda: self._may_use_reserve(run))

    def _may_use_reserve(self, write: Callable[[], T]) -> T:
        """An SOS write (an SOS record, a session's expiry) in the writer thread: on a
        full disk the reserve is given up and the write tried once more."""
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if classify(exc) is not Fault.FULL or not self._reserve.release():
                raise
        return write()

    async def purge(self, now: datetime) -> int:
        """Delete expired records, delivered or not: past expiry nobody may see them.
        Those that never reached the broker are named by a ``gap`` record."""

        def run() -> int:
            with self._withdrawing() as db:
                rows = db.execute(
                    "SELECT seq, state FROM records WHERE expires IS NOT NULL AND expires<=?",
                    (now.timestamp(),),
                ).fetchall()
                if not rows:
                    return 0
                cur = db.executemany("DELETE FROM records WHERE seq=?", [(r[0],) for r in rows])
                undelivered = [seq for seq, state in rows if state != DELIVERED]
                change = self._insert_gap_sync(undelivered, "expired", now) - cur.rowcount
            self._rows += change
            with self._handout:
                self._inflight.difference_update(r[0] for r in rows)
            return len(rows)

        n = await self._full_is_outbox_full(run, "delete expired records")
        if n:
            self._notify()
        return n

    async def next_expiry(self) -> datetime | None:
        def run() -> datetime | None:
            row = self.reader.execute("SELECT min(expires) FROM records").fetchone()
            return datetime.fromtimestamp(row[0], UTC) if row and row[0] else None

        return await self._read(run)

    async def stats(self) -> OutboxStats:
        def run() -> OutboxStats:
            db = self.reader
            depth, oldest, kept = db.execute(
                "SELECT coalesce(sum(state<2),0), min(CASE WHEN state<2 THEN committed END), "
                "coalesce(sum(state=2),0) FROM records"
            ).fetchone()
            return OutboxStats(
                depth,
                len(self._inflight),
                _moment(oldest),
                self._size_sync(),
                kept,
            )

        return await self._read(run)


_KINDS = {k.value: k for k in RecordKind}
_PRIORITIES = {int(p): p for p in Priority}


In = TypeVar("In")


def _speaking_for_itself(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A public coroutine of :class:`Outbox` with SQLite's errors as :class:`OutboxError`."""

    @functools.wraps(fn)
    async def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise OutboxError.of(exc) from exc

    return translated


for _name, _member in list(vars(Outbox).items()):
    if not _name.startswith("_") and inspect.iscoroutinefunction(_member):
        setattr(Outbox, _name, _speaking_for_itself(_member))
del _name, _member


class _Grouped(Generic[In, T]):
    """Group commit: items submitted while a commit runs go together in the next one, so
    a burst costs one transaction (and one fsync), not one each. ``commit`` runs in the
    writer thread and returns one result per item."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        commit: Callable[[list[In]], list[T]],
        *,
        after: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._commit = commit
        self._after = after
        self._waiting: list[tuple[In, asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await fut

    async def settled(self) -> None:
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                results = await loop.run_in_executor(
                    self._pool, functools.partial(self._commit, [item for item, _ in batch])
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            if self._after is not None:
                self._after()


class _Checkpoints:
    """Copies the WAL back into the database file in a thread of its own, with a
    connection of its own (a passive checkpoint: it waits for no reader and no writer).
    With SQLite's automatic checkpoints, the commit that crosses the mark does the
    checkpoint itself: an SOS record's commit could wait tens of milliseconds behind it,
    and a draining backlog paid for every checkpoint on its way. The writer calls
    :meth:`poke` after each job; past :data:`WAL_CHECKPOINT_BYTES` (the WAL file is cut
    back to that size when it starts over) a checkpoint runs. The WAL can only start
    over once everything in it was copied while no commit came in between, which a
    drain, committing all the time, never allows: so after each pass of the thread the
    writer copies what was committed meanwhile (little) itself. Should the thread fall
    four checkpoints behind, the writer does a whole checkpoint itself."""

    def __init__(self, path: Path, min_free: int, limit: int) -> None:
        self._path = path
        self._wal = f"{path}-wal"
        self._min_free = min_free
        #: the WAL size that calls for a checkpoint (:func:`wal_limit`), looked at again
        #: every second: a disk that fills up gets a smaller WAL
        self.limit = limit
        self._limit_at = time.monotonic()
        self._wake = threading.Event()
        self._stop = False
        #: a pass is done: the writer copies the rest
        self._tail = False
        #: held over every checkpoint (SQLite runs one at a time, and refuses a second)
        self._running = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="outbox-checkpoint", daemon=True)
        self._thread.start()

    def poke(self, db: sqlite3.Connection) -> None:
        """After each writer job; a checkpoint that fails here (a full disk, a statement
        still open after a failed write) is tried again at the next one, and never
        hides the job's own outcome."""
        try:
            self._poke(db)
        except sqlite3.Error as exc:
            log.debug("outbox checkpoint deferred: %s", exc)

    def _poke(self, db: sqlite3.Connection) -> None:
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        now = time.monotonic()
        if now - self._limit_at > 1.0:
            self._limit_at = now
            limit = wal_limit(self._min_free, _free(self._path.parent))
            if limit != self.limit:
                self.limit = limit
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"PRAGMA journal_size_limit={limit}")
        limit = self.limit
        if size > 4 * limit:
            # The thread fell behind (a slow card, a busy machine): the writer waits for
            # its pass, then does a whole checkpoint, as SQLite's own would. A drain slows
            # down rather than let the WAL grow without bound.
            with self._running:
                self._tail = False
                db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        elif self._tail and self._running.acquire(blocking=False):
            try:
                self._tail = False
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                self._running.release()
        elif size > limit:
            self._wake.set()

    def _loop(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                try:
                    with self._running:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self._tail = True
                except sqlite3.Error as exc:  # e.g. disk full: the WAL keeps the data
                    log.warning("outbox checkpoint failed (the WAL keeps the records): %s", exc)
        finally:
            db.close()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


@dataclass(frozen=True, slots=True)
class _Held:
    """A write waiting in memory for room on a full disk: a record, or a session's
    expiry (kept in order with the records: an end record is stored with it)."""

    record: Record | None = None
    expire: tuple[str, datetime] | None = None

    @property
    def droppable(self) -> bool:
        """Telemetry may be dropped to bound memory; SOS records and expiries never."""
        return self.record is not None and self.record.priority is not Priority.SOS


class _Row(Stored):
    """A :class:`Stored` read from the table (:data:`_COLUMNS`): the record itself (its
    time and JSON data) is decoded only when asked for. Built once per record of a
    drain, so kept to the bare minimum."""

    __slots__ = ("_raw",)

    def __init__(self, r: tuple[Any, ...]) -> None:
        self._raw = r
        self.seq = r[0]
        self.msg_id = None
        self.kind = _KINDS[r[1]]
        self.priority = _PRIORITIES[r[2]]
        self.session = r[4]
        self.drill = r[5] == 1
        self.expires = None if r[7] is None else datetime.fromtimestamp(r[7], UTC)
        self.row = None if r[8] is None else r[8:12]
        self.committed = r[12]
        self._record = None

    def _load(self) -> Record:
        r = self._raw
        return Record(
            kind=self.kind,
            time=datetime.fromisoformat(r[3]),
            data=json.loads(r[6]),
            priority=self.priority,
            session=self.session,
            drill=self.drill,
            expires=self.expires,
        )


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed if the block ends normally, else rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _message_id(db: sqlite3.Connection, seq: int) -> str | None:
    """The id of the message formed with this record, if one was (``bindings``)."""
    hit = db.execute(
        "SELECT last, msg_id FROM bindings WHERE first<=? ORDER BY first DESC LIMIT 1", (seq,)
    ).fetchone()
    return str(hit[1]) if hit is not None and hit[0] >= seq else None


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return bool(db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (name,)).fetchone())


def _migrate_from_0(db: sqlite3.Connection) -> None:
    """Version 0 kept message ids in ``records.msg_id`` and had no track rows. Its
    records keep their message ids (moved to ``bindings``); they go without precomputed
    rows (encoded from their data, as before). The emptied column stays: older SQLite
    versions cannot drop a column."""
    with _transaction(db):
        for name, kind in (
            ("row_t", "INTEGER"),
            ("row_lat", "INTEGER"),
            ("row_lon", "INTEGER"),
            ("row_tail", "TEXT"),
        ):
            db.execute(f"ALTER TABLE records ADD COLUMN {name} {kind}")
        db.execute("DROP INDEX IF EXISTS records_session")
        db.execute(_BINDINGS)
        named: dict[str, list[int]] = {}
        for seq, mid in db.execute(
            "SELECT seq, msg_id FROM records WHERE msg_id IS NOT NULL ORDER BY seq"
        ):
            named.setdefault(mid, []).append(seq)
        db.executemany(
            "INSERT INTO bindings VALUES (?,?,?)",
            [(a, b, mid) for mid, seqs in named.items() for a, b in seq_ranges(seqs)],
        )
        db.execute("UPDATE records SET msg_id=NULL WHERE msg_id IS NOT NULL")
        db.execute("PRAGMA user_version=1")
    log.info("outbox schema brought up to version 1 (message ids moved to 'bindings')")


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Version 1 stored no row differences: its fixes go as they did (each a run's
    start); fixes stored from now on are chained."""
    with _transaction(db):
        db.execute("ALTER TABLE records ADD COLUMN row_prev INTEGER")
        db.execute("ALTER TABLE records ADD COLUMN row_delta TEXT")
        db.execute("PRAGMA user_version=2")
    log.info("outbox schema brought up to version 2 (fixes stored with their row differences)")


def _insert_gap_row(
    db: sqlite3.Connection,
    seq: int,
    ranges: list[tuple[int, int]],
    reason: str,
    at: datetime,
    committed: float,
) -> None:
    """A ``gap`` record naming ``ranges`` of seqs removed undelivered, and why."""
    data = {"ranges": [list(r) for r in ranges], "reason": reason}
    db.execute(
        "INSERT INTO records (seq, kind, priority, time, session, drill, data, committed) "
        "VALUES (?,?,?,?,NULL,0,?,?)",
        (
            seq,
            RecordKind.GAP.value,
            int(Priority.LIVE),
            at.isoformat(),
            json.dumps(data, separators=(",", ":")),
            committed,
        ),
    )


def _complement(seqs: set[int], top: int) -> list[tuple[int, int]]:
    """The ranges of 1..``top`` not in ``seqs``, without listing every number."""
    out: list[tuple[int, int]] = []
    nxt = 1
    for s in sorted(seqs):
        if s > top:
            break
        if s > nxt:
            out.append((nxt, s - 1))
        nxt = max(nxt, s + 1)
    if nxt <= top:
        out.append((nxt, top))
    return out


def _holdable(exc: BaseException) -> bool:
    """A write that may succeed later, unchanged: a full disk, a lock held by another
    process, an I/O error. What it wrote waits in memory meanwhile."""
    if isinstance(exc, OutboxFull):
        return True
    return classify(exc) in (Fault.FULL, Fault.LOCKED, Fault.IO)


def wal_limit(min_free: int, free: int) -> int:
    """When the WAL is copied back: at :data:`WAL_CHECKPOINT_BYTES`, or at a quarter of
    ``min_free_bytes`` or of the free space when that is less (a small SD card, a disk
    filling up), never below :data:`WAL_MIN_BYTES`. So the WAL takes at most a quarter
    of what is left, and a full disk is not the WAL's doing."""
    return max(WAL_MIN_BYTES, min(WAL_CHECKPOINT_BYTES, min_free // 4, free // 4))


def _free(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _migrate_from_2(db: sqlite3.Connection, now: datetime) -> None:
    """Version 2 kept no commit time: its records count as committed now, so a routine
    backlog waits at most one ``batch_interval`` more, never less, and its routine
    message expiry starts afresh."""
    with _transaction(db):
        db.execute("ALTER TABLE records ADD COLUMN committed REAL")
        db.execute("UPDATE records SET committed=?", (now.timestamp(),))
        db.execute("PRAGMA user_version=3")
    log.info("outbox schema brought up to version 3 (records keep their commit time)")


def _moment(ts: float | None) -> datetime | None:
    """A ``committed`` column as a time (UTC)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, touching ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out
