"""The SOS texts at work: :class:`device.sms.SmsPolicy` fed from the daemon's event
stream, its texts sent through the modem (:class:`device.actuators.SmsLink`).

* What it listens to: the SOS starting, resuming, ending and being acknowledged; the
  broker acknowledging the ``sos-start``; the relay's receipt; the broker link going
  down and up; texts received.
* The log (``SMS_LOG`` in the device state) is written *before* each text goes: a crash
  in between loses that text rather than sending it twice after the restart, and the
  next repeat goes after its interval. An end not yet sent when the daemon stopped is
  sent at the next start.
* A reply ``OK`` from a contact's number acknowledges the SOS through the command table
  (as that contact, like a page's "I'm on it"), and is answered with a confirmation;
  from any other number it does nothing but a log line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sosbeacon.device.actuators import SmsLink
from sosbeacon.device.clock import Clock
from sosbeacon.device.events import Event, EventKind, Events
from sosbeacon.device.outbox import SMS_LOG, DeviceState
from sosbeacon.device.privacy import fix_payload
from sosbeacon.device.sms import (
    Kind,
    Position,
    SmsConfig,
    SmsPolicy,
    alert_text,
    end_text,
    phone_numbers,
)
from sosbeacon.device.sos import SosController
from sosbeacon.device.uplink.sender import until

log = logging.getLogger(__name__)
#: seconds before a text that could not go is tried again
RETRY = 30.0

#: acknowledge the running SOS as ``by`` (the command table's ``ack``)
Acknowledge = Callable[[str, str | None], Awaitable[Any]]


class SmsAlerts:
    def __init__(
        self,
        *,
        config: SmsConfig,
        link: SmsLink,
        controller: SosController,
        events: Events,
        state: DeviceState,
        clock: Clock,
        acknowledge: Acknowledge,
        owner: str,
    ) -> None:
        self.config = config
        self._link = link
        self._ctl = controller
        self._events = events
        self._state = state
        self._clock = clock
        self._acknowledge = acknowledge
        self._owner = owner
        self.policy: SmsPolicy | None = None
        self.session: str | None = None
        self._drill = False
        self._changed = asyncio.Event()
        #: set once it follows the event stream
        self.listening = asyncio.Event()
        #: texts sent (for status and the drills), replies that acknowledged, the last
        #: text that could not go and why
        self.sent = 0
        self.acks = 0
        self.last_error = ""

    async def run(self) -> None:
        await self._finish_an_earlier_end()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow())
            tg.create_task(self._replies())
            tg.create_task(self._tick())

    # -- what happens ---------------------------------------------------------------------

    async def _follow(self) -> None:
        async with self._events.follow() as stream:
            self.listening.set()
            s = self._ctl.session  # resumed before we listened: its events are gone
            if s is not None and (self.policy is None or self.session != s.id):
                await self._begin(s.id, s.drill, self._clock.monotonic())
                self._changed.set()
            async for ev in stream:
                if await self._on(ev):
                    self._changed.set()  # the policy changed: look again at what is due

    async def _on(self, ev: Event) -> bool:
        """Feed ``ev`` to the policy; whether it mattered (most events do not: a stored
        record every second of an SOS wakes nothing)."""
        d, now = ev.data, self._clock.monotonic()
        if ev.kind is EventKind.SOS and d.get("what") in ("started", "resumed"):
            s = self._ctl.session
            if s is None:
                return False
            await self._begin(s.id, s.drill, now)
            return True
        p = self.policy
        if p is None:
            return False
        if ev.kind is EventKind.SOS and d.get("what") == "ended":
            p.ended = True
        elif ev.kind is EventKind.SOS and d.get("what") == "acknowledged":
            p.acknowledged = True
            await self._save()
        elif (
            ev.kind is EventKind.RECORDS
            and d.get("what") == "acked"
            and d.get("record") == "sos-start"
            and d.get("session") == self.session
        ):
            p.broker_acked = True
        elif ev.kind is EventKind.RECEIPT and d.get("sess") == self.session:
            p.receipt = True
        elif ev.kind is EventKind.LINK:
            p.link(d.get("state") == "up", now)
        else:
            return False
        return True

    async def _begin(self, session: str, drill: bool, now: float) -> None:
        """A session starts or resumes: it goes on from its log, if it has one."""
        numbers = phone_numbers(self._ctl.config.contacts)
        self.policy = SmsPolicy(self.config, numbers, started=now, drill=drill)
        self.session, self._drill = session, drill
        logged = await self._state.get(SMS_LOG)
        if logged.get("session") == session:
            self.policy.restore(logged, now)
        else:
            await self._save()

    async def _finish_an_earlier_end(self) -> None:
        """A daemon stopped after an SOS ended and before its end texts went: they go
        now (unless that session is running again)."""
        logged = await self._state.get(SMS_LOG)
        s = self._ctl.session
        if s is not None and s.id == logged.get("session"):
            return
        now = self._clock.monotonic()
        numbers = phone_numbers(self._ctl.config.contacts)
        p = SmsPolicy(self.config, numbers, started=now, ended=True)
        p.restore(logged, now)
        if p.alerted and not p.ends_sent:
            self.policy, self.session = p, str(logged.get("session"))

    async def _replies(self) -> None:
        async for msg in self._link.incoming():
            p = self.policy
            name = p.acknowledgement_from(msg.sender, msg.text) if p is not None else None
            if name is None:
                log.info(
                    "a text from %s does not acknowledge anything (not a contact's number, "
                    "or no running SOS, or not OK)", msg.sender,
                )  # fmt: skip
                continue
            self.acks += 1
            try:
                await self._acknowledge(f"{name} (SMS)", self.session)
            except Exception as exc:  # the SOS may have ended meanwhile
                log.warning("the SMS acknowledgement of %s was not applied: %s", name, exc)
                continue
            await self._send_safely(
                msg.sender, f"Thank you, {name}: {self._owner}'s beacon got your OK."
            )
            self._changed.set()

    # -- sending ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            self._changed.clear()
            p = self.policy
            now = self._clock.monotonic()
            if p is not None:
                for due in p.due(now):
                    text = (
                        end_text(owner=self._owner, drill=self._drill)
                        if due.kind is Kind.END
                        else self._alert()
                    )
                    p.sent(due, now)  # recorded before it goes: never twice
                    await self._save()
                    if not await self._send_safely(due.number, text):
                        p.failed(due, now, RETRY)  # it did not go: owed, tried again
                        await self._save()
                if p.ended and (p.ends_sent or not p.alerted):
                    self.policy = None
            wake = self.policy.wake_at() if self.policy is not None else None
            await until(self._clock, self._changed, None if wake is None else max(0.0, wake - now))

    async def _send_safely(self, number: str, text: str) -> bool:
        try:
            await self._link.send(number, text)
        except OSError as exc:
            log.error("the SOS text to %s could not go: %s", number, exc)
            self.last_error = str(exc)
            return False
        self.sent += 1
        self._events.emit(EventKind.SMS, to=number, chars=len(text))
        return True

    async def status(self, *, ask_modem: bool) -> dict[str, Any]:
        """For ``sosctl status``; ``ask_modem`` puts AT commands on the line (the
        owner asked), never for the STATUS line of every watchdog tick."""
        p = self.policy
        texting = p is not None and p.first_round is not None and not (p.acknowledged or p.ended)
        out: dict[str, Any] = {
            "texting": texting, "sent": self.sent, "acks": self.acks,
            "last_error": self.last_error or None,
        }  # fmt: skip
        if ask_modem:
            out["modem"] = await self._link.state()
        return out

    def _alert(self) -> str:
        fix = self._ctl.last_fix
        position = None
        shared = fix_payload(fix, self._ctl.privacy) if fix is not None else None
        if fix is not None and shared is not None:
            age = max(0.0, self._clock.monotonic() - fix.received) if fix.received else 0.0
            at = fix.time or (self._clock.now() - timedelta(seconds=age))
            position = Position(shared["lat"], shared["lon"], shared.get("acc"), at, age)
        battery = self._ctl.last_battery
        shown = battery is not None and self._ctl.privacy.share_battery
        return alert_text(
            owner=self._owner, drill=self._drill, position=position,
            battery=battery.capacity if battery is not None and shown else None, link=None,
        )  # fmt: skip

    async def _save(self) -> None:
        if self.policy is None or self.session is None:
            return
        try:
            await self._state.put(SMS_LOG, self.policy.to_log(self.session))
        except OSError as exc:  # a full disk: the texts still go
            log.warning("the SMS log could not be stored (%s)", exc)
