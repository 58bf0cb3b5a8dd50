"""Merge the sentences of one receiver epoch into one :class:`~device.gps.Fix`.

A receiver describes each epoch (one solution, usually once a second) in several
sentences: RMC has date and speed, GGA altitude and quality, GSA the fix mode and DOPs,
and so on. Sentences carrying a time of day say which epoch they belong to; the others
(GSA, VTG) belong to the epoch in progress.

When is an epoch complete? Waiting for the next epoch's first sentence costs up to a
whole update interval on every fix, which an SOS cannot afford. Like gpsd, we learn
which sentence ends a receiver's cycle (the last one seen before the time of day changed)
and emit the fix as soon as that sentence arrives again; the change of time of day, or
:meth:`EpochMerger.flush` on an idle line, still closes an epoch whose end we missed.

Void rule: if any sentence of the epoch says the fix is invalid (RMC status V or mode N,
GGA quality 0, GSA mode 1, GLL status V or mode N), the epoch has no position, whatever
coordinates were sent beside the flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sosbeacon.device.gps import Fix, FixMode, FixQuality, TimeIssue
from sosbeacon.hw.nmea.framer import MAX_SENTENCE
from sosbeacon.hw.nmea.sentences import (
    Sentence,
    parse_float,
    parse_int,
    parse_latlon,
    parse_tod,
)

#: Dates before this are not trusted (GPS week rollover sends receivers 1024 weeks back).
DEFAULT_DATE_FLOOR = date(2025, 1, 1)

KNOT = 1852.0 / 3600.0

#: User equivalent range error per quality, metres: accuracy ~ HDOP x UERE when the
#: receiver does not report its own error estimate (GST).
UERE: dict[FixQuality, float] = {
    FixQuality.GPS: 5.0,
    FixQuality.DGPS: 2.0,
    FixQuality.PPS: 5.0,
    FixQuality.RTK: 0.05,
    FixQuality.FLOAT_RTK: 0.5,
    FixQuality.ESTIMATED: 50.0,
}

_POSITIONED = ("RMC", "GGA", "GLL")
#: the enums by value, looked up without calling the enum class (a few hundred ns)
_MODES = {m.value: m for m in FixMode}
_QUALITIES = {q.value: q for q in FixQuality}
_SATELLITE_QUALITIES = (1, 2, 3, 4, 5)


@dataclass(slots=True)
class _Epoch:
    tod: float | None = None
    date: date | None = None
    date_bad: bool = False
    lat: float | None = None
    lon: float | None = None
    #: resolution of the position as sent (degrees per last digit), to tell a re-rounded
    #: copy of the same position from a different sample
    pos_res: float = 0.0
    alt: float | None = None
    speed: float | None = None
    course: float | None = None
    quality: FixQuality | None = None
    sats_gga: int | None = None
    sats_gsa: int = 0
    navmode: int | None = None
    hdop_gga: float | None = None
    hdop_gsa: float | None = None
    lat_err: float | None = None
    lon_err: float | None = None
    void: bool = False
    gga_no_sats: bool = False
    #: the last sentence so far, as (talker + type, how many of it came before in this
    #: epoch): what ends the epoch when this one is the receiver's last
    last: tuple[str, int] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    emitted: Fix | None = None

    @property
    def positional(self) -> bool:
        """Carries something that belongs to a timed epoch (not just GSA/VTG)."""
        return self.void or self.lat is not None or self.date is not None


class EpochMerger:
    """Feed validated sentences in stream order; get fixes back as epochs complete."""

    def __init__(
        self,
        *,
        date_floor: date = DEFAULT_DATE_FLOOR,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self._floor = date_floor
        self._today = today
        self._cur = _Epoch()
        self._ender: tuple[str, int] | None = None
        self._last_date: date | None = None
        self._last_date_issue: TimeIssue | None = None
        self._last_tod: float | None = None
        #: midnight of the last day an epoch fell on (a datetime costs a microsecond)
        self._midnight = datetime(1970, 1, 1, tzinfo=UTC)

    def feed(self, s: Sentence, received: float | None = None) -> list[Fix]:
        out: list[Fix] = []
        at = s.layout.get("time")
        tod = parse_tod(s.fields[at]) if at is not None else None
        cur = self._cur
        if tod is not None and tod != cur.tod and (cur.tod is not None or cur.positional):
            out.extend(self._close(received))
            cur = self._cur
        if tod is not None:
            cur.tod = tod
        pos = _position(s) if s.kind in _POSITIONED else None
        if pos is not None and _differs(cur, pos):
            # Same time of day, another position: the sender re-used a timestamp for a
            # new sample (chart plotters do). Report both, as gpsd does.
            out.extend(self._close(received, learn=False))
            cur = self._cur
            cur.tod = tod
        _APPLY[s.kind](cur, s)
        if pos is not None:
            _set_position(cur, pos)
        name = s.talker + s.kind
        n = cur.counts.get(name, 0)
        cur.counts[name] = n + 1
        cur.last = key = (name, n)
        if cur.emitted is None and key == self._ender and cur.tod is not None:
            cur.emitted = self._build(cur, received)
            out.append(cur.emitted)
        return out

    def flush(self, received: float | None = None) -> list[Fix]:
        """Close the epoch in progress (line idle, or end of input)."""
        return self._close(received)

    def _close(self, received: float | None, *, learn: bool = True) -> list[Fix]:
        cur, self._cur = self._cur, _Epoch()
        if cur.last is None:
            return []
        if cur.tod is not None and learn:
            self._ender = cur.last
        if cur.emitted is None:
            return [self._build(cur, received)]
        if cur.emitted.has_position or cur.lat is None:
            return []
        # Sentences after the learned end brought the position the early fix lacked.
        late = self._build(cur, received)
        return [late] if late.has_position else []

    def _build(self, e: _Epoch, received: float | None) -> Fix:
        time, issue = self._epoch_time(e)
        void = e.void or (e.gga_no_sats and e.navmode not in (2, 3))
        if void:
            mode = FixMode.NONE
        elif e.navmode in (2, 3) and e.lat is not None:
            mode = _MODES[e.navmode]
        elif e.lat is not None:
            has_3d = e.quality is not None and e.quality > 0 and e.alt is not None
            mode = FixMode.THREE_D if has_3d else FixMode.TWO_D
        else:
            mode = FixMode.UNKNOWN
        sats = e.sats_gga if e.sats_gga is not None else (e.sats_gsa or None)
        hdop = e.hdop_gga if e.hdop_gga is not None else e.hdop_gsa
        if void or e.lat is None:
            return Fix(
                time=time,
                mode=mode,
                quality=e.quality,
                sats=sats,
                hdop=hdop,
                time_issue=issue,
                received=received,
            )
        return Fix(
            time=time,
            lat=e.lat,
            lon=e.lon,
            alt=e.alt if mode == FixMode.THREE_D else None,
            speed=e.speed,
            course=e.course,
            mode=mode,
            quality=e.quality,
            sats=sats,
            hdop=hdop,
            accuracy=_accuracy(e, hdop),
            time_issue=issue,
            received=received,
        )

    def _epoch_time(self, e: _Epoch) -> tuple[datetime | None, TimeIssue | None]:
        if e.tod is None:
            return None, None
        issue: TimeIssue | None = None
        day = e.date
        if day is not None:
            self._last_date, self._last_tod = day, e.tod
            issue = TimeIssue.BEFORE_FLOOR if day < self._floor else None
            self._last_date_issue = issue
        elif self._last_date is not None and self._last_tod is not None:
            day = self._last_date
            if e.tod < self._last_tod - 43200:  # time of day wrapped past midnight
                day += timedelta(days=1)
                self._last_date = day
            self._last_tod = e.tod
            issue = self._last_date_issue
        else:
            day = self._today()
            issue = TimeIssue.NO_DATE
        if e.date_bad:
            issue = TimeIssue.BAD_DATE
        base = self._midnight
        if base.day != day.day or base.month != day.month or base.year != day.year:
            self._midnight = base = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return base + timedelta(seconds=e.tod), issue


def _accuracy(e: _Epoch, hdop: float | None) -> float | None:
    if e.lat_err is not None and e.lon_err is not None:
        return round(math.hypot(e.lat_err, e.lon_err), 2)
    if hdop is None:
        return None
    uere = UERE.get(e.quality if e.quality is not None else FixQuality.GPS)
    return round(hdop * uere, 2) if uere is not None else None


def _resolution(value: str) -> float:
    """Degrees represented by the last digit of a ``ddmm.mmmm`` field."""
    dot = value.find(".")
    return _DIGIT[len(value) - dot - 1 if dot >= 0 else 0]


#: degrees per last digit of a ``ddmm.mmmm`` field, by its number of decimals
_DIGIT = [10.0**-decimals / 60.0 for decimals in range(MAX_SENTENCE)]


def _position(s: Sentence) -> tuple[float, float, float] | None:
    """(lat, lon, resolution) of a sentence whose own flags allow its position, or
    ``None``."""
    if not _position_usable(s):
        return None
    raw_lat, raw_lon = s.get("lat"), s.get("lon")
    lat = parse_latlon(raw_lat, s.get("ns"), 2)
    lon = parse_latlon(raw_lon, s.get("ew"), 3)
    if lat is None or lon is None:
        return None
    return lat, lon, max(_resolution(raw_lat), _resolution(raw_lon))


def _differs(e: _Epoch, pos: tuple[float, float, float]) -> bool:
    if e.lat is None or e.lon is None:
        return False
    tol = max(e.pos_res, pos[2]) / 2 + 1e-9
    return abs(e.lat - pos[0]) > tol or abs(e.lon - pos[1]) > tol


def _position_usable(s: Sentence) -> bool:
    """The sentence's own flags allow its position (the epoch may still be void)."""
    if s.kind == "GGA":
        q = parse_int(s.get("quality"))
        return q is not None and q > 0
    return s.get("status") == "A" and s.get("posmode") != "N"


