"""The SOS texts at work: :class:`device.sms.SmsPolicy` fed from the daemon's event
stream, its texts sent through the modem (:class:`device.actuators.SmsLink`).

* What it listens to: the SOS starting, resuming, ending and being acknowledged; the
  broker acknowledging the ``sos-start``; the relay's receipt; the broker link going
  down and up; texts received.
* The log (``SMS_LOG`` in the device state) is written *before* each text goes: a crash
  in between loses that text rather than sending it twice after the restart, and the
  next repeat goes after its interval. It keeps every session with something still to
  send: an end not yet sent (the modem was away, the daemon stopped) is sent at the next
  start, or later, even when a new SOS has begun meanwhile.
* An alert carries the contact's own share link once the relay's receipt has given one
  (:func:`device.receipts.share_links`).
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
from sosbeacon.device.receipts import share_links
from sosbeacon.device.sms import (
    Due,
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

#: acknowledge the running SOS as ``by`` (the command table's ``ack``): by, session, and
#: the contact's place in the SOS's contacts
Acknowledge = Callable[[str, str | None, int], Awaitable[Any]]


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
        #: every session with something still to send, oldest first; the last one may be
        #: the running SOS (:attr:`session`)
        self.policies: dict[str, SmsPolicy] = {}
        #: the running SOS's session (None: none, or it ended)
        self.session: str | None = None
        #: the share link of each contact (by place), from the relay's receipt, by session
        self._links: dict[str, dict[int, str]] = {}
        self._changed = asyncio.Event()
        #: set once it follows the event stream
        self.listening = asyncio.Event()
        #: texts sent (for status and the drills), replies that acknowledged, the last
        #: text that could not go and why
        self.sent = 0
        self.acks = 0
        self.last_error = ""

    @property
    def policy(self) -> SmsPolicy | None:
        """The running SOS's texting."""
        return self.policies.get(self.session) if self.session is not None else None

    async def run(self) -> None:
        await self._load()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow())
            tg.create_task(self._replies())
            tg.create_task(self._tick())

    # -- what happens ---------------------------------------------------------------------

    async def _follow(self) -> None:
        async with self._events.follow() as stream:
            self.listening.set()
            s = self._ctl.session  # resumed before we listened: its events are gone
            if s is not None and self.session != s.id:
                await self._begin(s.id, s.drill, self._clock.monotonic())
                self._changed.set()
            async for ev in stream:
                if await self._on(ev):
                    self._changed.set()  # the policy changed: look again at what is due

    async def _on(self, ev: Event) -> bool:
        """Feed ``ev`` to the policies; whether it mattered (most events do not: a
        stored record every second of an SOS wakes nothing)."""
        d, now = ev.data, self._clock.monotonic()
        what = d.get("what") if ev.kind is EventKind.SOS else None
        if what in ("started", "resumed"):
            s = self._ctl.session
            if s is None:
                return False
            await self._begin(s.id, s.drill, now)
            return True
        if what == "ended":
            p = self.policies.get(str(d.get("session")))
            if p is None:
                return False
            p.ended = True
            if self.session == d.get("session"):
                self.session = None
            await self._save()
            return True
        if ev.kind is EventKind.LINK:
            for p in self.policies.values():
                p.link(d.get("state") == "up", now)
            return True
        if ev.kind is EventKind.RECEIPT:
            sess = str(d.get("sess"))
            self._links[sess] = share_links(d.get("contacts"))
            p = self.policies.get(sess)
            if p is not None:
                p.receipt = True
            return p is not None
        p = self.policy
        if p is None:
            return False
        if what == "acknowledged":
            p.acknowledged = True
            await self._save()
        elif (
            ev.kind is EventKind.RECORDS
            and d.get("what") == "acked"
            and d.get("record") == "sos-start"
            and d.get("session") == self.session
        ):
            p.broker_acked = True
        else:
            return False
        return True

    async def _begin(self, session: str, drill: bool, now: float) -> None:
        """A session starts or resumes: it goes on from its log, if it has one."""
        p = SmsPolicy(self.config, phone_numbers(self._ctl.config.contacts), now, drill=drill)
        logged = _sessions(await self._state.get(SMS_LOG)).get(session)
        if logged is not None:
            p.restore(logged, now)
        self.policies.pop(session, None)
        self.policies[session] = p
        self.session = session
        await self._save()

    async def _load(self) -> None:
        """Sessions that ended with their end texts not all sent (the daemon stopped,
        the modem was away): they go now. (The running SOS resumes from its own log.)"""
        now = self._clock.monotonic()
        numbers = phone_numbers(self._ctl.config.contacts)
        running = self._ctl.session.id if self._ctl.session is not None else None
        for session, logged in _sessions(await self._state.get(SMS_LOG)).items():
            if session == running:
                continue
            p = SmsPolicy(self.config, numbers, started=now, ended=True)
            p.restore(logged, now)
            if not p.finished:
                self.policies[session] = p

    async def _replies(self) -> None:
        async for msg in self._link.incoming():
            p = self.policy
            phone = p.acknowledgement_from(msg.sender, msg.text) if p is not None else None
            if phone is None:
                log.info(
                    "a text from %s does not acknowledge anything (not a contact's number, "
                    "or no running SOS, or not OK)", msg.sender,
                )  # fmt: skip
                continue
            self.acks += 1
            try:
                await self._acknowledge(f"{phone.name} (SMS)", self.session, phone.contact)
            except Exception as exc:  # the SOS may have ended meanwhile
                log.warning("the SMS acknowledgement of %s was not applied: %s", phone.name, exc)
                continue
            await self._send_safely(
                msg.sender, f"Thank you, {phone.name}: {self._owner}'s beacon got your OK."
            )
            self._changed.set()

    # -- sending ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            self._changed.clear()
            now = self._clock.monotonic()
            for session, p in list(self.policies.items()):
                for due in p.due(now):
                    p.sent(due, now)  # recorded before it goes: never twice
                    await self._save()
                    if not await self._send_safely(due.number, self._text(session, p, due)):
                        p.failed(due, now, RETRY)  # it did not go: owed, tried again
                        await self._save()
                if p.finished:
                    del self.policies[session]
                    self._links.pop(session, None)
                    await self._save()
            wakes = [w for p in self.policies.values() if (w := p.wake_at()) is not None]
            wake = min(wakes, default=None)
            await until(self._clock, self._changed, None if wake is None else max(0.0, wake - now))

    def _text(self, session: str, p: SmsPolicy, due: Due) -> str:
        if due.kind is Kind.END:
            return end_text(owner=self._owner, drill=p.drill)
        link = self._links.get(session, {}).get(due.to.contact)
        return self._alert(p.drill, link)

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
            "ends_owed": sum(1 for q in self.policies.values() if q.ended and not q.finished),
        }  # fmt: skip
        out["modem"] = await self._link.state() if ask_modem else self._link.known()
        return out

    def _alert(self, drill: bool, link: str | None) -> str:
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
            owner=self._owner, drill=drill, position=position,
            battery=battery.capacity if battery is not None and shown else None, link=link,
        )  # fmt: skip

    async def _save(self) -> None:
        logged = {"sessions": {s: p.to_log() for s, p in self.policies.items()}}
        try:
            await self._state.put(SMS_LOG, logged)
        except OSError as exc:  # a full disk: the texts still go
            log.warning("the SMS log could not be stored (%s)", exc)


