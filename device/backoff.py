"""Jittered exponential backoff.

Each wait is drawn uniformly from the upper half of ``min(cap, base * 2**attempt)``: it
grows quickly while the broker stays away, and a fleet of devices that lost the same
broker does not come back in lockstep. The cap can be lowered per call (an active SOS
retries within seconds, not minutes).
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self, cap: float | None = None) -> float:
        """The next wait, in seconds; counts an attempt."""
        top = min(self.cap if cap is None else cap, self.base * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return self._rng.uniform(top / 2, top)

    def reset(self) -> None:
        self.attempt = 0
