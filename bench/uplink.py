"""The uplink, measured through a real Mosquitto on loopback, each figure beside its
baseline from the same run:

* SOS latency: gesture complete (countdown 0) to the session's ``sos-start`` record at a
  subscriber in a process of its own (as the relay is), p50/p99 over 200 triggers, with
  an empty outbox and while a 100,000-fix backlog drains; beside it the raw MQTT publish
  to the same subscriber (paho driven through our connection, after the same quiet).
  The device's SOS path is also timed stage by stage (gesture to store, the durable
  commit, the take and packing up to the publish, the way to the subscriber), to say
  where the time above raw goes.
* Backlog drain: 86,400 fixes (a day at 1 Hz) stored while offline, then the link comes
  back: fixes/s until all are acknowledged; beside it the same fixes published one per
  message with plain paho at QoS 1.
* Bytes on the wire per fix (payload and MQTT framing) beside an OwnTracks location.

Fixes follow the bundled sample walk at 1.4 m/s, one per second, exact precision.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.gesture import Detected, Gesture
from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.outbox import Outbox
from sosbeacon.device.records import Priority, Record, RecordKind, Stored
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.device.uplink import Uplink, UplinkConfig
from sosbeacon.device.wire import (
    Topics,
    dumps,
    encode_stored,
    encode_track,
    owntracks_location,
    track_row,
)
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.fleet import percentile
from sosbeacon.sim.gps.route import Route

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BOX = "0123456789abcdef"  # outbox ids are 16 hex digits
REPO = Path(__file__).resolve().parents[1]
#: seconds of quiet before each SOS gesture, and before each raw publish of the baseline:
#: after a quiet moment a message costs more (the CPUs and the processes on the way were
#: asleep: 0.25 ms back to back, 0.9 ms after 20 ms of quiet on the 2-core machine of
#: docs/performance.md), so both sides of the comparison pay it
QUIET = 0.02


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


def framing(topic: str, payload_len: int, *, ids: bool) -> int:
    """The bytes MQTT adds to a QoS 1 PUBLISH: fixed header, topic, packet id, and the
    properties (ours: msg_id and seq user properties, expiry, format; OwnTracks: none)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if ids:
        props.UserProperty = [("msg_id", "0" * 20), ("seq", "1000-1499")]
        props.MessageExpiryInterval = 604800
        props.PayloadFormatIndicator = 1
    variable = 2 + len(topic) + 2 + len(props.pack())
    remaining = variable + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + variable


def wire_size() -> dict[str, Any]:
    records = walk(1000)
    ot_topic = "owntracks/sosbeacon/dev-0001"
    ot = [
        len(dumps(owntracks_location(r.data["fix"], at=r.time, tid="d1", battery={"pct": 80})))
        for r in records
    ]
    ot_wire = statistics.mean(n + framing(ot_topic, n, ids=False) for n in ot)
    out: dict[str, Any] = {
        "OwnTracks location per fix, bytes (payload + MQTT)": round(ot_wire, 1),
    }
    track = Topics.for_device("dev-0001").track
    for batch in (500, 1):
        total = 0
        for i in range(0, len(records), batch):
            chunk = [
                Stored(j + 1, None, r, track_row(r)) for j, r in enumerate(records[i : i + batch])
            ]
            n = len(encode_track(BOX, chunk))
            total += n + framing(track, n, ids=True)
        per_fix = total / len(records)
        label = "a 500-fix batch" if batch > 1 else "one fix per message (live SOS point)"
        out[f"track, {label}: bytes per fix (payload + MQTT)"] = round(per_fix, 1)
        out[f"track, {label}: / OwnTracks"] = round(per_fix / ot_wire, 2)
    return out


# -- SOS latency -------------------------------------------------------------------------


