"""Replay gpsd's regression captures through our decoder and compare with gpsd's output.

Each capture ``NAME.log`` sits beside ``NAME.log.chk``, gpsd's own JSON reports for it.
For every gpsd ``TPV`` with ``mode >= 2`` we look for a decoded fix at the same lat/lon
(within :data:`TOLERANCE` degrees). Our positions that gpsd never reported are sorted
into kinds, and only one kind is an error: a position at a time of day for which gpsd
said "no fix".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sosbeacon.device.gps import Fix
from sosbeacon.hw.nmea import NmeaDecoder
from sosbeacon.sim.gps.runner import capture_lines

TOLERANCE = 1e-6


@dataclass
class CaptureResult:
    name: str
    gpsd_fixes: int
    matched: int
    decoded: int
    #: our positions at a time gpsd reported as no-fix: must stay empty
    contradicted: list[Fix] = field(default_factory=list)
    #: our positions for epochs gpsd never reported with a position (truncated or
    #: spliced captures, the last epoch of a file, re-used timestamps, epochs for which
    #: gpsd reported mode 0, "not decided")
    unreported: list[Fix] = field(default_factory=list)

    @property
    def missed(self) -> int:
        return self.gpsd_fixes - self.matched


def decode_capture(path: Path, decoder: NmeaDecoder | None = None) -> list[Fix]:
    """Decode a capture the way gpsfake feeds it: ``#`` comment lines are not sent."""
    dec = decoder if decoder is not None else NmeaDecoder()
    fixes: list[Fix] = []
    for line in capture_lines(path):
        fixes.extend(dec.feed(line))
    fixes.extend(dec.flush())
    return fixes


def _seconds_of_day(t: datetime) -> float:
    return round(t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6, 3)


class _Grid:
    """Positions bucketed by rounded lat/lon for fast tolerance look-ups."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        self._cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for p in points:
            self._cells.setdefault(self._key(p), []).append(p)

    @staticmethod
    def _key(p: tuple[float, float]) -> tuple[int, int]:
        return round(p[0] * 1e4), round(p[1] * 1e4)

    def has(self, p: tuple[float, float]) -> bool:
        k0, k1 = self._key(p)
        for i in (k0 - 1, k0, k0 + 1):
            for j in (k1 - 1, k1, k1 + 1):
                for q in self._cells.get((i, j), ()):
                    if abs(q[0] - p[0]) <= TOLERANCE and abs(q[1] - p[1]) <= TOLERANCE:
                        return True
        return False


def compare_capture(log: Path) -> CaptureResult:
    fixes = decode_capture(log)
    ours = [f for f in fixes if f.has_position]
    gpsd_pos: list[tuple[float, float]] = []
    nofix_tods: set[float] = set()
    for line in log.with_name(log.name + ".chk").read_text(errors="replace").splitlines():
        if not line.startswith('{"class":"TPV"'):
            continue
        tpv = json.loads(line)
        if tpv.get("mode", 0) >= 2 and "lat" in tpv and "lon" in tpv:
            gpsd_pos.append((tpv["lat"], tpv["lon"]))
        elif tpv.get("mode", 0) == 1 and "time" in tpv:
            # mode 0 means gpsd has not decided yet (it reports that for a bare GLL);
            # only mode 1 is gpsd saying "no fix".
            nofix_tods.add(_seconds_of_day(datetime.fromisoformat(tpv["time"])))
    ours_grid = _Grid([(f.lat, f.lon) for f in ours if f.lat is not None and f.lon is not None])
    gpsd_grid = _Grid(gpsd_pos)
    result = CaptureResult(
        name=log.name,
        gpsd_fixes=len(gpsd_pos),
        matched=sum(1 for p in gpsd_pos if ours_grid.has(p)),
        decoded=len(ours),
    )
    for f in ours:
        if f.lat is None or f.lon is None or gpsd_grid.has((f.lat, f.lon)):
            continue
        if f.time is not None and _seconds_of_day(f.time) in nofix_tods:
            result.contradicted.append(f)
        else:
            result.unreported.append(f)
    return result


def compare_corpus(directory: Path) -> list[CaptureResult]:
    return [compare_capture(p) for p in sorted(directory.glob("*.log"))]
