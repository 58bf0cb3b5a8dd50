"""What reached whom: the relay's receipts, and an SOS that reached no one.

The relay publishes a retained receipt on ``<prefix>/<id>/receipt``: the seq ranges it
has stored durably, and for the newest session each contact's notifications, first open
of the link and acknowledgement. The device keeps the newest one and shows it in
``sosctl status``.

A broker that answers an SOS with PUBACK 0x10 ("no matching subscribers") has nobody to
give it to: no relay, no contact app is listening. The SOS is then *not yet received by
anyone*; the device says so loudly, and keeps saying so until a receipt for that session
arrives. (The broker keeps the retained ``sos-start``, so a relay that subscribes later
still gets it.)
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: PUBACK reason code: accepted, but no one is subscribed
NO_SUBSCRIBERS = 0x10
MAX_RECEIPT_BYTES = 64 * 1024


@dataclass
class Delivery:
    #: the session whose SOS the broker had nobody to give to, until a receipt
    unheard: str | None = None
    unheard_since: float | None = None
    #: the newest receipt (as the relay sent it), and when it arrived
    receipt: dict[str, Any] | None = None
    received_at: float | None = None
    refused: int = 0
    _log_said: set[str] = field(default_factory=set)

    def no_subscribers(self, session: str) -> None:
        if self.unheard == session:
            return
        self.unheard, self.unheard_since = session, time.time()
        log.error(
            "SOS %s reached the broker, but NO ONE IS SUBSCRIBED: no relay and no contact "
            "has received it yet. It stays marked 'not yet received' until the relay's "
            "receipt arrives (the broker keeps it retained for whoever subscribes)",
            session,
        )

    def take(self, payload: bytes) -> bool:
        """A receipt from the relay; False (logged, counted) when it is not one."""
        try:
            if len(payload) > MAX_RECEIPT_BYTES:
                raise ValueError(f"{len(payload)} bytes")
            r = json.loads(payload) if payload else None
            if r is None:
                return True  # the relay withdrew it (its session expired)
            if not isinstance(r, dict) or r.get("v") != 1 or not isinstance(r.get("stored"), dict):
                raise ValueError("not a receipt")
            contacts = r.get("contacts", [])
            if not isinstance(contacts, list) or not all(isinstance(c, dict) for c in contacts):
                raise ValueError("contacts is not a list of objects")
        except (ValueError, RecursionError) as exc:
            self.refused += 1
            log.warning("ignored a receipt that is not one (%s)", str(exc)[:100])
            return False
        self.receipt, self.received_at = r, time.time()
        if self.unheard is not None and r.get("sess") == self.unheard and r.get("sos_stored"):
            log.warning("SOS %s: the relay has it now", self.unheard)
            self.unheard = self.unheard_since = None
        return True

    def status(self, session: str | None) -> dict[str, Any]:
        """For ``sosctl status``: the receipt of the current (or newest) session."""
        out: dict[str, Any] = {"unheard": self.unheard}
        r = self.receipt
        if r is not None and (session is None or r.get("sess") == session):
            out["relay"] = {
                "sess": r.get("sess"),
                "sos_stored": r.get("sos_stored"),
                "stored": r.get("stored"),
                "contacts": r.get("contacts", []),
                "at": r.get("t"),
            }
        return out


#: what a share link may look like to go into a text: http(s), no space, no line break
#: (a receipt that put one there could forge lines of the SMS)
_LINK = re.compile(r"https?://[!-~]{1,300}")


def share_links(contacts: Any) -> dict[int, str]:
    """Each contact's share link (by its place in the SOS's contacts) from a receipt's
    ``contacts``; anything that is not a plain http(s) URL is left out."""
    out: dict[int, str] = {}
    for c in contacts if isinstance(contacts, list) else []:
        if not isinstance(c, dict):
            continue
        i, link = c.get("contact"), c.get("link")
        if isinstance(i, int) and isinstance(link, str) and _LINK.fullmatch(link):
            out[i] = link
    return out


def _hhmm(t: Any) -> str:
    if not isinstance(t, int | float):
        return "?"
    return datetime.fromtimestamp(t, UTC).astimezone().strftime("%H:%M")


def describe(d: dict[str, Any]) -> list[str]:
    """``SOS delivered to the relay; Alice notified (email, ok), opened 14:02; Bob:
    send failed`` and the "not yet received" warning, as status lines."""
    lines = []
    if d.get("unheard"):
        lines.append(
            f"NOT YET RECEIVED BY ANYONE: SOS {d['unheard']} reached the broker, but no relay "
            "or contact was subscribed"
        )
    rel = d.get("relay")
    if rel:
        parts = ["SOS delivered to the relay" if rel.get("sos_stored") else "relay has records"]
        for c in rel.get("contacts", []):
            parts.append(_contact(c))
        lines.append("; ".join(parts))
    return lines


def _contact(c: dict[str, Any]) -> str:
    name = str(c.get("name", "?"))
    starts = [n for n in c.get("notified", []) if isinstance(n, dict) and n.get("kind") == "start"]
    if not starts:
        text = f"{name}: not notified"
    elif any(n.get("state") == "sent" for n in starts):
        channels = ", ".join(f"{n.get('channel')}, ok" for n in starts if n.get("state") == "sent")
        text = f"{name} notified ({channels})"
    elif any(n.get("state") == "failed" for n in starts):
        text = f"{name}: send failed"
    elif any(n.get("error") for n in starts):
        text = f"{name}: send failed, retrying"
    else:
        text = f"{name}: sending"
    if c.get("opened"):
        text += f", opened {_hhmm(c['opened'])}"
    if c.get("acked"):
        text += f", on it since {_hhmm(c['acked'])}"
    return text
