"""A simulated SOS button: press patterns played on a clock.

This is the one simulated part that does not go through the real driver: the kernel's
``gpio-sim`` module (configfs) would let :class:`hw.gpio.GpioButton` read simulated lines,
but it needs a kernel with that module and root; neither CI nor a laptop can count on it.
So this source produces the same :class:`device.gesture.Edge` values the driver does, with
timestamps on the given clock, and the gesture detector, controller and everything after
them run for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sosbeacon.device.clock import Clock
from sosbeacon.device.gesture import Edge


def long_press(hold: float = 3.5) -> list[tuple[float, float]]:
    return [(hold, 0.0)]


def multi_press(n: int = 5, hold: float = 0.15, gap: float = 0.3) -> list[tuple[float, float]]:
    return [(hold, gap)] * n


class ScriptedButton:
    """Plays (hold, gap-after) presses when :meth:`press` is called."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._queue: asyncio.Queue[Edge] = asyncio.Queue()

    async def press(self, pattern: list[tuple[float, float]]) -> None:
        """Press the button in ``pattern``; returns when the last release happened."""
        for hold, gap in pattern:
            await self._queue.put(Edge(self._clock.monotonic(), True))
            await self._clock.sleep(hold)
            await self._queue.put(Edge(self._clock.monotonic(), False))
            if gap:
                await self._clock.sleep(gap)

    async def edges(self) -> AsyncIterator[Edge]:
        while True:
            yield await self._queue.get()
