"""``sos-sim fleet``: many simulated devices through the real relay, for load tests and
the cost curve (``make scale``).

Everything is real but the hardware:

* a Mosquitto (or ``--broker``), the contacts' relay as ``sos-relay`` processes
  (``--relays``; more than one share a PostgreSQL database and a shared subscription),
  on SQLite or on a throwaway PostgreSQL (``--database``), and a mail server standing in
  for the contacts' mailboxes;
* N devices in this one process, each the full daemon pipeline
  (``device.daemon.Daemon`` with the simulator backend: a receiver on its own pty at
  1 Hz, the real decoder, the SOS controller, its own durable outbox and MQTT
  connection);
* SOSes started at ``--sos-per-minute`` on devices in turn, each lasting
  ``--sos-seconds``; each SOS's contact gets the relay's e-mail, opens the link in it and
  watches the live page (a Server-Sent Events stream, as the browser does).

Per second it prints the SOSes running, the route points that reached a page and the
relays' CPU. At the end: the percentiles of gesture → stored at the relay, gesture →
contact notified, gesture → the contact's page showing the SOS and route point recorded
→ on the page; relay CPU per 1,000 fixes stored; the
database's rows and bytes; the broker's peak memory; and, per outbox, whether any
``seq`` is missing at the relay. ``--json`` prints the summary as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sosbeacon.device import config as config_mod
from sosbeacon.device.daemon import Daemon
from sosbeacon.device.parts import load_backend
from sosbeacon.device.uplink import UplinkConfig
from sosbeacon.relay.notify import message_kind
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.contact_page import live_stream
from sosbeacon.sim.mailsink import Mail, MailSink
from sosbeacon.sim.relay_process import RelayProcess, relay_values

log = logging.getLogger(__name__)

LINK = re.compile(r"https?://\S+/s/[A-Za-z0-9_-]+")
TICK = os.sysconf("SC_CLK_TCK")
#: messages per device in the relays' queue beyond its windows: retained views, status,
#: SOS events
QUEUE_SPARE = 16
#: the uplink's defaults
UPLINK = UplinkConfig(device_id="")
PG_TABLE_BYTES = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of ``values``; NaN when there are none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (``/proc/<pid>/stat``)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    return 0.0


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """Resident memory of process ``pid`` (``VmRSS``, KiB; ``VmHWM``: its peak); 0 when
    it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class FleetSpec:
    devices: int = 10
    #: SOSes started per minute, on the devices in turn (at least one starts at once)
    sos_per_minute: float = 60.0
    #: how long each SOS lasts
    sos_seconds: float = 20.0
    #: seconds the fleet runs (SOSes still running then are stopped)
    duration: float = 20.0
    #: "sqlite", "postgresql" (a throwaway server) or a database URL
    database: str = "sqlite"
    relays: int = 1
    #: mqtt://host:port, or None: a throwaway Mosquitto
    broker: str | None = None
    #: the relays stopped (SIGSTOP) this many seconds into the run, for ``pause_seconds``
    #: (0: never): the devices' outboxes must hold the backlog (device/uplink/credit.py)
    pause_at: float = 0.0
    pause_seconds: float = 0.0
    #: the devices' end-to-end windows (``uplink.relay_window``, ``relay_window_live``)
    relay_window: int = UPLINK.relay_window
    relay_window_live: int = UPLINK.relay_window_live

    @property
    def queue_bound(self) -> int:
        """``max_queued_messages`` for the throwaway broker: what the devices' end-to-end
        windows let them have queued for the relays' client (docs/scaling.md), and some
        room for the retained views and the status messages."""
        return self.devices * (self.relay_window + self.relay_window_live + QUEUE_SPARE)


def contact_address(device: int) -> str:
    """The e-mail address of device ``device``'s one contact."""
    return f"c{device:04d}@fleet.invalid"


@dataclass
class Session:
    device: int
    sess: str
    #: wall clock (time.time) and monotonic time of the gesture
    gesture: float
    gesture_mono: float
    notified: float | None = None  # monotonic
    #: started while the relays were paused
    in_pause: bool = False
    page: float | None = None  # monotonic: the contact's page first showed it
    stored: float | None = None  # wall clock: the relay's stored_at


