"""The life of a link that can go away (a serial device, a TCP connection to gpsd).

Every source that owns such a link behaves the same way: keep retrying at a fixed
interval, say once per outage that the link is missing and what to check, say when it is
back, count reconnects, and let others await "connected" / "disconnected".
"""

from __future__ import annotations

import asyncio
import logging

from sosbeacon.device.clock import Clock
from sosbeacon.device.gps import GpsStats


class Link:
    def __init__(
        self,
        *,
        what: str,
        hint: str,
        retry_interval: float,
        clock: Clock,
        stats: GpsStats,
        log: logging.Logger,
    ) -> None:
        self.what = what
        self.hint = hint
        self.retry_interval = retry_interval
        self._clock = clock
        self._stats = stats
        self._log = log
        self._failures = 0
        #: set while the link is up
        self.connected = asyncio.Event()
        #: set once the link went down and everything read from it was handed on
        self.disconnected = asyncio.Event()

    async def open_failed(self, exc: BaseException) -> None:
        """Opening failed: warn on the first failure of an outage, then wait."""
        self._failures += 1
        if self._failures == 1:
            self._log.warning(
                "%s cannot be reached (%s); retrying every %.1fs. %s",
                self.what,
                exc,
                self.retry_interval,
                self.hint,
            )
        await self._clock.sleep(self.retry_interval)

    def opened(self) -> None:
        if self._failures or self._stats.reconnects:
            self._log.info("%s is back", self.what)
        self._failures = 0
        self.disconnected.clear()
        self.connected.set()

    def closed(self) -> None:
        """Call when the link is down and its data has been handed on."""
        self.connected.clear()
        self.disconnected.set()

    async def lost(self) -> None:
        """After :meth:`closed`: count the reconnect, warn, and wait before reopening."""
        self._stats.reconnects += 1
        self._log.warning("%s went away; waiting for it to come back", self.what)
        await self._clock.sleep(self.retry_interval)
