"""Recognise the SOS gesture from timestamped button edges. Pure logic, no I/O.

Two gestures start an SOS (both configurable):

* a **long press**: the button held for ``long_press`` seconds (default 3 s); it fires
  while the button is still held, at the moment the hold reaches that length;
* a **rapid multi-press**: ``presses`` presses (default 5), each gap between a release
  and the next press shorter than ``max_gap`` (default 0.6 s); it fires on the last
  release.

What must *not* fire: a contact that bounces (edges closer than ``debounce`` are the same
press), and bursts too fast for a human finger — a press shorter than ``min_press`` or a
gap shorter than ``min_gap`` is not a human press, and it breaks the sequence it is in.

Debounce keeps latency low: the first edge is taken at once, then further edges are
ignored for ``debounce`` seconds; if the line ended that window at the other level, that
level is taken at the end of the window. Call :meth:`GestureDetector.on_timer` at
:meth:`GestureDetector.deadline` (the long press and the debounce window need a timer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Edge:
    """The button changed level at ``t`` (seconds on the monotonic clock)."""

    t: float
    pressed: bool


class Gesture(enum.Enum):
    LONG_PRESS = "long-press"
    MULTI_PRESS = "multi-press"


@dataclass(frozen=True, slots=True)
class GestureConfig:
    long_press: float = 3.0
    presses: int = 5
    max_gap: float = 0.6
    debounce: float = 0.03
    min_press: float = 0.05
    min_gap: float = 0.05

    def validate(self) -> None:
        if self.presses < 2:
            raise ValueError("gesture.presses must be at least 2")
        if not 0 < self.debounce < self.min_press < self.long_press:
            raise ValueError("expected 0 < debounce < min_press < long_press")
        if not self.debounce < self.min_gap < self.max_gap:
            raise ValueError("expected debounce < min_gap < max_gap")


@dataclass(frozen=True, slots=True)
class Detected:
    gesture: Gesture
    #: when the gesture completed (this is what SOS latency is measured from)
    t: float


@dataclass(frozen=True, slots=True)
class Press:
    """An accepted (debounced) press, handed to listeners that care about single presses,
    such as a countdown waiting to be cancelled."""

    t: float


Event = Detected | Press


class GestureDetector:
    def __init__(self, config: GestureConfig | None = None) -> None:
        self.config = config or GestureConfig()
        self.config.validate()
        self._raw = False  # line level as last reported
        self._level = False  # accepted level
        self._lockout_until: float | None = None
        self._down_at: float | None = None
        self._long_fired = False
        self._run = 0  # presses in the current multi-press run
        self._last_up: float | None = None

    def deadline(self) -> float | None:
        """When :meth:`on_timer` must be called next, if at all."""
        times = []
        if self._lockout_until is not None:
            times.append(self._lockout_until)
        if self._level and self._down_at is not None and not self._long_fired:
            times.append(self._down_at + self.config.long_press)
        return min(times) if times else None

    def on_edge(self, edge: Edge) -> list[Event]:
        # Settle the window that ended before this edge with the level the line had
        # then, and only then take the new level.
        out = self._expire(edge.t)
        self._raw = edge.pressed
        if self._lockout_until is not None and edge.t < self._lockout_until:
            return out  # a bounce: settled when the window ends
        if edge.pressed != self._level:
            out.extend(self._accept(edge.pressed, edge.t))
        return out

    def on_timer(self, now: float) -> list[Event]:
        return self._expire(now)

    def _expire(self, now: float) -> list[Event]:
        out: list[Event] = []
        # A long press completes while held; checked before and after debounce windows.
        if self._lockout_until is not None and now >= self._lockout_until:
            end = self._lockout_until
            out.extend(self._long(end))
            self._lockout_until = None
            if self._raw != self._level:
                out.extend(self._accept(self._raw, end))
        out.extend(self._long(now))
        return out

    def _long(self, now: float) -> list[Event]:
        c = self.config
        if (
            self._level
            and self._down_at is not None
            and not self._long_fired
            and now >= self._down_at + c.long_press
        ):
            self._long_fired = True
            self._run = 0
            self._last_up = None
            return [Detected(Gesture.LONG_PRESS, self._down_at + c.long_press)]
        return []

    def _accept(self, pressed: bool, t: float) -> list[Event]:
        c = self.config
        self._level = pressed
        self._lockout_until = t + c.debounce
        if pressed:
            gap = None if self._last_up is None else t - self._last_up
            if gap is not None and gap < c.min_gap:
                self._run = -1  # too fast to be human: this press cannot count
            elif gap is None or gap >= c.max_gap:
                self._run = 0  # a fresh start
            self._down_at = t
            self._long_fired = False
            return [Press(t)]
        # release
        out: list[Event] = []
        down, self._down_at = self._down_at, None
        self._last_up = t
        if self._long_fired or down is None:
            self._run = 0
            return out
        held = t - down
        if held < c.min_press or self._run < 0:
            self._run = -1  # a twitch, or part of a burst: the run is broken
            return out
        self._run += 1
        if self._run >= c.presses:
            self._run = 0
            self._last_up = None
            out.append(Detected(Gesture.MULTI_PRESS, t))
        return out
