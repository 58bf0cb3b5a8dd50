"""The contacts' relay, measured through a real Mosquitto on loopback, each figure beside
its baseline from the same run:

* Gesture (countdown 0) to the SOS shown to a client of the live page (its first
  Server-Sent Event, the client connecting as soon as the relay has made the link), and
  to the e-mail at a local SMTP server, p50/p99, beside the raw MQTT publish-to-receive
  round trip, after three untimed SOSes (the first after start is shown apart). The relay
  runs in this process, like the device.
* Relay ingest of a drained backlog: 86,400 fixes of an SOS (a day at 1 Hz) stored on the
  device while offline, then the link comes back; fixes/s until the relay's receipt says
  all are stored durably, on SQLite and on PostgreSQL; beside it the same drain to a plain
  subscriber. The relay runs as its own process (``sos-relay run``).
* 1,000 concurrent viewers of one session's page: the delay of an update until all of
  them have it, p50/p99, and the relay's resident memory. The relay runs as its own
  process; the viewers are raw sockets in this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.uplink import _drain, _ms, device, raw_round_trips, walk
from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.gesture import Detected, Gesture
from sosbeacon.device.mqtt import BrokerConfig, Connection
from sosbeacon.device.outbox import Outbox
from sosbeacon.device.records import Priority, Record, RecordKind, Stored
from sosbeacon.device.sos import Contact
from sosbeacon.device.uplink import Uplink, UplinkConfig
from sosbeacon.device.wire import encode_sos, encode_track, track_row
from sosbeacon.relay import links
from sosbeacon.sim import localrelay
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.mailsink import MailSink
from sosbeacon.sim.postgres import find_bindir, postgres

REPO = Path(__file__).resolve().parents[1]


# -- gesture to page and to e-mail ---------------------------------------------------------


async def _to_page_and_mail(tmp: Path, port: int, triggers: int) -> dict[str, Any]:
    raw = await raw_round_trips(port, triggers)
    page: list[float] = []
    mail: list[float] = []
    warm = 3  # the first SOS after start compiles the relay's queries: timed apart
    with MailSink() as sink:
        services: dict[str, Any] = {"notify.services": {"email": sink.url()}}
        cfg = localrelay.settings(tmp, port, **services)
        async with (
            localrelay.running(cfg) as relay,
            device(tmp, port, contacts=(Contact("Alice", "alice@example.org"),)) as dev,
            httpx.AsyncClient(timeout=10) as http,
        ):
            stored: asyncio.Queue[int] = asyncio.Queue()
            relay.observers.append(
                lambda what, d: stored.put_nowait(d["session_id"]) if what == "sos-stored" else None
            )
            for i in range(warm + triggers):
                t0 = time.monotonic()
                await dev.controller.on_button(Detected(Gesture.LONG_PRESS, time.perf_counter()))
                sid = await asyncio.wait_for(stored.get(), 10)
                url = cfg.link_base() + await _token(relay, sid)
                async with http.stream("GET", url + "/events") as r:
                    async for line in r.aiter_lines():
                        if line.startswith("event: page"):
                            page.append(time.monotonic() - t0)
                            break
                got = await sink.wait(2 * i + 1)
                mail.append(got[2 * i].at - t0)
                await dev.controller.stop(trigger="bench")
                await sink.wait(2 * i + 2)  # the "SOS ended" e-mail, before the next one
    cold_page, cold_mail = page[0], mail[0]
    page, mail = page[warm:], mail[warm:]
    return {
        "raw MQTT publish to receive, p50 / p99 ms": (_ms(raw, 0.5), _ms(raw, 0.99)),
        "gesture to SOS on the page (first SSE event), p50 / p99 ms": (
            _ms(page, 0.5), _ms(page, 0.99)
        ),
        "gesture to e-mail at the SMTP server, p50 / p99 ms": (_ms(mail, 0.5), _ms(mail, 0.99)),
        "page p99 above raw, ms (target 50)": round(_ms(page, 0.99) - _ms(raw, 0.99), 2),
        "the first SOS after the relay started: to the page / to the e-mail, ms": (
            round(cold_page * 1000, 1), round(cold_mail * 1000, 1)
        ),
    }  # fmt: skip


async def _token(relay: Any, sid: int) -> str:
    from sqlalchemy import select

    from sosbeacon.relay.db import links as links_t

    async with relay.store.engine.connect() as conn:
        salt = (
            await conn.execute(select(links_t.c.salt).where(links_t.c.session_id == sid))
        ).scalar_one()
    return str(relay.store.link_token(salt))


# -- the relay as its own process ----------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_process(tmp: Path, port: int, *, db_url: str = "") -> AsyncIterator[Any]:
    """``sos-relay run`` in a subprocess; yields (config, process) once it serves."""
    # a group of its own: a relay that ran before keeps its session (and its share of a
    # group's messages) at the broker until the session expires
    group: dict[str, Any] = {"mqtt.group": f"bench-{uuid.uuid4().hex[:8]}"}
    cfg = localrelay.settings(tmp, port, db_url=db_url, **group)
    conf = tmp / "sos-relay.toml"
    lines = [
        "[relay]", f'data_dir = "{cfg.relay.data_dir}"', f'public_url = "{cfg.relay.public_url}"',
        "[mqtt]", f'broker = "{cfg.mqtt.broker}"', f'client_id = "{cfg.mqtt.client_id}"',
        f'group = "{cfg.mqtt.group}"',
        "[web]", f'listen = "{cfg.web.listen}"', 'tiles = ""',
    ]  # fmt: skip
    if db_url:
        lines += ["[database]", f'url = "{db_url}"']
    conf.write_text("\n".join(lines) + "\n")
    proc = _spawn(conf, tmp / "relay.log")
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        r = await http.get(cfg.relay.public_url + "/healthz")
                        if r.status_code == 200 and r.json()["mqtt"]:
                            break
                    if proc.poll() is not None:
                        raise RuntimeError((tmp / "relay.log").read_text()[-2000:])
                    await asyncio.sleep(0.1)
        yield cfg, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--config", str(conf), "--log-level",
             "warning", "run"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


async def _ingest(tmp: Path, port: int, n: int, db_url: str) -> float:
    """Fixes/s from the link coming back until the relay's receipt covers all of them."""
    async with relay_process(tmp, port, db_url=db_url):
        sess = uuid.uuid4().hex[:16]
        async with await Outbox.open(tmp / "ingest.db") as box:
            await asyncio.gather(*(box.store(r) for r in walk(n, session=sess)))
            watch = Connection(BrokerConfig(host="127.0.0.1", port=port, client_id="watch"))
            await watch.connect(clean_start=True)
            await watch.subscribe("sosbeacon/ingest/receipt")
            up = Uplink(
                config=UplinkConfig(device_id="ingest", batch_count=1, owntracks_topic=""),
                broker=BrokerConfig(host="127.0.0.1", port=port, client_id="ingest"),
                outbox=box,
                clock=MonotonicClock(),
            )
            t0 = time.perf_counter()
            task = asyncio.create_task(up.run())
            try:
                async with asyncio.timeout(600):
                    while True:
                        m = await watch.messages.get()
                        watch.ack(m)
                        if m.payload and json.loads(m.payload)["stored"].get(box.outbox_id) == (
                            f"1-{n}"
                        ):
                            break
                return n / (time.perf_counter() - t0)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                watch.close()


