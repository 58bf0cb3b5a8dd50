"""Records into messages: pure (no network, no storage). The only thing it may ask for
is a run of fixes cut in two (``cut``), when a run alone is too large for one message;
the caller passes how (the outbox reads the records at the cut).

* A record already bound to a message id goes in that message again (a resend carries
  the same id), unless the broker's size limit has since fallen below it: then its
  records are formed anew.
* ``sos`` lifecycle records and ``voice`` chunks go one per message, their id derived
  from the record (:func:`sos_message_id`), so nothing needs binding.
* Everything else forms ``track`` batches: one session, one drill flag, one expiry, at
  most ``max_batch`` records, split in halves until each fits the size limit.
* Expiry is counted down on the device's clock (:func:`expiry`).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sosbeacon.device.records import FixRun, Item, RecordKind, Stored, seqs_of
from sosbeacon.device.uplink.sizelimit import SizeLimit
from sosbeacon.device.wire import (
    RETAINED_KINDS,
    SINGLE_KINDS,
    Topics,
    encode_stored,
    encode_track,
)

#: a run of fixes too large for one message, in two
Cut = Callable[[FixRun], Awaitable[tuple[Item, Item]]]


@dataclass(frozen=True, slots=True)
class Message:
    """A message formed from stored records; ``msg_id`` is stored with them."""

    msg_id: str
    topic: str
    payload: bytes
    records: tuple[Item, ...]
    retain: bool
    expiry: int | None
    #: the records' seqs, in order
    seqs: list[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seqs", seqs_of(self.records))


@dataclass(frozen=True, slots=True)
class Packed:
    #: every message, in upload order (priority, then seq)
    messages: list[Message]
    #: those with a new id, to be bound to their records before they are sent
    new: list[Message]
    #: items left out because they expired (the caller purges them)
    expired: int


def sos_message_id(box: str, seq: int) -> str:
    """The message id of an SOS lifecycle record's message (it is always alone in it):
    the same at every resend, without storing it."""
    return hashlib.blake2b(f"{box}:{seq}".encode(), digest_size=10).hexdigest()


def expiry(s: Item, now: float, routine_expiry: int) -> int | None:
    """MQTT message expiry, counted down on the device's clock (``now``): a session's
    records until 72 h after it ended; during an active SOS none (the end is not known
    yet); routine telemetry ``routine_expiry`` after the first record was committed (a
    backlog that waited offline keeps only what is left of its week)."""
    if s.expires is not None:
        return max(1, math.ceil(s.expires.timestamp() - now))
    if s.session is not None:
        return None
    if s.committed is None:
        return routine_expiry
    return max(1, math.ceil(min(routine_expiry, routine_expiry - (now - s.committed))))


class Packer:
    def __init__(
        self,
        topics: Topics,
        limit: SizeLimit,
        *,
        max_batch: int,
        routine_expiry: int,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:20],
        seal: Callable[[bytes], bytes] | None = None,
    ) -> None:
        #: end-to-end encryption of every payload (device.wire.seal under the key)
        self.seal = seal
        self.topics = topics
        self.limit = limit
        self.max_batch = max_batch
        self.routine_expiry = routine_expiry
        self._new_id = new_id

    async def pack(
        self, items: list[Item], *, box: str, now: datetime, retained_seq: int, cut: Cut
    ) -> Packed:
        """``items`` (as a take returns them) as messages of outbox ``box``; a lifecycle
        record above ``retained_seq`` is sent retained."""
        ts = now.timestamp()
        kept = [s for s in items if not (s.expires and s.expires <= now)]

        def message(mid: str, group: list[Item]) -> Message:
            first = group[0]
            if isinstance(first, Stored) and first.kind in SINGLE_KINDS:
                topic = self.topics.single(first.kind)
                payload = encode_stored(box, first)
                retain = first.kind in RETAINED_KINDS and first.seq > retained_seq
            else:
                topic, payload = self.topics.track, encode_track(box, group)
                retain = False
            exp = expiry(first, ts, self.routine_expiry)
            if self.seal is not None:
                payload = self.seal(payload)
            return Message(mid, topic, payload, tuple(group), retain, exp)

        async def split(group: list[Item]) -> list[Message]:
            msg = message(self._new_id(), group)
            if self._fits(msg):
                return [msg]
            if len(group) == 1 and isinstance(group[0], FixRun):
                group = list(await cut(group[0]))
            half = len(group) // 2
            return await split(group[:half]) + await split(group[half:])

        bound: OrderedDict[str, list[Item]] = OrderedDict()
        fresh: list[list[Item]] = []
        messages: list[Message] = []
        cur: list[Item] | None = None  # the track batch being formed ...
        n = 0  # ... and how many records it holds
        for s in kept:
            size = len(s) if isinstance(s, FixRun) else 1
            if s.msg_id is not None:
                bound.setdefault(s.msg_id, []).append(s)
            elif isinstance(s, Stored) and s.kind in SINGLE_KINDS:
                messages.append(message(sos_message_id(box, s.seq), [s]))
                cur = None
            elif (
                cur is not None
                and s.session == cur[0].session
                and s.drill == cur[0].drill
                and s.expires == cur[0].expires
                and n + size <= self.max_batch
            ):
                cur.append(s)
                n += size
            else:
                cur = [s]
                n = size
                fresh.append(cur)
        for mid, group in bound.items():
            msg = message(mid, group)
            if self._fits(msg):
                messages.append(msg)
            else:
                fresh.append(group)  # too large for this broker: formed again, smaller
        new: list[Message] = []
        for group in fresh:
            new += await split(group)
        ordered = sorted(messages + new, key=lambda m: (m.records[0].priority, m.records[0].seq))
        return Packed(ordered, new, len(items) - len(kept))

    def _fits(self, msg: Message) -> bool:
        return self.limit.fits(len(msg.payload), len(msg.seqs))


def is_position(s: Item) -> bool:
    """Whether ``s`` carries a position (a run of fixes, a fix with its row or its fix)."""
    return (
        isinstance(s, FixRun)
        or s.row is not None
        or (s.kind is RecordKind.FIX and bool(s.record.data.get("fix")))
    )
