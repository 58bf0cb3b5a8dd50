"""What waits in memory while the outbox cannot be written (a full disk, mostly).

An SOS must carry on when the disk fills: a store that cannot be committed is held
here, in order behind anything held before it, and stored once there is room. SOS
records and session expiries are never dropped; routine records are, oldest first, past
``limits.hold_records``. A held record has no seq yet: it was never acknowledged as
stored. The outage is said once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sosbeacon.device.clock import Clock
from sosbeacon.device.outbox.errors import OutboxFull
from sosbeacon.device.outbox.faults import Fault, classify
from sosbeacon.device.records import Priority, Record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Held:
    """A write waiting in memory for room on a full disk: a record, or a session's
    expiry (kept in order with the records: an end record is stored with it)."""

    record: Record | None = None
    expire: tuple[str, datetime] | None = None

    @property
    def droppable(self) -> bool:
        """Telemetry may be dropped to bound memory; SOS records and expiries never."""
        return self.record is not None and self.record.priority is not Priority.SOS


class Holding:
    def __init__(self, path: Path, clock: Clock, limit: int) -> None:
        self._path = path
        self._clock = clock
        self.limit = limit
        self._held: deque[Held] = deque()
        #: routine records dropped to bound memory (ever)
        self.dropped = 0
        #: writes held in this outage
        self._total = 0
        #: since when the outbox cannot be written (by its clock), or None; and why
        #: ("disk full", "storage locked by another process", ...)
        self.full_since: datetime | None = None
        self.fault = ""
        #: set while the outbox can be written; cleared by a fault until it is over
        self.writable = asyncio.Event()
        self.writable.set()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, op: Held) -> None:
        held = self._held
        held.append(op)
        self._total += 1
        while len(held) > max(1, self.limit):
            victim = next((h for h in held if h.droppable), None)
            if victim is None:
                break  # only SOS records and expiries: kept, whatever it costs in memory
            held.remove(victim)
            self.dropped += 1

    def in_order(self) -> Iterator[Held]:
        """SOS records and session expiries first (in their own order: an end record is
        stored after its session's expiry), then the rest in order. A copy: the caller
        removes each once it is stored."""
        for urgent in (True, False):
            yield from [h for h in self._held if h.droppable is not urgent]

    def stored(self, op: Held) -> None:
        self._held.remove(op)

    def disk_full(self, exc: BaseException) -> None:
        """A write could not be done for now: said once per outage."""
        if self.full_since is not None:
            return
        self.full_since = self._clock.now()
        self.writable.clear()
        fault = classify(exc)
        self.fault = "disk full" if fault is Fault.FULL else f"storage {fault.value}"
        log.error(
            "%s: %s Records are held in memory (SOS records first, up to %d) and stored "
            "once the outbox %s can be written again; nothing already stored is lost.%s",
            self.fault.upper(),
            str(exc).rstrip(".") + ".",
            self.limit,
            self._path,
            " Free some space on that file system."
            if fault is Fault.FULL and not isinstance(exc, OutboxFull)
            else "",
        )

    def disk_back(self) -> bool:
        """The outage is over (all stored): said, with what it cost. False if there was
        none."""
        if self.full_since is None:
            return False
        log.warning(
            "the outbox can be written again (%s for %.0f s): the %d write(s) held in memory "
            "meanwhile are stored%s",
            self.fault,
            (self._clock.now() - self.full_since).total_seconds(),
            self._total,
            f" ({self.dropped} routine record(s) had to be dropped)" if self.dropped else "",
        )
        self.full_since = None
        self._total = 0
        self.writable.set()
        return True
