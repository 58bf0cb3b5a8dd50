"""Battery gauges: the kernel's ``power_supply`` class in sysfs, or a MAX17048 on I2C.

Both read off the event loop: a sysfs read of an I2C-backed gauge, like an smbus
transfer, blocks while the bus is busy, and nothing may delay an SOS.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from sosbeacon.device.battery import BatterySample

log = logging.getLogger(__name__)

SYSFS_ROOT = Path("/sys/class/power_supply")


class SysfsBattery:
    """Reads ``<root>/<name>/{capacity,status,voltage_now,current_now,temp}``.

    With ``name=None`` the first supply whose ``type`` is ``Battery`` (and that is
    ``present``) is used. Every attribute is optional, as it is in the kernel ABI; an
    attribute that exists but cannot be read (some gauges answer EIO or ENODATA while
    busy) reads as unknown for that sample. ``current`` is reported positive while
    discharging, whatever sign convention the driver uses.
    """

    def __init__(self, *, root: Path | str = SYSFS_ROOT, name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name
        self.read_errors = 0

    def find(self) -> Path:
        if self.name is not None:
            path = self.root / self.name
            if not path.is_dir():
                raise FileNotFoundError(
                    f"battery {self.name!r} not found under {self.root}; "
                    f"available: {', '.join(self._names()) or 'none'}"
                )
            return path
        for name in self._names():
            supply = self.root / name
            if _text(supply / "type") == "Battery" and _text(supply / "present") != "0":
                return supply
        raise FileNotFoundError(
            f"no battery-type power supply under {self.root}; set battery.name, or use the "
            "max17048 backend for an I2C gauge"
        )

    def _names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir())
        except OSError:
            return []

    def read_sync(self) -> BatterySample:
        supply = self.find()

        def num(attr: str, scale: float) -> float | None:
            raw = self._attr(supply / attr)
            if raw is None:
                return None
            try:
                return int(raw) * scale
            except ValueError:
                self.read_errors += 1
                return None

        status = self._attr(supply / "status")
        current = num("current_now", 1e-6)
        if current is not None and status == "Discharging":
            current = abs(current)
        elif current is not None and status == "Charging":
            current = -abs(current)
        return BatterySample(
            capacity=num("capacity", 1.0),
            status=status,
            voltage=num("voltage_now", 1e-6),
            current=current,
            temperature=num("temp", 0.1),
        )

    async def read(self) -> BatterySample:
        return await asyncio.to_thread(self.read_sync)

    def _attr(self, path: Path) -> str | None:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.read_errors += 1
            log.debug("cannot read %s: %s", path, exc)
            return None


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class I2CBus(Protocol):
    """The part of ``smbus2.SMBus`` the gauge uses."""

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...


class Max17048:
    """Maxim MAX17048/MAX17049 fuel gauge (ModelGauge), I2C address 0x36.

    Registers (big-endian 16 bit): VCELL 0x02 (78.125 µV/LSB), SOC 0x04 (1/256 %/LSB),
    CRATE 0x16 (signed, 0.208 %/h/LSB; positive while charging).
    """

    ADDRESS = 0x36
    VCELL, SOC, VERSION, CRATE = 0x02, 0x04, 0x08, 0x16

    def __init__(self, *, bus: int | I2CBus = 1, address: int = ADDRESS) -> None:
        self._bus_arg = bus
        self.address = address
        self._bus: I2CBus | None = None if isinstance(bus, int) else bus

    def _open(self) -> I2CBus:
        if self._bus is None:
            import smbus2

            assert isinstance(self._bus_arg, int)
            self._bus = smbus2.SMBus(self._bus_arg)
        return self._bus

    def _word(self, register: int) -> int:
        hi, lo = self._open().read_i2c_block_data(self.address, register, 2)
        return (hi << 8) | lo

    def read_sync(self) -> BatterySample:
        vcell = self._word(self.VCELL) * 78.125e-6
        soc = min(100.0, self._word(self.SOC) / 256.0)
        crate = self._word(self.CRATE)
        if crate >= 0x8000:
            crate -= 0x10000
        rate = crate * 0.208  # %/h
        if rate > 0.1:
            status = "Charging"
        elif rate < -0.1:
            status = "Discharging"
        else:
            status = "Full" if soc >= 99.5 else "Not charging"
        return BatterySample(capacity=round(soc, 1), status=status, voltage=round(vcell, 4))

    async def read(self) -> BatterySample:
        return await asyncio.to_thread(self.read_sync)
