"""Telling a contact: their address, the Apprise URL it becomes, and the words sent.

A contact's address comes from the device through the broker, so it is never a
credential: ``alice@example.org``, ``+44 7700 900123`` or ``scheme:id`` (``tgram:12345``,
``ntfy:family-sos``). The relay's configuration holds one Apprise service URL per kind
of address, with its credentials (``notify.services``), and the address is added to it:
an e-mail address as ``to=``, anything else as the last path segment (Apprise's place
for a target: a chat id, a topic, a phone number).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from apprise.attachment.memory import AttachMemory

from sosbeacon.device.wire import Address, AddressError

log = logging.getLogger(__name__)


def service_url(services: Mapping[str, str], address: Address) -> str:
    """The Apprise URL for one address. Raises :class:`AddressError` when the relay has
    no service for its kind."""
    base = services.get(address.channel)
    if base is None:
        raise AddressError(
            f"no notify.services.{address.channel} in the relay's configuration (for "
            f"{address.channel} addresses)"
        )
    parts = urlsplit(base)
    if address.channel == "email":
        query = "&".join(q for q in (parts.query, f"to={quote(address.target, safe='@')}") if q)
        return urlunsplit(parts._replace(query=query))
    path = parts.path.rstrip("/") + "/" + quote(address.target, safe="+")
    return urlunsplit(parts._replace(path=path))


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s ago"
    if s < 5400:
        return f"{round(s / 60)} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str
    #: a file to attach where the channel takes one (name, media type, bytes)
    attachment: tuple[str, str, bytes] | None = None


def start_message(
    *, who: str, drill: bool, start: Mapping[str, Any], link: str, now: float, sent: float
) -> Message:
    """The first message: who needs help, DRILL first when it is one, the last fix with
    its age and accuracy, the link, and how to acknowledge.

    ``sent`` is when the device recorded the SOS (its clock); the fix's age is the age
    the device measured then plus the time since."""
    head = "DRILL (not a real emergency): " if drill else "SOS: "
    title = f"{head}{who} needs help" if not drill else f"{head}{who} is testing their SOS"
    lines = [title + "."]
    fix = start.get("fix")
    if isinstance(fix, dict) and "lat" in fix:
        age = start.get("fix_age")
        age_s = (float(age) if isinstance(age, int | float) else 0.0) + max(0.0, now - sent)
        acc = fix.get("acc")
        acc_text = f", accurate to about {round(acc)} m" if isinstance(acc, int | float) else ""
        lines.append(f"Last position {_ago(age_s)}{acc_text}.")
    else:
        lines.append(f"No position yet ({start.get('fix_note') or 'no fix yet'}); the page "
                     "shows it as soon as one arrives.")  # fmt: skip
    bat = start.get("battery")
    if isinstance(bat, dict) and isinstance(bat.get("pct"), int | float):
        lines.append(f"Battery {round(bat['pct'])}%.")
    lines.append("")
    lines.append(f"Live route: {link}")
    lines.append("")
    lines.append('Open the link and press "I\'m on it" so they know you are coming.')
    lines.append("Only you have this link: do not forward it.")
    return Message(title, "\n".join(lines))


#: the end of the title of :func:`acknowledged_message`
ACKNOWLEDGED = "(you have acknowledged)"


def acknowledged_message(*, who: str, drill: bool, link: str, acked: float) -> Message:
    """Instead of the alert, to a contact who acknowledged on the device already (an SMS
    reply while there was no data): no second alarm, only the link the SMS could not
    carry."""
    head = "DRILL" if drill else "SOS"
    title = f"{head}: {who}'s live route {ACKNOWLEDGED}"
    body = (
        f"You acknowledged {who}'s {head} at {_clock(acked)}; {who}'s beacon has your OK.\n"
        f"Their route is online now: {link}\n"
        "Only you have this link: do not forward it."
    )
    return Message(title, body)


def voice_message(
    *, who: str, drill: bool, link: str, seconds: float,
    attachment: tuple[str, str, bytes] | None = None,
) -> Message:  # fmt: skip
    """The first voice note of a session is ready (later ones are on the page only)."""
    head = "DRILL" if drill else "SOS"
    return Message(
        f"{head}: voice note from {who}",
        f"{who} recorded a voice note ({seconds:.0f} s): voice note attached where this "
        f"channel allows; it plays on the live page too: {link}",
        attachment,
    )


_END_HEADS = ("DRILL over", "SOS ended")


def end_message(*, who: str, drill: bool, link: str, expires: float | None) -> Message:
    head = _END_HEADS[0] if drill else _END_HEADS[1]
    until = f" until {_clock(expires)}" if expires else ""
    title = f"{head}: {who}"
    body = (
        f"{head}: {who} turned it off. No new positions are shared.\n"
        f"The route stays available{until}: {link}"
    )
    return Message(title, body)


def message_kind(title: str) -> str:
    """What a message of ours is, from its title: ``alert``, ``acknowledged``, ``voice`` or ``end``
    (for the drills, which count the alerts a contact got)."""
    if title.startswith(tuple(f"{h}:" for h in _END_HEADS)):
        return "end"
    if ": voice note from " in title:
        return "voice"
    return "acknowledged" if title.endswith(ACKNOWLEDGED) else "alert"


__all__ = [
    "AttachMemory",
    "Message",
    "acknowledged_message",
    "end_message",
    "message_kind",
    "service_url",
    "start_message",
    "voice_message",
]
