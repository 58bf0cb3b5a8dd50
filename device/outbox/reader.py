"""Reading what to send: the reader thread and its connection, and runs of fixes.

The reader connection runs beside the writer (WAL): during a drain the next records are
read while the previous ones are deleted, and a count over a large backlog never holds
up a commit. Reads see committed records only.

A take reads :class:`Candidate` rows in upload order (priority, then seq), joins fixes
of one stream that follow one another into a :class:`~device.records.FixRun` (their
message is joined from stored text, never decoding the records' JSON), and reads whole
only the records at the runs' ends (:class:`Row`).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sosbeacon.device.outbox.handout import Handout
from sosbeacon.device.outbox.schema import PENDING, message_id
from sosbeacon.device.records import FixRun, Item, Priority, Record, RecordKind, Stored

T = TypeVar("T")
#: beyond any seq
_END = 2**63 - 1
#: what :class:`Row` reads, in this order
COLUMNS = (
    "seq, kind, priority, time, session, drill, data, expires, row_t, row_lat, row_lon, row_tail,"
    " committed"
)
_KINDS = {k.value: k for k in RecordKind}
_PRIORITIES = {int(p): p for p in Priority}


class Reader:
    """The reader thread and its connection."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The reading connection: for code running in the reader thread only."""
        if self._db is None:
            raise RuntimeError("outbox is closed")
        return self._db

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def open(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait)


class Candidate(NamedTuple):
    """A record a take may hand out, as the order index and its chain give it."""

    seq: int
    #: the fix before it in its stream, and this one's difference from it (fixes only)
    prev: int | None
    delta: str | None
    is_fix: bool


@dataclass(slots=True)
class _Planned:
    """One item a take returns: a record, or a run of fixes, under one message id."""

    seqs: list[int]
    msg_id: str | None
    deltas: list[str] = field(default_factory=list)


def hand_out(
    db: sqlite3.Connection, handout: Handout, limit: int, first: Priority, last: Priority, run: int
) -> list[Item]:
    """The next records to upload with a priority from ``first`` to ``last``, by
    priority then seq, grouped into runs of at most ``run``; they become in flight. The
    caller holds ``handout.lock``. A priority read to its end is noted in the ledger
    (:meth:`Handout.read_all`): its next take may come from memory."""
    picked: list[Candidate] = []

    def read(priority: int, upto: int, n: int) -> int:
        rows = db.execute(
            "SELECT seq, row_prev, row_delta, row_t IS NOT NULL FROM records "
            f"WHERE state={PENDING} AND priority=? AND seq>? AND seq<=? ORDER BY seq LIMIT ?",
            (priority, handout.after(priority), upto, n),
        ).fetchall()
        if rows:
            handout.advance(priority, rows[-1][0])
            # after a requeue, records still in flight may follow the cursor
            picked.extend(Candidate(*r) for r in rows if not handout.out(r[0]))
        return len(rows)

    before = handout.registered()
    read_all: list[int] = []
    db.execute("BEGIN")  # one snapshot for the reads below
    try:
        for priority in range(first, last + 1):
            while len(picked) < limit:
                want = limit - len(picked)
                if read(priority, _END, want) < want:
                    read_all.append(priority)
                    break
        if len(picked) >= limit:
            # a message formed before goes out whole, with the same records under the
            # same id, even when the limit falls inside it
            rest = _rest_of_message(db, picked[-1].seq)
            if rest is not None:
                read(*rest)
        out = _group(db, picked, run) if picked else []
    finally:
        db.execute("COMMIT")
    handout.hand(c.seq for c in picked)
    for priority in read_all:
        handout.read_all(priority, before)
    return out


def _rest_of_message(db: sqlite3.Connection, seq: int) -> tuple[int, int, int] | None:
    """If ``seq`` was bound to a message that goes on after it: its priority, its last
    seq, and how many seqs lie between (for :func:`hand_out`'s ``read``)."""
    mid = message_id(db, seq)
    if mid is None:
        return None
    end = db.execute("SELECT max(last) FROM bindings WHERE msg_id=?", (mid,)).fetchone()[0]
    if end <= seq:
        return None
    priority = db.execute("SELECT priority FROM records WHERE seq=?", (seq,)).fetchone()[0]
    return priority, end, end - seq


def _group(db: sqlite3.Connection, picked: list[Candidate], run: int) -> list[Item]:
    """Fixes whose stored difference is from the fix just before them in the run (no
    record of the chain deleted, in flight, or named by another message) join it;
    everything else stands alone. Only the records at the runs' ends are read whole,
    with their message ids from ``bindings``."""
    seqs = [c.seq for c in picked]
    bound = db.execute(
        "SELECT first, last, msg_id FROM bindings WHERE first<=? AND last>=? ORDER BY first",
        (max(seqs), min(seqs)),
    ).fetchall()
    firsts = [b[0] for b in bound]

    def name(seq: int) -> str | None:
        i = bisect.bisect_right(firsts, seq) - 1
        return bound[i][2] if i >= 0 and seq <= bound[i][1] else None

    plan: list[_Planned] = []
    current: _Planned | None = None
    for c in picked:
        mid = name(c.seq) if bound else None
        if (
            current is not None
            and c.prev == current.seqs[-1]
            and mid == current.msg_id
            and len(current.seqs) < run
            and c.delta is not None  # set with prev
        ):
            current.seqs.append(c.seq)
            current.deltas.append(c.delta)
            continue
        entry = _Planned([c.seq], mid)
        plan.append(entry)
        if c.is_fix:
            current = entry  # anything else leaves the current run open
    loaded = load(db, {e.seqs[0] for e in plan} | {e.seqs[-1] for e in plan})
    out: list[Item] = []
    for e in plan:
        head = loaded[e.seqs[0]]
        head.msg_id = e.msg_id
        if len(e.seqs) == 1:
            out.append(head)
        else:
            tail = loaded[e.seqs[-1]]
            tail.msg_id = e.msg_id
            out.append(FixRun(head, tail, e.seqs, e.deltas))
    return out


def load(db: sqlite3.Connection, seqs: set[int]) -> dict[int, Stored]:
    """Whole records by seq."""
    out: dict[int, Stored] = {}
    wanted = sorted(seqs)
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for r in db.execute(f"SELECT {COLUMNS} FROM records WHERE seq IN ({marks})", chunk):
            out[r[0]] = Row(r)
    return out


class Row(Stored):
    """A :class:`Stored` read from the table (:data:`COLUMNS`): the record itself (its
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

    @property
    def time(self) -> datetime:
        if self._record is not None:
            return self._record.time
        return datetime.fromisoformat(self._raw[3])

    def data_json(self) -> str:
        return str(self._raw[6])

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
