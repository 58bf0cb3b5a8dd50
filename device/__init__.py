"""sosbeacon's hardware-agnostic core.

Nothing in this package imports :mod:`hw` or :mod:`sim`: hardware reaches the core only
through the small Protocols defined here, and a composition root decides which
implementation (real or simulated) stands behind each of them.
"""

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.gps import Fix, FixMode, FixQuality, GpsSource, GpsStats

__all__ = [
    "Clock",
    "Fix",
    "FixMode",
    "FixQuality",
    "GpsSource",
    "GpsStats",
    "MonotonicClock",
]
