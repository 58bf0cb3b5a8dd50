"""Time, injectable.

Everything time-dependent (countdowns, expiry, backoff, fix ages) asks a :class:`Clock`
instead of the ``time`` module, so tests can run hours of behaviour in milliseconds with
a simulated clock.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
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
