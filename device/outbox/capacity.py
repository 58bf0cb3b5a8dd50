"""How much the outbox may hold, and what leaves it undelivered.

Bounded by rows, bytes and free disk (:class:`Limits`). Only routine records (no SOS
session) are ever evicted, oldest first. Whatever leaves undelivered (evicted, expired
by the 72-hour rule, purged by the owner) is replaced, in the same transaction, by a
``gap`` record naming the ``seq`` ranges and why: it is delivered like any other record,
so receivers can tell deliberate removal from loss. The table's row count is kept here
(``count(*)`` scans the whole table, too slow for every commit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.outbox.handout import FRESH, Handout
from sosbeacon.device.outbox.schema import PENDING, get_seq, message_id, set_seq, transaction
from sosbeacon.device.records import Priority, RecordKind
from sosbeacon.device.wire import seq_ranges

log = logging.getLogger(__name__)


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


class Quiet:
    """Warnings said once per outage, and how often they recurred."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def say(self, key: str, level: Callable[..., None], msg: str, *args: Any) -> None:
        """Log ``msg`` once until ``key`` is cleared (the condition ended)."""
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        if n == 0:
            level(msg, *args)

    def end(self, key: str, what: str) -> None:
        """The condition of ``key`` ended: said with how often it recurred."""
        n = self._seen.pop(key, 0)
        if n > 1:
            log.info("%s (the warning above recurred %d times, said once)", what, n)


class Capacity:
    """Eviction, gap records and the row count, on the writer's connection (writer
    thread only)."""

    def __init__(
        self,
        path: Path,
        limits: Limits,
        clock: Clock,
        handout: Handout,
        db: Callable[[], sqlite3.Connection],
    ) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._handout = handout
        self._db = db
        #: rows in the table, counted once at open and kept up to date by every write
        self.rows = 0
        #: inside :meth:`withdrawing`
        self._withdrawals = 0
        self._quiet = Quiet()

    def size(self) -> int:
        """The database's bytes on disk, its WAL included."""
        total = 0
        for p in (self.path, f"{self.path}-wal"):  # one stat each: this runs at every commit
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(p).st_size
        return total

    def make_room(self, incoming: int) -> None:
        """Evict routine records (never SOS) to stay within rows, bytes and free disk."""
        lim = self.limits
        rows = self.rows
        excess_rows = rows + incoming - lim.max_rows
        size = self.size()
        disk = shutil.disk_usage(self.path.parent)
        # min_free_bytes beyond a tenth of the file system (64 MiB on a 2 MB card) would
        # evict every routine record at every store: keep a tenth free instead
        min_free = min(lim.min_free_bytes, disk.total // 10)
        if min_free < lim.min_free_bytes:
            self._quiet.say(
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
            self._quiet.end("no_victims", "the outbox is within its limits again")
            return
        avg = max(1, size // max(1, rows))
        # One more than the excess (the gap record written in their place may take a row),
        # and at least 1% of the row cap: evicting in chunks keeps evictions, and gap
        # records, rare.
        n = max(excess_rows, -(-excess_bytes // avg) if excess_bytes > 0 else 0) + 1
        n = max(n, lim.max_rows // 100)
        self._evict(n)

    def _evict(self, n: int) -> None:
        with self.withdrawing() as db:
            handout = self._handout
            victims = [
                r[0]
                for r in db.execute(
                    "SELECT seq FROM records WHERE session IS NULL AND priority=? "
                    f"AND state={PENDING} ORDER BY seq LIMIT ?",
                    (int(Priority.ROUTINE), n + len(handout)),
                )
                if not handout.out(r[0])
            ][:n]
            if not victims:
                self._quiet.say(
                    "no_victims",
                    log.warning,
                    "outbox over its limits but holds no routine records to evict; "
                    "SOS records are never evicted (said once until the outbox is within "
                    "its limits again)",
                )
                return
            self._quiet.end("no_victims", "the outbox is within its limits again")
            cur = db.executemany("DELETE FROM records WHERE seq=?", [(v,) for v in victims])
            change = self.insert_gap(victims, "evicted", self._clock.now()) - cur.rowcount
        self.rows += change
        log.warning(
            "outbox full: evicted %d routine records (oldest first); the evicted "
            "seq ranges will be published",
            len(victims),
        )

    @contextlib.contextmanager
    def withdrawing(self) -> Iterator[sqlite3.Connection]:
        """The transaction of a write that takes records away undelivered (eviction,
        expiry, wipe) and names them in a ``gap`` record (:meth:`insert_gap`). It holds
        the hand-out lock from its first read to its commit: such a write may rewrite a
        gap record that waits to be sent, and a take beside it would hand out that
        record's old ranges (deleted at their PUBACK, the new ones with them: a loss at
        the receiver). So a take sees the table wholly before such a write or wholly
        after it. The urgent records kept for a take from memory are let go too (the
        next take reads the table): such a write may delete some, or add a gap record."""
        db = self._db()
        with self._handout.lock, transaction(db):
            self._handout.unknown(*FRESH)
            self._withdrawals += 1
            try:
                yield db
            finally:
                self._withdrawals -= 1

    def insert_gap(self, seqs: list[int], reason: str, at: datetime) -> int:
        """Inside :meth:`withdrawing`: a ``gap`` record naming ``seqs``. A gap record of
        the same reason that waits unsent (not in flight, no message formed yet) is
        extended instead, so a long offline spell leaves one gap record, not one per
        eviction. Returns the rows it added (0 or 1), for the caller to count once its
        transaction commits."""
        if not self._withdrawals:
            raise RuntimeError("a gap record is written only inside withdrawing()")
        if not seqs:
            return 0
        db = self._db()
        old = db.execute(
            f"SELECT seq, data FROM records WHERE kind=? AND state={PENDING} "
            "AND json_extract(data, '$.reason')=? ORDER BY seq DESC LIMIT 1",
            (RecordKind.GAP.value, reason),
        ).fetchone()
        if old is not None and not self._handout.out(old[0]) and message_id(db, old[0]) is None:
            named = [(a, b) for a, b in json.loads(old[1])["ranges"]]
            ranges = merge(named + seq_ranges(seqs))
            data = {"ranges": [list(r) for r in ranges], "reason": reason}
            db.execute(
                "UPDATE records SET data=?, time=? WHERE seq=?",
                (json.dumps(data, separators=(",", ":")), at.isoformat(), old[0]),
            )
            return 0
        seq = get_seq(db) + 1
        insert_gap_row(db, seq, seq_ranges(seqs), reason, at, self._clock.now().timestamp())
        set_seq(db, seq)
        return 1


def insert_gap_row(
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


def complement(seqs: set[int], top: int) -> list[tuple[int, int]]:
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


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, touching ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out
