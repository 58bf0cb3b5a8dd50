"""NMEA sentences a receiver would send, epoch by epoch, with the faults real ones have.

The output mimics a u-blox style receiver (RMC, VTG, GGA, GSA, GLL, optionally ZDA) so the
decoder is exercised the way hardware exercises it. Sentence layouts are format tables;
the checksum is computed here and checked independently by pynmeagps in the tests.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sosbeacon.device.geo import EARTH_RADIUS
from sosbeacon.hw.nmea.epoch import KNOT
from sosbeacon.hw.nmea.sentences import build_sentence as sentence
from sosbeacon.hw.ubx import ubx_frame
from sosbeacon.sim.gps.route import RouteWalker

#: GPS week-number rollover period
ROLLOVER = timedelta(weeks=1024)


class FaultKind(enum.StrEnum):
    BAD_CHECKSUM = "bad-checksum"
    TRUNCATED = "truncated"
    GLUED = "glued"
    UBX = "ubx"
    ZEROED_VOID = "zeroed-void"
    ROLLOVER = "rollover"


@dataclass(frozen=True)
class Fault:
    """Inject ``kind`` into the epoch at ``at`` seconds after the start."""

    kind: FaultKind
    at: float

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND@SECONDS``, e.g. ``ubx@12.5``."""
        kind, _, at = spec.partition("@")
        try:
            return cls(FaultKind(kind), float(at or 0))
        except ValueError:
            kinds = ", ".join(k.value for k in FaultKind)
            raise ValueError(
                f"fault {spec!r}: expected KIND@SECONDS, KIND one of {kinds}"
            ) from None


