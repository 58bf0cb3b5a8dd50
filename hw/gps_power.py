"""Put the receiver to sleep and wake it, over the same serial line it reports on.

Two command families cover most modules on a Pi:

* **MediaTek** (MT3339 "Ultimate GPS", Quectel L80/L86, GlobalTop): ``$PMTK161,0`` is
  standby, any byte wakes it, ``$PMTK225,0`` is normal (continuous) mode,
  ``$PMTK225,2,...`` its periodic mode, ``$PMTK220,<ms>`` the update interval.
* **u-blox** (NEO-6/7/8/M9): UBX-RXM-PMREQ puts it into backup until woken by activity
  on its UART RX (a few 0xFF bytes), UBX-CFG-RXM selects continuous or power-save mode,
  UBX-CFG-RATE the measurement interval.

The simulator (``sim/gps``) parses the same bytes, so the SOS wake path is tested end to
end through the pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Protocol

from sosbeacon.device.actuators import GpsPowerMode
from sosbeacon.hw.nmea.sentences import build_sentence
from sosbeacon.hw.ubx import ubx_frame

log = logging.getLogger(__name__)


#: bytes that wake a sleeping receiver through its UART RX line
WAKE = b"\xff" * 8


def mtk_commands(mode: GpsPowerMode, rate_hz: float) -> list[bytes]:
    if mode is GpsPowerMode.OFF:
        return [build_sentence("PMTK161,0")]
    if mode is GpsPowerMode.PERIODIC:
        # run 60 s, sleep 540 s (the low-battery duty cycle), twice that when no fix
        return [build_sentence("PMTK225,2,60000,540000,120000,1080000")]
    return [WAKE, build_sentence("PMTK225,0"), build_sentence(f"PMTK220,{round(1000 / rate_hz)}")]


def ublox_commands(mode: GpsPowerMode, rate_hz: float) -> list[bytes]:
    if mode is GpsPowerMode.OFF:
        # RXM-PMREQ v1: duration 0 (until woken), flags backup, wake on UART RX
        return [ubx_frame(0x02, 0x41, struct.pack("<B3xII I", 0, 0, 0x02, 0x08))]
    if mode is GpsPowerMode.PERIODIC:
        return [ubx_frame(0x06, 0x11, bytes([0x08, 0x01]))]  # CFG-RXM: power save mode
    meas_ms = round(1000 / rate_hz)
    return [
        WAKE,
        ubx_frame(0x06, 0x11, bytes([0x08, 0x00])),  # CFG-RXM: continuous
        ubx_frame(0x06, 0x08, struct.pack("<HHH", meas_ms, 1, 1)),  # CFG-RATE, UTC aligned
    ]


FAMILIES = {"mtk": mtk_commands, "ublox": ublox_commands}


class Sender(Protocol):
    async def send(self, data: bytes) -> None: ...

    #: set while the device is open (:class:`hw.serial_gps.NmeaSerialSource` has it)
    @property
    def connected(self) -> asyncio.Event: ...


class ReceiverPower:
    """A :class:`device.actuators.GpsPower` that writes commands to the serial source."""

    def __init__(self, sender: Sender, *, family: str = "ublox", rate_hz: float = 1.0) -> None:
        if family not in FAMILIES:
            raise ValueError(
                f"gps.power_commands must be one of {', '.join(FAMILIES)}, not {family!r}"
            )
        self._sender = sender
        self._commands = FAMILIES[family]
        self.family = family
        self.rate_hz = rate_hz
        self.mode: GpsPowerMode | None = None
        #: the mode last asked for: a request waiting for the device gives way to a later one
        self.wanted: GpsPowerMode | None = None

    async def set_mode(self, mode: GpsPowerMode) -> None:
        """Send the commands for ``mode``. If the device is not open yet (a restart
        during an SOS: the SOS wakes the receiver before the serial line is up), wait
        for it and send them then, unless another mode was asked for meanwhile."""
        self.wanted = mode
        warned = False
        while True:
            try:
                await self._send(mode)
                break
            except ConnectionError as exc:
                if not warned:
                    log.warning(
                        "GPS power mode %s not set yet (%s); it will be once the device is open",
                        mode.value,
                        exc,
                    )
                    warned = True
                await self._sender.connected.wait()
                await asyncio.sleep(0.2)  # the line has just opened: let it settle
                if self.wanted is not mode:
                    return  # superseded while waiting
        self.mode = mode
        log.info("GPS power mode: %s", mode.value)

    async def _send(self, mode: GpsPowerMode) -> None:
        for i, cmd in enumerate(self._commands(mode, self.rate_hz)):
            await self._sender.send(cmd)
            if cmd is WAKE and i == 0:
                await asyncio.sleep(0.1)  # let the receiver come out of backup
