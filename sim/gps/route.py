"""Routes to follow: a list of waypoints, or the tracks/routes of a GPX file."""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gpxpy

from sosbeacon.device.geo import haversine


def bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial course from point 1 to point 2, degrees from true north."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


@dataclass(frozen=True)
class Waypoint:
    lat: float
    lon: float
    alt: float = 0.0


class Route:
    """A polyline with cumulative distances, so a position at any distance is cheap."""

    def __init__(self, points: list[Waypoint]) -> None:
        if not points:
            raise ValueError("a route needs at least one waypoint")
        self.points = points
        self.cumulative = [0.0]
        for a, b in itertools.pairwise(points):
            self.cumulative.append(self.cumulative[-1] + haversine(a.lat, a.lon, b.lat, b.lon))

    @property
    def length(self) -> float:
        return self.cumulative[-1]

    @classmethod
    def from_gpx(cls, path: Path | str) -> Route:
        with open(path, encoding="utf-8") as fh:
            gpx = gpxpy.parse(fh)
        pts: list[Waypoint] = []
        for track in gpx.tracks:
            for seg in track.segments:
                pts.extend(
                    Waypoint(p.latitude, p.longitude, p.elevation or 0.0) for p in seg.points
                )
        for route in gpx.routes:
            pts.extend(Waypoint(p.latitude, p.longitude, p.elevation or 0.0) for p in route.points)
        if not pts:
            pts = [Waypoint(p.latitude, p.longitude, p.elevation or 0.0) for p in gpx.waypoints]
        if not pts:
            raise ValueError(f"{path}: no track, route or waypoints in this GPX file")
        return cls(pts)

    @classmethod
    def from_text(cls, spec: str) -> Route:
        """``"lat,lon[,alt];lat,lon[,alt];..."`` — for command lines and scenarios."""
        pts: list[Waypoint] = []
        for item in spec.split(";"):
            if not item.strip():
                continue
            nums = [float(x) for x in item.split(",")]
            if len(nums) not in (2, 3):
                raise ValueError(f"waypoint {item!r}: expected lat,lon or lat,lon,alt")
            pts.append(Waypoint(*nums))
        return cls(pts)

    @classmethod
    def sample(cls) -> Route:
        """The bundled sample route (a 4.1 km walk round Arthur's Seat, Edinburgh)."""
        ref = resources.files("sosbeacon.sim") / "routes" / "sample-walk.gpx"
        with resources.as_file(ref) as p:
            return cls.from_gpx(p)

    def at(self, distance: float) -> tuple[Waypoint, float]:
        """Position and course at ``distance`` metres along the route (clamped)."""
        if len(self.points) == 1 or distance <= 0:
            a = self.points[0]
            b = self.points[1] if len(self.points) > 1 else a
            return a, bearing(a.lat, a.lon, b.lat, b.lon)
        d = min(distance, self.length)
        i = max(1, bisect.bisect_left(self.cumulative, d))
        i = min(i, len(self.points) - 1)
        a, b = self.points[i - 1], self.points[i]
        seg = self.cumulative[i] - self.cumulative[i - 1]
        f = (d - self.cumulative[i - 1]) / seg if seg > 0 else 0.0
        p = Waypoint(
            a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f, a.alt + (b.alt - a.alt) * f
        )
        return p, bearing(a.lat, a.lon, b.lat, b.lon)


class RouteWalker:
    """Moves along a route at a constant speed; loops back to the start at the end."""

    def __init__(self, route: Route, speed: float, *, loop: bool = True) -> None:
        self.route = route
        self.speed = speed
        self.loop = loop

    def at(self, t: float) -> tuple[Waypoint, float, float]:
        """(position, course, speed) after ``t`` seconds."""
        d = self.speed * t
        length = self.route.length
        moving = self.speed
        if length > 0 and d > length:
            if self.loop:
                d %= length
            else:
                d, moving = length, 0.0
        p, course = self.route.at(d)
        return p, course, moving
