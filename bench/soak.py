"""``make soak``: long fault campaigns, each ending with the receiver's proof that every
record the device committed arrived (or was announced as deliberately removed), with the
duplicates counted and dropped by seq.

1. SIGKILL of a recording device process at random moments, 1,000 times (10 Hz fixes).
2. Broker kill -9 and restart, 200 cycles, while recording at 10 Hz.
3. Black-holed link, 100 times, while recording at 10 Hz (keepalive 1 s).
4. A week offline at 1 Hz, with one hour of SOS a day, into an outbox capped at 100,000
   rows: the oldest routine fixes are thinned, announced as gaps; no SOS record evicted.
5. A full SD card, 200 cycles (:func:`storage`): the real daemon on a 2 MB tmpfs, the
   disk filled during an SOS, then a stop and a kill, or a kill mid-SOS; freed,
   restarted. No stopped SOS comes back, no SOS is dropped, no healthy file is moved
   aside, no location after a stop arrives (root, to mount the tmpfs).

``SOAK_SCALE`` (default 1) scales every campaign down, e.g. ``SOAK_SCALE=0.01`` for a
quick check that it all still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Limits, Outbox
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import Uplink, UplinkConfig
from sosbeacon.device.wire import SeqLedger, Topics
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.netfault import FaultProxy, LinkMode
from sosbeacon.sim.receiver import Receiver
from sosbeacon.sim.recorder import sigkill_campaign

DURABLE = "autosave_interval 1\nautosave_on_changes true\nmax_queued_messages 0\n"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scale(n: int) -> int:
    return max(1, round(n * float(os.environ.get("SOAK_SCALE", "1"))))


def fix(i: int, *, session: str | None = None, priority: Priority = Priority.LIVE) -> Record:
    t = T0 + timedelta(seconds=i)
    data = {"fix": {"t": t.isoformat(), "lat": 55.9 + (i % 1000) * 1e-5, "lon": -3.2, "acc": 5.0}}
    return Record(RecordKind.FIX, t, data, priority, session)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def contact(broker: Mosquitto, device: str = "dev1") -> AsyncIterator[Receiver]:
    rx = Receiver(
        BrokerConfig(host="127.0.0.1", port=broker.port, client_id="soak-contact"),
        Topics.for_device(device),
    )
    await rx.start()
    try:
        yield rx
    finally:
        await rx.close()


def verdict(name: str, led: SeqLedger, committed: int, **extra: Any) -> dict[str, Any]:
    missing = [s for s in led.missing() if s <= committed]
    out = {
        "committed": committed,
        "received (distinct)": len(led.seen),
        "lost": len(missing),
        "duplicates dropped": led.duplicates,
        **extra,
    }
    say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


# -- 1. SIGKILL ---------------------------------------------------------------------------


async def sigkills(tmp: Path, n: int) -> dict[str, Any]:
    def progress(kills: int, stored: int) -> None:
        if kills % 100 == 0:
            say(f"  {kills} SIGKILLs, {stored} records stored")

    with Mosquitto(tmp / "broker", config=DURABLE) as broker:
        async with contact(broker) as rx:
            stored, _ = await sigkill_campaign(
                tmp / "outbox.db",
                broker.port,
                n,
                rng=random.Random(7),
                progress=progress,
                drain_within=300,
            )
            led = await rx.wait_for_seqs(max(stored), within=300)
    return verdict(f"{n} SIGKILLs", led, max(stored), kills=n)


# -- 2 and 3: broker kills, black holes -----------------------------------------------


@contextlib.asynccontextmanager
async def recording_device(
    tmp: Path, port: int, keepalive: int = 30
) -> AsyncIterator[tuple[Uplink, list[int]]]:
    async with await Outbox.open(tmp / "outbox.db") as box:
        up = Uplink(
            config=UplinkConfig(
                device_id="dev1",
                batch_count=1,
                backoff_min=0.1,
                backoff_max=0.5,
                owntracks_topic="",
            ),
            broker=BrokerConfig(
                host="127.0.0.1",
                port=port,
                client_id="dev1",
                keepalive=keepalive,
                connect_timeout=2,
            ),
            outbox=box,
            clock=MonotonicClock(),
        )
        task = asyncio.create_task(up.run())
        seqs: list[int] = []

        async def record() -> None:
            i = 0
            while True:
                seqs.append((await box.store(fix(i, session="soak"))).seq)
                i += 1
                await asyncio.sleep(0.1)

        rec = asyncio.create_task(record())
        try:
            yield up, seqs
        finally:
            rec.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rec
            await asyncio.wait_for(up.drained(), 300)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def broker_kills(tmp: Path, n: int) -> dict[str, Any]:
    with Mosquitto(tmp / "broker", config=DURABLE) as broker:
        async with contact(broker) as rx:
            async with recording_device(tmp, broker.port) as (up, seqs):
                for k in range(n):
                    await asyncio.wait_for(up.connected.wait(), 60)
                    await asyncio.sleep(0.5)
                    await asyncio.to_thread(broker.kill)
                    await asyncio.sleep(0.2)
                    await asyncio.to_thread(broker.start)
                    if (k + 1) % 50 == 0:
                        say(f"  {k + 1} broker kills, {len(seqs)} records stored")
            led = await rx.wait_for_seqs(seqs[-1], within=300)
    return verdict(f"{n} broker kill -9 cycles", led, seqs[-1], reconnects=up.stats.connects)


async def black_holes(tmp: Path, n: int) -> dict[str, Any]:
    noticed: list[float] = []
    with Mosquitto(tmp / "broker", config=DURABLE) as broker:
        async with contact(broker) as rx, FaultProxy(target_port=broker.port) as proxy:
            async with recording_device(tmp, proxy.port, keepalive=1) as (up, seqs):
                for k in range(n):
                    await asyncio.wait_for(up.connected.wait(), 60)
                    await asyncio.sleep(0.3)
                    proxy.set(LinkMode.BLACKHOLE)
                    t0 = time.monotonic()
                    await asyncio.wait_for(up.disconnected.wait(), 30)
                    noticed.append(time.monotonic() - t0)
                    proxy.set(LinkMode.PASS)
                    if (k + 1) % 25 == 0:
                        say(f"  {k + 1} black holes, {len(seqs)} records stored")
            led = await rx.wait_for_seqs(seqs[-1], within=300)
    noticed.sort()
    median, worst = noticed[len(noticed) // 2], noticed[-1]
    return verdict(
        f"{n} black-holed links",
        led,
        seqs[-1],
        **{"noticed after (median / max s)": f"{median:.1f} / {worst:.1f}"},
    )


# -- 4. a week offline ---------------------------------------------------------------


async def week_offline(tmp: Path, seconds: int) -> dict[str, Any]:
    """``seconds`` of 1 Hz fixes recorded offline (routine, tracking opted in), with the
    first hour of each day an SOS (live, in a session); then delivered."""
    max_rows = max(1000, min(100_000, seconds // 6))
    sos_seqs: list[int] = []
    async with await Outbox.open(
        tmp / "week.db", Limits(max_rows=max_rows, min_free_bytes=0)
    ) as box:
        batch: list[Any] = []
        for i in range(seconds):
            in_sos = i % 86400 < 3600
            rec = fix(
                i,
                session=f"day{i // 86400}" if in_sos else None,
                priority=Priority.LIVE if in_sos else Priority.ROUTINE,
            )
            batch.append((in_sos, box.store(rec)))
            if len(batch) >= 2000:
                results = await asyncio.gather(*(c for _, c in batch))
                sos_seqs += [s.seq for (sos, _), s in zip(batch, results, strict=True) if sos]
                batch = []
        if batch:
            results = await asyncio.gather(*(c for _, c in batch))
            sos_seqs += [s.seq for (sos, _), s in zip(batch, results, strict=True) if sos]
        with Mosquitto(tmp / "broker", config=DURABLE) as broker:
            async with contact(broker) as rx:
                up = Uplink(
                    config=UplinkConfig(device_id="dev1", batch_count=1, owntracks_topic=""),
                    broker=BrokerConfig(host="127.0.0.1", port=broker.port, client_id="dev1"),
                    outbox=box,
                    clock=MonotonicClock(),
                )
                t0 = time.monotonic()
                task = asyncio.create_task(up.run())
                await asyncio.wait_for(up.drained(), 600)
                drain = time.monotonic() - t0
                last = await box.last_seq()
                led = await rx.wait_for_seqs(last, within=120)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    sos_missing = [s for s in sos_seqs if s not in led.seen]
    gaps = [r for r in rx.records if r.kind == "gap"]
    ranges = [tuple(x) for g in gaps for x in g.data["ranges"]]
    return verdict(
        f"{seconds / 86400:.1f} days offline at 1 Hz, outbox capped at {max_rows:,} rows",
        led,
        last,
        **{
            "SOS records": len(sos_seqs),
            "SOS records evicted": len(sos_missing),
            "routine records thinned": len(led.removed),
            "thinned seq ranges": f"{len(ranges)} (first {ranges[:3]})",
            "delivery after reconnect (s)": round(drain, 1),
        },
    )


STORAGE_CONFIG = """
[device]
id = "t1"
data_dir = "{data}"
[sos]
min_distance = 0.0
[[sos.contacts]]
name = "Alice"
[mqtt]
broker = "mqtt://127.0.0.1:{port}"
[uplink]
backoff_max = 2.0
[outbox]
min_free_bytes = 0
"""


async def storage(tmp: Path, n: int) -> dict[str, Any]:
    """``n`` cycles of a full SD card, with the real daemon (``sosd run --sim``) on a
    2 MB tmpfs: in an SOS, the disk is filled until the outbox finds it full; then the
    SOS is stopped and the daemon killed (even cycles), or the daemon is killed mid-SOS
    (odd cycles); the disk is freed and the daemon started again. A stop must hold (the
    SOS never comes back), a crash must not drop the SOS (it resumes), no healthy file
    is ever moved aside, and at the receiver nothing is lost and no location recorded
    after a stop arrives."""
    from sosbeacon.device.control import request
    from sosbeacon.sim.smalldisk import can_mount, fill, small_disk
    from sosbeacon.sim.sosd_process import kill_sosd, outbox_fault, start_sosd, stop_sosd

    if not can_mount():
        say("storage: skipped (mounting a small tmpfs needs root)")
        return {"lost": 0, "skipped": "needs root"}
    stops: dict[str, float] = {}
    came_back = dropped = never_full = moved_aside = 0
    with Mosquitto(tmp / "broker", config=DURABLE) as broker, small_disk(tmp / "disk") as disk:
        data = disk / "data"
        conf, log = tmp / "sosbeacon.toml", tmp / "sosd.log"
        conf.write_text(STORAGE_CONFIG.format(data=data, port=broker.port))
        sock = data / "sosd.sock"
        async with contact(broker, "t1") as rx:

            async def stop_sos() -> None:
                session = (await request(sock, {"cmd": "status"}))["session"]
                await request(sock, {"cmd": "sos-stop"})
                stops[session] = time.time()

            proc = await start_sosd(conf, sock, log)
            for cycle in range(n):
                status = await request(sock, {"cmd": "status"})
                if status["state"] != "active":
                    await request(sock, {"cmd": "sos-start", "now": True})
                seen = sum(r.kind == "fix" for r in rx.records)
                await rx.wait_until(lambda s=seen: sum(r.kind == "fix" for r in rx.records) > s)
                filler = fill(disk)
                never_full += not await outbox_fault(sock)  # the route fills SQLite's slack
                stopping = cycle % 2 == 0
                if stopping:
                    await stop_sos()
                await kill_sosd(proc)
                filler.unlink()
                proc = await start_sosd(conf, sock, log)
                state = (await request(sock, {"cmd": "status"}))["state"]
                came_back += stopping and state == "active"
                dropped += not stopping and state != "active"
                moved_aside += any(".corrupt-" in p.name for p in data.iterdir())
            if (await request(sock, {"cmd": "status"}))["state"] == "active":
                await stop_sos()
            for _ in range(600):  # everything stored reaches the contact
                o = (await request(sock, {"cmd": "status"}))["outbox"]
                if o["depth"] == 0 and o["held"] == 0:
                    break
                await asyncio.sleep(0.1)
            await stop_sosd(proc)
            led = rx.ledger()
            after_stop = sum(
                1
                for r in rx.records
                if r.kind == "fix" and r.session in stops and r.t > stops[r.session]
            )
    return verdict(
        "storage",
        led,
        led.last,
        cycles=n,
        **{
            "locations after a stop": after_stop,
            "stopped SOS back after a restart": came_back,
            "SOS dropped by a crash": dropped,
            "healthy files moved aside": moved_aside,
            "cycles where the disk never filled": never_full,
        },
    )


async def main() -> int:
    logging.disable(logging.WARNING)
    results: dict[str, Any] = {}
    campaigns = [
        ("sigkill", sigkills, scale(1000)),
        ("broker_kills", broker_kills, scale(200)),
        ("black_holes", black_holes, scale(100)),
        ("week_offline", week_offline, scale(7 * 86400)),
        ("storage", storage, scale(200)),
    ]
    for name, fn, n in campaigns:
        with tempfile.TemporaryDirectory(prefix=f"sos-soak-{name}-") as tmp:
            t0 = time.monotonic()
            results[name] = await fn(Path(tmp), n)  # type: ignore[operator]
            results[name]["took (s)"] = round(time.monotonic() - t0)
    lost = sum(r["lost"] for r in results.values())
    evicted = results["week_offline"]["SOS records evicted"]
    st = results["storage"]
    storage_faults = sum(
        st.get(k, 0)
        for k in (
            "locations after a stop",
            "stopped SOS back after a restart",
            "SOS dropped by a crash",
            "healthy files moved aside",
        )
    )
    say(
        f"\nsoak: {lost} committed records lost, {evicted} SOS records evicted, "
        f"{storage_faults} storage-campaign failures"
    )
    return 0 if lost == 0 and evicted == 0 and storage_faults == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
