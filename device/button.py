"""From button edges to SOS decisions: the loop that joins a :class:`ButtonSource`, the
gesture detector and the SOS controller, with the detector's timers on the injectable
clock (a long press completes while the button is still held)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from sosbeacon.device.clock import Clock
from sosbeacon.device.gesture import Detected, Edge, GestureDetector, Press
from sosbeacon.device.sos import SosController


class ButtonSource(Protocol):
    def edges(self) -> AsyncIterator[Edge]:
        """Level changes with timestamps on the clock's monotonic time base."""
        ...


async def run_button(
    source: ButtonSource,
    detector: GestureDetector,
    controller: SosController,
    clock: Clock,
) -> None:
    queue: asyncio.Queue[Edge | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for edge in source.edges():
                await queue.put(edge)
        finally:
            await queue.put(None)

    async def deliver(events: list[Detected | Press]) -> None:
        for ev in events:
            await controller.on_button(ev)

    reader = asyncio.create_task(pump())
    try:
        while True:
            deadline = detector.deadline()
            get = asyncio.ensure_future(queue.get())
            waits: set[asyncio.Future[object]] = {get}  # type: ignore[arg-type]
            timer = None
            if deadline is not None:
                timer = asyncio.ensure_future(clock.sleep(max(0.0, deadline - clock.monotonic())))
                waits.add(timer)  # type: ignore[arg-type]
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                if timer is not None:
                    timer.cancel()
                edge = get.result()
                if edge is None:
                    return
                await deliver(detector.on_edge(edge))
            else:
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await get
                # The timer fired, so the deadline has been reached even where float
                # rounding left the clock an ulp short of it.
                assert deadline is not None
                await deliver(detector.on_timer(max(clock.monotonic(), deadline)))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
