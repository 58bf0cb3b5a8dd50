"""``sos-sim fleet``: many simulated devices against one broker, for load testing it.

Each device is the full daemon pipeline (``device.daemon.Daemon`` with the simulator
backend: a receiver on its own pty, the real decoder, the SOS controller, its own durable
outbox and its own MQTT connection), all in this one process. Every device starts an SOS
and records a route point every one or two seconds; a monitor subscribed to
``sosbeacon/#`` prints, per second, the records that arrived and the latency percentiles
from the fix (or event) time to arrival, and checks per outbox that no seq is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sosbeacon.device import config as config_mod
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.mqtt import BrokerConfig, Connection, MqttError
from sosbeacon.device.parts import load_backend
from sosbeacon.device.wire import Received, SeqLedger, decode_sos, decode_track
from sosbeacon.sim.broker import Mosquitto

log = logging.getLogger(__name__)


@dataclass
class Monitor:
    broker: BrokerConfig
    ledgers: dict[str, SeqLedger] = field(default_factory=dict)
    #: (arrival time, latency in s) of every record
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    undecodable: int = 0

    async def run(self, ready: asyncio.Event) -> None:
        conn = Connection(self.broker)
        await conn.connect(clean_start=True)
        await conn.subscribe("sosbeacon/#")
        ready.set()
        while True:
            m = await conn.messages.get()
            now = time.time()
            try:
                if m.topic.endswith("/track"):
                    got: list[Received] = decode_track(m.payload)
                elif m.topic.endswith("/sos") and m.payload:
                    got = [decode_sos(m.payload)]
                else:
                    got = []
            except (ValueError, KeyError, TypeError, IndexError):
                self.undecodable += 1
                got = []
            for r in got:
                led = self.ledgers.setdefault(r.box, SeqLedger())
                if r.seq not in led.seen:
                    self.arrivals.append((time.monotonic(), now - r.t))
                led.add([r])
            conn.ack(m)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_fleet(
    devices: int,
    *,
    broker_url: str | None,
    duration: float,
    workdir: Path,
    out: FleetOut,
) -> int:
    broker: Mosquitto | None = None
    if broker_url is None:
        broker = Mosquitto(workdir / "broker", config="max_queued_messages 0\n")
        broker.start()
        broker_url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        url = urlsplit(broker_url)
        monitor = Monitor(
            BrokerConfig(
                host=url.hostname or "localhost", port=url.port or 1883, client_id="fleet-monitor"
            )
        )
        ready = asyncio.Event()
        mon = asyncio.create_task(monitor.run(ready))
        await asyncio.wait_for(ready.wait(), 15)
        backend = load_backend("sim")
        daemons = []
        for i in range(devices):
            cfg = config_mod.load(
                text="",
                overrides={
                    "device.id": f"fleet-{i:04d}",
                    "device.data_dir": str(workdir / f"d{i:04d}"),
                    "sos.contacts": [{"name": "Load test"}],
                    "sos.countdown": 0,
                    "sos.min_distance": 0,
                    "mqtt.broker": broker_url,
                    "uplink.owntracks_topic": "",
                },
            )
            daemons.append(Daemon(cfg, backend, handle_signals=False))
        tasks = [asyncio.create_task(d.run()) for d in daemons]
        t_start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in daemons)), 60)
        out(f"{devices} devices up in {time.monotonic() - t_start:.1f} s; starting an SOS on each")
        for d in daemons:
            assert d.controller is not None
            await d.controller.start(trigger="fleet", now=True)
        out("latency: from the fix (or SOS event) time to its arrival at the monitor")
        out(f"{'t':>4}  {'arrived/s':>9}  {'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}")
        t0 = time.monotonic()
        seen = 0
        per_second = []
        for sec in range(1, int(duration) + 1):
            await asyncio.sleep(t0 + sec - time.monotonic())
            batch = monitor.arrivals[seen:]
            seen = len(monitor.arrivals)
            lat = [x[1] * 1000 for x in batch]
            per_second.append(len(batch))
            out(
                f"{sec:>4}  {len(batch):>9}  {percentile(lat, 0.5):>7.1f}  "
                f"{percentile(lat, 0.95):>7.1f}  {percentile(lat, 0.99):>7.1f}"
            )
        for d in daemons:
            assert d.controller is not None
            await d.controller.stop(trigger="fleet")
        # let every outbox drain, then stop
        async with asyncio.timeout(60):
            for d in daemons:
                assert d.uplink is not None
                await d.uplink.drained()
        await asyncio.sleep(0.5)
        for d in daemons:
            d.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        mon.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await mon
        lost = sum(len(led.missing()) for led in monitor.ledgers.values())
        dup = sum(led.duplicates for led in monitor.ledgers.values())
        total = sum(len(led.seen) for led in monitor.ledgers.values())
        lat = [x[1] * 1000 for x in monitor.arrivals]
        out(
            f"\n{len(monitor.ledgers)} outboxes, {total} records received, {lost} lost, "
            f"{dup} duplicates; {statistics.median(per_second) if per_second else 0:.0f} "
            f"records/s (median second); latency p50 {percentile(lat, 0.5):.1f} ms, "
            f"p95 {percentile(lat, 0.95):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms"
        )
        return 0 if lost == 0 and len(monitor.ledgers) == devices else 1
    finally:
        if broker is not None:
            broker.stop()


class FleetOut:
    def __call__(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(devices: int, broker_url: str | None, duration: float) -> int:
    logging.getLogger("sosbeacon.device").setLevel(logging.ERROR)
    logging.getLogger("sosd").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="sos-fleet-") as tmp:
        return asyncio.run(
            run_fleet(
                devices, broker_url=broker_url, duration=duration, workdir=Path(tmp), out=FleetOut()
            )
        )
