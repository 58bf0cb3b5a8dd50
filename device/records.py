"""What the device stores for upload, and the Protocol of the store.

The durable SQLite outbox (``device.outbox``) implements :class:`Recorder`;
:class:`MemoryRecorder` is the in-memory one the core's tests use. Both honour the same
expiry rule: every record of an SOS session expires ``retention`` after the session ends
(72 h by default), and :func:`run_retention` deletes it then, from either.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from device.clock import Clock

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


class Priority(enum.IntEnum):
    """Upload order: SOS events and last gasp first, then live positions, then backlog."""

    SOS = 0
    LIVE = 1
    ROUTINE = 2


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
    their :attr:`row`, never decodes them."""

    __slots__ = (
        "_record",
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
        self, seq: int, msg_id: str | None, record: Record, row: TrackRow | None = None
    ) -> None:
        self.seq = seq
        self.msg_id = msg_id
        self.kind = record.kind
        self.priority = record.priority
        self.session = record.session
        self.drill = record.drill
        self.expires = record.expires
        self.row = row
        self._record: Record | None = record

    @property
    def record(self) -> Record:
        if self._record is None:
            self._record = self._load()
        return self._record

    def _load(self) -> Record:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Stored(seq={self.seq}, msg_id={self.msg_id!r}, kind={self.kind.value})"


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
    while True:
        gone = await store.purge(clock.now())
        if gone:
            log.info("retention: %d expired record(s) deleted", gone)
        nxt = await store.next_expiry()
        wait = check_every
        if nxt is not None:
            wait = min(wait, max(0.0, (nxt - clock.now()).total_seconds()) + 0.001)
        await clock.sleep(wait)
