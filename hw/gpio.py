"""The SOS button, status LED and buzzer on GPIO lines, through libgpiod v2 (``gpiod``).

Edge events carry the kernel's CLOCK_MONOTONIC timestamps, the same time base as
``time.monotonic()``, so gesture timing does not depend on how fast Python wakes up. The
request's file descriptor is watched by the event loop: no polling.

A button held at start-up (stuck, or pressed in a bag) is ignored until it is released,
so a boot can never turn into a long press.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sosbeacon.device.actuators import Cue
from sosbeacon.device.gesture import Edge

log = logging.getLogger(__name__)

BIAS_NAMES = ("pull-up", "pull-down", "disabled", "as-is")


def _gpiod() -> Any:
    import gpiod

    return gpiod


class GpioButton:
    """A :class:`device.button.ButtonSource` on one GPIO line."""

    def __init__(
        self,
        *,
        chip: str = "/dev/gpiochip0",
        line: int | str = 17,
        bias: str = "pull-up",
        active_low: bool = True,
        kernel_debounce: float = 0.0,
        gpiod_module: Any = None,
    ) -> None:
        if bias not in BIAS_NAMES:
            raise ValueError(f"button.bias must be one of {', '.join(BIAS_NAMES)}, not {bias!r}")
        self.chip = chip
        self.line = line
        self.bias = bias
        self.active_low = active_low
        self.kernel_debounce = kernel_debounce
        self._gpiod = gpiod_module if gpiod_module is not None else _gpiod()

    def _request(self) -> Any:
        gpiod = self._gpiod
        line_mod = gpiod.line
        settings = gpiod.LineSettings(
            direction=line_mod.Direction.INPUT,
            edge_detection=line_mod.Edge.BOTH,
            bias={
                "pull-up": line_mod.Bias.PULL_UP,
                "pull-down": line_mod.Bias.PULL_DOWN,
                "disabled": line_mod.Bias.DISABLED,
                "as-is": line_mod.Bias.AS_IS,
            }[self.bias],
            active_low=self.active_low,
            debounce_period=timedelta(seconds=self.kernel_debounce),
            event_clock=line_mod.Clock.MONOTONIC,
        )
        try:
            return gpiod.request_lines(
                self.chip, consumer="sosbeacon-button", config={self.line: settings}
            )
        except (OSError, ValueError) as exc:
            raise OSError(
                f"cannot request GPIO line {self.line!r} on {self.chip}: {exc}. Check the "
                "chip and line (gpioinfo lists them), that no other program holds the line, "
                "and that this user is in the 'gpio' group."
            ) from exc

    async def edges(self) -> AsyncIterator[Edge]:
        gpiod = self._gpiod
        request = self._request()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(request.fd, ready.set)
        try:
            held_at_start = request.get_value(self.line) == gpiod.line.Value.ACTIVE
            if held_at_start:
                log.warning(
                    "SOS button is pressed at start-up (stuck?); ignoring it until it is released"
                )
            rising = gpiod.EdgeEvent.Type.RISING_EDGE
            while True:
                await ready.wait()
                ready.clear()
                for ev in request.read_edge_events():
                    pressed = ev.event_type == rising  # active_low is applied by the kernel
                    if held_at_start:
                        held_at_start = pressed
                        continue
                    yield Edge(ev.timestamp_ns / 1e9, pressed)
        finally:
            loop.remove_reader(request.fd)
            request.release()


#: (led, buzzer, seconds) steps per cue; SOS_ACTIVE repeats until another cue
PATTERNS: dict[Cue, list[tuple[bool, bool, float]]] = {
    Cue.COUNTDOWN: [(True, True, 0.15), (False, False, 0.0)],
    Cue.SOS_ACTIVE: [(True, False, 0.2), (False, False, 1.8)],
    Cue.CANCELLED: [(True, True, 0.1), (False, False, 0.1), (True, True, 0.1), (False, False, 0)],
    Cue.ENDED: [(True, True, 0.6), (False, False, 0.0)],
    Cue.REFUSED: [(True, True, 1.0), (False, False, 0.0)],
    Cue.ACKNOWLEDGED: [(True, True, 0.1), (False, False, 0.1)] * 3,
    Cue.LOW_BATTERY: [(True, False, 0.05), (False, False, 0.0)],
}


class GpioIndicator:
    """Status LED and buzzer on output lines (either may be absent)."""

    def __init__(
        self,
        *,
        chip: str = "/dev/gpiochip0",
        led: int | str | None = 27,
        buzzer: int | str | None = 22,
        gpiod_module: Any = None,
    ) -> None:
        self.chip = chip
        self.led = led
        self.buzzer = buzzer
        self._gpiod = gpiod_module if gpiod_module is not None else _gpiod()
        self._request: Any = None
        self._task: asyncio.Task[None] | None = None

    def _lines(self) -> list[int | str]:
        return [x for x in (self.led, self.buzzer) if x is not None]

    def _open(self) -> Any:
        if self._request is None:
            gpiod = self._gpiod
            out = gpiod.LineSettings(
                direction=gpiod.line.Direction.OUTPUT, output_value=gpiod.line.Value.INACTIVE
            )
            self._request = gpiod.request_lines(
                self.chip, consumer="sosbeacon-indicator", config={tuple(self._lines()): out}
            )
        return self._request

    def _set(self, led: bool, buzzer: bool) -> None:
        gpiod = self._gpiod
        on, off = gpiod.line.Value.ACTIVE, gpiod.line.Value.INACTIVE
        values = {}
        if self.led is not None:
            values[self.led] = on if led else off
        if self.buzzer is not None:
            values[self.buzzer] = on if buzzer else off
        if values:
            self._open().set_values(values)

    async def cue(self, cue: Cue) -> None:
        """Start the pattern for ``cue`` (replacing the one showing) and return."""
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._show(PATTERNS[cue], repeat=cue is Cue.SOS_ACTIVE))

    async def _show(self, steps: list[tuple[bool, bool, float]], *, repeat: bool) -> None:
        try:
            while True:
                for led, buzzer, seconds in steps:
                    self._set(led, buzzer)
                    if seconds:
                        await asyncio.sleep(seconds)
                if not repeat:
                    return
        except OSError:
            log.exception("LED/buzzer output failed")
        finally:
            with contextlib.suppress(OSError):
                self._set(False, False)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._request is not None:
            self._request.release()
            self._request = None
