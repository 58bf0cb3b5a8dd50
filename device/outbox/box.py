"""The outbox's front: :class:`Outbox`, whose coroutines are the whole of what the rest
of the device may do with its durable store. The jobs live in the package's modules;
this class wires them together and keeps their rules in one order: store, hand out,
acknowledge, expire."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.outbox import reader as reading
from sosbeacon.device.outbox.capacity import Capacity, Limits
from sosbeacon.device.outbox.errors import OutboxError, as_full, holdable, speaks_for_itself
from sosbeacon.device.outbox.faults import Fault, classify
from sosbeacon.device.outbox.handout import FRESH, Handout
from sosbeacon.device.outbox.holding import Held, Holding
from sosbeacon.device.outbox.opening import Reserves, open_file
from sosbeacon.device.outbox.reader import COLUMNS, Reader, Row
from sosbeacon.device.outbox.rightofway import RightOfWay
from sosbeacon.device.outbox.schema import (
    DELIVERED,
    PENDING,
    get_seq,
    moment,
    set_seq,
    transaction,
)
from sosbeacon.device.outbox.state import ALARM, DeviceState
from sosbeacon.device.outbox.writer import Checkpoints, Grouped, Writer
from sosbeacon.device.records import FixRun, Item, Priority, Record, RecordKind, Stored, TrackRow
from sosbeacon.device.wire import row_delta, seq_ranges, track_row

log = logging.getLogger(__name__)
T = TypeVar("T")

#: a chain of fixes: priority, session, drill, expiry (what a track message shares)
_Stream = tuple[int, str | None, bool, float | None]
_MAX_STREAMS = 64


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
    #: chunks of voice notes: sent at once too, with the routine backlog's pacing
    voice: int = 0


@speaks_for_itself
class Outbox:
    """Use :meth:`open` (an async context manager) rather than the constructor."""

    def __init__(self, path: Path, limits: Limits, clock: Clock, lock_wait: float = 60.0) -> None:
        self.path = path
        self._clock = clock
        self._lock_wait = lock_wait
        self._reserves = Reserves(path, limits.reserve_bytes)
        self._writer = Writer()
        self._reader = Reader()
        self._handout = Handout()
        #: while an SOS record is on its way out, routine work waits (at most moments)
        self.right_of_way = RightOfWay()
        self._capacity = Capacity(path, limits, clock, self._handout, lambda: self._writer.db)
        self._holding = Holding(path, clock, limits.hold_records)
        #: the device's own values beside the records (typed keys: device.outbox.state)
        self.state = DeviceState(self._in_writer)
        #: adds, and acknowledgements, that arrive while a commit runs go in the next one
        #: (looked up at each commit: device.outbox.testing may stand in for them)
        self._adds: Grouped[Record, Stored] = self._writer.grouped(
            lambda rs: self._insert_sync(rs), after=self._notify
        )
        self._acks: Grouped[list[int], None] = self._writer.grouped(
            lambda acks: self._ack_sync(acks)
        )
        self.outbox_id = ""
        self.commits = 0
        self._watchers: list[asyncio.Event] = []
        #: the last fix stored in each stream, which the next one's row difference is
        #: from (writer thread only)
        self._chain: dict[_Stream, tuple[int, TrackRow]] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: held over storing what is held (the flusher, or an SOS record arriving)
        self._flushing = asyncio.Lock()
        self._alarm: dict[str, Any] | None = None

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
            await box._writer.run(box._open_sync)
            await box._reader.run(lambda: box._reader.open(box.path))
        except BaseException:
            box._writer.pool.shutdown(wait=False)
            box._reader.shutdown(wait=False)
            raise
        return box

    def _open_sync(self) -> None:
        lim = self.limits
        opened = open_file(self.path, lim, self._clock, self._reserves, self._lock_wait)
        self.outbox_id, self._alarm = opened.outbox_id, opened.alarm
        self._capacity.rows = opened.rows
        checkpoints = Checkpoints(
            self.path, lim.min_free_bytes, opened.wal_limit, self.right_of_way.wait_in_thread
        )
        self._writer.attach(opened.db, checkpoints)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._holding:  # a last try: the disk may have room by now
            with contextlib.suppress(OSError, sqlite3.OperationalError):
                await self._store_held()
            if self._holding:
                log.error(
                    "stopping with %d record(s) held in memory that could not be stored (the "
                    "disk is still full): they are lost. An SOS stop is remembered anyway.",
                    len(self._holding),
                )
        await self._adds.settled()
        await self._acks.settled()
        await self._reader.run(self._reader.close)
        self._reader.shutdown(wait=True)
        await self._writer.run(self._writer.close)
        self._writer.pool.shutdown(wait=True)

    @property
    def limits(self) -> Limits:
        return self._capacity.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._capacity.limits = limits
        self._holding.limit = limits.hold_records

    async def _in_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.run(lambda: fn(self._writer.db))

    async def _writing_or_full(self, fn: Callable[[], T], what: str) -> T:
        """A write in the writer thread; a full disk is :class:`OutboxFull`, with what to
        do (nothing was changed: the write is one transaction)."""
        try:
            return await self._writer.run(fn)
        except sqlite3.OperationalError as exc:
            raise as_full(exc, what, self.path) from exc

    # -- storing -----------------------------------------------------------------------

    async def add(self, record: Record) -> None:
        """Store durably (the Recorder Protocol); see :meth:`store` for the seq.

        On a full disk this does not fail: an SOS must carry on. The record is held in
        memory (:mod:`device.outbox.holding`), in order behind anything held before it,
        and stored once there is room. A held record has no seq yet: it was never
        acknowledged as stored."""
        if not self._holding:
            try:
                await self.store(record)
                return
            except (OutboxError, sqlite3.OperationalError) as exc:
                if not holdable(exc):
                    raise
                self._holding.disk_full(exc)
        self._hold(Held(record=record))
        if record.priority is Priority.SOS:
            # an SOS record does not wait for the next retry: it may use the reserve
            with contextlib.suppress(OSError, sqlite3.OperationalError):
                await self._store_held()

    async def store(self, record: Record) -> Stored:
        """Commit ``record``; returns once it is on disk, with its seq and message id.
        An SOS record takes the right of way (:mod:`device.outbox.rightofway`)."""
        if record.priority is not Priority.SOS:
            return await self._adds.submit(record)
        self.right_of_way.claim()
        try:
            return await self._adds.submit(record)
        finally:
            self.right_of_way.stored()

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
        db = self._writer.db
        self._capacity.make_room(len(records))
        chained: dict[_Stream, tuple[int, TrackRow]] = {}
        #: urgent records as a take would read them back (Handout.take_fresh)
        fresh: list[Stored] = []

        def write() -> list[Stored]:
            chained.clear()
            fresh.clear()
            with transaction(db):
                first = get_seq(db) + 1
                at = self._clock.now().timestamp()
                out = [
                    self._insert(seq, r, at, chained, fresh) for seq, r in enumerate(records, first)
                ]
                set_seq(db, first + len(records) - 1)
            return out

        try:
            # an SOS record may use the reserve; telemetry waits for room
            urgent = any(r.priority is Priority.SOS for r in records)
            out = self._may_use_reserve(write) if urgent else write()
        except sqlite3.OperationalError as exc:
            raise as_full(exc, f"store {len(records)} record(s)", self.path) from exc
        if len(self._chain) + len(chained) > _MAX_STREAMS:
            self._chain.clear()  # ended sessions' streams: their next fix starts a run
        self._chain.update(chained)
        if fresh:
            self._handout.committed(fresh)
        self.commits += 1
        self._capacity.rows += len(out)
        return out

    def _insert(
        self,
        seq: int,
        r: Record,
        at: float,
        chained: dict[_Stream, tuple[int, TrackRow]],
        fresh: list[Stored],
    ) -> Stored:
        """One record, committed at ``at``, inside :meth:`_insert_sync`'s transaction; a
        fix's row difference is from the last fix of its stream (stored in this
        transaction, or before). An urgent record is also added to ``fresh`` as the
        :class:`Row` a take would read."""
        db = self._writer.db
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
        head = (
            seq,
            r.kind.value,
            int(r.priority),
            r.time.isoformat(),
            r.session,
            int(r.drill),
            json.dumps(r.data, separators=(",", ":"), ensure_ascii=False),  # as on the wire
            exp_ts,
            *(row or (None, None, None, None)),
        )
        db.execute(
            "INSERT INTO records (seq, kind, priority, time, session, drill, data, expires,"
            " row_t, row_lat, row_lon, row_tail, row_prev, row_delta, committed)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (*head, prev_seq, delta, at),
        )
        if r.priority in FRESH:
            fresh.append(Row((*head, at)))  # the columns COLUMNS names, in its order
        return Stored(seq, None, r, row, at)

    def _may_use_reserve(self, write: Callable[[], T]) -> T:
        """An SOS write (an SOS record, a session's expiry) in the writer thread: on a
        full disk the reserve is given up and the write tried once more."""
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if classify(exc) is not Fault.FULL or not self._reserves.sos.release():
                raise
        return write()

    # -- a full disk -------------------------------------------------------------------

    def _hold(self, op: Held) -> None:
        self._holding.hold(op)
        self._start_flusher()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_held())

    async def _flush_held(self) -> None:
        """Store what was held, in order, and commit the acknowledgements that could not
        be, once there is room: tried every second or so, on the outbox's clock."""
        delay = 0.5
        while self._holding or self._handout.unsaved_acks():
            await self._clock.sleep(delay)
            delay = min(5.0, delay * 2)
            try:
                await self._store_held()
                acks = self._handout.unsaved_acks()
                if acks:
                    await self._acks.submit(acks)
                    self._handout.saved(acks)
            except Exception as exc:  # a bug must not strand what is held either
                if not holdable(exc):  # else still no room (or still locked): later
                    log.exception("storing the records held in memory failed; retrying")
            else:
                delay = 0.5
        if self._holding.disk_back():
            self._reserves.take()

    async def _store_held(self) -> None:
        """What is held, stored, in :meth:`Holding.in_order`; SOS records may use the
        reserve. Raises at the first write that fails."""
        async with self._flushing:
            for op in self._holding.in_order():
                if op.record is not None:
                    await self.store(op.record)
                elif op.expire is not None:
                    await self._expire_session(*op.expire)
                self._holding.stored(op)

    @property
    def held(self) -> int:
        """Records (and session expiries) held in memory, waiting for room."""
        return len(self._holding)

    @property
    def held_dropped(self) -> int:
        """Routine records dropped from memory on a full disk, to bound it."""
        return self._holding.dropped

    @property
    def full_since(self) -> datetime | None:
        """Since when the outbox cannot be written (by its clock), or None."""
        return self._holding.full_since

    @property
    def fault(self) -> str:
        """Why it cannot ("disk full", "storage locked by another process", ...)."""
        return self._holding.fault

    @property
    def writable(self) -> asyncio.Event:
        """Set while the outbox can be written; cleared by a fault until it is over."""
        return self._holding.writable

    @property
    def alarm(self) -> str | None:
        """What the owner must know about the store (a corrupt file salvaged), until
        acknowledged with :meth:`ack_alarm`: read at open, kept here, so a status never
        waits on the writer for it."""
        a = self._alarm
        if not a:
            return None
        return f"{a.get('at')}: {a.get('what')}"

    async def ack_alarm(self) -> bool:
        """The owner saw the alarm; returns whether there was one."""
        had = bool(self._alarm)
        if had:
            await self.state.put(ALARM, None)
            self._alarm = None
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

        if last <= Priority.LIVE:
            # SOS records and live positions just committed, without reading them back
            fresh = self._handout.take_fresh(limit, first, last, run)
            if fresh is not None:
                return list(fresh)

        def read() -> list[Item]:
            with self._handout.lock:
                return reading.hand_out(self._reader.db, self._handout, limit, first, last, run)

        return await self._reader.run(read)

    async def cut(self, run: FixRun) -> tuple[Item, Item]:
        """A run of fixes too large for one message, in two: the records at the cut are
        read back whole to become the halves' ends."""
        k = len(run.seqs) // 2

        def read() -> tuple[Item, Item]:
            ends = reading.load(self._reader.db, {run.seqs[k - 1], run.seqs[k]})
            for s in ends.values():
                s.msg_id = run.msg_id
            return run.halves(ends[run.seqs[k - 1]], ends[run.seqs[k]])

        return await self._reader.run(read)

    async def bind(self, messages: dict[str, list[int]]) -> None:
        """Store the message id of each group of records, before the message is sent.
        A record named again (its message was too large and is formed anew) takes the
        new name; a name that no longer covers a record is dropped with it."""

        def run() -> None:
            ranges = [(a, b, mid) for mid, seqs in messages.items() for a, b in seq_ranges(seqs)]
            with self._writer.light() as db:
                db.executemany(
                    "DELETE FROM bindings WHERE first BETWEEN ? AND ?",
                    [(a, b) for a, b, _ in ranges],
                )
                db.executemany("INSERT INTO bindings VALUES (?,?,?)", ranges)

        await self._writer.run(run)

    async def pending(self, cap: int = 1_000_000) -> Pending:
        """Counts of what waits to be taken (each at most ``cap``: enough to decide,
        without counting a whole backlog), and when the oldest routine record was
        committed. Index lookups only. Just after a requeue they may include records
        still in flight, which the next take skips."""

        def run() -> Pending:
            db = self._reader.db
            taken = self._handout.cursors()
            count = (
                "SELECT count(*) FROM (SELECT 1 FROM records "
                f"WHERE state={PENDING} AND priority=? AND seq>? LIMIT ?)"
            )
            n = {
                p: db.execute(count, (p, taken.get(p, 0), cap)).fetchone()[0]
                for p in map(int, Priority)
            }
            routine = int(Priority.ROUTINE)
            oldest = db.execute(
                f"SELECT committed FROM records WHERE state={PENDING} AND priority=? AND seq>? "
                "ORDER BY seq LIMIT 1",
                (routine, taken.get(routine, 0)),
            ).fetchone()
            voice = int(Priority.VOICE)
            return Pending(
                min(cap, sum(v for p, v in n.items() if p not in (routine, voice))),
                n[routine],
                moment(oldest[0]) if oldest else None,
                n[voice],
            )

        return await self._reader.run(run)

    async def ack(self, seqs: list[int]) -> None:
        """The broker acknowledged these: now, and only now, they leave the upload queue.
        Records of an SOS session stay on the device, delivered, until their expiry (the
        route stays available for export for the 72 hours); the rest are deleted.
        Acknowledgements that arrive together are committed together.

        If the acknowledgement cannot be committed (a full disk), the records stay in
        flight, never handed out again, and the commit is retried once there is room: no
        record is stuck in flight, and none is sent twice meanwhile.

        While an SOS record is on its way out, the commit waits (the writer thread is
        its next hop): moments at most (:mod:`device.outbox.rightofway`)."""
        await self.right_of_way.wait()
        try:
            await self._acks.submit(seqs)
        except sqlite3.OperationalError as exc:
            if not holdable(exc):
                raise
            self._handout.unsaved(seqs)
            self._holding.disk_full(exc)
            self._start_flusher()

    def _ack_sync(self, acks: list[list[int]]) -> list[None]:
        seqs = [s for group in acks for s in group]
        ranges = seq_ranges(seqs)
        with self._writer.light() as db:
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
                    f"UPDATE records SET state={DELIVERED} "
                    "WHERE seq BETWEEN ? AND ? AND session IS NOT NULL",
                    ranges,
                )
        self._capacity.rows -= deleted
        self._handout.settle(seqs)  # after the commit: a take reading meanwhile skips them
        return [None] * len(acks)

    async def resend(self, seqs: list[int]) -> int:
        """Those of ``seqs`` still kept delivered (an SOS session's records, until they
        expire) go back in the upload queue: the broker took them, the relay never
        stored them. Returns how many; the rest are no longer here (routine records
        leave at the broker's acknowledgement). Committed light: a power cut may undo
        it, which only means they are not sent again."""
        if not seqs:
            return 0
        now = self._clock.now().timestamp()

        def run() -> list[int]:
            ranges = seq_ranges(seqs)
            with self._writer.light() as db:
                back = [
                    seq
                    for a, b in ranges
                    for (seq,) in db.execute(
                        f"SELECT seq FROM records WHERE seq BETWEEN ? AND ? AND state={DELIVERED}"
                        " AND (expires IS NULL OR expires>?)",
                        (a, b, now),
                    )
                ]
                db.executemany(
                    f"UPDATE records SET state={PENDING} WHERE seq=?", [(q,) for q in back]
                )
            # pending again below the take's cursors: they read from the earliest (the
            # ledger's requeue), after the commit as every write
            self._handout.back(back)
            return back

        back = await self._writing_or_full(run, "put records back in the upload queue")
        if back:
            self._notify()
        return len(back)

    async def requeue(self, seqs: list[int] | None = None) -> None:
        """Back to pending (a failure reason code, or all of them on reconnect)."""
        # in the reader thread: never beside a take
        await self._reader.run(lambda: self._handout.back(seqs))
        self._notify()

    async def export(self) -> list[tuple[Stored, bool]]:
        """Everything stored, in seq order, with whether it was delivered."""

        def run() -> list[tuple[Stored, bool]]:
            rows = self._reader.db.execute(f"SELECT {COLUMNS}, state FROM records ORDER BY seq")
            return [(Row(r[:-1]), r[-1] == DELIVERED) for r in rows]

        return await self._reader.run(run)

    async def wipe(self) -> int:
        """Delete every record (``sosctl purge``: the owner's choice). What had not been
        delivered yet is named by a ``gap`` record (reason ``purged``), so receivers see
        a deliberate deletion, not a loss; the seq counter is kept."""

        def run() -> int:
            with self._capacity.withdrawing() as db:  # no take sees the records meanwhile
                undelivered = [
                    r[0] for r in db.execute(f"SELECT seq FROM records WHERE state<{DELIVERED}")
                ]
                cur = db.execute("DELETE FROM records")
                db.execute("DELETE FROM bindings")
                added = self._capacity.insert_gap(undelivered, "purged", self._clock.now())
            with self._handout.lock:  # after the commit, as every write
                self._capacity.rows = added
                self._handout.reset()
            return cur.rowcount

        n = await self._writing_or_full(run, "purge the outbox")
        await self._forget()
        self._notify()
        return n

    async def _forget(self) -> None:
        """After a deletion the owner or the 72 hours asked for: the WAL's old pages,
        which still hold what was deleted, are checkpointed and cut away (the database
        itself overwrote it: ``secure_delete``). Best effort: a reader holding an old
        snapshot, or a full disk, leaves it to the next one."""

        def run(db: sqlite3.Connection) -> None:
            with contextlib.suppress(sqlite3.OperationalError):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        await self._in_writer(run)

    async def last_seq(self) -> int:
        """The highest seq ever given (0 for a new outbox)."""
        return await self._in_writer(get_seq)

    async def has_undelivered(self) -> bool:
        """Whether anything waits for the broker (an index lookup, cheap at any depth)."""
        return await self._exists(f"state<{DELIVERED}")

    async def has_end(self, session: str) -> bool:
        """Whether the ``sos-end`` record of ``session`` is stored."""
        return await self._exists("session=? AND kind=?", session, RecordKind.SOS_END.value)

    async def _exists(self, where: str, *args: Any) -> bool:
        sql = f"SELECT EXISTS(SELECT 1 FROM records WHERE {where})"
        return await self._reader.run(lambda: self._reader.db.execute(sql, args).fetchone()[0] == 1)

    # -- expiry and stats --------------------------------------------------------------

    async def expire_session(self, session: str, at: datetime) -> None:
        """Give every record of ``session`` (and any stored later) the expiry ``at``. On
        a full disk it is held, in order with the records, like :meth:`add`."""
        if not self._holding:
            try:
                await self._expire_session(session, at)
                return
            except sqlite3.OperationalError as exc:
                if not holdable(exc):
                    raise
                self._holding.disk_full(exc)
        self._hold(Held(expire=(session, at)))

    async def _expire_session(self, session: str, at: datetime) -> None:
        def run() -> None:
            db = self._writer.db
            with transaction(db):
                db.execute(
                    "INSERT INTO sessions VALUES (?, ?) ON CONFLICT(session) DO UPDATE "
                    "SET expires=excluded.expires",
                    (session, at.timestamp()),
                )
                db.execute(
                    "UPDATE records SET expires=? WHERE session=?", (at.timestamp(), session)
                )

        await self._writer.run(lambda: self._may_use_reserve(run))

    async def purge(self, now: datetime) -> int:
        """Delete expired records, delivered or not: past expiry nobody may see them.
        Those that never reached the broker are named by a ``gap`` record."""

        def run() -> int:
            with self._capacity.withdrawing() as db:
                rows = db.execute(
                    "SELECT seq, state FROM records WHERE expires IS NOT NULL AND expires<=?",
                    (now.timestamp(),),
                ).fetchall()
                if not rows:
                    return 0
                cur = db.executemany("DELETE FROM records WHERE seq=?", [(r[0],) for r in rows])
                undelivered = [seq for seq, state in rows if state != DELIVERED]
                change = self._capacity.insert_gap(undelivered, "expired", now) - cur.rowcount
            self._capacity.rows += change
            self._handout.settle(r[0] for r in rows)
            return len(rows)

        n = await self._writing_or_full(run, "delete expired records")
        if n:
            await self._forget()
            self._notify()
        return n

    async def next_expiry(self) -> datetime | None:
        def run() -> datetime | None:
            row = self._reader.db.execute("SELECT min(expires) FROM records").fetchone()
            return moment(row[0]) if row and row[0] else None

        return await self._reader.run(run)

    async def stats(self) -> OutboxStats:
        def run() -> OutboxStats:
            depth, oldest, kept = self._reader.db.execute(
                f"SELECT coalesce(sum(state<{DELIVERED}),0), "
                f"min(CASE WHEN state<{DELIVERED} THEN committed END), "
                f"coalesce(sum(state={DELIVERED}),0) FROM records"
            ).fetchone()
            return OutboxStats(
                depth, len(self._handout), moment(oldest), self._capacity.size(), kept
            )

        return await self._reader.run(run)