class Subscriber:
    """What reached the subscriber process (``bench/subscriber.py``), and when, on the
    system's monotonic clock (``time.perf_counter``): a process of its own, as the relay
    is, so the device's event loop, busy after a send, does not delay the reading."""

    def __init__(self) -> None:
        #: ``sos`` records by ``box:seq`` (a broker may still hold another outbox's
        #: retained records): when the first copy arrived, and its kind
        self.arrivals: dict[str, tuple[float, str]] = {}
        #: when each message that is not an ``sos`` record arrived
        self.others: list[float] = []
        self._arrived = asyncio.Event()

    def _line(self, line: str) -> None:
        t, _topic, record, kind = line.split()
        if record == "-":
            self.others.append(float(t))
        else:
            self.arrivals.setdefault(record, (float(t), kind))
        self._arrived.set()

    async def _until(self, found: Callable[[], float | None]) -> float:
        while True:
            self._arrived.clear()
            got = found()
            if got is not None:
                return got
            await asyncio.wait_for(self._arrived.wait(), 30)

    async def arrival(self, box: str, kind: RecordKind, before: set[str]) -> float:
        """When the first ``kind`` record of outbox ``box`` not in ``before`` arrived."""
        mine = f"{box}:"

        def found() -> float | None:
            new = [
                t for r, (t, k) in self.arrivals.items()
                if r.startswith(mine) and r not in before and k == kind.value
            ]  # fmt: skip
            return min(new) if new else None

        return await self._until(found)

    async def other(self, index: int) -> float:
        """When the ``index``-th message that is not an ``sos`` record arrived."""
        return await self._until(lambda: self.others[index] if len(self.others) > index else None)


@contextlib.asynccontextmanager
async def subscriber(port: int, *topics: str) -> AsyncIterator[Subscriber]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.subscriber", str(port), *topics,
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    sub = Subscriber()

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            sub._line(line.decode())

    reader: asyncio.Task[None] | None = None
    try:
        ready = await asyncio.wait_for(proc.stdout.readline(), 30)
        if ready != b"ready\n":
            raise RuntimeError(f"the bench's subscriber did not start: {ready!r}")
        reader = asyncio.create_task(read())
        yield sub
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        proc.terminate()
        await proc.wait()


@dataclass
class Device:
    outbox: Outbox
    controller: SosController
    uplink: Uplink
    #: the subscriber process, on the device's ``sos`` topic
    sub: Subscriber


@contextlib.asynccontextmanager
async def device(
    tmp: Path, port: int, backlog: int = 0, contacts: tuple[Contact, ...] = (Contact("bench"),)
) -> AsyncIterator[Device]:
    clock = MonotonicClock()
    async with (
        await Outbox.open(tmp / f"o{backlog}.db", clock=clock) as box,
        subscriber(port, Topics.for_device("bench").sos) as sub,
    ):
        if backlog:
            await asyncio.gather(*(box.store(r) for r in walk(backlog)))
        ctl = SosController(
            config=SosConfig(contacts=contacts, countdown=0),
            recorder=box,
            clock=clock,
        )
        up = Uplink(
            config=UplinkConfig(device_id="bench", batch_count=1, owntracks_topic=""),
            broker=BrokerConfig(host="127.0.0.1", port=port, client_id=f"bench{backlog}"),
            outbox=box,
            clock=clock,
        )
        task = asyncio.create_task(up.run())
        await up.connected.wait()
        try:
            yield Device(box, ctl, up, sub)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _one_sos(dev: Device) -> tuple[float, float]:
    """One gesture: when it was complete and when its ``sos-start`` reached the
    subscriber. The SOS is then stopped and its ``sos-end`` received (and its
    acknowledgement given time to be committed: :data:`QUIET`) before the next gesture:
    otherwise a gesture would queue behind the last stop's writes, and the last stop's
    ``sos-end`` could pass for the new start (as it did in this bench until 2026-12-03)."""
    before = set(dev.sub.arrivals)
    t0 = time.perf_counter()
    await dev.controller.on_button(Detected(Gesture.LONG_PRESS, t0))
    box = dev.outbox.outbox_id
    at = await dev.sub.arrival(box, RecordKind.SOS_START, before)
    before = set(dev.sub.arrivals)
    await dev.controller.stop(trigger="bench")
    await dev.sub.arrival(box, RecordKind.SOS_END, before)
    await asyncio.sleep(QUIET)
    return t0, at


async def trigger_latencies(dev: Device, n: int) -> list[float]:
    """Gesture to the session's ``sos-start`` at the subscriber, ``n`` times."""
    out = []
    for _ in range(n):
        t0, at = await _one_sos(dev)
        out.append(at - t0)
    return out


