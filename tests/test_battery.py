"""Battery: the simulated cell writes a sysfs tree, the real sysfs reader reads it; the
MAX17048 register decoding; the policy through a discharge on a simulated clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from sosbeacon.device.battery import BatteryLevel, BatteryPolicy, BatterySample
from sosbeacon.device.records import MemoryRecorder, RecordKind
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.hw.battery import Max17048, SysfsBattery
from sosbeacon.sim.battery import BatteryModel, SysfsWriter, ocv
from sosbeacon.sim.clock import SimClock


def test_sysfs_reader_reads_what_the_model_writes(tmp_path: Path) -> None:
    model = BatteryModel(soc=73.4, load_ma=400)
    SysfsWriter(tmp_path).write(model)
    s = SysfsBattery(root=tmp_path).read_sync()
    assert s.capacity == 73
    assert s.status == "Discharging"
    assert s.voltage == pytest.approx(ocv(73.4) - 0.4 * 0.15, abs=5e-4)  # whole mV
    assert s.current == pytest.approx(0.4)  # positive while discharging, whatever the driver
    assert s.temperature == pytest.approx(25.0)


def test_charging_current_is_negative_and_status_follows_the_plug(tmp_path: Path) -> None:
    model = BatteryModel(soc=50, plugged=True)
    SysfsWriter(tmp_path).write(model)
    s = SysfsBattery(root=tmp_path).read_sync()
    assert s.status == "Charging"
    assert s.charging
    assert s.current is not None and s.current < 0


def test_every_attribute_is_optional(tmp_path: Path) -> None:
    w = SysfsWriter(tmp_path)
    w.write(BatteryModel(), omit=("voltage_now", "current_now", "temp"))
    s = SysfsBattery(root=tmp_path).read_sync()
    assert (s.capacity, s.status, s.voltage, s.current, s.temperature) == (
        100,
        "Discharging",
        None,
        None,
        None,
    )


def test_unreadable_attribute_is_unknown_not_fatal(tmp_path: Path) -> None:
    w = SysfsWriter(tmp_path)
    w.write(BatteryModel(soc=40))
    (tmp_path / "BAT0" / "voltage_now").unlink()
    (tmp_path / "BAT0" / "voltage_now").mkdir()  # reading it raises an OSError
    (tmp_path / "BAT0" / "temp").write_text("garbage\n")
    reader = SysfsBattery(root=tmp_path)
    s = reader.read_sync()
    assert s.capacity == 40
    assert s.voltage is None and s.temperature is None
    assert reader.read_errors == 2


def test_autodetect_skips_mains_and_absent_batteries(tmp_path: Path) -> None:
    SysfsWriter(tmp_path, name="BAT1").write(BatteryModel(soc=60))
    absent = tmp_path / "BAT0"
    absent.mkdir()
    (absent / "type").write_text("Battery\n")
    (absent / "present").write_text("0\n")
    assert SysfsBattery(root=tmp_path).find().name == "BAT1"
    assert SysfsBattery(root=tmp_path, name="BAT1").read_sync().capacity == 60


def test_clear_errors_when_there_is_no_battery(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no battery-type power supply"):
        SysfsBattery(root=tmp_path).read_sync()
    SysfsWriter(tmp_path).write(BatteryModel())
    with pytest.raises(FileNotFoundError, match="available: AC, BAT0"):
        SysfsBattery(root=tmp_path, name="axp20x-battery").read_sync()


class FakeGaugeBus:
    """Register file of a MAX17048 (a fake of the I2C bus: no I2C on this machine)."""

    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.reads: list[tuple[int, int]] = []

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        self.reads.append((i2c_addr, register))
        v = self.regs[register]
        return [v >> 8, v & 0xFF][:length]


def test_max17048_register_decoding() -> None:
    bus = FakeGaugeBus({0x02: 0xD1C0, 0x04: 0x3A80, 0x16: 0xFFEC})
    s = Max17048(bus=bus).read_sync()
    assert s.voltage == pytest.approx(0xD1C0 * 78.125e-6, abs=1e-4)  # 4.19 V
    assert s.capacity == pytest.approx(58.5)
    assert s.status == "Discharging"  # CRATE = -20 * 0.208 %/h
    assert all(addr == 0x36 for addr, _ in bus.reads)
    charging = Max17048(bus=FakeGaugeBus({0x02: 0xC000, 0x04: 0x6400, 0x16: 0x0030})).read_sync()
    assert charging.status == "Charging"


def test_policy_levels_with_hysteresis() -> None:
    p = BatteryPolicy()
    seq = [
        (50, BatteryLevel.OK),
        (20, BatteryLevel.LOW),
        (21, BatteryLevel.LOW),
        (22.5, BatteryLevel.OK),
        (19, BatteryLevel.LOW),
        (5, BatteryLevel.CRITICAL),
        (6.5, BatteryLevel.CRITICAL),
        (7.5, BatteryLevel.LOW),
    ]
    for pct, want in seq:
        assert p.update(BatterySample(capacity=pct, status="Discharging")) is want, pct
    assert p.update(BatterySample(capacity=3, status="Charging")) is BatteryLevel.OK


async def test_discharge_through_the_real_reader_reaches_last_gasp(tmp_path: Path) -> None:
    """Eight simulated hours of a 2500 mAh cell at 300 mA, sampled every minute."""
    clock = SimClock(datetime(2026, 11, 22, tzinfo=UTC))
    store = MemoryRecorder()
    ctl = SosController(config=SosConfig(contacts=(Contact("Alice"),)), recorder=store, clock=clock)
    model = BatteryModel(capacity_mah=2500, soc=40, load_ma=300)
    writer = SysfsWriter(tmp_path)
    reader = SysfsBattery(root=tmp_path)
    levels = []
    for _ in range(8 * 60):
        model.step(60)
        await clock.advance(60)
        writer.write(model)
        await ctl.on_battery(await reader.read())
        levels.append(ctl.battery.level)
    assert levels[0] is BatteryLevel.OK
    assert BatteryLevel.LOW in levels
    assert levels[-1] is BatteryLevel.CRITICAL
    (gasp,) = store.of(RecordKind.LAST_GASP)
    assert gasp.data["battery"]["pct"] <= 5


def test_the_writer_rewrites_an_attribute_only_when_its_value_changes(tmp_path: Path) -> None:
    model = BatteryModel(soc=80, load_ma=250)
    writer = SysfsWriter(tmp_path)
    writer.write(model)
    bat = tmp_path / "BAT0"
    inodes = {p.name: p.stat().st_ino for p in bat.iterdir()}
    model.step(5)  # 5 s at 250 mA: a 2500 mAh cell loses 0.014 %, well under a millivolt
    writer.write(model)
    assert {p.name: p.stat().st_ino for p in bat.iterdir()} == inodes
    model.soc = 40
    writer.write(model)
    changed = {p.name for p in bat.iterdir() if p.stat().st_ino != inodes[p.name]}
    assert changed == {"capacity", "voltage_now"}
    assert SysfsBattery(root=tmp_path).read_sync().capacity == 40