@dataclass
class Summary:
    devices: int
    relays: int
    database: str
    seconds: float
    sos_started: int
    records_stored: int
    records_lost: int
    outboxes_complete: int
    outboxes: int
    fixes_stored: int
    gesture_to_stored_ms: dict[str, float]
    gesture_to_notified_ms: dict[str, float]
    gesture_to_page_ms: dict[str, float]
    #: from the device recording a route point (its own clock: the simulated receivers'
    #: time starts when each was made, so a fix's own time would count the fleet's
    #: start-up) to the point on the contact's page
    fix_to_page_ms: dict[str, float]
    page_points: int
    relay_cpu_s: float
    relay_cpu_ms_per_1000_fixes: float
    db_rows: int
    db_bytes: int
    #: rows and bytes per device and day at this run's SOS rate
    db_rows_per_device_day: float
    db_bytes_per_device_day: float
    broker_peak_rss_kib: int
    fleet_cpu_s: float
    per_second: list[dict[str, float]] = field(default_factory=list)
    #: the relays' pause (0: none), what the devices' outboxes held at most meanwhile,
    #: and the SOSes started during it
    paused_s: float = 0.0
    queue_bound: int = 0
    outbox_peak: int = 0
    pause_gesture_to_stored_ms: dict[str, float] = field(default_factory=dict)
    pause_gesture_to_page_ms: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.records_lost == 0 and self.outboxes_complete == self.outboxes


def _pcts(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 1),
        "p95": round(percentile(values, 0.95), 1),
        "p99": round(percentile(values, 0.99), 1),
    }