async def stage_times(dev: Device, n: int) -> tuple[float, float, float, float]:
    """Where an SOS's time goes, medians in ms over ``n`` gestures: the gesture to its
    record handed to the outbox (the controller's work); to the commit returning (the
    writer thread, fsync included); to the publish (the sender woken, the take, the
    packing); to the subscriber (paho, the broker, the subscriber process). Timed apart
    from the latencies: the timing wrappers cost a little themselves."""
    box = dev.outbox
    sos_topic = Topics.for_device("bench").sos
    marks: dict[str, float] = {}
    real_store, real_publish = box.store, Connection.publish

    async def store(record: Record) -> Stored:
        marks.setdefault("store", time.perf_counter())
        got = await real_store(record)
        marks.setdefault("stored", time.perf_counter())
        return got

    def publish(self: Connection, topic: str, *args: Any, **kw: Any) -> Any:
        if topic == sos_topic:
            marks.setdefault("publish", time.perf_counter())
        return real_publish(self, topic, *args, **kw)

    box.store = store  # type: ignore[method-assign]
    Connection.publish = publish  # type: ignore[method-assign]
    rows = []
    try:
        for _ in range(n):
            marks.clear()
            t0, at = await _one_sos(dev)
            m = marks
            rows.append(
                (m["store"] - t0, m["stored"] - m["store"], m["publish"] - m["stored"],
                 at - m["publish"])
            )  # fmt: skip
    finally:
        del box.store
        Connection.publish = real_publish  # type: ignore[method-assign]
    a, b, c, d = (_ms(list(col), 0.5) for col in zip(*rows, strict=True))
    return a, b, c, d


async def raw_round_trips(port: int, n: int, size: int = 0) -> list[float]:
    """Publish to the subscriber process, ``n`` times (after one untimed), one at a
    time, each after :data:`QUIET` (paho through our connection, QoS 1, on this event
    loop with nothing else to do); the payload padded to ``size`` bytes if given."""
    pub = Connection(BrokerConfig(host="127.0.0.1", port=port, client_id="raw-pub"))
    await pub.connect(clean_start=True)
    out = []
    payload = b'{"v":1,"kind":"sos-start"}'
    if size > len(payload):
        payload = payload[:-1] + b',"pad":"' + b"x" * (size - len(payload) - 9) + b'"}'
    async with subscriber(port, "bench/raw") as sub:
        for i in range(n + 1):
            await asyncio.sleep(QUIET)
            t0 = time.perf_counter()
            pub.publish("bench/raw", payload)
            out.append(await sub.other(i) - t0)
    pub.close()
    return out[1:]  # the first, on connections and code not yet used, apart


async def sos_start_size(dev: Device) -> int:
    """The median payload size of the ``sos-start`` messages the device sent (they carry
    the hour's recent events, which fill with the bench's own gestures)."""
    box = dev.outbox.outbox_id
    sizes = [
        len(encode_stored(box, s))
        for s, _ in await dev.outbox.export()
        if s.kind is RecordKind.SOS_START
    ]
    return int(statistics.median(sizes))


#: what an SOS start's commit appends to the WAL in this bench: six frames (a 4 KiB page
#: and its 24-byte header each: the record's leaf and two overflow pages for its 8.5 KB,
#: a page of each of the two indexes, the seq counter's page), made durable with one
#: fdatasync, which is what SQLite calls on Linux
SOS_COMMIT_BYTES = 6 * (4096 + 24)


def fsync_floor(where: Path, n: int, size: int = SOS_COMMIT_BYTES) -> tuple[float, float]:
    """``n`` appends of ``size`` bytes to a file in ``where``, each made durable with
    one fdatasync after the same quiet as each SOS gesture (:data:`QUIET`; back to back
    the disk answers 3x faster than after a pause), timed from the write: the p50 and
    p99 in ms, what an SOS record's commit cannot go below."""
    out = []
    fd = os.open(where / "fsync-floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    data = b"x" * size
    try:
        for _ in range(n):
            time.sleep(QUIET)
            t0 = time.perf_counter()
            os.write(fd, data)
            os.fdatasync(fd)
            out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return _ms(out, 0.5), _ms(out, 0.99)


def _p50_p99(values: list[float]) -> tuple[float, float]:
    return _ms(values, 0.5), _ms(values, 0.99)


def _above(raw: list[float], *others: list[float]) -> tuple[float, ...]:
    """The p99 of each of ``others`` above the p99 of ``raw``, in ms."""
    return tuple(round(_ms(o, 0.99) - _ms(raw, 0.99), 2) for o in others)


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 2)


