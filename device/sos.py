"""The SOS lifecycle: idle → countdown → active → ended.

The controller turns gestures, commands and fixes into records. Its promises:

* without an emergency contact it refuses to arm, says so at start-up, and refuses every
  start with a clear message and a "refused" cue;
* a gesture starts a countdown (default 5 s, one cue per second); any press during the
  countdown cancels it. ``start(now=True)`` skips the countdown (command line, MQTT);
* on activation the SOS-start record is written *first*, with the freshest fix and its
  age (or ``null`` and "no fix yet"), the contacts, what is shared and the drill flag;
  then the GPS is woken to full rate and the network brought up;
* while active, route points are recorded when the position moved at least
  ``min_distance`` (and ``min_interval`` passed), or every ``heartbeat`` even if not;
  the battery policy stretches both when the battery is low;
* on end, the SOS-end record is written and from that instant no fix is recorded for the
  session; every record of the session expires ``retention`` (72 h) after the end;
* a drill is flagged in every record; a real SOS activated during a drill ends the drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sosbeacon.device.actuators import Cue, GpsPower, GpsPowerMode, Indicator, NetworkLink
from sosbeacon.device.battery import BatteryLevel, BatteryPolicy, BatterySample
from sosbeacon.device.clock import Clock
from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.geo import haversine
from sosbeacon.device.gesture import Detected, Press
from sosbeacon.device.gps import Fix
from sosbeacon.device.privacy import PrivacyConfig, fix_payload, shared_now
from sosbeacon.device.recent import RecentEvents
from sosbeacon.device.records import Priority, Record, Recorder, RecordKind
from sosbeacon.device.telemetry import Telemetry

log = logging.getLogger(__name__)


class SosState(enum.StrEnum):
    IDLE = "idle"
    #: counting down to a start (a real SOS may count down over a running drill)
    COUNTDOWN = "countdown"
    ACTIVE = "active"
    #: stopped: no location is recorded from here on; the end record is being written
    ENDING = "ending"


#: every change of :class:`SosState` :meth:`SosController._transition` allows
TRANSITIONS: dict[SosState, frozenset[SosState]] = {
    SosState.IDLE: frozenset({SosState.COUNTDOWN, SosState.ACTIVE, SosState.ENDING}),
    SosState.COUNTDOWN: frozenset({SosState.IDLE, SosState.ACTIVE, SosState.ENDING}),
    SosState.ACTIVE: frozenset({SosState.ENDING, SosState.COUNTDOWN}),
    # a start may come while an end is still being written
    SosState.ENDING: frozenset({SosState.IDLE, SosState.COUNTDOWN, SosState.ACTIVE}),
}


class SosRefused(SosbeaconError):
    """A start that cannot be honoured; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    #: how the relay tells the contact of an SOS: an e-mail address, a phone number or
    #: ``scheme:id`` (``tgram:123456``), or several, comma-separated. Never a credential:
    #: it travels through the broker (``device.wire.parse_address`` checks it)
    reach: str = ""


@dataclass(frozen=True, slots=True)
class SosConfig:
    contacts: tuple[Contact, ...] = ()
    #: the owner's name as the contacts know them ("Sam needs help"); the device id if ""
    owner: str = ""
    countdown: float = 5.0
    min_distance: float = 10.0
    retention: float = 72 * 3600.0


