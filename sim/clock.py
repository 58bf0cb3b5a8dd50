"""A clock that only moves when told to, so hours of behaviour run in milliseconds.

``SimClock.sleep`` parks the caller until :meth:`SimClock.advance` moves time past its
deadline; sleepers wake in deadline order, each seeing ``monotonic()`` equal to its own
deadline, exactly as if the time had really passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta


class SimClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._t

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._t)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way."""
        end = self._t + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._t = max(self._t, deadline)
            if not fut.done():
                fut.set_result(None)
            await _settle()
        self._t = end
        await _settle()


async def _settle() -> None:
    """Let every task that can run, run (a few loop turns)."""
    for _ in range(5):
        await asyncio.sleep(0)