def _set_position(e: _Epoch, pos: tuple[float, float, float]) -> None:
    # Keep the finer of two roundings of the same position.
    if e.lat is None or pos[2] < e.pos_res:
        e.lat, e.lon, e.pos_res = pos


def _apply_rmc(e: _Epoch, s: Sentence) -> None:
    if not _position_usable(s):
        e.void = True
        return
    raw = s.get("date")
    if raw:
        e.date = None
        try:
            yy = int(raw[4:6])
            if len(raw) != 6 or not raw.isdigit():
                raise ValueError(raw)
            e.date = date(yy + (2000 if yy < 80 else 1900), int(raw[2:4]), int(raw[0:2]))
        except ValueError:
            e.date_bad = True
    speed = parse_float(s.get("speed_kn"))
    if speed is not None:
        e.speed = round(speed * KNOT, 3)
    course = parse_float(s.get("course"))
    if course is not None:
        e.course = course


#: HDOP at or above this is a receiver's "unknown" (99.99), not a measurement
HDOP_UNKNOWN = 99.99


def _hdop(text: str) -> float | None:
    """An HDOP, or ``None`` when it is none: missing, not above 0 (no geometry is that
    good), or 99.99 and up. An impossible value must never make a fix look more
    accurate than it is."""
    v = parse_float(text)
    return v if v is not None and 0 < v < HDOP_UNKNOWN else None


