"""End-to-end backpressure: what the broker took and the relay has not confirmed yet.

A PUBACK says the broker has a message, not that the relay stored it. When the relay (or
its database) is slower than the fleet, the broker's queue for the relay grows, and a
broker drops what goes beyond its bound (Mosquitto: ``max_queued_messages``) after it has
acknowledged it. So once the relay serves this device (a receipt for this outbox has
arrived: the retained one comes at every connection), the device itself stops sending
more than a window of records the relay's receipts do not name yet:

* routine messages: at most ``routine`` unconfirmed (about: one take may go a message
  past it); the backlog waits in the outbox;
* live positions of an SOS: at most ``live`` messages unconfirmed, then they wait too;
* SOS events (start, end, acknowledgements, last gasp) always go.

A window of 0 is no limit (``uplink.relay_window``, ``uplink.relay_window_live``).

A message is confirmed when the receipts name all its seqs. What one device can have in
the broker's queue for the relay is then bounded in messages, and the broker's bound is
sized from it (docs/scaling.md).

With several relays on one shared subscription, the broker hands each message to one of
them, and keeps handing a share to a relay that is down (its session persists, so that a
restart loses nothing: Mosquitto queues for it). Receipts then name messages sent after
one that is still not named: it was *passed over*. A message passed over for ``stall``
seconds has gone to a relay that is not reading; it leaves the window (it stays in the
broker's queue for that relay, which gets it when it is back), so one stopped relay
never stops the device's stream. A single slow relay stores in the order it receives,
and holds the window as it should.

A message that the relay still does not name whole ``patience`` seconds after it went,
in a receipt that came later, was refused by the relay (or lost: a broker queue past its
bound, a relay that failed over in the middle): it leaves the window, so the window
never closes for good. Its records are due to be sent once more (:meth:`due`): the
outbox still holds those of an SOS session (delivered, kept until they expire) and puts
them back in the queue; the rest, and any the relay still does not name after that
second sending, are given up on, counted and logged.

Time is the uplink's clock (monotonic), so tests move it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.wire import parse_ranges_text

log = logging.getLogger(__package__)
#: records remembered as sent a second time, at most
_TRIED_MAX = 100_000


@dataclass(slots=True)
class _Sent:
    at: float
    live: bool
    seqs: set[int]
    #: when a receipt first named a message sent after this one
    passed: float | None = None


class RelayCredit:
    def __init__(
        self, *, routine: int, live: int, patience: float, stall: float, clock: Clock
    ) -> None:
        #: messages unconfirmed at most, routine (False) and live (True); 0: no limit
        self.limits = {False: routine, True: live}
        self.patience = patience
        self.stall = stall
        self._clock = clock
        #: a receipt for our outbox has arrived: a relay serves this device
        self.engaged = False
        #: the messages in the window, in the order sent; those passed over for
        #: ``stall`` (at a relay that is down), out of it; each seq's message
        self._msgs: dict[int, _Sent] = {}
        self._stranded: dict[int, _Sent] = {}
        self._of: dict[int, int] = {}
        self._next = 0
        self._counts = {False: 0, True: 0}
        #: records given up on (never named by the relay within ``patience``, and not
        #: sent again: the outbox no longer had them, or they went twice)
        self.given_up = 0
        #: records sent again after the relay did not name them within ``patience``
        self.resent = 0
        #: not named within ``patience`` for the first time: to be sent again
        self._due: list[int] = []
        #: handed to :meth:`due` once already (bounded: see :data:`_TRIED_MAX`)
        self._tried: set[int] = set()
        self._wakes: set[asyncio.Event] = set()

    def sent(self, seqs: Iterable[int], *, live: bool) -> None:
        """A message handed to the broker (its records may have gone before, in other
        messages: they count in this one now)."""
        if not (self.engaged and self.limits[live]):
            return  # no relay (yet), or no limit on these
        self._next += 1
        msg = _Sent(self._clock.monotonic(), live, set())
        for s in seqs:
            self._forget(s)
            self._of[s] = self._next
            msg.seqs.add(s)
        if msg.seqs:
            self._msgs[self._next] = msg
            self._counts[live] += 1

    def unconfirmed(self, *, live: bool) -> int:
        """Messages sent and not yet confirmed whole."""
        return self._counts[live]

    def room(self, *, live: bool) -> int | None:
        """How many more messages may go (None: no limit)."""
        limit = self.limits[live]
        if not (self.engaged and limit):
            return None
        self._strand()
        return max(0, limit - self._counts[live])

    def has_room(self, *, live: bool) -> bool:
        return self.room(live=live) != 0

    def receipt(self, box: str, r: dict[str, Any]) -> None:
        """The relay's receipt (already checked to be one): the seqs it names for
        ``box`` leave the window; messages it still does not name whole after
        ``patience`` are given up."""
        if not any(self.limits.values()):
            return  # both windows off (uplink.relay_window = relay_window_live = 0)
        stored = r.get("stored")
        text = stored.get(box) if isinstance(stored, dict) else None
        if not isinstance(text, str):
            return  # the relay has nothing from this outbox (yet)
        try:
            ranges = parse_ranges_text(text)
        except ValueError:
            log.warning("a receipt with malformed stored ranges for %s: ignored", box)
            return
        self.engaged = True
        newest = 0  # the newest message this receipt names some of
        for a, b in ranges:
            named = (
                range(a, b + 1) if b - a < len(self._of) else [s for s in self._of if a <= s <= b]
            )
            for s in named:
                newest = max(newest, self._forget(s))
        now = self._clock.monotonic()
        for n, m in self._msgs.items():
            if n >= newest:
                break  # in the order sent
            if m.passed is None:
                m.passed = now
        self._strand()
        late = now - self.patience
        stale = [s for msgs in (self._stranded, self._msgs) for s in _sent_before(msgs, late)]
        if stale:
            for s in stale:
                self._forget(s)
            twice = [s for s in stale if s in self._tried]
            first = [s for s in stale if s not in self._tried]
            if len(self._tried) + len(first) > _TRIED_MAX:
                self._tried.clear()  # at worst a record goes a third time
            self._tried.update(first)
            self._due.extend(first)
            if twice:
                self.given_up += len(twice)
                log.warning(
                    "the relay has still not stored %d record(s) (seq %d..%d) sent twice: "
                    "given up on (%d so far); see the relay's log",
                    len(twice), min(twice), max(twice), self.given_up,
                )  # fmt: skip
        for wake in self._wakes:
            wake.set()

    def due(self) -> list[int]:
        """The records the relay did not name within ``patience`` for the first time,
        to be sent again (taken: each is handed out once); :meth:`sent_again` says
        what came of it."""
        out, self._due = self._due, []
        return out

    def sent_again(self, seqs: list[int], held: int) -> None:
        """Of ``seqs`` (from :meth:`due`), the outbox put ``held`` back in its queue;
        the rest it no longer had (routine records leave it at the broker's
        acknowledgement): given up on."""
        self.resent += held
        lost = len(seqs) - held
        self.given_up += lost
        log.warning(
            "the relay has not stored %d record(s) (seq %d..%d) %.0f s after they were "
            "sent: %d of them (an SOS session's, still on the device) go again, %d are "
            "given up on (%d so far); see the relay's log",
            len(seqs), min(seqs), max(seqs), self.patience, held, lost, self.given_up,
        )  # fmt: skip

    def _strand(self) -> None:
        """Messages passed over for ``stall`` seconds leave the window. Those passed
        over come first, in the order sent, and were passed over in that order."""
        due = self._clock.monotonic() - self.stall
        while self._msgs:
            n, m = next(iter(self._msgs.items()))
            if m.passed is None or m.passed > due:
                return
            self._stranded[n] = self._msgs.pop(n)
            self._counts[m.live] -= 1

    def next_stall(self) -> float | None:
        """Seconds until a message passed over leaves the window (None: none is)."""
        first = next(iter(self._msgs.values()), None)
        if first is None or first.passed is None:
            return None
        return max(0.0, first.passed + self.stall - self._clock.monotonic())

    def _forget(self, seq: int) -> int:
        """``seq`` is confirmed; the number of the message it was in (0: none)."""
        n = self._of.pop(seq, None)
        if n is None:
            return 0
        msgs = self._msgs if n in self._msgs else self._stranded
        msg = msgs[n]
        msg.seqs.discard(seq)
        if not msg.seqs:
            del msgs[n]
            if msgs is self._msgs:
                self._counts[msg.live] -= 1
        return n

    def waker(self) -> asyncio.Event:
        """An event set at every receipt, for one send loop (:meth:`drop` it after)."""
        wake = asyncio.Event()
        self._wakes.add(wake)
        return wake

    def drop(self, wake: asyncio.Event) -> None:
        self._wakes.discard(wake)

    def status(self) -> dict[str, Any]:
        """Messages unconfirmed (routine, live; stranded at a relay that is down) and
        records given up on."""
        return {
            "engaged": self.engaged,
            "routine": self._counts[False],
            "live": self._counts[True],
            "stranded": len(self._stranded),
            "given_up": self.given_up,
            "resent": self.resent,
        }


def _sent_before(msgs: dict[int, _Sent], t: float) -> list[int]:
    """The seqs of the messages in ``msgs`` (in the order sent) that went before ``t``."""
    out: list[int] = []
    for m in msgs.values():
        if m.at >= t:
            break
        out.extend(m.seqs)
    return out
