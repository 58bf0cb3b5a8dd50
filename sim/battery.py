"""A battery that discharges, charges and gets unplugged, written as a sysfs tree.

The model writes ``<root>/BAT0/...`` and ``<root>/AC/...`` exactly as the kernel's
``power_supply`` class lays them out (µV, µA, tenths of °C), so the daemon's real
:class:`hw.battery.SysfsBattery` reads it. Capacity follows the charge drawn by the load;
voltage follows a Li-ion open-circuit curve minus the internal-resistance drop.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

#: state of charge (%) -> open-circuit voltage (V), a typical single Li-ion cell
OCV = [
    (0, 3.30),
    (5, 3.55),
    (10, 3.65),
    (20, 3.72),
    (40, 3.78),
    (60, 3.86),
    (80, 3.98),
    (100, 4.18),
]


def ocv(soc: float) -> float:
    xs = [p[0] for p in OCV]
    i = min(max(1, bisect.bisect_left(xs, soc)), len(OCV) - 1)
    (x0, y0), (x1, y1) = OCV[i - 1], OCV[i]
    return y0 + (y1 - y0) * (min(max(soc, 0), 100) - x0) / (x1 - x0)


@dataclass
class BatteryModel:
    capacity_mah: float = 2500.0
    soc: float = 100.0  # percent
    load_ma: float = 250.0  # a Pi Zero 2 W with a GPS module
    charge_ma: float = 1000.0
    plugged: bool = False
    resistance: float = 0.15  # ohms
    temperature: float = 25.0

    def step(self, seconds: float) -> None:
        """Advance the model by ``seconds`` of simulated time."""
        net_ma = (self.charge_ma if self.plugged else 0.0) - self.load_ma
        self.soc += net_ma * seconds / 3600.0 / self.capacity_mah * 100.0
        self.soc = min(100.0, max(0.0, self.soc))

    @property
    def status(self) -> str:
        if self.plugged:
            return "Full" if self.soc >= 100.0 else "Charging"
        return "Discharging"

    @property
    def current_a(self) -> float:
        """Positive while discharging (what leaves the cell)."""
        if self.plugged and self.soc >= 100.0:
            return 0.0
        return (self.load_ma - (self.charge_ma if self.plugged else 0.0)) / 1000.0

    @property
    def voltage(self) -> float:
        return ocv(self.soc) - self.current_a * self.resistance


class SysfsWriter:
    """Writes a :class:`BatteryModel` as ``power_supply`` attributes under ``root``.

    An attribute is written only when its text changes: a file created and renamed on
    ext4 costs about a millisecond, and a fleet of simulated devices (sim/fleet.py)
    would spend a third of its CPU rewriting the same temperature every few seconds.
    """

    def __init__(self, root: Path | str, *, name: str = "BAT0", extra_supplies: bool = True):
        self.root = Path(root)
        self.bat = self.root / name
        #: what each attribute file holds, as this writer last wrote it
        self._written: dict[Path, str] = {}
        self.bat.mkdir(parents=True, exist_ok=True)
        _put(self.bat / "type", "Battery")
        _put(self.bat / "present", "1")
        _put(self.bat / "technology", "Li-ion")
        if extra_supplies:
            ac = self.root / "AC"
            ac.mkdir(exist_ok=True)
            self._put(ac / "type", "Mains")

    def write(self, m: BatteryModel, *, omit: tuple[str, ...] = ()) -> None:
        values = {
            "capacity": str(round(m.soc)),
            "status": m.status,
            # whole millivolts, as many gauges resolve (a bq27441 reports mV), so that
            # the file changes when the voltage does, not on every step of the model
            "voltage_now": str(round(m.voltage * 1e3) * 1000),
            # Many drivers report discharge as a negative current; so does this one.
            "current_now": str(round(-m.current_a * 1e6)),
            "temp": str(round(m.temperature * 10)),
        }
        for attr, text in values.items():
            if attr in omit:
                (self.bat / attr).unlink(missing_ok=True)
                self._written.pop(self.bat / attr, None)
            else:
                self._put(self.bat / attr, text)
        ac = self.root / "AC"
        if ac / "type" in self._written or ac.is_dir():
            self._put(ac / "online", "1" if m.plugged else "0")

    def _put(self, path: Path, text: str) -> None:
        if self._written.get(path) != text:
            _put(path, text)
            self._written[path] = text


def _put(path: Path, text: str) -> None:
    """Write atomically, so a reader never sees half a value."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
