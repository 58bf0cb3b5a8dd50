"""What happened on the device in the hour before an SOS, for the contacts (with
``privacy.share_events``): the counterpart of a phone's recent call history.

Taken from the daemon's event stream as it goes (:meth:`device.events.Events.tap`), in a
fixed vocabulary that a page can show: ``button-press``, ``countdown``,
``countdown-cancelled``, ``gps-first-fix``, ``gps-lost``, ``gps-back``, ``link-down``,
``link-up``, ``battery-low``/``battery-critical``/``battery-ok`` (a step of the
battery policy, with ``pct``). A state that repeats (the broker refusing each retry)
is kept once. Nothing here holds a position.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sosbeacon.device.events import Event, EventKind

#: seconds before the SOS that are shared
WINDOW = 3600.0
#: at most this many kept (an hour of a flapping link is not a list anyone reads)
KEEP = 200


def _what(ev: Event) -> tuple[str, dict[str, Any]] | None:
    d = ev.data
    if ev.kind is EventKind.BUTTON:
        return "button-press", {}
    if ev.kind is EventKind.SOS and d.get("what") == "countdown":
        return "countdown", {}
    if ev.kind is EventKind.SOS and d.get("what") == "cancelled":
        return "countdown-cancelled", {}
    if ev.kind is EventKind.FIX and d.get("state") in ("first", "lost", "back"):
        return f"gps-{'first-fix' if d['state'] == 'first' else d['state']}", {}
    if ev.kind is EventKind.LINK and d.get("state") in ("up", "down"):
        return f"link-{d['state']}", {}
    if ev.kind is EventKind.BATTERY and isinstance(d.get("level"), str):
        pct = d.get("pct")
        return f"battery-{d['level']}", ({"pct": pct} if isinstance(pct, int | float) else {})
    return None


class RecentEvents:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._kept: deque[dict[str, Any]] = deque(maxlen=KEEP)

    def note(self, ev: Event) -> None:
        """An event from the stream (:meth:`Events.tap`)."""
        got = _what(ev)
        if got is None:
            return
        what, extra = got
        if what == "countdown" and self._kept and self._kept[-1]["what"] == "countdown":
            return  # one per countdown, not one per beep
        if what.startswith("link-"):
            last = self._last_link()
            if last is not None and last["what"] == what and ev.t - last["t"] < self.window:
                return  # the same state again (another retry refused): said once an hour
        self._kept.append({"t": round(ev.t, 1), "what": what, **extra})

    def _last_link(self) -> dict[str, Any] | None:
        links = (e for e in reversed(self._kept) if e["what"].startswith("link-"))
        return next(links, None)

    def before(self, now: float) -> list[dict[str, Any]]:
        """The last hour up to ``now`` (epoch seconds), oldest first."""
        return [e for e in self._kept if now - self.window <= e["t"] <= now]