def _count(text: str) -> int | None:
    v = parse_int(text)
    return v if v is not None and v >= 0 else None


def _sigma(text: str) -> float | None:
    v = parse_float(text)
    return v if v is not None and v >= 0 else None


def _apply_gga(e: _Epoch, s: Sentence) -> None:
    q = parse_int(s.get("quality"))
    e.sats_gga = _count(s.get("sats"))
    e.hdop_gga = _hdop(s.get("hdop"))
    # A satellite fix from no satellites is a receiver coasting on its last solution
    # (Hemisphere does this) unless a GSA of the same epoch vouches for the fix (Garmin
    # reports 0 in GGA while its GSA says 2D). Dead reckoning (6) and manual or
    # simulated input (7, 8) may legitimately use none.
    e.gga_no_sats = e.sats_gga == 0 and q in _SATELLITE_QUALITIES
    if q is None or q == 0:
        e.quality = FixQuality.INVALID if q == 0 else e.quality
        e.void = True
        return
    e.quality = _QUALITIES.get(q, e.quality)
    e.alt = parse_float(s.get("alt"))


def _apply_gll(e: _Epoch, s: Sentence) -> None:
    if not _position_usable(s):
        e.void = True


def _apply_gsa(e: _Epoch, s: Sentence) -> None:
    mode = parse_int(s.get("navmode"))
    if mode == 1:
        e.void = True
    if mode is not None:
        e.navmode = mode
    layout = s.fields[2:14]
    e.sats_gsa += sum(1 for sv in layout if sv)
    hdop = _hdop(s.get("hdop"))
    if hdop is not None:
        e.hdop_gsa = hdop


def _apply_vtg(e: _Epoch, s: Sentence) -> None:
    f = s.fields
    if len(f) >= 2 and f[1] not in ("T", ""):
        # NMEA 1.x layout without unit letters: course, mag course, knots, km/h.
        course, kn, kmh, posmode = f[0], f[2] if len(f) > 2 else "", "", ""
    else:
        course, kn, kmh, posmode = (
            s.get("course"),
            s.get("speed_kn"),
            s.get("speed_kmh"),
            s.get("posmode"),
        )
    if posmode == "N":
        return
    c = parse_float(course)
    if c is not None and e.course is None:
        e.course = c
    if e.speed is None:
        knots = parse_float(kn)
        if knots is not None:
            e.speed = round(knots * KNOT, 3)
        else:
            k = parse_float(kmh)
            if k is not None:
                e.speed = round(k / 3.6, 3)


def _apply_zda(e: _Epoch, s: Sentence) -> None:
    d, m, y = parse_int(s.get("day")), parse_int(s.get("month")), parse_int(s.get("year"))
    if d is None or m is None or y is None:
        return
    try:
        e.date = date(y, m, d)
    except ValueError:
        e.date_bad = True


def _apply_gst(e: _Epoch, s: Sentence) -> None:
    e.lat_err = _sigma(s.get("lat_err"))
    e.lon_err = _sigma(s.get("lon_err"))


_APPLY: dict[str, Callable[[_Epoch, Sentence], None]] = {
    "RMC": _apply_rmc,
    "GGA": _apply_gga,
    "GLL": _apply_gll,
    "GSA": _apply_gsa,
    "VTG": _apply_vtg,
    "ZDA": _apply_zda,
    "GST": _apply_gst,
}