@dataclass
class Session:
    id: str
    drill: bool
    started: datetime
    trigger: str
    ended: datetime | None = None
    points: int = 0
    last_point_at: float | None = None
    last_point: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """What survives a restart (the session mark and the outbox keep it): enough to
        resume the session, or to finish ending it."""
        return {
            "id": self.id,
            "drill": self.drill,
            "started": self.started.isoformat(),
            "trigger": self.trigger,
            "ended": self.ended.isoformat() if self.ended else None,
            "points": self.points,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Session:
        return cls(
            id=str(d["id"]),
            drill=bool(d["drill"]),
            started=datetime.fromisoformat(d["started"]),
            trigger=str(d["trigger"]),
            ended=datetime.fromisoformat(d["ended"]) if d.get("ended") else None,
            points=int(d.get("points", 0)),
        )


class SosController:
    def __init__(
        self,
        *,
        config: SosConfig,
        recorder: Recorder,
        clock: Clock,
        privacy: PrivacyConfig | None = None,
        battery_policy: BatteryPolicy | None = None,
        indicator: Indicator | None = None,
        gps_power: GpsPower | None = None,
        network: NetworkLink | None = None,
        on_session: Callable[[Session | None], Awaitable[None]] | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        #: the lifecycle, cues and battery levels as they happen (``sosctl events``)
        self.events = events or Events(clock=lambda: clock.now().timestamp())
        self.battery = battery_policy or BatteryPolicy()
        #: idle tracking, battery records, the last gasp: what to report besides the SOS
        self.telemetry = Telemetry(privacy or PrivacyConfig(), self.battery)
        self._recorder = recorder
        self._clock = clock
        self._indicator = indicator
        self._gps_power = gps_power
        self._network = network
        #: told the running session (or None) whenever it changes, to persist it
        self._on_session = on_session
        self.session: Session | None = None
        self._state = SosState.IDLE
        self._countdown: asyncio.Task[None] | None = None
        self._countdown_drill = False
        self._activation: asyncio.Task[None] | None = None
        self._last_fix: Fix | None = None
        self._last_battery: BatterySample | None = None
        #: the hour before an SOS, shared in its start with privacy.share_events
        self.recent = RecentEvents()
        self.events.tap(self.recent.note)
        self._background: set[asyncio.Task[None]] = set()
        if not config.contacts:
            log.error(
                "No emergency contact is configured, so SOS is NOT armed: a gesture or "
                "command cannot send an alert to anyone. Add at least one [[sos.contacts]] "
                "entry to the configuration, then reload it (systemctl reload sosbeacon, or "
                "SIGHUP): no restart is needed."
            )

    # -- state -------------------------------------------------------------------------

    @property
    def privacy(self) -> PrivacyConfig:
        """What the owner shares (a reload replaces it; the telemetry policy reads it)."""
        return self.telemetry.privacy

    @privacy.setter
    def privacy(self, privacy: PrivacyConfig) -> None:
        self.telemetry.privacy = privacy

    @property
    def last_fix(self) -> Fix | None:
        """The freshest fix with a position (what an alert by SMS shows)."""
        return self._last_fix

    @property
    def last_battery(self) -> BatterySample | None:
        return self._last_battery

    @property
    def armed(self) -> bool:
        return bool(self.config.contacts)

    @property
    def state(self) -> SosState:
        return self._state

    def _transition(self, to: SosState, what: str | None = None, **info: Any) -> None:
        """The one place the state changes; the change is recorded as an SOS event
        (``what``). A change the table does not allow is a bug, never done."""
        if to is not self._state and to not in TRANSITIONS[self._state]:
            raise RuntimeError(f"SOS state {self._state.value} cannot become {to.value}")
        self._state = to
        if what is not None:
            self._event(what, **info, state=to.value)

    def _resting(self) -> SosState:
        """What the state falls back to when a countdown ends without a start."""
        return SosState.ACTIVE if self.session is not None else SosState.IDLE

    # -- inputs ------------------------------------------------------------------------

    async def on_button(self, event: Detected | Press) -> None:
        """Events from the gesture detector."""
        gesture = "press" if isinstance(event, Press) else event.gesture.value
        self.events.emit(EventKind.BUTTON, gesture=gesture)
        if isinstance(event, Press):
            if self.state is SosState.COUNTDOWN:
                await self.cancel_countdown("button")
            return
        if self.session is not None and not self.session.drill:
            # The gesture that starts an SOS also ends it (a drill is instead overridden
            # by the real SOS the gesture asks for).
            await self.stop(trigger=f"button:{event.gesture.value}")
            return
        try:
            await self.start(trigger=f"button:{event.gesture.value}")
        except SosRefused as exc:
            log.error("%s", exc)

    async def start(self, *, trigger: str, drill: bool = False, now: bool = False) -> None:
        """Start an SOS (after the countdown unless ``now``). Raises :class:`SosRefused`."""
        if not self.armed:
            await self._cue(Cue.REFUSED)
            raise SosRefused(
                "SOS refused: no emergency contact is configured. Add one under "
                "[[sos.contacts]] in the configuration and reload it (systemctl reload "
                "sosbeacon, or SIGHUP)."
            )
        if self.session is not None and not self.session.drill:
            raise SosRefused("an SOS is already active")
        if self.session is not None and drill:
            raise SosRefused("a drill is already running")
        if self.state is SosState.COUNTDOWN:
            if drill or not self._countdown_drill:
                return  # a countdown of the same or stronger kind is already running
            await self.cancel_countdown("upgraded to a real SOS", quiet=True)
        if now or self.config.countdown <= 0:
            self._event("start-requested", trigger=trigger, drill=drill)
            await self._activate_once(trigger=trigger, drill=drill)
            return
        self._countdown_drill = drill
        self._transition(SosState.COUNTDOWN, "countdown", trigger=trigger, drill=drill)
        self._countdown = asyncio.create_task(self._run_countdown(trigger, drill))

    async def cancel_countdown(self, why: str, *, quiet: bool = False) -> None:
        task, self._countdown = self._countdown, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if quiet:
            self._transition(self._resting())
            return
        log.info("SOS countdown cancelled (%s)", why)
        self._transition(self._resting(), "cancelled", trigger=why)
        await self._cue(Cue.CANCELLED)

    async def stop(self, *, trigger: str) -> bool:
        """End the active SOS (or drill) at once; returns whether anything was running."""
        had_countdown = self.state is SosState.COUNTDOWN
        await self.cancel_countdown(trigger)
        # An activation already writing its start record completes first, so a stop
        # can never slip in before the session exists and leave it running.
        act = self._activation
        if act is not None and not act.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(act)
        session, self.session = self.session, None  # no fix is recorded from here on
        if session is None:
            return had_countdown
        await self._end(session, reason=trigger)
        return True

    async def acknowledge(
        self, *, by: str | None, session: str | None = None, contact: int | None = None,
        via: str | None = None,
    ) -> str:  # fmt: skip
        """A contact saw the SOS: record it, show it on the LED/buzzer. Returns the
        session acknowledged; raises :class:`SosRefused` when there is nothing to
        acknowledge. ``contact`` (their place in the contacts) and ``via`` (``sms``) when
        the device itself knows who it was: the relay then sends that contact no alert
        of its own."""
        s = self.current(session)
        data: dict[str, Any] = {"by": by}
        if contact is not None:
            data.update(contact=contact, via=via)
        await self._record(RecordKind.SOS_ACK, data, Priority.SOS, s)
        log.warning("%s acknowledged by %s", "DRILL" if s.drill else "SOS", by or "a contact")
        self._event("acknowledged", by=by)
        await self._cue(Cue.ACKNOWLEDGED)
        return s.id

    async def attach(
        self, kind: RecordKind, items: list[dict[str, Any]], priority: Priority, session: str
    ) -> None:
        """Records made beside the SOS (a voice note's chunks), stored with ``session``
        while it is the one running; :class:`SosRefused` once it has ended (nothing of
        it is shared after the stop)."""
        s = self.current(session)
        for data in items:
            await self._record(kind, data, priority, s)

    async def locate_now(self) -> float | None:
        """Record the freshest fix at once, as a live position, and wake the GPS.
        Returns the fix's age in seconds (``None`` if unknown). Outside an SOS this
        shares a location, so it is refused unless routine tracking is opted in."""
        s = self.session
        if s is None and not self.privacy.track_outside_sos:
            raise SosRefused(
                "locate-now refused: no SOS is active and location sharing outside an SOS "
                "is off (privacy.track_outside_sos)"
            )
        if self._gps_power is not None:
            self._spawn(self._gps_power.set_mode(GpsPowerMode.FULL))
        fix = self._last_fix
        if fix is None:
            raise SosRefused("locate-now: no fix yet; the GPS was woken, try again shortly")
        shared = self._fix_and_age()
        await self._record(RecordKind.FIX, {"fix": shared["fix"]}, Priority.LIVE, s)
        age: float | None = shared["fix_age"]
        return age

    def current(self, session: str | None = None) -> Session:
        """The running session (``session``, if named); :class:`SosRefused` if none is,
        or another one is: a stale command for an earlier SOS is never applied."""
        s = self.session
        if s is None:
            raise SosRefused("no SOS is active")
        if session is not None and session != s.id:
            raise SosRefused(f"session {session} is not the active SOS ({s.id}); not applied")
        return s

    async def on_fix(self, fix: Fix) -> None:
        if fix.has_position:
            self._last_fix = fix
        else:
            return
        s = self.session
        now = self._clock.monotonic()
        cadence = self.battery.cadence
        if s is not None:
            assert fix.lat is not None and fix.lon is not None
            here = (fix.lat, fix.lon)
            due = s.last_point_at is None or now - s.last_point_at >= cadence.sos_heartbeat
            moved = (
                s.last_point is not None
                and s.last_point_at is not None
                and now - s.last_point_at >= cadence.sos_min_interval
                and haversine(*s.last_point, *here) >= self.config.min_distance
            )
            if due or moved:
                s.last_point, s.last_point_at = here, now
                s.points += 1
                await self._record(
                    RecordKind.FIX, {"fix": fix_payload(fix, self.privacy)}, Priority.LIVE, s
                )
        elif self.telemetry.idle_point_due(now):
            await self._record(
                RecordKind.FIX, {"fix": fix_payload(fix, self.privacy)}, Priority.ROUTINE, None
            )

    async def on_battery(self, sample: BatterySample) -> None:
        news = self.telemetry.on_battery(sample, in_sos=self.session is not None)
        level, before = news.level, news.changed_from
        self._last_battery = sample
        if before is not None:
            log.warning("battery level %s -> %s (%s%%)", before.name, level.name, sample.capacity)
            self.events.emit(
                EventKind.BATTERY,
                level=level.name.lower(),
                **{"from": before.name.lower()},
                pct=sample.capacity,
            )
            if level is not BatteryLevel.OK:
                await self._cue(Cue.LOW_BATTERY)
            if self.session is None:
                self._spawn(self._gps_idle_mode())
        if news.last_gasp:
            await self._record(
                RecordKind.LAST_GASP,
                {
                    "reason": "battery critical",
                    "battery": sample.to_json(),
                    **self._fix_and_age(),
                },
                Priority.SOS,
                self.session,
            )
        if news.record:
            await self._record(
                RecordKind.BATTERY,
                {"battery": sample.to_json()},
                Priority.LIVE if self.session else Priority.ROUTINE,
                self.session,
            )

    # -- internals ---------------------------------------------------------------------

    async def _run_countdown(self, trigger: str, drill: bool) -> None:
        remaining = self.config.countdown
        while remaining > 0:
            await self._cue(Cue.COUNTDOWN)
            step = min(1.0, remaining)
            await self._clock.sleep(step)
            remaining -= step
        self._countdown = None
        await self._activate_once(trigger=trigger, drill=drill)

    async def _activate_once(self, *, trigger: str, drill: bool) -> None:
        """Run the activation as its own task: cancelling whoever asked for it (a
        countdown being cancelled a moment too late) cannot cut a record in half."""
        self._activation = asyncio.create_task(self._activate(trigger=trigger, drill=drill))
        await asyncio.shield(self._activation)

    async def _activate(self, *, trigger: str, drill: bool) -> None:
        if self.session is not None and self.session.drill and not drill:
            self.events.emit(EventKind.SOS, what="overridden", session=self.session.id)
            drill_session, self.session = self.session, None
            await self._end(drill_session, reason="overridden by a real SOS")
        s = Session(
            id=uuid.uuid4().hex[:16], drill=drill, started=self._clock.now(), trigger=trigger
        )
        self.session = s
        data: dict[str, Any] = {
            "trigger": trigger,
            **({"owner": self.config.owner} if self.config.owner else {}),
            "contacts": [{"name": c.name, "reach": c.reach} for c in self.config.contacts],
            "shared": shared_now(self.privacy),
            **self._fix_and_age(),
        }
        if self.privacy.share_battery and self._last_battery is not None:
            data["battery"] = self._last_battery.to_json()
        if self.privacy.share_events:
            data["events"] = self.recent.before(self._clock.now().timestamp())
        # ACTIVE from the moment the session exists (nothing above waited): its start
        # record follows at once (a stop meanwhile waits for it), and a status never says
        # "countdown" to someone who already has the SOS
        self._transition(SosState.ACTIVE, "started", trigger=trigger, drill=drill)
        await self._record(RecordKind.SOS_START, data, Priority.SOS, s)
        await self._session_changed(s)
        if self._last_fix is not None and self._last_fix.lat is not None:
            s.last_point = (self._last_fix.lat, self._last_fix.lon or 0.0)
            s.last_point_at = self._clock.monotonic()
        log.warning(
            "%s started (session %s, trigger %s)", "DRILL" if drill else "SOS", s.id, trigger
        )
        await self._cue(Cue.SOS_ACTIVE)
        # Wake what may be saving power; the record above did not wait for it.
        if self._gps_power is not None:
            self._spawn(self._gps_power.set_mode(GpsPowerMode.FULL))
        if self._network is not None:
            self._spawn(self._network.up())

    async def _end(self, s: Session, *, reason: str) -> None:
        """End ``s``, no longer :attr:`session` (so no fix is recorded for it)."""
        self._transition(SosState.ENDING)
        s.ended = self._clock.now()
        # Saved as ending *before* the end record: a restart in between completes the
        # end instead of resuming the session (no location after a stop, ever).
        await self._session_changed(s)
        # The expiry first: the end record is stored with it, so it is never sent
        # without one (the uplink may read it the moment it is committed).
        expires = s.ended + timedelta(seconds=self.config.retention)
        await self._recorder.expire_session(s.id, expires)
        await self._record(
            RecordKind.SOS_END, {"reason": reason, "points": s.points}, Priority.SOS, s
        )
        await self._session_changed(None)
        log.warning(
            "%s ended (session %s: %s); its route expires at %s",
            "DRILL" if s.drill else "SOS",
            s.id,
            reason,
            expires.isoformat(),
        )
        # a start that came meanwhile stands: the end leaves its state as it is
        after = self._resting() if self._state is SosState.ENDING else self._state
        self._transition(after, "ended", trigger=reason, drill=s.drill, session=s.id)
        await self._cue(Cue.ENDED)
        self._spawn(self._gps_idle_mode())

    async def resume(self, s: Session) -> None:
        """Carry on with a session that was running when the daemon stopped (a crash, a
        power cut): a restart is not the owner turning the SOS off. Route points continue
        under the same session id; the GPS and the network are woken again. A session
        that was being ended is ended instead (its end record written now)."""
        if self.session is not None:
            return
        if s.ended is not None:
            log.warning("SOS session %s was ending when the daemon stopped; ending it", s.id)
            await self._end(s, reason="stopped (end completed after a restart)")
            return
        self.session = s
        log.warning(
            "%s session %s (started %s) resumed after a restart",
            "DRILL" if s.drill else "SOS",
            s.id,
            s.started.isoformat(),
        )
        self._transition(SosState.ACTIVE, "resumed", trigger=s.trigger, drill=s.drill)
        await self._cue(Cue.SOS_ACTIVE)
        if self._gps_power is not None:
            self._spawn(self._gps_power.set_mode(GpsPowerMode.FULL))
        if self._network is not None:
            self._spawn(self._network.up())

    async def _session_changed(self, s: Session | None) -> None:
        if self._on_session is None:
            return
        try:
            await self._on_session(s)
        except Exception:  # persisting it must never stop an SOS
            log.exception("could not persist the SOS session state")

    async def _gps_idle_mode(self) -> None:
        """Outside an SOS the receiver runs as the battery allows: continuous when the
        battery is fine, on the receiver's duty cycle when low, off when critical."""
        if self._gps_power is None or self.session is not None:
            return
        on = self.battery.cadence.gps_on
        if on is None:
            mode = GpsPowerMode.FULL
        else:
            mode = GpsPowerMode.OFF if on == 0 else GpsPowerMode.PERIODIC
        await self._gps_power.set_mode(mode)

    def _fix_and_age(self) -> dict[str, Any]:
        fix = self._last_fix
        if fix is None:
            return {"fix": None, "fix_age": None, "fix_note": "no fix yet"}
        age = None
        if fix.received is not None:
            age = round(max(0.0, self._clock.monotonic() - fix.received), 1)
        return {"fix": fix_payload(fix, self.privacy), "fix_age": age}

    async def _record(
        self, kind: RecordKind, data: dict[str, Any], priority: Priority, s: Session | None
    ) -> None:
        await self._recorder.add(
            Record(
                kind=kind,
                time=self._clock.now(),
                data=data,
                priority=priority,
                session=s.id if s else None,
                drill=s.drill if s else False,
            )
        )
        self.events.emit(
            EventKind.RECORDS, what="stored", record=kind.value, session=s.id if s else None
        )

    def _event(self, what: str, **info: Any) -> None:
        s = self.session
        data = {**({"session": s.id} if s else {}), **info}  # info may name the session
        self.events.emit(EventKind.SOS, what=what, **data)

    async def _cue(self, cue: Cue) -> None:
        self.events.emit(EventKind.CUE, cue=cue.value)
        if self._indicator is None:
            return
        try:
            await self._indicator.cue(cue)
        except Exception:  # an LED must never stop an SOS
            log.exception("indicator failed to show %s", cue)

    def _spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("waking a subsystem for the SOS failed")

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = [
    "Contact",
    "Session",
    "SosConfig",
    "SosController",
    "SosRefused",
    "SosState",
]