def _sessions(logged: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The log's sessions, oldest first (a log of one session, as an earlier version
    wrote it, read as such)."""
    if "session" in logged:
        return {str(logged["session"]): logged}
    sessions = logged.get("sessions")
    if not isinstance(sessions, dict):
        return {}
    return {str(k): v for k, v in sessions.items() if isinstance(v, dict)}


def summary(status: dict[str, Any]) -> str:
    """:meth:`SmsAlerts.status` in a few words, for the STATUS line systemd shows
    (``modem ready, home -77 dBm``; ``TEXTING THE CONTACTS, 2 sent``; ``modem NOT
    READY``)."""
    m = status.get("modem") or {}
    if not m.get("ready"):
        parts = ["modem NOT READY"]
    elif m.get("registered") and not m.get("on_network"):
        parts = [f"modem OFF NETWORK ({m['registered']})"]
    else:
        dbm = f" {m['signal_dbm']} dBm" if m.get("signal_dbm") is not None else ""
        if m.get("signal_pct") is not None:
            dbm = f" signal {m['signal_pct']}%"
        parts = [f"modem ready{', ' + str(m['registered']) if m.get('registered') else ''}{dbm}"]
    if status.get("texting"):
        parts.append(f"TEXTING THE CONTACTS, {status.get('sent', 0)} sent")
    if status.get("ends_owed"):
        parts.append(f"{status['ends_owed']} end text(s) owed")
    return ", ".join(parts)