class Viewers:
    """The contacts: each e-mail's link opened, its live page watched."""

    def __init__(self) -> None:
        #: (device, seq, wall-clock arrival) of every route point a page received live
        self.points: list[tuple[int, int, float]] = []
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(10, read=None), limits=httpx.Limits(max_connections=None)
        )
        self._tasks: set[asyncio.Task[None]] = set()
        #: an alert that came before its session was noted, by address
        self._early: dict[str, Mail] = {}

    async def follow(self, sink: MailSink, by_address: Callable[[str], Session | None]) -> None:
        seen = 0
        while True:
            mails = await sink.wait(seen + 1, within=3600)
            for mail in mails[seen:]:
                self.arrived(mail, by_address)
            seen = len(mails)

    def arrived(self, mail: Mail, by_address: Callable[[str], Session | None]) -> None:
        if not mail.to or message_kind(mail.subject) not in ("alert", "acknowledged"):
            return  # an end notice (it has the link too), a voice note
        s = by_address(mail.to[0])
        if s is None:
            # the alert can arrive before the fleet, busy with a thousand devices, has
            # noted the session its gesture started: kept for registered()
            self._early.setdefault(mail.to[0], mail)
            return
        self._alerted(s, mail)

    def registered(self, s: Session, address: str) -> None:
        """The fleet noted ``s``: an alert that came for it before is taken now."""
        mail = self._early.pop(address, None)
        if mail is not None and mail.at >= s.gesture_mono:
            self._alerted(s, mail)

    def _alerted(self, s: Session, mail: Mail) -> None:
        link = LINK.search(mail.body)
        if link is None or s.notified is not None:
            return  # not one of ours, or not its first
        s.notified = mail.at
        task = asyncio.create_task(self._watch(s, link.group(0)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, s: Session, link: str) -> None:
        with contextlib.suppress(httpx.HTTPError, asyncio.CancelledError):
            async for kind, data in live_stream(self._http, link):
                self._take(s, kind, data)

    def _take(self, s: Session, kind: str, data: dict[str, Any]) -> None:
        now, wall = time.monotonic(), time.time()
        if kind == "page" and s.page is None:
            s.page = now
        if kind != "update":
            return
        for p in data.get("points") or ():
            self.points.append((s.device, int(p[0]), wall))

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()


async def _database(spec: FleetSpec, workdir: Path, stack: contextlib.AsyncExitStack) -> str:
    """The relays' database URL ("" for SQLite in the relay's own directory)."""
    if spec.database == "sqlite":
        if spec.relays > 1:
            raise ValueError("several relays share one PostgreSQL: --database postgresql")
        return ""
    if spec.database == "postgresql":
        from sosbeacon.sim.postgres import find_bindir, postgres

        bindir = find_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed: sudo apt-get install postgresql")
        pg = stack.enter_context(postgres(bindir))
        return pg.url
    return spec.database


#: descriptors one simulated device holds (the GPS's pty and pyserial's abort pipes for
#: it, the outbox's database, WAL and shared memory for two connections, its reserve and
#: lock, the MQTT and control sockets; no modem in the fleet)
FDS_PER_DEVICE = 18


def raise_fd_limit(devices: int) -> None:
    """The soft descriptor limit raised to the hard one; :class:`ValueError` when even
    that cannot hold ``devices``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices * FDS_PER_DEVICE + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        raise ValueError(
            f"{devices} devices need about {need} file descriptors and this process may "
            f"have {hard} (ulimit -Hn): run fewer, or raise the hard limit"
        )


def dump_tasks() -> None:
    """What every task of the fleet awaits, on stderr (``kill -USR1`` a fleet that seems
    stuck)."""
    tasks = asyncio.all_tasks()
    sys.stderr.write(f"--- {len(tasks)} tasks\n")
    for t in tasks:
        where = []
        coro: Any = t.get_coro()
        while coro is not None and hasattr(coro, "cr_frame"):  # down the chain of awaits
            frame = coro.cr_frame
            if frame is not None:
                where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None)
        sys.stderr.write(f"{t.get_name()}: " + " > ".join(where) + "\n")
    sys.stderr.flush()


async def run_fleet(spec: FleetSpec, *, workdir: Path, out: Callable[[str], None]) -> Summary:
    raise_fd_limit(spec.devices)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    async with contextlib.AsyncExitStack() as stack:
        broker_url = spec.broker
        broker: Mosquitto | None = None
        if broker_url is None:
            # bounded, as in production (docs/scaling.md): a drop here is a lost record
            broker = Mosquitto(
                workdir / "broker", config=f"max_queued_messages {spec.queue_bound}\n"
            )
            broker.start()
            stack.callback(broker.stop)
            broker_url = f"mqtt://127.0.0.1:{broker.port}"
        url = await _database(spec, workdir, stack)
        sink = stack.enter_context(MailSink())
        relays = [
            RelayProcess(workdir / f"relay{k}", relay_values(
                workdir, f"relay{k}", broker_url, url, sink.url(), group="fleet"
            ))
            for k in range(spec.relays)
        ]  # fmt: skip
        for r in relays:
            stack.push_async_callback(r.stop)
        await asyncio.gather(*(r.start() for r in relays))
        daemons = _devices(spec, workdir, broker_url)
        tasks = [asyncio.create_task(d.run()) for d in daemons]
        try:
            t_up = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in daemons)), 120)
            out(f"{spec.devices} devices up in {time.monotonic() - t_up:.1f} s; "
                f"{spec.relays} relay(s) on {spec.database}; "
                f"{spec.sos_per_minute:g} SOS/min of {spec.sos_seconds:g} s each")  # fmt: skip
            return await _drive(spec, daemons, relays, broker, sink, url, workdir, out)
        finally:
            for d in daemons:
                d.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


def _devices(spec: FleetSpec, workdir: Path, broker_url: str) -> list[Daemon]:
    backend = load_backend("sim")
    daemons = []
    for i in range(spec.devices):
        cfg = config_mod.load(
            text="",
            overrides={
                "device.id": f"fleet-{i:04d}",
                "device.data_dir": str(workdir / f"d{i:04d}"),
                "sos.owner": f"Owner {i}",
                "sos.contacts": [{"name": "Contact", "reach": contact_address(i)}],
                "sos.countdown": 0,
                "sos.min_distance": 0,
                "mqtt.broker": broker_url,
                "modem.backend": "none",  # the data path only: SMS is drilled on its own
                "uplink.owntracks_topic": "",
                "uplink.relay_window": spec.relay_window,
                "uplink.relay_window_live": spec.relay_window_live,
            },
        )
        daemons.append(Daemon(cfg, backend, handle_signals=False))
    return daemons


async def _drive(
    spec: FleetSpec,
    daemons: list[Daemon],
    relays: list[RelayProcess],
    broker: Mosquitto | None,
    sink: MailSink,
    url: str,
    workdir: Path,
    out: Callable[[str], None],
) -> Summary:
    sessions: dict[str, Session] = {}
    by_device: dict[int, Session] = {}
    viewers = Viewers()

    def by_address(address: str) -> Session | None:
        m = re.fullmatch(r"c(\d+)@fleet\.invalid", address)
        return by_device.get(int(m.group(1))) if m else None

    follower = asyncio.create_task(viewers.follow(sink, by_address))
    await _warm_up(daemons[-1], sink)
    pids = [r.pid for r in relays]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    fleet0 = cpu_seconds(os.getpid())
    broker_peak = 0
    running: dict[int, float] = {}  # device → when its SOS stops (monotonic)
    next_device = 0
    every = 60.0 / spec.sos_per_minute if spec.sos_per_minute > 0 else float("inf")
    t0 = time.monotonic()
    next_start = t0
    out(f"{'t':>4}  {'SOS':>4}  {'points/s':>8}  {'relay CPU %':>11}  {'held':>6}")
    pause_end = spec.pause_at + spec.pause_seconds if spec.pause_seconds > 0 else 0.0
    paused = False
    outbox_peak = 0
    per_second: list[dict[str, float]] = []
    seen_points = 0
    cpu_prev = cpu0
    try:
        for sec in range(1, int(spec.duration) + 1):
            while time.monotonic() < t0 + sec:
                now = time.monotonic()
                for dev in [d for d, until in running.items() if until <= now]:
                    del running[dev]
                    ctl = daemons[dev].controller
                    assert ctl is not None
                    await ctl.stop(trigger="fleet")
                if now >= next_start and len(running) < len(daemons):
                    while next_device in running:
                        next_device = (next_device + 1) % len(daemons)
                    dev, next_device = next_device, (next_device + 1) % len(daemons)
                    ctl = daemons[dev].controller
                    assert ctl is not None
                    gesture, gesture_mono = time.time(), time.monotonic()
                    await ctl.start(trigger="fleet", now=True)
                    assert ctl.session is not None
                    s = Session(dev, ctl.session.id, gesture, gesture_mono, in_pause=paused)
                    sessions[s.sess] = by_device[dev] = s
                    viewers.registered(s, contact_address(dev))
                    running[dev] = gesture_mono + spec.sos_seconds
                    next_start += every
                    continue
                wake = min([t0 + sec, next_start, *running.values()])
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
            if pause_end and not paused and spec.pause_at <= sec < pause_end:
                for r in relays:
                    r.pause()
                paused = True
                out(f"relays paused for {spec.pause_seconds:g} s")
            elif paused and sec >= pause_end:
                for r in relays:
                    r.resume()
                paused = False
                out("relays resumed")
            held = 0
            if pause_end:  # what the outboxes hold (only when it matters: a query each)
                for d in daemons:
                    assert d.outbox is not None
                    held += (await d.outbox.stats()).depth
                outbox_peak = max(outbox_peak, held)
            points = len(viewers.points) - seen_points
            seen_points = len(viewers.points)
            cpu_now = sum(cpu_seconds(p) for p in pids)
            if broker is not None and broker.proc is not None:
                broker_peak = max(broker_peak, rss_kib(broker.proc.pid))
            row = {"t": sec, "sos": len(running), "points": points,
                   "relay_cpu_pct": round((cpu_now - cpu_prev) * 100, 1)}  # fmt: skip
            cpu_prev = cpu_now
            per_second.append(row)
            cpu_pct = row["relay_cpu_pct"]
            out(f"{sec:>4}  {row['sos']:>4.0f}  {row['points']:>8.0f}  {cpu_pct:>11.0f}  {held:>6}")
        if paused:
            for r in relays:
                r.resume()
        for dev in list(running):
            ctl = daemons[dev].controller
            assert ctl is not None
            await ctl.stop(trigger="fleet")
        running.clear()
        # every outbox drains, and the relays store what they were sent
        async with asyncio.timeout(120):
            for d in daemons:
                assert d.uplink is not None
                await d.uplink.drained()
        lasts = {}
        recorded: dict[tuple[int, int], float] = {}  # (device, seq) → when it was recorded
        for i, d in enumerate(daemons):
            assert d.outbox is not None
            last = await d.outbox.last_seq()
            if last:
                lasts[d.outbox.outbox_id] = last
            for stored, _ in await d.outbox.export():
                recorded[(i, stored.seq)] = stored.record.time.timestamp()
        ledger = await _relay_ledger(relays[0], url, lasts, sessions)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await viewers.close()
    relay_cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    fixes = ledger["fixes"]
    complete = sum(1 for box, last in lasts.items() if ledger["seen"].get(box) == [[1, last]])
    lost = sum(
        last - sum(b - a + 1 for a, b in ledger["seen"].get(box, [])) for box, last in lasts.items()
    )
    done = list(sessions.values())
    day = 86400 / (spec.devices * spec.duration)
    summary = Summary(
        devices=spec.devices,
        relays=spec.relays,
        database="sqlite" if not url else "postgresql",
        seconds=spec.duration,
        sos_started=len(done),
        records_stored=ledger["records"],
        records_lost=lost,
        outboxes_complete=complete,
        outboxes=len(lasts),
        fixes_stored=fixes,
        gesture_to_stored_ms=_pcts([(s.stored - s.gesture) * 1000 for s in done if s.stored]),
        gesture_to_notified_ms=_pcts(
            [(s.notified - s.gesture_mono) * 1000 for s in done if s.notified]
        ),
        gesture_to_page_ms=_pcts([(s.page - s.gesture_mono) * 1000 for s in done if s.page]),
        fix_to_page_ms=_pcts(
            [
                (wall - recorded[(dev, seq)]) * 1000
                for dev, seq, wall in viewers.points
                if (dev, seq) in recorded
            ]
        ),
        page_points=len(viewers.points),
        relay_cpu_s=round(relay_cpu, 2),
        relay_cpu_ms_per_1000_fixes=round(relay_cpu * 1e6 / fixes, 1) if fixes else float("nan"),
        db_rows=ledger["rows"],
        db_bytes=ledger["bytes"],
        db_rows_per_device_day=round(ledger["rows"] * day, 1),
        db_bytes_per_device_day=round(ledger["bytes"] * day),
        broker_peak_rss_kib=broker_peak,
        fleet_cpu_s=round(cpu_seconds(os.getpid()) - fleet0, 2),
        per_second=per_second,
        paused_s=spec.pause_seconds if pause_end else 0.0,
        queue_bound=spec.queue_bound if broker is not None else 0,
        outbox_peak=outbox_peak,
        pause_gesture_to_stored_ms=_pcts(
            [(s.stored - s.gesture) * 1000 for s in done if s.stored and s.in_pause]
        ),
        pause_gesture_to_page_ms=_pcts(
            [(s.page - s.gesture_mono) * 1000 for s in done if s.page and s.in_pause]
        ),
    )
    out(summary_text(summary))
    return summary


async def _warm_up(daemon: Daemon, sink: MailSink) -> None:
    """One SOS through everything before the measured run, so that what a relay does
    once (its first notification loads Apprise's plugins) is not counted as load."""
    ctl = daemon.controller
    assert ctl is not None
    await ctl.start(trigger="fleet warm-up", now=True)
    with contextlib.suppress(TimeoutError):
        await sink.wait(1, within=30)
    await ctl.stop(trigger="fleet warm-up")


async def _relay_ledger(
    relay: RelayProcess, url: str, lasts: dict[str, int], sessions: dict[str, Session]
) -> dict[str, Any]:
    """What the relays stored, read from their database once every outbox's last seq is
    there (or after 60 s): the ledger per outbox, records, fixes, rows and bytes, and each
    session's ``stored_at`` (into ``sessions``)."""
    from sqlalchemy import func, select, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from sosbeacon.relay import db

    sqlite_file = relay.workdir / "relay.db" if not url else None
    eng = create_async_engine(url or f"sqlite+aiosqlite:///{sqlite_file}")
    try:
        deadline = time.monotonic() + 60
        while True:
            async with eng.connect() as conn:
                rows = (await conn.execute(select(db.boxes.c.box, db.boxes.c.seen))).all()
            seen = {box: list(s) for box, s in rows}
            if all(seen.get(b) == [[1, last]] for b, last in lasts.items()):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        async with eng.connect() as conn:
            records = (await conn.execute(select(func.count()).select_from(db.records))).scalar()
            fixes = (
                await conn.execute(select(func.count()).where(db.records.c.kind == "fix"))
            ).scalar()
            for sess, stored in (
                await conn.execute(select(db.sessions.c.sess, db.sessions.c.stored_at))
            ).all():
                if sess in sessions and stored:
                    sessions[sess].stored = float(stored)
            tables = [t.name for t in db.metadata.sorted_tables]
            total_rows = 0
            for name in tables:
                total_rows += int(
                    (await conn.execute(text(f'SELECT count(*) FROM "{name}"'))).scalar_one()
                )
            # the tables and their indexes, not the server's or the file's free space
            size_of = PG_TABLE_BYTES if url else "SELECT coalesce(sum(pgsize), 0) FROM dbstat"
            size = int((await conn.execute(text(size_of))).scalar_one())
    finally:
        await eng.dispose()
    return {"seen": seen, "records": int(records or 0), "fixes": int(fixes or 0),
            "rows": total_rows, "bytes": size}  # fmt: skip


def summary_text(s: Summary) -> str:
    def p(d: dict[str, float]) -> str:
        return (
            f"p50 {d['p50']:.0f} ms, p95 {d['p95']:.0f} ms, p99 {d['p99']:.0f} ms (n={d['n']:.0f})"
        )

    pause = ""
    if s.paused_s:
        pause = (
            f"\nrelays paused {s.paused_s:g} s: the outboxes held up to {s.outbox_peak} records "
            f"(broker queue bound {s.queue_bound or 'not ours'}); SOSes started in the pause: "
            f"gesture → stored {p(s.pause_gesture_to_stored_ms)}, "
            f"gesture → page {p(s.pause_gesture_to_page_ms)}"
        )
    return (
        f"\n{s.outboxes} outboxes, {s.outboxes_complete} complete at the relay, "
        f"{s.records_lost} records lost; {s.sos_started} SOSes; {s.records_stored} records "
        f"stored ({s.fixes_stored} fixes)\n"
        f"gesture → stored at the relay:     {p(s.gesture_to_stored_ms)}\n"
        f"gesture → contact notified:        {p(s.gesture_to_notified_ms)}\n"
        f"gesture → contact's page shows it: {p(s.gesture_to_page_ms)}\n"
        f"route point → on the page (live): {p(s.fix_to_page_ms)}\n"
        f"relay CPU {s.relay_cpu_s:.1f} s ({s.relay_cpu_ms_per_1000_fixes:.0f} ms per 1,000 "
        f"fixes); database {s.db_rows} rows, {s.db_bytes / 1e6:.2f} MB "
        f"({s.db_rows_per_device_day:.0f} rows, {s.db_bytes_per_device_day / 1e6:.2f} MB per "
        f"device-day at this SOS rate); broker peak RSS {s.broker_peak_rss_kib / 1024:.1f} MiB; "
        f"this process {s.fleet_cpu_s:.1f} s CPU" + pause
    )


def main(spec: FleetSpec, *, as_json: bool = False) -> int:
    logging.getLogger("sosbeacon.device").setLevel(logging.ERROR)
    logging.getLogger("sosd").setLevel(logging.ERROR)
    out: Callable[[str], None] = (lambda line: None) if as_json else _print
    with tempfile.TemporaryDirectory(prefix="sos-fleet-") as tmp:
        summary = asyncio.run(run_fleet(spec, workdir=Path(tmp), out=out))
    if as_json:
        sys.stdout.write(json.dumps(asdict(summary)) + "\n")
    return 0 if summary.passed else 1


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
