"""The real-hardware backend of ``sosd run``: the drivers in ``hw/``, chosen and set up
from the configuration."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from sosbeacon.device.actuators import GpsPower, Indicator, LinkMonitor, NetworkLink
from sosbeacon.device.battery import BatterySource
from sosbeacon.device.button import ButtonSource
from sosbeacon.device.clock import Clock
from sosbeacon.device.config import BatteryKind, Config, GpsKind, ModemKind
from sosbeacon.device.gps import GpsSource
from sosbeacon.device.parts import Parts
from sosbeacon.hw.microphone import AlsaMicrophone

if TYPE_CHECKING:
    from sosbeacon.hw.modem.link import ModemSms
    from sosbeacon.hw.modem.mm import MmSms

log = logging.getLogger(__name__)


async def build(config: Config, clock: Clock, stack: AsyncExitStack) -> Parts:
    """The parts the configuration names. Each driver is imported only when it is used:
    a beacon with no modem loads no modem code, one with a serial GPS no gpsd client (a
    Pi Zero has 512 MB, and every module stays resident)."""
    g = config.gps
    gps: GpsSource
    power: GpsPower | None = None
    if g.source is GpsKind.SERIAL:
        from sosbeacon.hw.serial_gps import NmeaSerialSource

        serial = NmeaSerialSource(
            port=g.device, baudrate=g.baud, date_floor=date.fromisoformat(g.date_floor), clock=clock
        )
        gps = serial
        if g.power_commands != "none":
            from sosbeacon.hw.gps_power import ReceiverPower

            power = ReceiverPower(serial, family=g.power_commands, rate_hz=g.rate_hz)
    else:
        from sosbeacon.hw.gpsd_client import GpsdSource

        host, _, port = g.gpsd.rpartition(":")
        gps = GpsdSource(host=host or "127.0.0.1", port=int(port or 2947), clock=clock)

    button: ButtonSource | None = None
    indicator: Indicator | None = None
    b = config.button
    if b.enabled:
        from sosbeacon.hw.gpio import GpioButton, GpioIndicator  # needs the gpiod bindings

        button = GpioButton(
            chip=b.chip,
            line=b.line,
            bias=b.bias,
            active_low=b.active_low,
            kernel_debounce=b.kernel_debounce,
        )
        gpio_out = GpioIndicator(chip=b.chip, led=b.led or None, buzzer=b.buzzer or None)
        stack.callback(gpio_out.close)
        indicator = gpio_out

    battery: BatterySource | None = None
    bs = config.battery
    if bs.backend is not BatteryKind.NONE:
        from sosbeacon.hw.battery import Max17048, SysfsBattery
    if bs.backend is BatteryKind.SYSFS:
        battery = SysfsBattery(root=bs.sysfs_root, name=bs.name or None)
    elif bs.backend is BatteryKind.MAX17048:
        battery = Max17048(bus=bs.i2c_bus, address=bs.i2c_address)

    network: NetworkLink | None = None
    if config.network.connection or config.network.monitor:
        from sosbeacon.hw.network import NmcliLink, NmcliMonitor
    if config.network.connection:
        network = NmcliLink(connection=config.network.connection)
    monitor: LinkMonitor | None = None
    if config.network.monitor:
        exe = shutil.which("nmcli")
        if exe is None:
            log.info(
                "nmcli not found: the uplink learns that the network is back from its own "
                "retries (network.monitor = false silences this)"
            )
        else:
            monitor = NmcliMonitor(nmcli=exe)
    sms: ModemSms | MmSms | None = None
    background: list[Callable[[], Awaitable[None]]] = []
    m = config.modem
    pin = ""
    if m.pin_file and m.kind is not ModemKind.NONE:  # in its file and in memory: never logged
        pin = (await asyncio.to_thread(Path(m.pin_file).read_text)).strip()
    if m.kind is ModemKind.AT:
        from sosbeacon.hw.modem.driver import AtModem
        from sosbeacon.hw.modem.link import ModemSms

        sms = ModemSms(AtModem(m.port, baudrate=m.baud, pin=pin))
    elif m.kind is ModemKind.MODEMMANAGER:
        from sosbeacon.hw.modem.mm import MmSms  # dbus-fast

        sms = MmSms(bus_address=m.dbus, imei=m.mm_modem, pin=pin)
    if sms is not None:
        background.append(sms.run)
    return Parts(
        gps=gps,
        button=button,
        battery=battery,
        indicator=indicator,
        gps_power=power,
        network=network,
        link_monitor=monitor,
        sms=sms,
        # nothing is recorded unless privacy.share_voice (which a reload may change)
        microphone=AlsaMicrophone(config.voice.device),
        background=background,
    )
