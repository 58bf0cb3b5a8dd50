"""Receiver power commands, through the pty into the simulated receiver, which honours
them: the SOS wake path end to end."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pynmeagps
import pytest

from sosbeacon.device.actuators import GpsPowerMode
from sosbeacon.device.records import MemoryRecorder
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.hw.gps_power import ReceiverPower, mtk_commands, ublox_commands
from sosbeacon.hw.serial_gps import NmeaSerialSource
from sosbeacon.sim.gps import Route, RouteWalker, SimReceiver
from sosbeacon.sim.gps.generator import PowerState
from sosbeacon.sim.gps.pty import PtyPort
from sosbeacon.sim.gps.runner import run_receiver
from tests.helpers import collecting


def test_mtk_commands_are_valid_nmea() -> None:
    for mode in GpsPowerMode:
        for cmd in mtk_commands(mode, 5.0):
            if cmd.startswith(b"$"):
                assert pynmeagps.NMEAReader.parse(cmd.strip(), validate=1) is not None
    assert b"$PMTK220,200*" in b"".join(mtk_commands(GpsPowerMode.FULL, 5.0))


def test_ublox_frames_have_valid_checksums() -> None:
    for mode in GpsPowerMode:
        for frame in ublox_commands(mode, 1.0):
            if not frame.startswith(b"\xb5\x62"):
                continue
            body, ck = frame[2:-2], frame[-2:]
            a = b = 0
            for x in body:
                a = (a + x) & 0xFF
                b = (b + a) & 0xFF
            assert bytes([a, b]) == ck
            assert int.from_bytes(body[2:4], "little") == len(body) - 4


def receiving(
    rx: SimReceiver, port: PtyPort, state: PowerState
) -> tuple[asyncio.Event, asyncio.Task[int]]:
    """The receiver sending on ``port``, and an event set once it is in ``state``
    (checked at every epoch: it hears the host's commands between epochs)."""
    reached = asyncio.Event()
    task = asyncio.create_task(
        run_receiver(
            rx, port, duration=60, on_epoch=lambda _: reached.set() if rx.power is state else None
        )
    )
    return reached, task


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="mtk, ublox"):
        ReceiverPower(None, family="sirf")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["mtk", "ublox"])
async def test_sleep_and_sos_wake_through_the_pty(tmp_path: Path, family: str) -> None:
    port = PtyPort(tmp_path / "gps0", baudrate=115200)
    rx = SimReceiver(RouteWalker(Route.sample(), 1.4), rate_hz=10)
    source = NmeaSerialSource(port=str(port.path), baudrate=115200)
    power = ReceiverPower(source, family=family, rate_hz=10)
    asleep, sending = receiving(rx, port, PowerState.OFF)
    try:
        async with collecting(source) as got:
            await got.wait_for(3)
            await power.set_mode(GpsPowerMode.OFF)
            await asyncio.wait_for(asleep.wait(), 10)
            quiet_from = len(got.fixes)
            await asyncio.sleep(0.5)  # half a second of silence
            assert len(got.fixes) - quiet_from <= 1  # asleep: nothing more is sent
            # An SOS wakes it.
            ctl = SosController(
                config=SosConfig(contacts=(Contact("Alice"),)),
                recorder=MemoryRecorder(),
                clock=source._clock,
                gps_power=power,
            )
            await ctl.start(trigger="cli", now=True)
            await got.wait_for(3, timeout=5)
            assert rx.power is PowerState.ON
            assert power.mode is GpsPowerMode.FULL
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        port.close()


async def test_a_mode_asked_for_before_the_device_opens_is_set_once_it_does(
    tmp_path: Path,
) -> None:
    """A restart during an SOS: the SOS asks for full power before the serial line is
    up. The request waits for the device instead of being dropped."""
    port = PtyPort(tmp_path / "gps0", baudrate=115200)
    port.unplug()  # not there yet
    rx = SimReceiver(RouteWalker(Route.sample(), 1.4), rate_hz=10)
    rx.power = PowerState.OFF  # asleep since before the restart
    source = NmeaSerialSource(port=str(port.path), baudrate=115200, retry_interval=0.1)
    power = ReceiverPower(source, family="ublox", rate_hz=10)
    async with collecting(source):
        setting = asyncio.create_task(power.set_mode(GpsPowerMode.FULL))
        await asyncio.sleep(0)
        assert not setting.done() and power.mode is None  # waiting for the device
        port.plug()
        awake, sending = receiving(rx, port, PowerState.ON)
        try:
            await asyncio.wait_for(setting, 10)
            assert power.mode is GpsPowerMode.FULL
            await asyncio.wait_for(awake.wait(), 10)
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            port.close()
