"""A simulated cellular modem: down to save power, up a few seconds after it is asked.

It implements :class:`device.actuators.NetworkLink` and :class:`~device.actuators.
LinkMonitor` (it says when its data link goes down and comes back, as NetworkManager
does for a real one); the drills drop it and bring it back with the network fault
proxy (``sosctl sim network down|up``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sosbeacon.device.clock import Clock


class SimModem:
    def __init__(self, clock: Clock, *, attach_time: float = 3.0, up: bool = False) -> None:
        self._clock = clock
        self.attach_time = attach_time
        self.is_up = up
        self.requests = 0
        self.came_up = asyncio.Event()
        if up:
            self.came_up.set()
        self._followers: set[asyncio.Queue[bool]] = set()
        #: whether there is a network to attach to (a drill takes it away)
        self.coverage = True
        #: asked to be up: it attaches when coverage returns
        self._wanted = up

    async def up(self) -> None:
        self.requests += 1
        self._wanted = True
        if self.is_up:
            return
        await self._clock.sleep(self.attach_time)
        if self.coverage:
            self.set(True)

    def drop(self) -> None:
        """Powered down (to save power); :meth:`up` brings it back."""
        self._wanted = False
        self.set(False)

    def set_coverage(self, there: bool) -> None:
        """The network is gone (no coverage: the data link drops) or back (a modem that
        was up, or asked to be, attaches again)."""
        self.coverage = there
        if not there:
            self.set(False)
        elif self._wanted:
            self.set(True)

    def set(self, up: bool) -> None:
        """The data link is up (or down) now; followers are told of a change."""
        changed = up != self.is_up
        self.is_up = up
        if up:
            self.came_up.set()
        else:
            self.came_up.clear()
        if changed:
            for q in self._followers:
                q.put_nowait(up)

    async def changes(self) -> AsyncIterator[bool]:
        q: asyncio.Queue[bool] = asyncio.Queue()
        self._followers.add(q)
        try:
            yield self.is_up
            while True:
                yield await q.get()
        finally:
            self._followers.discard(q)
