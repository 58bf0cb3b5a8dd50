"""What the device stores for upload, and the Protocol of the store.

The durable SQLite outbox (``device.outbox``) implements :class:`Recorder`;
:class:`MemoryRecorder` is the in-memory one the core's tests use. Both honour the same
expiry rule: every record of an SOS session expires ``retention`` after the session ends
(72 h by default), and :func:`run_retention` deletes it then, from either.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sosbeacon.device.clock import Clock

log = logging.getLogger(__name__)


class RecordKind(enum.StrEnum):
    SOS_START = "sos-start"
    SOS_END = "sos-end"
    FIX = "fix"
    BATTERY = "battery"
    LAST_GASP = "last-gasp"
    #: a contact acknowledged the SOS (command ``ack``)
    SOS_ACK = "sos-ack"
    #: records the store deleted undelivered (evicted to make room, or expired), so a
    #: receiver can tell deliberate removal from loss
    GAP = "gap"
    #: one chunk of a voice note (device.voice)
    VOICE = "voice"


class Priority(enum.IntEnum):
    """Upload order: SOS events and last gasp first, then live positions, then voice
    notes, then the routine backlog. (Stored as these numbers: outbox schema 4.)"""

    SOS = 0
    LIVE = 1
    VOICE = 2
    ROUTINE = 3


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    time: datetime
    data: dict[str, Any]
    priority: Priority = Priority.ROUTINE
    session: str | None = None
    drill: bool = False
    #: when the store must delete it; ``None``: no expiry yet (e.g. the SOS still runs)
    expires: datetime | None = None


#: a fix as a ``track`` row, worked out once when it is stored (:func:`device.wire.track_row`):
#: time (ms since the epoch), latitude and longitude (micro-degrees), and the rest of the
#: row as JSON text
TrackRow = tuple[int, int, int, str]


class Stored:
    """A record as committed: its ``seq`` is kept for life; ``msg_id`` is the id of the
    message that carries it, set by :meth:`device.outbox.Outbox.bind` before its first
    sending. What the uplink groups messages by (kind, priority, session, drill, expiry)
    is at hand without decoding the record; the store may decode :attr:`record` only
    when it is asked for (:meth:`_load`), so draining a backlog of fixes, which go as
    their :attr:`row`, never decodes them.

    ``committed`` is when the store committed it, by the device's clock (seconds since
    the epoch): what batching and message-expiry countdowns measure ages from. A
    record's own :attr:`Record.time`, and a fix's time from the receiver, are data to
    report, never a schedule: a receiver's date can be decades off (a GPS week
    rollover, a cold start that reports 1980)."""

    __slots__ = (
        "_record",
        "committed",
        "drill",
        "expires",
        "kind",
        "msg_id",
        "priority",
        "row",
        "seq",
        "session",
    )

    def __init__(
        self,
        seq: int,
        msg_id: str | None,
        record: Record,
        row: TrackRow | None = None,
        committed: float | None = None,
    ) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.kind = record.kind
        self.priority = record.priority
        self.session = record.session
        self.drill = record.drill
        self.expires = record.expires
        self.row = row
        self.committed = committed
        self._record: Record | None = record

    @property
    def record(self) -> Record:
        if self._record is None:
            self._record = self._load()
        return self._record

    def _load(self) -> Record:
        raise NotImplementedError

    @property
    def time(self) -> datetime:
        """The record's own time (:attr:`Record.time`)."""
        return self.record.time

    def data_json(self) -> str | None:
        """The record's data as the outbox stored it (compact JSON, as the wire writes
        it), when this was read from there: a message may carry the text as it is,
        without decoding it and encoding it again. ``None`` otherwise."""
        return None

    def __repr__(self) -> str:
        return f"Stored(seq={self.seq}, msg_id={self.msg_id!r}, kind={self.kind.value})"