@dataclass
class ReceiverScript:
    """What happens to the receiver over time (seconds since start)."""

    #: no fix for this long after start (cold start / time to first fix)
    cold_start: float = 0.0
    #: windows without a fix, e.g. a tunnel: (start, end)
    outages: list[tuple[float, float]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def has_fix(self, t: float) -> bool:
        if t < self.cold_start:
            return False
        return not any(a <= t < b for a, b in self.outages)


def _ddmm(value: float, deg_digits: int, decimals: int = 5) -> str:
    v = abs(value)
    deg = int(v)
    minutes = round((v - deg) * 60.0, decimals)
    if minutes >= 60.0:
        deg, minutes = deg + 1, 0.0
    return f"{deg:0{deg_digits}d}{minutes:0{decimals + 3}.{decimals}f}"


@dataclass
class EpochTruth:
    """What the simulated receiver meant to say (for tests and drill reports)."""

    time: datetime
    fix: bool
    lat: float
    lon: float
    alt: float
    speed: float
    course: float
    sats: int
    hdop: float


class PowerState(enum.StrEnum):
    ON = "on"
    PERIODIC = "periodic"
    OFF = "off"


class SimReceiver:
    """Generates the bytes of each epoch. Deterministic for a given ``seed``.

    It also listens like a receiver: :meth:`hear` takes the bytes the host wrote to it and
    honours the MediaTek and u-blox power commands (standby/backup, wake on any byte,
    continuous or periodic mode, update rate). While off it sends nothing; in periodic
    mode it reports one epoch in ``periodic_every``.
    """

    def __init__(
        self,
        walker: RouteWalker,
        *,
        start: datetime | None = None,
        rate_hz: float = 1.0,
        talker: str = "GN",
        script: ReceiverScript | None = None,
        noise: bool = True,
        zda: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0.1 <= rate_hz <= 10.0:
            raise ValueError("update rate must be between 0.1 and 10 Hz")
        self.walker = walker
        self.start = (start or datetime.now(UTC)).replace(microsecond=0)
        self.rate_hz = rate_hz
        self.talker = talker
        self.script = script or ReceiverScript()
        self.noise = noise
        self.zda = zda
        self._rng = random.Random(seed)
        self._noise_n = 0.0
        self._noise_e = 0.0
        self._sats = 9
        self._pending = sorted(self.script.faults, key=lambda f: f.at)
        self.power = PowerState.ON
        self.periodic_every = 10
        self.heard: list[bytes] = []

    def hear(self, data: bytes) -> None:
        """Bytes from the host. Any byte wakes a sleeping receiver (both families)."""
        if not data:
            return
        self.heard.append(data)
        if self.power is PowerState.OFF:
            self.power = PowerState.ON
        if b"$PMTK161," in data or b"\xb5\x62\x02\x41" in data:
            self.power = PowerState.OFF
        elif b"$PMTK225,2" in data or b"\xb5\x62\x06\x11\x02\x00\x08\x01" in data:
            self.power = PowerState.PERIODIC
        elif b"$PMTK225,0" in data or b"\xb5\x62\x06\x11\x02\x00\x08\x00" in data:
            self.power = PowerState.ON

    def silent(self, n: int) -> bool:
        """Whether epoch ``n`` is not transmitted because of the power state."""
        if self.power is PowerState.OFF:
            return True
        return self.power is PowerState.PERIODIC and n % self.periodic_every != 0

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    def truth(self, n: int) -> EpochTruth:
        """The state of epoch ``n`` (noise included: this is what the receiver reports)."""
        t = n * self.period
        p, course, speed = self.walker.at(t)
        rng = self._rng
        if self.noise:
            # Correlated position error (first-order Gauss-Markov, ~2.5 m sigma, 20 s).
            a = math.exp(-self.period / 20.0)
            s = 2.5 * math.sqrt(1 - a * a)
            self._noise_n = a * self._noise_n + rng.gauss(0, s)
            self._noise_e = a * self._noise_e + rng.gauss(0, s)
            if rng.random() < 0.05 * self.period:
                self._sats = max(4, min(14, self._sats + rng.choice((-1, 1))))
        lat = p.lat + math.degrees(self._noise_n / EARTH_RADIUS)
        lon = p.lon + math.degrees(self._noise_e / (EARTH_RADIUS * math.cos(math.radians(p.lat))))
        hdop = round(max(0.5, 4.5 / math.sqrt(self._sats) - 0.5), 2)
        return EpochTruth(
            time=self.start + timedelta(seconds=t),
            fix=self.script.has_fix(t),
            lat=lat,
            lon=lon,
            alt=p.alt,
            speed=speed,
            course=course,
            sats=self._sats,
            hdop=hdop,
        )

    def epoch(self, n: int) -> tuple[bytes, EpochTruth]:
        """The bytes of epoch ``n`` and what they describe."""
        tr = self.truth(n)
        t = n * self.period
        faults = []
        while self._pending and self._pending[0].at <= t:
            faults.append(self._pending.pop(0).kind)
        kinds = set(faults)
        if FaultKind.ZEROED_VOID in kinds:
            tr = EpochTruth(tr.time, False, 0.0, 0.0, 0.0, 0.0, 0.0, tr.sats, tr.hdop)
            lines = self._void(tr, zeroed=True)
        elif tr.fix:
            lines = self._valid(tr, rollover=FaultKind.ROLLOVER in kinds)
        else:
            lines = self._void(tr, zeroed=False)
        return self._inject(lines, kinds), tr

    # -- sentence tables ------------------------------------------------------------

    def _hms(self, tr: EpochTruth) -> str:
        return tr.time.strftime("%H%M%S.") + f"{tr.time.microsecond // 10000:02d}"

    def _valid(self, tr: EpochTruth, *, rollover: bool) -> list[bytes]:
        tk, hms = self.talker, self._hms(tr)
        day = tr.time - ROLLOVER if rollover else tr.time
        lat = f"{_ddmm(tr.lat, 2)},{'N' if tr.lat >= 0 else 'S'}"
        lon = f"{_ddmm(tr.lon, 3)},{'E' if tr.lon >= 0 else 'W'}"
        kn = tr.speed / KNOT
        used = ",".join(
            [f"{sv:02d}" for sv in range(1, tr.sats + 1)][:12] + [""] * max(0, 12 - tr.sats)
        )
        pdop, vdop = round(tr.hdop * 1.6, 2), round(tr.hdop * 1.3, 2)
        out = [
            sentence(f"{tk}RMC,{hms},A,{lat},{lon},{kn:.3f},{tr.course:.2f},{day:%d%m%y},,,A"),
            sentence(f"{tk}VTG,{tr.course:.2f},T,,M,{kn:.3f},N,{tr.speed * 3.6:.3f},K,A"),
            sentence(
                f"{tk}GGA,{hms},{lat},{lon},1,{tr.sats:02d},{tr.hdop:.2f},{tr.alt:.1f},M,47.0,M,,"
            ),
            sentence(f"{tk}GSA,A,3,{used},{pdop:.2f},{tr.hdop:.2f},{vdop:.2f}"),
            sentence(f"{tk}GLL,{lat},{lon},{hms},A,A"),
        ]
        if self.zda:
            out.append(sentence(f"{tk}ZDA,{hms},{day:%d},{day:%m},{day:%Y},00,00"))
        return out

    def _void(self, tr: EpochTruth, *, zeroed: bool) -> list[bytes]:
        tk, hms = self.talker, self._hms(tr)
        if zeroed:
            pos = "0000.00000,N,00000.00000,E"
            return [
                sentence(f"{tk}RMC,{hms},V,{pos},0.000,0.00,{tr.time:%d%m%y},,,N"),
                sentence(f"{tk}GGA,{hms},{pos},0,00,99.99,0.0,M,0.0,M,,"),
                sentence(f"{tk}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
            ]
        return [
            sentence(f"{tk}RMC,{hms},V,,,,,,,{tr.time:%d%m%y},,,N"),
            sentence(f"{tk}VTG,,,,,,,,,N"),
            sentence(f"{tk}GGA,{hms},,,,,0,00,99.99,,,,,,"),
            sentence(f"{tk}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
            sentence(f"{tk}GLL,,,,,{hms},V,N"),
        ]

    def _inject(self, lines: list[bytes], kinds: set[FaultKind]) -> bytes:
        rng = self._rng
        if FaultKind.BAD_CHECKSUM in kinds:
            i = rng.randrange(len(lines))
            body, _, _ = lines[i].partition(b"*")
            good = int(lines[i][len(body) + 1 : len(body) + 3], 16)
            lines[i] = body + b"*%02X\r\n" % (good ^ 0x5A)
        if FaultKind.TRUNCATED in kinds:
            i = rng.randrange(len(lines))
            lines[i] = lines[i][: max(3, len(lines[i]) // 2)]
        if FaultKind.GLUED in kinds and len(lines) > 1:
            i = rng.randrange(len(lines) - 1)
            lines[i] = lines[i].rstrip(b"\r\n")
        if FaultKind.UBX in kinds:
            # NAV-PVT-sized frame whose payload contains '$' and line ends on purpose.
            payload = bytes(rng.randrange(256) for _ in range(84)) + b"$\r\n"
            lines.insert(rng.randrange(len(lines) + 1), ubx_frame(0x01, 0x07, payload))
        return b"".join(lines)
