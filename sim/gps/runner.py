"""Drive a :class:`PtyPort` in real time: a simulated receiver, or a captured log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sosbeacon.sim.gps.generator import EpochTruth, SimReceiver
from sosbeacon.sim.gps.pty import PtyPort

log = logging.getLogger(__name__)


def capture_lines(path: Path) -> list[bytes]:
    """The bytes of a capture as gpsfake sends them: ``#`` comment lines left out."""
    return [ln for ln in path.read_bytes().splitlines(keepends=True) if not ln.startswith(b"#")]


async def run_receiver(
    receiver: SimReceiver,
    port: PtyPort,
    *,
    duration: float | None = None,
    on_epoch: Callable[[EpochTruth], None] | None = None,
) -> int:
    """Send one epoch per period, on the wall clock, until ``duration`` (or forever).

    Returns the number of epochs sent. If the line is too slow for the update rate (10 Hz
    at 9600 baud does not fit), the receiver falls behind, as a real one would drop
    sentences; a warning says which baud rate is needed.
    """
    t0 = time.monotonic()
    n = 0
    warned = False
    while duration is None or n * receiver.period < duration:
        receiver.hear(port.read_nowait())
        data, truth = receiver.epoch(n)
        if receiver.silent(n):
            data = b""
        if port.baudrate and not warned:
            need = len(data) * 10 * receiver.rate_hz
            if need > port.baudrate:
                log.warning(
                    "%d bytes per epoch at %.0f Hz need about %d baud; the line "
                    "runs at %d and will fall behind",
                    len(data),
                    receiver.rate_hz,
                    need,
                    port.baudrate,
                )
                warned = True
        if data:
            await port.write(data)
        if on_epoch is not None:
            on_epoch(truth)
        n += 1
        delay = t0 + n * receiver.period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return n


async def replay_capture(path: Path, port: PtyPort, *, line_delay: float = 0.0) -> int:
    """Send a captured log's lines, paced by the port's baud rate (and ``line_delay``)."""
    sent = 0
    for line in capture_lines(path):
        await port.write(line)
        sent += len(line)
        if line_delay:
            await asyncio.sleep(line_delay)
    return sent
