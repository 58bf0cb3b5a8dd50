"""A simulated cellular modem: down to save power, up a few seconds after it is asked.

It implements :class:`device.actuators.NetworkLink`; the network fault proxy (issue 4)
will consult :attr:`SimModem.is_up` to pass or refuse traffic.
"""

from __future__ import annotations

import asyncio

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

    async def up(self) -> None:
        self.requests += 1
        if self.is_up:
            return
        await self._clock.sleep(self.attach_time)
        self.is_up = True
        self.came_up.set()

    def drop(self) -> None:
        self.is_up = False
        self.came_up.clear()
