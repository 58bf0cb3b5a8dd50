"""The button path: GPIO driver (with libgpiod's request faked: no GPIO chip here),
LED/buzzer patterns, and the whole gesture → countdown → SOS loop on a simulated clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import gpiod
import pytest

from sosbeacon.device.actuators import Cue
from sosbeacon.device.button import run_button
from sosbeacon.device.gesture import Edge, GestureDetector
from sosbeacon.device.records import MemoryRecorder, RecordKind
from sosbeacon.device.sos import Contact, SosConfig, SosController, SosState
from sosbeacon.hw.gpio import GpioButton, GpioIndicator
from sosbeacon.sim.button import ScriptedButton, long_press, multi_press
from sosbeacon.sim.clock import SimClock

# -- the loop, end to end on a simulated clock ------------------------------------------


async def setup() -> tuple[SosController, MemoryRecorder, SimClock, ScriptedButton, Any]:
    clock = SimClock(datetime(2026, 11, 22, tzinfo=UTC))
    store = MemoryRecorder()
    ctl = SosController(config=SosConfig(contacts=(Contact("Alice"),)), recorder=store, clock=clock)
    button = ScriptedButton(clock)
    task = asyncio.create_task(run_button(button, GestureDetector(), ctl, clock))
    return ctl, store, clock, button, task


async def play(
    clock: SimClock, button: ScriptedButton, pattern: list[tuple[float, float]], then: float = 0.0
) -> None:
    await clock.run_until(button.press(pattern))
    if then:
        await clock.advance(then)


async def test_long_press_then_countdown_then_sos() -> None:
    ctl, store, clock, button, task = await setup()
    await play(clock, button, long_press(3.5))
    assert ctl.state is SosState.COUNTDOWN  # fired at 3.0 s, while still held
    await clock.advance(5.0)
    assert ctl.state is SosState.ACTIVE
    (start,) = store.of(RecordKind.SOS_START)
    assert start.data["trigger"] == "button:long-press"
    task.cancel()


async def test_multi_press_starts_and_a_press_cancels() -> None:
    ctl, store, clock, button, task = await setup()
    await play(clock, button, multi_press(5))
    assert ctl.state is SosState.COUNTDOWN
    await play(clock, button, [(0.2, 0.0)])  # second thoughts
    assert ctl.state is SosState.IDLE
    await clock.advance(10)
    assert store.records == []
    task.cancel()


async def test_pocket_presses_do_nothing() -> None:
    ctl, store, clock, button, task = await setup()
    await play(clock, button, [(0.3, 1.0), (1.2, 0.7), (0.2, 0.2), (0.2, 0.9), (2.5, 1.0)])
    await clock.advance(10)
    assert ctl.state is SosState.IDLE
    assert store.records == []
    task.cancel()


# -- the GPIO driver, with libgpiod's request faked --------------------------------------


@dataclass
class FakeEvent:
    event_type: Any
    timestamp_ns: int


@dataclass
class FakeRequest:
    """Stands in for gpiod.LineRequest: a pipe gives the real fd the loop watches."""

    value: Any
    events: list[FakeEvent] = field(default_factory=list)
    set_calls: list[dict[Any, Any]] = field(default_factory=list)
    released: bool = False

    def __post_init__(self) -> None:
        self._r, self._w = os.pipe()

    @property
    def fd(self) -> int:
        return self._r

    def push(self, pressed: bool, t: float) -> None:
        kind = gpiod.EdgeEvent.Type.RISING_EDGE if pressed else gpiod.EdgeEvent.Type.FALLING_EDGE
        self.events.append(FakeEvent(kind, int(t * 1e9)))
        os.write(self._w, b"x")

    def get_value(self, line: Any) -> Any:
        return self.value

    def read_edge_events(self) -> list[FakeEvent]:
        os.read(self._r, 1024)
        out, self.events = self.events, []
        return out

    def set_values(self, values: dict[Any, Any]) -> None:
        self.set_calls.append(dict(values))

    def release(self) -> None:
        self.released = True
        os.close(self._r)
        os.close(self._w)


def fake_gpiod(request: FakeRequest, calls: list[tuple[Any, ...]]) -> Any:
    def request_lines(path: str, consumer: str, config: dict[Any, Any]) -> FakeRequest:
        calls.append((path, consumer, config))
        return request

    return SimpleNamespace(
        line=gpiod.line,
        LineSettings=gpiod.LineSettings,
        EdgeEvent=gpiod.EdgeEvent,
        request_lines=request_lines,
    )


async def collect(button: GpioButton, n: int) -> list[Edge]:
    out: list[Edge] = []
    async with asyncio.timeout(5), contextlib.aclosing(button.edges()) as edges:
        async for e in edges:
            out.append(e)
            if len(out) == n:
                break
    return out


async def test_gpio_button_requests_the_line_as_configured_and_yields_kernel_times() -> None:
    req = FakeRequest(value=gpiod.line.Value.INACTIVE)
    calls: list[tuple[Any, ...]] = []
    button = GpioButton(
        chip="/dev/gpiochip4",
        line="GPIO17",
        bias="pull-up",
        active_low=True,
        kernel_debounce=0.01,
        gpiod_module=fake_gpiod(req, calls),
    )
    getting = asyncio.create_task(collect(button, 2))
    await asyncio.sleep(0.01)
    req.push(True, 100.25)
    req.push(False, 100.40)
    edges = await getting
    assert edges == [Edge(100.25, True), Edge(100.40, False)]
    ((path, consumer, config),) = calls
    settings = config["GPIO17"]
    assert path == "/dev/gpiochip4" and consumer == "sosbeacon-button"
    assert settings.edge_detection == gpiod.line.Edge.BOTH
    assert settings.bias == gpiod.line.Bias.PULL_UP
    assert settings.active_low is True
    assert settings.event_clock == gpiod.line.Clock.MONOTONIC
    assert settings.debounce_period.total_seconds() == pytest.approx(0.01)
    assert req.released


async def test_button_held_at_start_up_is_ignored_until_released() -> None:
    req = FakeRequest(value=gpiod.line.Value.ACTIVE)
    button = GpioButton(gpiod_module=fake_gpiod(req, []))
    getting = asyncio.create_task(collect(button, 2))
    await asyncio.sleep(0.01)
    req.push(False, 5.0)  # the stuck press finally releases: not reported
    req.push(True, 9.0)
    req.push(False, 9.2)
    assert await getting == [Edge(9.0, True), Edge(9.2, False)]


def test_bad_bias_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="pull-up, pull-down"):
        GpioButton(bias="up")


async def test_indicator_patterns_drive_led_and_buzzer() -> None:
    req = FakeRequest(value=None)
    ind = GpioIndicator(led=27, buzzer=22, gpiod_module=fake_gpiod(req, []))
    await ind.cue(Cue.COUNTDOWN)
    assert ind._task is not None
    await asyncio.wait_for(ind._task, 5)  # the pattern played to its end
    on, off = gpiod.line.Value.ACTIVE, gpiod.line.Value.INACTIVE
    assert req.set_calls[0] == {27: on, 22: on}
    assert req.set_calls[-1] == {27: off, 22: off}
    ind.close()