class FixRun:
    """Fixes of one stream (priority, session, drill, expiry) that follow one another in
    the outbox, handed out together for a drain: the first and the last as
    :class:`Stored`, and each fix after the first as the text of its ``track`` row's
    difference from the fix before (:func:`device.wire.row_delta`, worked out when it
    was stored). A track message is then joined from these texts: a drain makes no
    object per fix. Grouping attributes are the first record's; ``msg_id`` is the one
    message id all of them carry (a run never straddles two messages)."""

    __slots__ = ("deltas", "first", "last", "msg_id", "seqs")

    kind = RecordKind.FIX

    def __init__(self, first: Stored, last: Stored, seqs: list[int], deltas: list[str]) -> None:
        if first.row is None or last.row is None or len(deltas) != len(seqs) - 1:
            raise ValueError("a run of fixes needs track rows and one difference per fix")
        self.first = first
        self.last = last
        self.seqs = seqs
        self.deltas = deltas
        self.msg_id = first.msg_id

    @property
    def seq(self) -> int:
        return self.first.seq

    @property
    def priority(self) -> Priority:
        return self.first.priority

    @property
    def session(self) -> str | None:
        return self.first.session

    @property
    def drill(self) -> bool:
        return self.first.drill

    @property
    def expires(self) -> datetime | None:
        return self.first.expires

    @property
    def committed(self) -> float | None:
        return self.first.committed

    def halves(self, before: Stored, at: Stored) -> tuple[Stored | FixRun, Stored | FixRun]:
        """Cut in two before ``at`` (``before`` is the fix just ahead of it): the records
        at the cut, read from the store, become the halves' ends."""
        k = self.seqs.index(at.seq)
        if k == 0 or self.seqs[k - 1] != before.seq:
            raise ValueError(f"cannot cut run {self.seqs[0]}..{self.seqs[-1]} at {at.seq}")
        return (
            _run_or_one(self.first, before, self.seqs[:k], self.deltas[: k - 1]),
            _run_or_one(at, self.last, self.seqs[k:], self.deltas[k:]),
        )

    def __len__(self) -> int:
        return len(self.seqs)

    def __repr__(self) -> str:
        return f"FixRun(seq={self.seqs[0]}..{self.seqs[-1]}, n={len(self.seqs)})"


def _run_or_one(first: Stored, last: Stored, seqs: list[int], deltas: list[str]) -> Stored | FixRun:
    return first if len(seqs) == 1 else FixRun(first, last, seqs, deltas)


#: what a take hands out: a record, or a run of fixes
Item = Stored | FixRun


def seqs_of(items: Iterable[Item]) -> list[int]:
    """Every record's seq, in the order given."""
    out: list[int] = []
    for s in items:
        if isinstance(s, FixRun):
            out += s.seqs
        else:
            out.append(s.seq)
    return out


class Recorder(Protocol):
    async def add(self, record: Record) -> None:
        """Store durably; returns once the record is committed."""
        ...

    async def expire_session(self, session: str, at: datetime) -> None:
        """Give every record of ``session`` (and any added later) the expiry ``at``."""
        ...


@dataclass
class MemoryRecorder:
    """Keeps records in a list. Not durable: the simulator's and tests' stand-in."""

    records: list[Record] = field(default_factory=list)
    _session_expiry: dict[str, datetime] = field(default_factory=dict)

    async def add(self, record: Record) -> None:
        if record.session in self._session_expiry and record.expires is None:
            record = replace(record, expires=self._session_expiry[record.session])
        self.records.append(record)

    async def expire_session(self, session: str, at: datetime) -> None:
        self._session_expiry[session] = at
        self.records = [replace(r, expires=at) if r.session == session else r for r in self.records]

    async def purge(self, now: datetime) -> int:
        """Delete what has expired; returns how many records went."""
        keep = [r for r in self.records if r.expires is None or r.expires > now]
        gone = len(self.records) - len(keep)
        self.records = keep
        return gone

    async def next_expiry(self) -> datetime | None:
        return min((r.expires for r in self.records if r.expires is not None), default=None)

    def of(self, kind: RecordKind) -> list[Record]:
        return [r for r in self.records if r.kind is kind]


class Expiring(Protocol):
    async def purge(self, now: datetime) -> int:
        """Delete what has expired at ``now``; returns how many records went."""
        ...

    async def next_expiry(self) -> datetime | None: ...


async def run_retention(store: Expiring, clock: Clock, *, check_every: float = 3600) -> None:
    """Delete expired records at their expiry (or at least every ``check_every`` s)."""
    failing = False
    while True:
        try:
            gone = await store.purge(clock.now())
        except OSError as exc:  # a full disk: said once, tried again every minute
            if not failing:
                log.warning("retention: %s (retrying every minute)", exc)
            failing = True
            await clock.sleep(min(check_every, 60.0))
            continue
        if failing:
            log.info("retention: expired records can be deleted again")
            failing = False
        if gone:
            log.info("retention: %d expired record(s) deleted", gone)
        nxt = await store.next_expiry()
        wait = check_every
        if nxt is not None:
            wait = min(wait, max(0.0, (nxt - clock.now()).total_seconds()) + 0.001)
        await clock.sleep(wait)
