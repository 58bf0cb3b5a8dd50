"""Time, injectable.

Everything time-dependent (countdowns, expiry, backoff, fix ages) asks a :class:`Clock`
instead of the ``time`` module, so tests can run hours of behaviour in milliseconds with
a simulated clock.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """The two kinds of time the daemon needs, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for ages, timeouts, backoff)."""
        ...

    def now(self) -> datetime:
        """Wall-clock time in UTC (for timestamps that leave the device)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and the system's UTC time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Real time, sped up ``scale`` times: for drills that need hours of behaviour (a dead
    network for an hour, a battery draining) in minutes, with real sockets and ptys.
    Only what asks this clock is sped up (timers, backoff, expiry, record times); the
    network and the simulated receiver keep real time."""

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._t0 = time.monotonic()
        self._wall0 = datetime.now(UTC)

    def monotonic(self) -> float:
        return self._t0 + (time.monotonic() - self._t0) * self.scale

    def now(self) -> datetime:
        return self._wall0 + timedelta(seconds=(time.monotonic() - self._t0) * self.scale)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)
