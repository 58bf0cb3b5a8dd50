"""Reconnect backoff and batching decisions, on simulated time."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import pytest

from sosbeacon.device.backoff import Backoff
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Outbox, Pending
from sosbeacon.device.uplink import Uplink, UplinkConfig, routine_due
from sosbeacon.sim.clock import SimClock
from tests.mqtt_env import T0, fix_record


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    b = Backoff(base=1, cap=60, rng=random.Random(1))
    waits = [b.next() for _ in range(12)]
    for n, w in enumerate(waits):
        top = min(60, 2**n)
        assert top / 2 <= w <= top
    assert len({round(w, 6) for w in waits[7:]}) > 1  # capped, but not in lockstep
    assert b.next(cap=10) <= 10  # an SOS lowers the cap
    b.reset()
    assert b.next() <= 1
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0, cap=1)


def test_routine_batches_go_by_count_or_age() -> None:
    cfg = UplinkConfig(device_id="d", batch_count=10, batch_interval=300)
    assert routine_due(Pending(0, 0, None), T0, cfg) is None
    assert routine_due(Pending(0, 10, T0), T0, cfg) == 0  # enough of them
    assert routine_due(Pending(0, 3, T0), T0 + timedelta(seconds=100), cfg) == 200
    assert routine_due(Pending(0, 3, T0), T0 + timedelta(seconds=301), cfg) == 0  # old enough
    # committed "in the future": the system clock was set back since; waiting for it to
    # catch up could hold the batch for years, so it goes now
    assert routine_due(Pending(0, 3, T0), T0 - timedelta(days=400), cfg) == 0


async def test_an_sos_cuts_a_long_reconnect_wait_short(tmp_path: Path) -> None:
    clock = SimClock(T0)
    sos = False
    async with await Outbox.open(tmp_path / "o.db", clock=clock) as box:
        up = Uplink(
            config=UplinkConfig(device_id="d", backoff_max=300, backoff_max_sos=10),
            broker=BrokerConfig(port=1),
            outbox=box,
            clock=clock,
            sos_active=lambda: sos,
            rng=random.Random(2),
        )
        up._reconnect.attempt = 20  # long into an outage: waits of 150-300 s
        waiting = asyncio.create_task(up._wait_reconnect())
        await clock.advance(100)
        assert not waiting.done()
        sos = True
        await box.store(fix_record(1, session="s"))  # the SOS record wakes the wait
        await clock.advance(0)
        # the wait is now capped at 10 s from its start, which has passed
        await asyncio.wait_for(waiting, 1)
        assert clock.monotonic() == pytest.approx(100)
