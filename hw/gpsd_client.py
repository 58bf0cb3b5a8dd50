"""A small asyncio client of gpsd's JSON protocol (``?WATCH``, ``TPV``, ``SKY``).

Why our own: the ``gpsd-py3`` package is blocking and unmaintained since 2017, and gpsd's
own Python module is not on PyPI. The protocol is newline-delimited JSON over TCP; we need
three message classes of it.

gpsd may be restarted (``systemctl restart gpsd``), or send a truncated object when it
goes down mid-line: the client reconnects on its own and counts what it could not parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.gps import Fix, FixMode, FixQuality, GpsStats
from sosbeacon.hw.link import Link

log = logging.getLogger(__name__)

WATCH = b'?WATCH={"enable":true,"json":true};\n'
#: longest line we accept from gpsd before calling it garbage (gpsd caps its own at 10 KB)
MAX_LINE = 64 * 1024

#: gpsd TPV ``status`` → our quality
_STATUS_QUALITY = {
    1: FixQuality.GPS,
    2: FixQuality.DGPS,
    3: FixQuality.RTK,
    4: FixQuality.FLOAT_RTK,
    5: FixQuality.ESTIMATED,
    6: FixQuality.MANUAL,
    7: FixQuality.SIMULATED,
}


def _num(obj: dict[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def tpv_to_fix(
    tpv: dict[str, Any], sky: dict[str, Any] | None, received: float | None = None
) -> Fix:
    """Map one gpsd ``TPV`` (plus the latest ``SKY``) onto our :class:`Fix`."""
    raw_mode = tpv.get("mode", 0)
    mode = FixMode(raw_mode) if raw_mode in (0, 1, 2, 3) else FixMode.UNKNOWN
    time: datetime | None = None
    if isinstance(tpv.get("time"), str):
        with contextlib.suppress(ValueError):
            time = datetime.fromisoformat(tpv["time"].replace("Z", "+00:00"))
    sats: int | None = None
    hdop: float | None = None
    if sky is not None:
        hdop = _num(sky, "hdop")
        if isinstance(sky.get("uSat"), int):
            sats = sky["uSat"]
        elif isinstance(sky.get("satellites"), list):
            sats = sum(1 for s in sky["satellites"] if isinstance(s, dict) and s.get("used"))
    lat, lon = _num(tpv, "lat"), _num(tpv, "lon")
    if mode < FixMode.TWO_D or lat is None or lon is None:
        return Fix(time=time, mode=mode, sats=sats, hdop=hdop, received=received)
    eph = _num(tpv, "eph")
    epx, epy = _num(tpv, "epx"), _num(tpv, "epy")
    if eph is None and epx is not None and epy is not None:
        eph = math.hypot(epx, epy)
    alt = _num(tpv, "altMSL")
    if alt is None:
        alt = _num(tpv, "alt")
    status = tpv.get("status", 1)
    return Fix(
        time=time,
        lat=lat,
        lon=lon,
        alt=alt if mode == FixMode.THREE_D else None,
        speed=_num(tpv, "speed"),
        course=_num(tpv, "track"),
        mode=mode,
        quality=_STATUS_QUALITY.get(status, FixQuality.GPS),
        sats=sats,
        hdop=hdop,
        accuracy=round(eph, 2) if eph is not None else None,
        received=received,
    )


class GpsdSource:
    """A :class:`device.gps.GpsSource` fed by a running gpsd."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 2947,
        device: str | None = None,
        retry_interval: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self.host = host
        self.port = port
        #: only follow this device path (gpsd may serve several receivers)
        self.device = device
        self._clock = clock if clock is not None else MonotonicClock()
        self._stats = GpsStats()
        self._link = Link(
            what=f"gpsd at {host}:{port}",
            hint="Is gpsd running (systemctl status gpsd)?",
            retry_interval=retry_interval,
            clock=self._clock,
            stats=self._stats,
            log=log,
        )
        #: set while connected to gpsd
        self.connected = self._link.connected

    @property
    def stats(self) -> GpsStats:
        return self._stats

    async def fixes(self) -> AsyncIterator[Fix]:
        link = self._link
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
            except OSError as exc:
                await link.open_failed(exc)
                continue
            link.opened()
            try:
                writer.write(WATCH)
                await writer.drain()
                async for fix in self._read(reader):
                    yield fix
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.debug("gpsd connection lost: %s", exc)
            finally:
                link.closed()
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await link.lost()

    async def _read(self, reader: asyncio.StreamReader) -> AsyncIterator[Fix]:
        sky: dict[str, Any] | None = None
        last: tuple[object, ...] | None = None
        st = self._stats
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                # Longer than MAX_LINE: asyncio drops it; its tail arrives as garbage.
                st.garbage += 1
                continue
            if not line:
                return
            st.bytes += len(line)
            if not line.endswith(b"\n"):
                st.garbage += 1  # truncated by a disconnect
                return
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                st.garbage += 1
                log.debug("unparseable line from gpsd: %r", line[:120])
                continue
            if not isinstance(obj, dict):
                st.garbage += 1
                continue
            st.sentences += 1
            cls = obj.get("class")
            if self.device is not None and obj.get("device") not in (None, self.device):
                continue
            if cls == "SKY":
                sky = obj
            elif cls == "TPV":
                fix = tpv_to_fix(obj, sky, self._clock.monotonic())
                # gpsd may report one epoch more than once as sentences arrive.
                key = (fix.time, fix.lat, fix.lon, fix.mode)
                if key == last:
                    continue
                last = key
                st.epochs += 1
                st.fixes += fix.has_position
                yield fix
            else:
                st.unknown += 1
