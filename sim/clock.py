"""A clock that only moves when told to, so hours of behaviour run in milliseconds.

``SimClock.sleep`` parks the caller until :meth:`SimClock.advance` moves time past its
deadline; sleepers wake in deadline order, each seeing ``monotonic()`` equal to its own
deadline, exactly as if the time had really passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")


class SimClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        #: set whenever a task starts sleeping on this clock
        self._slept = asyncio.Event()

    def monotonic(self) -> float:
        return self._t

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._t)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + max(0.0, seconds), next(self._seq), fut))
        self._slept.set()
        await fut

    async def sleeping(self, n: int = 1) -> None:
        """Until at least ``n`` tasks sleep on this clock: what a test awaits before it
        moves time, when the sleeper gets there through a thread or real I/O (which
        :meth:`advance` cannot wait for)."""
        while sum(1 for *_, fut in self._sleepers if not fut.done()) < n:
            self._slept.clear()
            await self._slept.wait()

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

    async def run_until(self, aw: Awaitable[T], *, limit: float = 7 * 86400.0) -> T:
        """Advance from deadline to deadline until ``aw`` completes; returns its result.

        Raises ``RuntimeError`` if nothing is left to wake and ``aw`` is still waiting (a
        deadlock in simulated time), or if it needs more than ``limit`` seconds.
        """
        task = asyncio.ensure_future(aw)
        start = self._t
        await _settle()
        while not task.done():
            if not self._sleepers:
                task.cancel()
                raise RuntimeError("simulated time: nothing left to wake, still waiting")
            nxt = self._sleepers[0][0]
            if nxt - start > limit:
                task.cancel()
                raise RuntimeError(f"simulated time: not done after {limit} s")
            await self.advance(max(0.0, nxt - self._t))
        return task.result()


async def _settle() -> None:
    """Let every task that can run, run, before time moves on.

    A fixed number of loop turns is not enough: a woken task may need many turns before
    it sleeps again, and if time moved on meanwhile its next deadline would be computed
    from the wrong "now". So turn the loop until nothing is ready to run (CPython's
    ``_ready`` queue; a bounded number of turns elsewhere).
    """
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    for _ in range(10_000):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            # Once more: a callback scheduled by the last turn may wake a task.
            await asyncio.sleep(0)
            if not ready:
                return
        elif ready is None and _ > 50:
            return