async def _latency(tmp: Path, port: int, triggers: int, backlog: int) -> dict[str, Any]:
    raw = await raw_round_trips(port, triggers)
    async with device(tmp, port) as dev:
        # the first SOS after start runs code paths for the first time: timed apart
        (cold,) = await trigger_latencies(dev, 1)
        idle = await trigger_latencies(dev, triggers)
        stages = await stage_times(dev, triggers)
        size = await sos_start_size(dev)
    # the same raw publish with a payload as large as those SOS starts: what the broker
    # and the subscriber spend on the size alone is not the SOS path's
    raw_sized = await raw_round_trips(port, triggers, size)
    async with device(tmp, port, backlog=backlog) as dev:
        t0 = time.perf_counter()
        busy = await trigger_latencies(dev, triggers)
        span = time.perf_counter() - t0
        left = await dev.outbox.has_undelivered()
        await dev.uplink.drained()
        drain = time.perf_counter() - t0
    return {
        "raw MQTT publish to receive, p50 / p99 ms": _p50_p99(raw),
        "SOS gesture to subscriber, empty outbox, p50 / p99 ms": _p50_p99(idle),
        f"SOS gesture to subscriber, {backlog:,}-fix backlog draining, p50 / p99 ms": _p50_p99(
            busy
        ),
        "p99 above raw: empty / draining, ms (targets 2 / 5)": _above(raw, idle, busy),
        f"raw MQTT publish of {size:,} bytes (the SOS starts' median size), p50 / p99 ms": (
            _p50_p99(raw_sized)
        ),
        "p99 above raw of that size: empty / draining, ms": _above(raw_sized, idle, busy),
        "the first SOS after start, empty outbox, ms": round(cold * 1000, 2),
        "SOS stages, empty outbox, medians ms: to store / commit / to publish / to sub": stages,
        # the physical floor under the SOS path: its record is committed before it goes
        "one fdatasync of an SOS commit's WAL bytes, after the same quiet, p50 / p99 ms": (
            fsync_floor(tmp, triggers)
        ),
        f"the {triggers} triggers took (s); backlog still draining after them": (
            round(span, 2),
            left,
        ),
        f"{backlog:,}-fix backlog fully acknowledged after (s)": round(drain, 2),
    }


# -- backlog drain -----------------------------------------------------------------------


async def _drain(tmp: Path, port: int, n: int) -> float:
    async with await Outbox.open(tmp / "drain.db") as box:
        await asyncio.gather(*(box.store(r) for r in walk(n)))  # recorded while offline
        up = Uplink(
            config=UplinkConfig(device_id="drain", batch_count=1, owntracks_topic=""),
            broker=BrokerConfig(host="127.0.0.1", port=port, client_id="drain"),
            outbox=box,
            clock=MonotonicClock(),
        )
        gc.collect()  # the 86,400 store() tasks above are garbage: not part of the drain
        t0 = time.perf_counter()
        task = asyncio.create_task(up.run())  # the link is back
        await up.drained()
        rate = n / (time.perf_counter() - t0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return rate


def paho_one_per_message(port: int, n: int) -> float:
    """The same fixes, one JSON fix per QoS 1 message, plain paho (its network thread,
    its default of 20 messages in flight). At most 10,000 are queued in paho at a time:
    its message ids are 16-bit, and a larger queue would reuse them."""
    payloads = [dumps(r.data["fix"]) for r in walk(n)]
    done = threading.Event()
    room = threading.Semaphore(10_000)
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        room.release()
        if acked[0] == n:
            done.set()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="paho-raw", protocol=paho.MQTTv5)
    c.on_publish = on_publish
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    gc.collect()
    t0 = time.perf_counter()
    for p in payloads:
        room.acquire()
        c.publish("bench/raw-track", p, qos=1)
    if not done.wait(600):
        raise RuntimeError(f"plain paho: only {acked[0]} of {n} acknowledged")
    rate = n / (time.perf_counter() - t0)
    c.loop_stop()
    c.disconnect()
    return rate


def run(
    *, triggers: int = 200, backlog: int = 100_000, day: int = 86_400, rounds: int = 3
) -> dict[str, Any]:
    out = wire_size()
    with (
        tempfile.TemporaryDirectory(prefix="sos-bench-") as tmp,
        Mosquitto(Path(tmp) / "broker", config="max_queued_messages 0\n") as broker,
    ):
        out.update(asyncio.run(_latency(Path(tmp), broker.port, triggers, backlog)))
        ours, raw = [], []
        for i in range(rounds):
            d = Path(tmp) / f"r{i}"
            d.mkdir()
            ours.append(asyncio.run(_drain(d, broker.port, day)))
            raw.append(paho_one_per_message(broker.port, day))
    o, r = statistics.median(ours), statistics.median(raw)
    out[f"drain of {day:,} fixes stored offline, fixes/s (median of {rounds}; target 50,000)"] = (
        round(o)
    )
    out["same fixes one per message, plain paho QoS 1, fixes/s"] = round(r)
    out["drain / one per message (target 10)"] = round(o / r, 2)
    return out
