"""The uplink: bytes per fix on the wire, delivery rate through a real Mosquitto, and how
long an SOS takes from commit to the contact, idle and behind a draining backlog.

Fixes follow the bundled sample walk (Arthur's Seat) at 1.4 m/s, one per second, with
exact precision and full fields, as a receiver produces them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.clock import MonotonicClock
from device.mqtt import BrokerConfig
from device.outbox import Outbox
from device.records import Priority, Record, RecordKind
from device.uplink import Uplink, UplinkConfig
from device.wire import Topics, dumps, encode_track, owntracks_location
from sim.broker import Mosquitto
from sim.gps.route import Route
from sim.receiver import Receiver

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def walk(
    n: int, *, priority: Priority = Priority.ROUTINE, session: str | None = None
) -> list[Record]:
    route = Route.sample()
    rng = random.Random(1)
    out = []
    for i in range(n):
        p, course = route.at((i * 1.4) % route.length)
        t = T0 + timedelta(seconds=i)
        fix = {
            "t": t.isoformat().replace("+00:00", "Z"),
            "lat": p.lat + rng.gauss(0, 2e-5),
            "lon": p.lon + rng.gauss(0, 3e-5),
            "alt": p.alt + rng.gauss(0, 2),
            "spd": 1.4 + rng.gauss(0, 0.1),
            "crs": course,
            "acc": 3 + rng.random() * 3,
        }
        out.append(Record(RecordKind.FIX, t, {"fix": fix}, priority, session))
    return out


def wire_size() -> dict[str, Any]:
    records = walk(1000)
    box = "0123456789abcdef"  # outbox ids are 16 hex digits
    owntracks = statistics.mean(
        len(dumps(owntracks_location(r.data["fix"], at=r.time, tid="d1", battery={"pct": 80})))
        for r in records
    )
    out: dict[str, Any] = {"OwnTracks location, bytes per fix (payload)": round(owntracks, 1)}
    for batch in (500, 50, 1):
        sizes = [
            len(encode_track(box, [(j + 1, r) for j, r in enumerate(records[i : i + batch])]))
            for i in range(0, len(records), batch)
        ]
        per_fix = sum(sizes) / len(records)
        out[f"track, {batch} fix(es) per message, bytes per fix"] = round(per_fix, 1)
        out[f"track, {batch} per message / OwnTracks"] = round(per_fix / owntracks, 2)
    out["MQTT framing per track message (header, topic, ids, properties), bytes"] = framing()
    return out


def framing() -> int:
    """What MQTT adds to a ``track`` payload: fixed header, topic, packet id, and the
    properties the uplink sets (msg_id and seq user properties, expiry, format)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("msg_id", "0" * 20), ("seq", "1000-1499")]
    props.MessageExpiryInterval = 604800
    props.PayloadFormatIndicator = 1
    topic = Topics.for_device("dev-0001").track
    variable = 2 + len(topic) + 2 + len(props.pack())
    return 1 + 2 + variable  # remaining length takes 2 bytes for payloads up to 16 KiB


async def _delivery(tmp: Path, n: int) -> dict[str, float]:
    with Mosquitto(tmp / "broker", config="max_queued_messages 0\n") as broker:
        async with await Outbox.open(tmp / "o.db") as box:
            for r in walk(n):
                await box.add(r)
            cfg = UplinkConfig(device_id="bench", batch_count=1)
            up = Uplink(
                config=cfg,
                broker=BrokerConfig(host="127.0.0.1", port=broker.port),
                outbox=box,
                clock=MonotonicClock(),
            )
            rx = Receiver(
                BrokerConfig(host="127.0.0.1", port=broker.port, client_id=f"rx{n}"),
                Topics.for_device("bench"),
            )
            await rx.start()
            t0 = time.perf_counter()
            task = asyncio.create_task(up.run())
            # an SOS the moment the link comes back, with the whole backlog to drain
            busy = await _sos_latency(box, rx, 0)
            await rx.wait_for_seqs(n + 1, within=300)
            drain = time.perf_counter() - t0
            # SOS latency, idle: commit to the contact's receipt
            idle = [await _sos_latency(box, rx, k) for k in range(1, 16)]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await rx.close()
    return {
        "rate": n / drain,
        "idle_ms": statistics.median(idle) * 1000,
        "busy_ms": busy * 1000,
    }


async def _sos_latency(box: Outbox, rx: Receiver, k: int) -> float:
    rec = Record(RecordKind.SOS_START, T0, {"trigger": "bench"}, Priority.SOS, f"s{k}")
    t0 = time.perf_counter()
    seq = (await box.store(rec)).seq
    await rx.wait_until(lambda: any(x.seq == seq for x in rx.records[-50:]), within=60)
    return time.perf_counter() - t0


def run(n: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    out = wire_size()
    runs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="sos-bench-") as tmp:
            runs.append(asyncio.run(_delivery(Path(tmp), n)))
    out[f"delivery of a {n:,}-fix backlog via Mosquitto, fixes/s (median)"] = round(
        statistics.median(r["rate"] for r in runs)
    )
    out["SOS commit to contact, idle, ms (median)"] = round(
        statistics.median(r["idle_ms"] for r in runs), 1
    )
    out["SOS commit to contact, behind the backlog, ms (median)"] = round(
        statistics.median(r["busy_ms"] for r in runs), 1
    )
    return out
