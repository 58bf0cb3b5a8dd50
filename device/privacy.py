"""What the owner chooses to share.

Defaults are the cautious ones where it matters: no location leaves the device outside
an SOS unless tracking is opted in. Precision reduction snaps a position to a grid of
decimal degrees: ``100m`` keeps 3 decimals (0.001° = 111 m north–south, less east–west),
``1km`` keeps 2. The reported accuracy is widened to at least the grid size, so a receiver
never claims more precision than was shared.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sosbeacon.device.gps import Fix


class Precision(enum.StrEnum):
    EXACT = "exact"
    M100 = "100m"
    KM1 = "1km"


#: decimal places kept, and the size of the grid in metres (north–south)
_GRID: dict[Precision, tuple[int, float]] = {
    Precision.M100: (3, 111.0),
    Precision.KM1: (2, 1113.0),
}


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    precision: Precision = Precision.EXACT
    share_battery: bool = True
    share_events: bool = True
    #: record a voice note when an SOS starts and when a contact asks (voice-now)
    share_voice: bool = False
    #: share location outside an SOS (routine tracking); off unless the owner opts in
    track_outside_sos: bool = False


def fix_payload(fix: Fix, privacy: PrivacyConfig) -> dict[str, Any] | None:
    """The shareable part of a fix, or ``None`` when it has no position."""
    if fix.lat is None or fix.lon is None:
        return None
    lat, lon, acc = fix.lat, fix.lon, fix.accuracy
    grid = _GRID.get(privacy.precision)
    if grid is not None:
        places, metres = grid
        lat, lon = round(lat, places), round(lon, places)
        acc = max(acc or 0.0, metres)
    out: dict[str, Any] = {
        "t": fix.time.isoformat().replace("+00:00", "Z") if fix.time else None,
        "lat": lat,
        "lon": lon,
    }
    for key, value in (
        ("alt", fix.alt if grid is None else None),
        ("spd", fix.speed),
        ("crs", fix.course),
        ("acc", acc),
    ):
        if value is not None:
            out[key] = value
    if fix.time_issue is not None:
        # the receiver's date is not to be trusted (a week rollover, no date yet): say so
        out["time_issue"] = fix.time_issue.value
    return out


def shared_now(privacy: PrivacyConfig) -> dict[str, Any]:
    """What the owner shares, as the ``sos-start`` says it and ``sosctl status`` shows it."""
    return {
        "precision": privacy.precision.value,
        "battery": privacy.share_battery,
        "events": privacy.share_events,
        "voice": privacy.share_voice,
    }
