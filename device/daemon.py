"""``sosd``: the parts put together, supervised, on one event loop.

Intake (GPS, button, battery) feeds the SOS controller; the controller writes records to
the durable outbox; the uplink drains it to the broker; contacts' commands come back
through the uplink; ``sosctl`` talks over the control socket. Every loop is supervised:
an unexpected error is logged and the loop restarts, so no single fault ends the daemon.

Signals: SIGTERM/SIGINT stop intake, let commits finish, say "offline" to the broker
and disconnect; SIGHUP re-reads the configuration and applies what can change while
running (contacts, countdown, route spacing, privacy), naming the rest as needing a
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sosbeacon.device import config as config_mod
from sosbeacon.device import control
from sosbeacon.device.battery import BatteryPolicy, BatterySample
from sosbeacon.device.button import run_button
from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.commands import COMMANDS, SosCommands
from sosbeacon.device.config import Config
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.gesture import GestureDetector
from sosbeacon.device.gps import Fix
from sosbeacon.device.notify import Notifier
from sosbeacon.device.outbox import ACTIVE_SESSION, Outbox, OutboxError, SessionMark
from sosbeacon.device.parts import Backend, Parts
from sosbeacon.device.privacy import shared_now
from sosbeacon.device.private import private_dir
from sosbeacon.device.records import run_retention
from sosbeacon.device.sms_alerts import SmsAlerts
from sosbeacon.device.sms_alerts import summary as sms_summary
from sosbeacon.device.sos import Session, SosController, SosRefused
from sosbeacon.device.tomlconf import ConfigError
from sosbeacon.device.uplink import Uplink
from sosbeacon.device.voice import VoiceNotes
from sosbeacon.device.wire import Command, CommandError, CommandName

log = logging.getLogger("sosd")
#: what SIGHUP can change in place
RELOADABLE = ("sos", "privacy")
#: ``sosctl export``'s JSON: docs/export.md, docs/export.schema.json
EXPORT_FORMAT = "sosbeacon-export"
EXPORT_VERSION = 1


class Daemon:
    def __init__(
        self,
        config: Config,
        backend: Backend,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self._handle_signals = handle_signals
        self._backend = backend
        self.clock = clock or MonotonicClock()
        self.notifier = notifier or Notifier()
        #: what happens, for ``sosctl events`` and the drills (never the log's wording)
        self.events = Events(clock=lambda: self.clock.now().timestamp())
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        self._stopping = asyncio.Event()
        #: set once everything runs and the control socket answers
        self.ready = asyncio.Event()
        self.parts: Parts | None = None
        self.outbox: Outbox | None = None
        self.controller: SosController | None = None
        self.uplink: Uplink | None = None
        self.commands: SosCommands | None = None
        #: the SOS texts, when the parts have a modem (device.sms_alerts)
        self.sms: SmsAlerts | None = None
        #: voice notes, when the parts have a microphone (device.voice)
        self.voice: VoiceNotes | None = None
        self.last_fix: Fix | None = None
        self.last_battery: BatterySample | None = None
        self.started_at = 0.0
        self.first_fix_after: float | None = None
        self.battery_errors = 0
        self._mark: SessionMark | None = None

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        cfg = self.config
        self.started_at = self.clock.monotonic()
        data = cfg.device.data_dir
        try:
            private_dir(data)
        except (FileExistsError, NotADirectoryError):
            raise OSError(
                f"device.data_dir {data} is not a directory: point it (or --data-dir) at a "
                "directory; sosd creates it when missing"
            ) from None
        async with AsyncExitStack() as stack:
            # The data directory's lock first: a second daemon touches nothing (no
            # session resumed, no simulated device link made) before it has won it.
            stack.callback(os.close, _lock(data / "sosd.lock"))  # closing releases it
            self._mark = SessionMark(data / "sos-session")
            try:
                await asyncio.to_thread(self._mark.prepare)
            except OSError as exc:
                log.warning(
                    "cannot prepare %s (%s): a stop on a full disk may be forgotten at a restart",
                    self._mark.path,
                    exc,
                )
            self.parts = parts = await self._backend(cfg, self.clock, stack)
            self.outbox = outbox = await Outbox.open(cfg.outbox_path, cfg.outbox, clock=self.clock)
            stack.push_async_callback(outbox.close)
            self.controller = ctl = SosController(
                config=cfg.sos,
                recorder=outbox,
                clock=self.clock,
                privacy=cfg.privacy,
                battery_policy=BatteryPolicy(cfg.battery.policy),
                indicator=parts.indicator,
                gps_power=parts.gps_power,
                network=parts.network,
                on_session=self._persist_session,
                events=self.events,
            )
            await self._resume_session(ctl, outbox)
            self.commands = commands = SosCommands(ctl, clock=self.clock)
            self.uplink = uplink = Uplink(
                config=cfg.uplink_config(),
                broker=cfg.broker_config(),
                outbox=outbox,
                clock=self.clock,
                commands=commands,
                sos_active=lambda: ctl.session is not None,
                events=self.events,
                homeassistant=cfg.homeassistant,
            )
            if parts.microphone is not None:
                self.voice = commands.voice = VoiceNotes(
                    config=cfg.voice,
                    microphone=parts.microphone,
                    controller=ctl,
                    events=self.events,
                    max_payload=lambda: uplink.limit.max_bytes,
                )
            server = await control.serve(cfg.socket_path, self.handle)
            stack.callback(server.close)
            intake = [
                self._supervise("gps", self._gps_loop),
                self._supervise("battery", self._battery_loop),
            ]
            if parts.button is not None:
                button = parts.button

                async def buttons() -> None:
                    await run_button(button, GestureDetector(cfg.gesture), ctl, self.clock)

                intake.append(self._supervise("button", buttons))
            if parts.link_monitor is not None:
                intake.append(self._supervise("network", self._network_loop))
            if self.voice is not None:
                intake.append(self._supervise("voice", self.voice.run))
            if parts.sms is not None and cfg.sms.enabled:
                self.sms = SmsAlerts(
                    config=cfg.sms,
                    link=parts.sms,
                    controller=ctl,
                    events=self.events,
                    state=outbox.state,
                    clock=self.clock,
                    acknowledge=self._acknowledge_by_sms,
                    owner=cfg.sos.owner or cfg.device.id,
                )
                intake.append(self._supervise("sms", self.sms.run))
            intake += [self._supervise(f"backend-{i}", f) for i, f in enumerate(parts.background)]
            intake_tasks = [asyncio.create_task(c) for c in intake]
            up = asyncio.create_task(self._supervise("uplink", uplink.run))
            service = [
                asyncio.create_task(
                    self._supervise("retention", lambda: run_retention(outbox, self.clock))
                ),
                asyncio.create_task(self._watchdog_loop()),
            ]
            if self._handle_signals:
                self._install_signals()
            armed = "armed" if ctl.armed else "NOT ARMED (no emergency contact)"
            log.info(
                "sosd running: device %s, %s, broker %s:%d, data in %s",
                cfg.device.id,
                armed,
                uplink.broker.host,
                uplink.broker.port,
                cfg.device.data_dir,
            )
            self.notifier.ready(await self.status_line())
            self.ready.set()
            try:
                await self._stopping.wait()
            finally:
                log.info("stopping: intake first, then the uplink says goodbye")
                self.notifier.stopping()
                await _cancel(intake_tasks)
                await ctl.cancel_countdown("daemon stopping", quiet=True)
                await _cancel(service)
                up.cancel()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(5):
                        await up
                if self._handle_signals:
                    self._remove_signals()
        log.info("sosd stopped")

    async def _persist_session(self, s: Session | None) -> None:
        """The running session (or none) in the outbox's ``meta``, and a started or
        ending one first in the session mark, which needs no new disk space: a start or
        a stop on a full disk survives a restart. The mark keeps an ended session
        (a restart then ends it, never resumes it) until the next one starts."""
        assert self.outbox is not None
        state = s.to_json() if s is not None else None
        if state is not None and self._mark is not None:
            await asyncio.to_thread(self._mark.write, state)
        try:
            await self.outbox.state.put(ACTIVE_SESSION, state)
        except OutboxError as exc:
            log.warning(
                "the SOS session was not saved in the outbox (%s); its mark %s has it",
                exc,
                self._mark.path if self._mark else "(none)",
            )

    async def _resume_session(self, ctl: SosController, outbox: Outbox) -> None:
        """Carry on with the session that was running, or end the one that was being
        stopped: the outbox's record and the mark, the newer of them."""
        found: list[Session] = []
        saved = await outbox.state.get(ACTIVE_SESSION)
        mark = self._mark
        reads: tuple[tuple[str, Callable[[], dict[str, Any] | None]], ...] = (
            ("mark", lambda: mark.read() if mark is not None else None),
            ("outbox", lambda: saved),
        )
        for where, read in reads:
            try:
                state = read()
                if state:
                    found.append(Session.from_json(state))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("the SOS session saved in the %s is unreadable (%s)", where, exc)
        if not found:
            return
        # the latest session; of its two copies the ended one (an end is final)
        latest = max(found, key=lambda x: x.started).id
        copies = [f for f in found if f.id == latest]
        newest = next((f for f in copies if f.ended), copies[0])
        if newest.ended is not None:
            # The mark keeps the last ended session: end it only if its end record is
            # not stored (a stop on a full disk, then a restart), and only while its
            # route lasts (once purged, has_end cannot tell).
            kept_until = newest.ended + timedelta(seconds=self.config.sos.retention)
            if await outbox.has_end(newest.id) or self.clock.now() >= kept_until:
                if saved:
                    with contextlib.suppress(OutboxError):
                        await outbox.state.put(ACTIVE_SESSION, None)
                return
        await ctl.resume(newest)

    async def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body``; if it fails, log and run it again (after a pause). Missing or
        unreadable hardware (an OSError, whose message says what to check) is logged in
        one line, once per outage; anything else with its traceback."""
        outage = False
        while True:
            started = self.clock.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                if self.clock.monotonic() - started > 60:
                    outage = False  # it had been working: a new outage
                if not outage:
                    log.error("%s: %s (retrying every 5 s)", name, exc)
                outage = True
            except Exception:
                log.exception("%s failed; restarting it in 5 s", name)
            await self.clock.sleep(5)

    async def _gps_loop(self) -> None:
        assert self.parts is not None and self.controller is not None
        had = ever = False
        async for fix in self.parts.gps.fixes():
            if fix.has_position != had:
                had = fix.has_position
                state = ("back" if ever else "first") if had else "lost"
                self.events.emit(EventKind.FIX, state=state)
                ever = ever or had
            if fix.has_position:
                self.last_fix = fix
                if self.first_fix_after is None:
                    self.first_fix_after = self.clock.monotonic() - self.started_at
                    log.info("first fix after %.1f s", self.first_fix_after)
            await self.controller.on_fix(fix)

    async def _acknowledge_by_sms(self, by: str, session: str | None, contact: int) -> None:
        """A contact's OK by SMS: the command table's ``ack``, as for the page (with
        who it was, so that the relay does not alert them again)."""
        assert self.commands is not None
        cmd = Command(CommandName.ACK, by=by, session=session, contact=contact, via="sms")
        await self.commands(cmd)

    async def _network_loop(self) -> None:
        """The network's state, from NetworkManager or the modem, to the uplink: it
        reconnects the moment the network is back, and lets a connection go at once
        when it is gone."""
        assert self.parts is not None and self.parts.link_monitor is not None
        assert self.uplink is not None
        last: bool | None = None
        async for up in self.parts.link_monitor.changes():
            if up == last:
                continue
            first, last = last is None, up
            state = "up" if up else "down"
            self.events.emit(EventKind.NETWORK, state=state, **({"first": True} if first else {}))
            if up:
                self.uplink.network_up()
            else:
                self.uplink.network_down()

    async def _battery_loop(self) -> None:
        assert self.parts is not None and self.controller is not None
        battery = self.parts.battery
        if battery is None:
            return
        failing = False
        while True:
            try:
                sample = await battery.read()
            except (OSError, ValueError) as exc:
                self.battery_errors += 1
                if not failing:
                    log.warning("battery gauge unreadable (%s); retrying", exc)
                failing = True
            else:
                failing = False
                self.last_battery = sample
                await self.controller.on_battery(sample)
            await self.clock.sleep(self.config.battery.poll_interval)

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 while the event loop turns, and a fresh STATUS line."""
        interval = self.notifier.watchdog_interval or 30.0
        while True:
            await asyncio.sleep(interval)
            self.notifier.watchdog()
            self.notifier.status(await self.status_line())

    # -- signals and reload ------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    async def reload(self) -> list[str]:
        """Re-read the configuration; apply the sections in :data:`RELOADABLE`; returns
        the other sections that changed (they need a restart)."""
        if self._config_path is None:
            log.warning("SIGHUP: no configuration file to reload (started without one)")
            return []
        try:
            new = config_mod.load(self._config_path, overrides=self._overrides)
        except ConfigError as exc:
            log.error("SIGHUP: configuration NOT reloaded, keeping the running one. %s", exc)
            return []
        old = self.config
        changed = [
            name
            for name in asdict(old)
            if name != "source" and asdict(old)[name] != asdict(new)[name]
        ]
        ctl = self.controller
        if ctl is not None:
            ctl.config = new.sos
            ctl.privacy = new.privacy
        self.config = replace(old, sos=new.sos, privacy=new.privacy)
        later = [c for c in changed if c not in RELOADABLE]
        log.info(
            "SIGHUP: configuration reloaded (%s applied%s)",
            ", ".join(c for c in changed if c in RELOADABLE) or "nothing changed that",
            f"; changed but needing a restart: {', '.join(later)}" if later else "",
        )
        return later

    # -- sosctl ------------------------------------------------------------------------

    async def _follow_events(self, since: float | None) -> AsyncIterator[dict[str, Any]]:
        """The events as they happen (after those kept since ``since``): a first line
        that says so, then one per event."""
        async with self.events.follow(since) as stream:
            yield {"ok": True, "following": "events"}
            async for ev in stream:
                yield ev.to_json()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """A control-socket request, by the table of :meth:`_requests` (the backend's
        controls, such as the simulator's ``sim.press``, among them)."""
        assert self.parts is not None
        table = {**self._requests(), **self.parts.controls}
        cmd = req.get("cmd")
        handler = table.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown request {cmd!r}; known: {', '.join(table)}"}
        try:
            answer: dict[str, Any] | AsyncIterator[dict[str, Any]] = await handler(req)
        except SosRefused as exc:
            return {"ok": False, "error": str(exc)}
        except OSError as exc:  # a full disk, say: the message says what to do
            return {"ok": False, "error": str(exc)}
        if isinstance(answer, dict) and "ok" not in answer:
            answer = {"ok": True, **answer}
        return answer

    def _requests(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Every request the control socket takes: the daemon's own, and every command
        of :data:`device.commands.COMMANDS` (what contacts may do over MQTT, the owner
        may do here, through the same code)."""
        return {
            "status": self._req_status,
            "events": self._req_events,
            "sos-start": self._req_sos_start,
            "sos-stop": self._req_sos_stop,
            "export": self._req_export,
            "purge": self._req_purge,
            "alarm-ack": self._req_alarm_ack,
            **{name.value: functools.partial(self._req_command, name) for name in COMMANDS},
        }

    async def _req_command(self, name: CommandName, req: dict[str, Any]) -> dict[str, Any]:
        assert self.commands is not None
        session = req.get("session")
        if session is not None and not isinstance(session, str):
            return {"ok": False, "error": "session: the session id, a string"}
        try:
            return await self.commands(Command(name, by="sosctl", session=session))
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}

    async def _req_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.status(ask_modem=True)

    async def _req_events(self, req: dict[str, Any]) -> Any:
        since = req.get("since")
        if since is not None and not isinstance(since, int | float):
            return {"ok": False, "error": "since: epoch seconds"}
        return self._follow_events(since)

    async def _req_sos_start(self, req: dict[str, Any]) -> dict[str, Any]:
        ctl = self.controller
        assert ctl is not None
        await ctl.start(trigger="cli", drill=bool(req.get("drill")), now=bool(req.get("now")))
        return {"state": ctl.state.value}

    async def _req_sos_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        ctl, outbox = self.controller, self.outbox
        assert ctl is not None and outbox is not None
        if not await ctl.stop(trigger="cli"):
            return {"ok": False, "error": "no SOS or countdown is active"}
        answer: dict[str, Any] = {"state": ctl.state.value}
        if outbox.held:
            answer["warning"] = (
                "sharing stopped now, but the disk is full: the end of the SOS is held in "
                "memory and goes out once there is room (a restart meanwhile still ends "
                "it, never resumes it)"
            )
        return answer

    async def _req_alarm_ack(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.outbox is not None
        return {"acknowledged": await self.outbox.ack_alarm()}

    async def _req_export(self, req: dict[str, Any]) -> dict[str, Any]:
        outbox = self.outbox
        assert outbox is not None
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported": self.clock.now().isoformat(),
            "device": self.config.device.id,
            "box": outbox.outbox_id,
            "records": [
                {
                    "seq": s.seq,
                    "kind": s.record.kind.value,
                    "time": s.record.time.isoformat(),
                    "session": s.record.session,
                    "drill": s.record.drill,
                    "expires": s.record.expires.isoformat() if s.record.expires else None,
                    "delivered": delivered,
                    "data": s.record.data,
                }
                for s, delivered in await outbox.export()
            ],
        }

    async def _req_purge(self, req: dict[str, Any]) -> dict[str, Any]:
        ctl, outbox = self.controller, self.outbox
        assert ctl is not None and outbox is not None
        if ctl.session is not None:
            return {"ok": False, "error": "an SOS is active: stop it before purging"}
        deleted = await outbox.wipe()
        assert self.uplink is not None
        if not await self.uplink.forget_home_assistant():
            return {"deleted": deleted, "home_assistant": "not removed: not connected to the "
                    "broker now; run sosctl purge again once it is"}  # fmt: skip
        return {"deleted": deleted}

    async def status(self, *, ask_modem: bool = False) -> dict[str, Any]:
        """The daemon's state. ``ask_modem`` asks the modem too (a few AT commands):
        for ``sosctl status`` only, not the STATUS line of every watchdog tick."""
        ctl, outbox, uplink = self.controller, self.outbox, self.uplink
        assert ctl is not None and outbox is not None and uplink is not None
        now = self.clock.monotonic()
        st = await outbox.stats()
        fix = self.last_fix
        s = ctl.session
        out: dict[str, Any] = {
            "device": self.config.device.id,
            "state": ctl.state.value,
            "armed": ctl.armed,
            "session": s.id if s else None,
            "drill": s.drill if s else None,
            "fix": None,
            "fix_age": None,
            "battery": self.last_battery.to_json() if self.last_battery else None,
            "battery_level": ctl.battery.level.name.lower(),
            "link": {
                "connected": uplink.connected.is_set(),
                "broker": f"{uplink.broker.host}:{uplink.broker.port}",
                "connects": uplink.stats.connects,
                "last_error": uplink.stats.last_error or None,
                # sent, not yet confirmed by the relay (the end-to-end window)
                "unconfirmed": uplink.credit.status(),
            },
            "outbox": {
                "depth": st.depth,
                "in_flight": st.inflight,
                "oldest_age": (
                    round((self.clock.now() - st.oldest).total_seconds(), 1) if st.oldest else None
                ),
                "kept": st.kept,
                "bytes": st.bytes,
                "fault": (
                    {"what": outbox.fault, "since": outbox.full_since.isoformat()}
                    if outbox.full_since
                    else None
                ),
                "held": outbox.held,
                "held_dropped": outbox.held_dropped,
                # how often routine work waited for an SOS record on its way, in all
                "gave_way": {
                    "times": outbox.right_of_way.waits,
                    "seconds": round(outbox.right_of_way.waited, 3),
                },
            },
            "alarm": outbox.alarm,
            "sms": await self.sms.status(ask_modem=ask_modem) if self.sms is not None else None,
            "shared": shared_now(ctl.privacy),
            "voice": self.voice.status() if self.voice is not None else None,
            "delivery": uplink.delivery.status(s.id if s else None),
            "uptime": round(now - self.started_at, 1),
            "first_fix_after": (
                None if self.first_fix_after is None else round(self.first_fix_after, 1)
            ),
            "gps": asdict(self.parts.gps.stats) if self.parts is not None else None,
        }
        if fix is not None and fix.lat is not None:
            out["fix"] = {"lat": fix.lat, "lon": fix.lon, "accuracy": fix.accuracy}
            if fix.received is not None:
                out["fix_age"] = round(now - fix.received, 1)
        return out

    async def status_line(self) -> str:
        st = await self.status()
        age = st["fix_age"]
        fix = "no fix yet" if age is None else f"fix {age:.0f} s old"
        link = "broker connected" if st["link"]["connected"] else "broker offline"
        o = st["outbox"]
        line = f"SOS {st['state']}; {fix}; {link}; outbox {o['depth']}"
        if o["fault"]:
            line += f"; {o['fault']['what'].upper()} ({o['held']} held in memory)"
        if st["alarm"]:
            line += "; ALARM: see sosctl status"
        if st["delivery"]["unheard"]:
            line += "; SOS NOT YET RECEIVED BY ANYONE"
        sms = st["sms"]
        if sms is not None:
            line += "; " + sms_summary(sms)
        return line


def _lock(path: Path) -> int:
    """An exclusive lock on the data directory for this daemon's life (released by the
    kernel if it dies): the descriptor holding it. Raises RuntimeError if another sosd
    holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(
            f"another sosd is already running on {path.parent} (it holds {path}); stop it "
            "first, or give this one another device.data_dir"
        ) from None
    return fd


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until all have ended; one that lost its cancellation
    (Python 3.11's ``wait_for`` can, python/cpython#86296, in code we do not own too) is
    cancelled again every second rather than waited for forever."""
    pending = [t for t in tasks if not t.done()]
    while pending:
        for t in pending:
            t.cancel()
        _, still = await asyncio.wait(pending, timeout=1.0)
        pending = list(still)
    await asyncio.gather(*tasks, return_exceptions=True)
