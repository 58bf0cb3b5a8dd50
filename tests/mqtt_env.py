"""A device's uplink, a throwaway Mosquitto and a contact's receiver, wired for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.commands import CommandHandler
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Limits, Outbox
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import Uplink, UplinkConfig
from sosbeacon.device.wire import Topics
from sosbeacon.sim.broker import Mosquitto, find_mosquitto
from sosbeacon.sim.receiver import Receiver
from tests.conftest import require

#: the broker saves its state on every change, so a kill -9 loses no session or queued
#: message it acknowledged to anyone; contacts' queues are unbounded
DURABLE = "autosave_interval 1\nautosave_on_changes true\nmax_queued_messages 0\n"
#: a receiver's time for records made up by the tests: data to report, never compared
#: with a clock (the outbox and the uplink keep their schedules on the device's clock)
T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
#: receivers whose dates are off: a GPS week rollover (1024 weeks behind), one 20 years
#: ahead
RECEIVER_OFFSETS = {
    "on-time": timedelta(0),
    "rollover": -timedelta(weeks=1024),
    "20-years-ahead": timedelta(days=20 * 365),
}


def need_mosquitto() -> str:
    path = find_mosquitto()
    require("mosquitto", path is not None, "sudo apt-get install mosquitto")
    assert path is not None
    return path


def fix_record(
    i: int,
    *,
    session: str | None = None,
    priority: Priority = Priority.LIVE,
    receiver_offset: timedelta = timedelta(0),
) -> Record:
    """A fix record dated by its receiver (``T0`` plus ``i`` seconds, plus the receiver's
    offset), as a recorder that trusts the receiver's date would write it."""
    t = T0 + receiver_offset + timedelta(seconds=i)
    return Record(
        kind=RecordKind.FIX,
        time=t,
        data={
            "fix": {
                "t": t.isoformat().replace("+00:00", "Z"),
                "lat": 55.944 + i * 1e-5,
                "lon": -3.161 - i * 1e-5,
                "alt": 250.0,
                "spd": 1.4,
                "crs": 135.0,
                "acc": 4.2,
            }
        },
        priority=priority,
        session=session,
    )


@dataclass
class Rig:
    broker: Mosquitto
    outbox: Outbox
    uplink: Uplink
    receiver: Receiver
    device_broker: BrokerConfig
    task: asyncio.Task[None] | None = None

    def start_uplink(self) -> None:
        self.task = asyncio.create_task(self.uplink.run())

    async def stop_uplink(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    config: UplinkConfig | None = None,
    broker_config: str = DURABLE,
    device_broker: BrokerConfig | None = None,
    receiver_broker: BrokerConfig | None = None,
    broker_port: int | None = None,
    commands: CommandHandler | None = None,
    start: bool = True,
    limits: Limits | None = None,
    outbox_path: Path | None = None,
    **uplink_kw: Any,
) -> AsyncIterator[Rig]:
    binary = need_mosquitto()
    cfg = config or UplinkConfig(device_id="dev1", batch_count=1, backoff_max=2.0)
    broker = Mosquitto(tmp_path / "broker", config=broker_config, binary=binary, port=broker_port)
    broker.start()
    try:
        dev = device_broker or BrokerConfig(host="127.0.0.1", port=broker.port)
        async with await Outbox.open(outbox_path or tmp_path / "outbox.db", limits) as box:
            uplink = Uplink(
                config=cfg,
                broker=dev,
                outbox=box,
                clock=MonotonicClock(),
                commands=commands,
                **uplink_kw,
            )
            receiver = Receiver(
                receiver_broker
                or BrokerConfig(host="127.0.0.1", port=broker.port, client_id="contact"),
                Topics.for_device(cfg.device_id, cfg.prefix),
                owntracks_topic=uplink.owntracks_topic or None,
            )
            await receiver.start()
            r = Rig(broker, box, uplink, receiver, dev)
            if start:
                r.start_uplink()
            try:
                yield r
            finally:
                await r.stop_uplink()
                await receiver.close()
    finally:
        broker.stop()
