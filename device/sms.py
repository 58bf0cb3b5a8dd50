"""When there is no data: what the device texts the contacts during an SOS, and when.

Pure decisions on the device's clock (seconds, monotonic); the daemon feeds it what
happens and sends what it says is due (through the modem), recording each text before
it goes.

* **Only during an SOS** (or a drill, flagged as one), and only to contacts whose
  ``reach`` holds a phone number. Routine tracking never sends an SMS.
* **Trigger:** ``after`` seconds (30) into the SOS, unless by then the broker has
  acknowledged the SOS start *and* the relay's receipt has come; or the link has been
  down for ``after`` seconds while the SOS runs.
* **Repeat** every ``every`` seconds (600) with the latest position, until someone
  acknowledges (an SMS reply from a contact's number, an MQTT ack, the page) or the SOS
  ends; at most ``max_per_session`` alerts in all (the cost cap).
* **End:** a short "SOS ended" to every number that got an alert (not counted against
  the cap: nobody may be left believing an SOS still runs).
* A reply acknowledges only from a contact's number, and only ``OK`` or ``ACK``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sosbeacon.device.sos import Contact
from sosbeacon.device.wire import AddressError, addresses, parse_address


@dataclass(frozen=True, slots=True)
class SmsConfig:
    #: text the contacts when data does not get through (needs a modem)
    enabled: bool = True
    #: seconds into the SOS before texting, unless the broker and the relay confirmed it
    after: float = 30.0
    #: seconds between alerts with the latest position, until someone acknowledges
    every: float = 600.0
    #: alerts per SOS session at most, all contacts together (the cost cap)
    max_per_session: int = 10


class Kind(enum.StrEnum):
    ALERT = "alert"
    END = "end"


class Phone(NamedTuple):
    """A number to text: whose, and that contact's place in the SOS's contacts (the
    relay's links are numbered the same way)."""

    number: str
    name: str
    contact: int


@dataclass(frozen=True, slots=True)
class Due:
    """A text to send now: to whom, what kind, and its number in the session (with the
    session, a key that is never sent twice)."""

    to: Phone
    kind: Kind
    n: int

    @property
    def number(self) -> str:
        return self.to.number


def phone_numbers(contacts: tuple[Contact, ...]) -> list[Phone]:
    """Every phone number in the contacts' ``reach``."""
    out = []
    for i, c in enumerate(contacts):
        for a in addresses(c.reach):
            try:
                addr = parse_address(a)
            except AddressError:
                continue
            if addr.channel == "sms":
                out.append(Phone(addr.target, c.name, i))
    return out


@dataclass(frozen=True, slots=True)
class Position:
    lat: float
    lon: float
    accuracy: float | None
    at: datetime
    age: float


def alert_text(
    *, owner: str, drill: bool, position: Position | None, battery: float | None,
    link: str | None,
) -> str:  # fmt: skip
    """The alert, fixed in shape so that a phone or a script can read it (see
    docs/wire-format.md, "SMS"): one line per field."""
    head = "DRILL (a test, no action needed)" if drill else "SOS"
    lines = [f"{head}: {owner} needs help."]
    if position is None:
        lines.append("Position: no fix yet")
    else:
        acc = f" +-{position.accuracy:.0f}m" if position.accuracy is not None else ""
        lines.append(f"Position: {position.lat:.5f},{position.lon:.5f}{acc}")
        lines.append(f"Fix: {position.at.strftime('%H:%M:%SZ')} ({position.age:.0f}s old)")
    if battery is not None:
        lines.append(f"Battery: {battery:.0f}%")
    if link:
        lines.append(f"Route: {link}")
    lines.append("Reply OK to acknowledge.")
    return "\n".join(lines)


def end_text(*, owner: str, drill: bool) -> str:
    return f"{'DRILL' if drill else 'SOS'} ended: {owner} stopped sharing their location."


_ACK = re.compile(r"^\s*(ok|ack)\b", re.IGNORECASE)


def is_ack(text: str) -> bool:
    return bool(_ACK.match(text))


@dataclass
class SmsPolicy:
    """One SOS session's texting, decided on the device's monotonic clock.

    Alerts go in rounds: the first when triggered, then one every ``every`` seconds.
    Each number gets each round once; a text that could not go (:meth:`failed`) is owed
    and tried again after a pause, whatever the round."""

    config: SmsConfig
    numbers: list[Phone]
    started: float
    drill: bool = False
    broker_acked: bool = False
    receipt: bool = False
    #: since when the link is down (None: up)
    down_since: float | None = None
    acknowledged: bool = False
    ended: bool = False
    #: when the first round went (None: not triggered yet)
    first_round: float | None = None
    #: alerts sent, by number
    alerts: dict[str, int] = field(default_factory=dict)
    #: numbers the end went to
    ended_to: list[str] = field(default_factory=list)
    #: numbers whose last try failed, and when to try them again
    held: dict[str, float] = field(default_factory=dict)

    @property
    def alerts_sent(self) -> int:
        return sum(self.alerts.values())

    @property
    def alerted(self) -> list[str]:
        return [n for n, count in self.alerts.items() if count]

    @property
    def ends_sent(self) -> bool:
        """Every number that got an alert got the end too."""
        return all(n in self.ended_to for n in self.alerted)

    def link(self, up: bool, now: float) -> None:
        if up:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now

    def acknowledgement_from(self, number: str, text: str) -> Phone | None:
        """A reply: the contact when it acknowledges (a contact's number, "OK"), else
        None (a number that is not a contact never acknowledges anything)."""
        phone = next((p for p in self.numbers if p.number == number), None)
        if phone is None or not is_ack(text) or self.ended:
            return None
        self.acknowledged = True
        return phone

    def _round(self, now: float) -> int:
        """The round due now (0: none yet)."""
        if self.first_round is None:
            confirmed = self.broker_acked and self.receipt
            late = now - self.started >= self.config.after and not confirmed
            dead = self.down_since is not None and now - self.down_since >= self.config.after
            if not (late or dead):
                return 0
            self.first_round = now
        return 1 + int((now - self.first_round) // self.config.every)

    def due(self, now: float) -> list[Due]:
        """What to send now (the caller records each, sends it, and says :meth:`sent`
        or :meth:`failed`)."""
        if not self.config.enabled or not self.numbers:
            return []
        ready = [p for p in self.numbers if self.held.get(p.number, 0.0) <= now]
        if self.ended:
            return [
                Due(p, Kind.END, 0)
                for p in ready
                if self.alerts.get(p.number) and p.number not in self.ended_to
            ]
        if self.acknowledged:
            return []
        current = self._round(now)
        room = self.config.max_per_session - self.alerts_sent
        out = [
            Due(p, Kind.ALERT, self.alerts.get(p.number, 0) + 1)
            for p in ready
            if self.alerts.get(p.number, 0) < current
        ]
        return out[: max(0, room)]

    def sent(self, due: Due, now: float) -> None:
        self.held.pop(due.number, None)
        if due.kind is Kind.END:
            if due.number not in self.ended_to:
                self.ended_to.append(due.number)
            return
        self.alerts[due.number] = max(self.alerts.get(due.number, 0), due.n)

    def failed(self, due: Due, now: float, retry_after: float = 30.0) -> None:
        """``due`` could not go (no network service, the modem away): owed, and tried
        again after ``retry_after``. (It was recorded as sent before it was tried.)"""
        self.held[due.number] = now + retry_after
        if due.kind is Kind.END:
            if due.number in self.ended_to:
                self.ended_to.remove(due.number)
        elif self.alerts.get(due.number, 0) >= due.n:
            self.alerts[due.number] = due.n - 1

    @property
    def finished(self) -> bool:
        """Nothing more will ever be sent: the SOS ended and whoever was texted was told."""
        return self.ended and self.ends_sent

    def to_log(self) -> dict[str, object]:
        """What a restart needs to go on without sending anything twice."""
        return {
            "alerts": self.alerts, "ended_to": self.ended_to, "ended": self.ended,
            "acknowledged": self.acknowledged, "drill": self.drill,
        }  # fmt: skip

    def restore(self, log: dict[str, object], now: float) -> None:
        """Go on from a log of the same session: the rounds sent count as just sent
        (the next one waits a whole interval), so nothing goes twice."""
        self.drill = self.drill or bool(log.get("drill"))
        self.ended = self.ended or bool(log.get("ended"))
        alerts = log.get("alerts")
        if isinstance(alerts, dict):
            self.alerts = {str(k): int(v) for k, v in alerts.items() if isinstance(v, int)}
        ended_to = log.get("ended_to")
        self.ended_to = [str(n) for n in ended_to] if isinstance(ended_to, list) else []
        self.acknowledged = self.acknowledged or bool(log.get("acknowledged"))
        rounds = max(self.alerts.values(), default=0)
        if rounds:
            self.first_round = now - (rounds - 1) * self.config.every

    def wake_at(self) -> float | None:
        """When :meth:`due` may next have something (None: nothing will come; a time
        already past: at once)."""
        if not self.config.enabled or not self.numbers:
            return None
        soonest = min(self.held.values(), default=None)
        if self.ended:
            if self.ends_sent or not self.alerted:
                return None
            return soonest if soonest is not None else self.started
        if self.acknowledged or self.alerts_sent >= self.config.max_per_session:
            return None
        if self.first_round is None:
            times = [] if self.broker_acked and self.receipt else [self.started]
            if self.down_since is not None:
                times.append(self.down_since)
            return min(times) + self.config.after if times else None
        rounds = max(self.alerts.values(), default=0)
        nxt = self.first_round + rounds * self.config.every
        return nxt if soonest is None else min(nxt, soonest)
