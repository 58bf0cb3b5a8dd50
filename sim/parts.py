"""The simulator backend of ``sosd run --sim``: every part simulated, through the real
code paths — NMEA on a pseudo-terminal read by the real serial reader, a battery cell
written as a sysfs ``power_supply`` tree read by the real sysfs reader, a scripted
button feeding the real gesture detector, a modem that comes up when asked.

``sosctl sim press long|multi|short``, ``sosctl sim battery PCT|plug|unplug`` and
``sosctl sim gps lost|back`` drive it while it runs; in-process users (the demo, drills)
reach the same objects through :attr:`Parts.handles`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from sosbeacon.device.actuators import Cue
from sosbeacon.device.clock import Clock
from sosbeacon.device.config import Config, ModemKind
from sosbeacon.device.parts import Parts
from sosbeacon.hw.battery import SysfsBattery
from sosbeacon.hw.gps_power import ReceiverPower
from sosbeacon.hw.modem.driver import AtModem
from sosbeacon.hw.modem.link import ModemSms
from sosbeacon.hw.serial_gps import NmeaSerialSource
from sosbeacon.sim.atmodem import SimAtModem
from sosbeacon.sim.backend import SimSettings
from sosbeacon.sim.battery import BatteryModel, SysfsWriter
from sosbeacon.sim.button import ScriptedButton, long_press, multi_press
from sosbeacon.sim.gps import PtyPort, ReceiverScript, Route, RouteWalker, SimReceiver
from sosbeacon.sim.gps.runner import run_receiver
from sosbeacon.sim.microphone import SimMicrophone
from sosbeacon.sim.modem import SimModem

log = logging.getLogger("sim")
BAUD = 115200
PATTERNS = {
    "long": long_press(3.5),
    "multi": multi_press(5),
    "short": [(0.2, 0.0)],  # a single short press: never a gesture
}


@dataclass
class LogIndicator:
    """The LED and buzzer, as log lines (and a list, for tests and the demo)."""

    cues: list[Cue] = field(default_factory=list)

    async def cue(self, cue: Cue) -> None:
        self.cues.append(cue)
        log.info("indicator: %s", cue.value)


@dataclass
class SimWorld:
    """The simulated hardware of one device, for whoever drives it."""

    receiver: SimReceiver
    port: PtyPort
    button: ScriptedButton
    battery: BatteryModel
    sysfs: SysfsWriter
    modem: SimModem
    indicator: LogIndicator
    clock: Clock
    #: the modem's AT port (SMS), set once built
    at_modem: SimAtModem | None = None
    epochs: int = 0
    #: simulated battery seconds per real second (a drill can drain a cell quickly)
    battery_speed: float = 1.0

    @property
    def gps_time(self) -> float:
        """Seconds since the simulated receiver started (its script's time base)."""
        return self.epochs * self.receiver.period

    def lose_gps(self) -> None:
        self.receiver.script.outages.append((self.gps_time, math.inf))

    def restore_gps(self) -> None:
        out = self.receiver.script.outages
        self.receiver.script.outages = [(a, self.gps_time if b == math.inf else b) for a, b in out]

    def set_battery(self, value: str) -> None:
        if value == "plug":
            self.battery.plugged = True
        elif value == "unplug":
            self.battery.plugged = False
        else:
            self.battery.soc = max(0.0, min(100.0, float(value)))
        self.sysfs.write(self.battery)

    async def run_battery(self) -> None:
        while True:
            await self.clock.sleep(5.0)
            self.battery.step(5.0 * self.battery_speed)
            self.sysfs.write(self.battery)


async def build(config: Config, clock: Clock, stack: AsyncExitStack) -> Parts:
    base = config.device.data_dir / "sim"
    base.mkdir(parents=True, exist_ok=True)
    port = PtyPort(base / "gps0", baudrate=BAUD)
    stack.callback(port.close)
    world_cfg = config.sections.get("sim") or SimSettings()
    receiver = SimReceiver(
        RouteWalker(Route.sample(), world_cfg.walk_speed),
        rate_hz=1.0,
        script=ReceiverScript(cold_start=world_cfg.cold_start),
    )
    gps = NmeaSerialSource(port=str(port.path), baudrate=BAUD, clock=clock)
    cell = BatteryModel(soc=world_cfg.battery_pct)
    sysfs = SysfsWriter(base / "power_supply")
    sysfs.write(cell)
    world = SimWorld(
        receiver=receiver,
        port=port,
        button=ScriptedButton(clock),
        battery=cell,
        sysfs=sysfs,
        modem=SimModem(clock, attach_time=1.0, up=True),
        indicator=LogIndicator(),
        clock=clock,
    )

    def count(_: object) -> None:
        world.epochs += 1

    async def run_gps() -> None:
        await run_receiver(receiver, port, on_epoch=count)

    async def press(req: dict[str, Any]) -> dict[str, Any]:
        value = str(req.get("value", ""))
        if value not in PATTERNS:
            raise ValueError(f"press: one of {', '.join(PATTERNS)}")
        asyncio.get_running_loop().create_task(world.button.press(PATTERNS[value]))
        return {"pressed": value}

    async def battery(req: dict[str, Any]) -> dict[str, Any]:
        world.set_battery(str(req.get("value", "")))
        return {"soc": round(world.battery.soc, 1), "plugged": world.battery.plugged}

    async def gps_control(req: dict[str, Any]) -> dict[str, Any]:
        value = req.get("value")
        if value == "lost":
            world.lose_gps()
        elif value == "back":
            world.restore_gps()
        else:
            raise ValueError("gps: lost or back")
        return {"gps": value}

    # the cellular modem's AT port on a pty, behind the real driver (hw/modem), unless the
    # configuration has no modem (the fleet: a pty and five descriptors fewer per device)
    sms: ModemSms | None = None
    if config.modem.backend is not ModemKind.NONE:
        at_modem = SimAtModem(base / "modem0")
        at_modem.start()
        stack.push_async_callback(at_modem.close)
        sms = ModemSms(AtModem(str(at_modem.path)), retry=1.0)
        world.at_modem = at_modem

    def modem() -> SimAtModem:
        if world.at_modem is None:
            raise ValueError('no modem: modem.backend = "none"')
        return world.at_modem

    async def sms_from(req: dict[str, Any]) -> dict[str, Any]:
        number, _, text = str(req.get("value", "")).strip().partition(" ")
        if not number or not text:
            raise ValueError("sms-from: NUMBER TEXT")
        await modem().sms_from(number, text)
        return {"from": number, "text": text}

    async def sms_log(req: dict[str, Any]) -> dict[str, Any]:
        return {"sent": [{"to": s.to, "text": s.text, "part": s.concat} for s in modem().sent]}

    async def network(req: dict[str, Any]) -> dict[str, Any]:
        value = req.get("value")
        if value not in ("down", "up"):
            raise ValueError("network: down or up")
        world.modem.set_coverage(value == "up")
        return {"network": value}

    log.info("simulated GPS on %s, battery under %s", port.path, sysfs.root)
    return Parts(
        gps=gps,
        button=world.button,
        battery=SysfsBattery(root=sysfs.root),
        indicator=world.indicator,
        gps_power=ReceiverPower(gps, family="ublox"),
        network=world.modem,
        link_monitor=world.modem,
        sms=sms,
        microphone=SimMicrophone(base / "mic"),
        controls={
            "sim.press": press,
            "sim.battery": battery,
            "sim.gps": gps_control,
            "sim.network": network,
            "sim.sms-from": sms_from,
            "sim.sms-log": sms_log,
        },
        background=[run_gps, world.run_battery, *([sms.run] if sms else [])],
        handles={"world": world},
    )