# -- 1,000 viewers -------------------------------------------------------------------------


class _Crowd:
    """How many viewers have had each event: ``all_have`` is set when every one has."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.have: dict[int, int] = {}
        self.all_have = asyncio.Event()

    def got(self, k: int) -> None:
        self.have[k] = self.have.get(k, 0) + 1
        if self.have[k] == self.n:
            self.all_have.set()


async def _viewer(host: str, port: int, path: str, crowd: _Crowd, arrivals: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    writer.write(req.encode())
    await writer.drain()
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"event: page"):
                crowd.got(-1)
            elif line.startswith(b"event: update"):
                arrivals.append(time.monotonic())
                crowd.got(len(arrivals) - 1)
    finally:
        writer.close()


def _rss(pid: int) -> tuple[float, float]:
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(value.split()[0]) / 1024
    return round(got["VmRSS"], 1), round(got["VmHWM"], 1)


async def _viewers(tmp: Path, port: int, n: int, updates: int) -> dict[str, Any]:
    async with relay_process(tmp, port) as (cfg, proc):
        rss_before = _rss(proc.pid)
        pub = Connection(BrokerConfig(host="127.0.0.1", port=port, client_id="viewers-dev"))
        await pub.connect(clean_start=True)
        sess, box = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
        start = Record(
            RecordKind.SOS_START, datetime.now(UTC),
            {"contacts": [{"name": "Alice", "reach": "alice@example.org"}], "owner": "Sam"},
            Priority.SOS, sess,
        )  # fmt: skip
        await pub.subscribe("sosbeacon/viewers/receipt")
        await pub.publish("sosbeacon/viewers/sos", encode_sos(box, 1, start))
        async with asyncio.timeout(10):
            while not json.loads((await pub.messages.get()).payload or b"{}").get("sos_stored"):
                pass  # the relay has stored the start, and made the link
        db = sqlite3.connect(cfg.relay.data_dir / "relay.db")
        try:
            salt = db.execute("SELECT salt FROM links").fetchone()
        finally:
            db.close()
        token = links.token(links.load_key(cfg.link_key_path()), salt[0])
        host, web_port = cfg.web.listen.rsplit(":", 1)
        per: list[list[float]] = [[] for _ in range(n)]
        crowd = _Crowd(n)
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(
                _viewer(host, int(web_port), f"/s/{token}/events", crowd, per[i])
            ))  # fmt: skip
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # a crowd, not a single burst
        async with asyncio.timeout(60):
            await crowd.all_have.wait()
        sent = []
        for k in range(updates):
            crowd.all_have.clear()
            fix = walk(k + 1, session=sess)[-1]
            rec = Stored(k + 2, None, fix, track_row(fix))
            sent.append(time.monotonic())
            await pub.publish("sosbeacon/viewers/track", encode_track(box, [rec]))
            async with asyncio.timeout(30):
                await crowd.all_have.wait()
            await asyncio.sleep(0.2)
        rss = _rss(proc.pid)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pub.close()
    delays = [max(p[k] for p in per) - sent[k] for k in range(updates)]
    return {
        f"{n:,} viewers: update to all of them, p50 / p99 ms (target p99 250)": (
            _ms(delays, 0.5), _ms(delays, 0.99)
        ),
        "relay resident memory, before / with the viewers, MB (peak)": (
            rss_before[0], f"{rss[0]} ({rss[1]})"
        ),
    }  # fmt: skip


def run(*, triggers: int = 100, day: int = 86_400, viewers: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="sos-bench-relay-") as tmp,
        Mosquitto(Path(tmp) / "broker", config="max_queued_messages 0\n") as broker,
    ):
        base = Path(tmp)
        (base / "lat").mkdir()
        out.update(asyncio.run(_to_page_and_mail(base / "lat", broker.port, triggers)))
        (base / "raw").mkdir()
        raw = asyncio.run(_drain(base / "raw", broker.port, day))
        (base / "sqlite").mkdir()
        sq = asyncio.run(_ingest(base / "sqlite", broker.port, day, ""))
        out[f"drain of {day:,} fixes to a plain subscriber, fixes/s"] = round(raw)
        out["relay ingest, SQLite, fixes/s (target 50,000)"] = round(sq)
        bindir = find_bindir()
        if bindir is None:
            out["relay ingest, PostgreSQL, fixes/s"] = "not measured: PostgreSQL not installed"
        else:
            with postgres(bindir) as pg:
                (base / "pg").mkdir()
                out["relay ingest, PostgreSQL, fixes/s"] = round(
                    asyncio.run(_ingest(base / "pg", broker.port, day, pg.new_db("bench")))
                )
        out["relay ingest SQLite / plain drain"] = round(sq / raw, 2)
        (base / "viewers").mkdir()
        out.update(asyncio.run(_viewers(base / "viewers", broker.port, viewers, 30)))
    return out
