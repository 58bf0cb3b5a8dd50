"""What happens in the daemon, as typed events for whoever follows them: ``sosctl events``,
the drills, the demo and the tests (through the control socket), instead of anyone
reading the log's wording.

Events are facts, not log lines: a kind, the device's time, and data. The bus never
blocks the daemon: each follower has a bounded queue, and a follower too slow to keep up
loses the oldest events, and is told how many (an event of kind ``missed``). The bus
keeps the last few hundred events, so that a follower can ask for what happened since a
time it names: what a restarted daemon did before its control socket was up (resuming
an SOS) is not lost to a drill that reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any


class EventKind(enum.StrEnum):
    #: the SOS lifecycle: ``data.what`` is countdown, start-requested, cancelled,
    #: started, ended, acknowledged, resumed, overridden, refused; a change of state
    #: (device.sos.SosState) has ``data.state``, the state it led to
    SOS = "sos"
    #: the LED and buzzer showed a cue (``data.cue``)
    CUE = "cue"
    #: the broker link: ``data.state`` up or down, with ``why`` when down
    LINK = "link"
    #: the network under it (NetworkManager, the modem): ``data.state`` up or down
    #: (``first``: the state found at start)
    NETWORK = "network"
    #: the battery policy's level changed (``data.level``, ``from``, ``pct``)
    BATTERY = "battery-level"
    #: the receiver's fix: ``data.state`` first, lost or back
    FIX = "fix"
    #: records: ``stored`` (``record`` kind, ``session``) or ``acked`` (``count``, ``seq``
    #: ranges) by the broker
    RECORDS = "records"
    #: a command from a contact was handled (``cmd``, ``by``, ``ok``, ``error``)
    COMMAND = "command"
    #: a receipt from the relay arrived (``sess``, ``contacts``)
    RECEIPT = "receipt"
    #: a text message went to a contact (``to``, ``chars``)
    SMS = "sms"
    #: a voice note: ``what`` recording, stored (``clip``, ``seconds``, ``bytes``,
    #: ``chunks``) or failed (``error``), with the ``session``
    VOICE = "voice"
    #: the follower lost ``data.count`` events (it was too slow)
    MISSED = "missed"
    #: the SOS button was pressed (``data.gesture``: press, long-press, multi-press)
    BUTTON = "button"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    #: epoch seconds, the device's clock
    t: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "t": round(self.t, 3), **self.data}


class _Follower:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.missed = 0


class Events:
    """The daemon's event bus."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, size: int = 1000, keep: int = 256
    ) -> None:
        self._clock = clock
        self._size = size
        self._followers: set[_Follower] = set()
        self._recent: deque[Event] = deque(maxlen=keep)
        self._taps: list[Callable[[Event], None]] = []

    def tap(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` with every event as it is emitted (synchronously: it must be quick
        and never raise), for what must see every event in order, unlike a follower."""
        self._taps.append(fn)

    def recent(self) -> list[Event]:
        """The events kept (the newest ``keep``), oldest first."""
        return list(self._recent)

    def emit(self, kind: EventKind, **data: Any) -> None:
        ev = Event(kind, self._clock(), data)
        self._recent.append(ev)
        for fn in self._taps:
            fn(ev)
        for f in self._followers:
            if f.queue.full():
                f.queue.get_nowait()
                f.missed += 1
            f.queue.put_nowait(ev)

    @contextlib.asynccontextmanager
    async def follow(self, since: float | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """``async with events.follow() as stream: async for ev in stream: ...``; with
        ``since``, the kept events after that time come first."""
        f = _Follower(self._size)
        for ev in self._recent:
            if since is not None and ev.t > since and not f.queue.full():
                f.queue.put_nowait(ev)
        self._followers.add(f)

        async def stream() -> AsyncIterator[Event]:
            while True:
                ev = await f.queue.get()
                if f.missed:
                    yield Event(EventKind.MISSED, ev.t, {"count": f.missed})
                    f.missed = 0
                yield ev

        try:
            yield stream()
        finally:
            self._followers.discard(f)

    @property
    def followers(self) -> int:
        return len(self._followers)


__all__ = ["Event", "EventKind", "Events"]
