"""Battery state and the policy that stretches it.

Readers (``hw/``: sysfs ``power_supply``, MAX17048 over I2C) produce
:class:`BatterySample`; every attribute is optional, as it is in the kernel.

Policy (defaults; all configurable):

| level | when | idle reporting | GPS outside SOS | SOS route: min interval / heartbeat |
|---|---|---|---|---|
| ok | > 20 % or charging | every 5 min | continuous | 1 s / 30 s |
| low | <= 20 % | every 15 min | on 60 s of every 10 min | 5 s / 60 s |
| critical | <= 5 % | every 60 min | off | 15 s / 120 s |

Levels have a 2 % hysteresis so a gauge wavering around a threshold does not flap. On
first reaching *critical* while discharging, the device records a "last gasp" with the
last fix, the battery and the reason, at SOS priority. An active SOS keeps reporting as
long as there is power: it only slows its cadence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class BatterySample:
    #: state of charge, percent
    capacity: float | None = None
    #: "Charging", "Discharging", "Full", "Not charging", "Unknown"
    status: str | None = None
    voltage: float | None = None  # volts
    current: float | None = None  # amperes, positive when discharging
    temperature: float | None = None  # degrees Celsius

    @property
    def charging(self) -> bool:
        return self.status in ("Charging", "Full")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("pct", self.capacity),
            ("status", self.status),
            ("v", self.voltage),
            ("a", self.current),
            ("temp", self.temperature),
        ):
            if value is not None:
                out[key] = round(value, 3) if isinstance(value, float) else value
        return out


class BatterySource(Protocol):
    async def read(self) -> BatterySample:
        """One sample; raises ``OSError`` if the gauge cannot be read right now."""
        ...


class BatteryLevel(enum.IntEnum):
    OK = 0
    LOW = 1
    CRITICAL = 2


@dataclass(frozen=True, slots=True)
class Cadence:
    idle_report: float
    gps_on: float | None  # seconds on per cycle, None = continuous, 0 = off
    gps_cycle: float
    sos_min_interval: float
    sos_heartbeat: float


@dataclass(frozen=True, slots=True)
class BatteryPolicyConfig:
    low: float = 20.0
    critical: float = 5.0
    hysteresis: float = 2.0
    cadence_ok: Cadence = Cadence(300, None, 600, 1.0, 30.0)
    cadence_low: Cadence = Cadence(900, 60, 600, 5.0, 60.0)
    cadence_critical: Cadence = Cadence(3600, 0, 600, 15.0, 120.0)


class BatteryPolicy:
    def __init__(self, config: BatteryPolicyConfig | None = None) -> None:
        self.config = config or BatteryPolicyConfig()
        self.level = BatteryLevel.OK

    def update(self, sample: BatterySample) -> BatteryLevel:
        """Move between levels with hysteresis; charging always means OK."""
        c = self.config
        pct = sample.capacity
        if sample.charging or pct is None:
            self.level = BatteryLevel.OK if sample.charging else self.level
            return self.level
        if pct <= c.critical:
            self.level = BatteryLevel.CRITICAL
        elif pct <= c.low:
            if self.level is not BatteryLevel.CRITICAL or pct > c.critical + c.hysteresis:
                self.level = BatteryLevel.LOW
        elif self.level is BatteryLevel.OK or pct > c.low + c.hysteresis:
            self.level = BatteryLevel.OK
        return self.level

    @property
    def cadence(self) -> Cadence:
        c = self.config
        return {
            BatteryLevel.OK: c.cadence_ok,
            BatteryLevel.LOW: c.cadence_low,
            BatteryLevel.CRITICAL: c.cadence_critical,
        }[self.level]
