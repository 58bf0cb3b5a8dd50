"""What the core knows about a position, and the Protocol every GPS source implements.

The same :class:`Fix` comes out of the NMEA serial reader, the gpsd client and the
simulator, so the rest of the daemon never cares where a position came from.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class FixMode(enum.IntEnum):
    """Dimension of the fix; numbers match gpsd's ``TPV.mode``."""

    UNKNOWN = 0
    NONE = 1
    TWO_D = 2
    THREE_D = 3

    @property
    def label(self) -> str:
        return {0: "unknown", 1: "none", 2: "2d", 3: "3d"}[int(self)]


class FixQuality(enum.IntEnum):
    """How the position was obtained; numbers match the NMEA GGA quality field."""

    INVALID = 0
    GPS = 1
    DGPS = 2
    PPS = 3
    RTK = 4
    FLOAT_RTK = 5
    ESTIMATED = 6
    MANUAL = 7
    SIMULATED = 8

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class TimeIssue(enum.StrEnum):
    """Why a fix's timestamp must not be trusted blindly."""

    #: The receiver sent a date that cannot be parsed (e.g. year ``-1`` after a rollover).
    BAD_DATE = "bad-date"
    #: The date is before the configured floor: most often a GPS week-number rollover
    #: (the receiver's date is 1024 weeks, ~19.6 years, in the past).
    BEFORE_FLOOR = "before-floor"
    #: The receiver sent only a time of day; the date was carried over or guessed.
    NO_DATE = "no-date"


@dataclass(frozen=True, slots=True)
class Fix:
    """One receiver epoch, merged from all the sentences that described it.

    ``lat``/``lon`` are ``None`` whenever the receiver said the fix is void, whatever
    coordinates it also sent. Units are SI: metres, metres per second, degrees.
    """

    time: datetime | None
    lat: float | None = None
    lon: float | None = None
    #: Altitude above mean sea level, metres.
    alt: float | None = None
    #: Speed over ground, m/s.
    speed: float | None = None
    #: Course over ground, degrees from true north.
    course: float | None = None
    mode: FixMode = FixMode.UNKNOWN
    quality: FixQuality | None = None
    #: Satellites used in the solution.
    sats: int | None = None
    hdop: float | None = None
    #: Estimated horizontal error (about 1 sigma), metres.
    accuracy: float | None = None
    time_issue: TimeIssue | None = None
    #: Local monotonic time at which the epoch was complete; ``None`` when decoded offline.
    received: float | None = field(default=None, compare=False)

    @property
    def has_position(self) -> bool:
        return self.lat is not None and self.lon is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the field names of the decode command and the docs."""
        out: dict[str, Any] = {
            "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
            "lat": self.lat,
            "lon": self.lon,
            "alt": self.alt,
            "speed": self.speed,
            "course": self.course,
            "mode": self.mode.label,
            "quality": self.quality.label if self.quality is not None else None,
            "sats": self.sats,
            "hdop": self.hdop,
            "accuracy": self.accuracy,
        }
        if self.time_issue is not None:
            out["time_issue"] = self.time_issue.value
        return out

    def replace(self, **changes: Any) -> Fix:
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class GpsStats:
    """Counters every source keeps, so an operator can tell a bad wire from a bad sky."""

    bytes: int = 0
    #: sentences with a valid checksum (decoded or of a type we do not use)
    sentences: int = 0
    bad_checksum: int = 0
    #: candidate lines rejected as malformed (no checksum, non-ASCII bytes)
    garbage: int = 0
    #: bytes outside any sentence (binary protocol frames, line noise)
    noise_bytes: int = 0
    #: valid sentences of types the decoder does not use (GSV, TXT, proprietary)
    unknown: int = 0
    epochs: int = 0
    fixes: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class GpsSource(Protocol):
    """A stream of fixes. Implementations keep retrying on their own when the device or
    service goes away; the iterator only ends when the source is closed."""

    @property
    def stats(self) -> GpsStats: ...

    def fixes(self) -> AsyncIterator[Fix]:
        """Yield one :class:`Fix` per receiver epoch, void epochs included."""
        ...
