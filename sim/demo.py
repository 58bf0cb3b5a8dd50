"""``make demo`` for what exists today, end to end without hardware.

A simulated receiver walks the bundled route on a pseudo-terminal (cold start, a tunnel,
line faults) and the daemon's real serial reader decodes it. A simulated button is held
for 3.5 s: the real gesture detector fires, the SOS controller counts down, starts the
SOS with the freshest fix, records the route, and the SOS is stopped from the "command
line". What would be uploaded is printed as it is stored. The MQTT uplink and the
contacts' side of the demo arrive with issues 4-5.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

from device.button import run_button
from device.clock import MonotonicClock
from device.gesture import GestureDetector
from device.gps import Fix
from device.records import MemoryRecorder, Record
from device.sos import Contact, SosConfig, SosController
from hw.gps_power import ReceiverPower
from hw.serial_gps import NmeaSerialSource
from sim.button import ScriptedButton, long_press
from sim.gps import Fault, FaultKind, PtyPort, ReceiverScript, Route, RouteWalker, SimReceiver
from sim.gps.runner import run_receiver
from sim.modem import SimModem

DURATION = 22.0
RATE = 2.0
SCRIPT = ReceiverScript(
    cold_start=3.0,
    outages=[(15.0, 17.0)],
    faults=[
        Fault(FaultKind.BAD_CHECKSUM, 4.5),
        Fault(FaultKind.UBX, 5.5),
        Fault(FaultKind.GLUED, 6.5),
        Fault(FaultKind.TRUNCATED, 7.5),
    ],
)

w = sys.stdout.write
T0 = time.monotonic()


def say(text: str) -> None:
    w(f"  {time.monotonic() - T0:5.1f}s  {text}\n")
    sys.stdout.flush()


def fix_line(fix: Fix) -> str:
    if not fix.has_position:
        return f"gps   no fix ({fix.mode.label})"
    return (
        f"gps   {fix.lat:9.5f} {fix.lon:10.5f}  {fix.mode.label}  {fix.speed or 0:3.1f} m/s  "
        f"sats {fix.sats}  ±{fix.accuracy} m"
    )


class ShowingRecorder(MemoryRecorder):
    """Stores in memory (the durable outbox is issue 4) and shows each record."""

    async def add(self, record: Record) -> None:
        await super().add(record)
        d = record.data
        if record.kind == "sos-start":
            fix = d["fix"]
            where = (
                f"at {fix['lat']:.5f},{fix['lon']:.5f}, fix {d['fix_age']} s old"
                if fix
                else d.get("fix_note", "")
            )
            names = ", ".join(c["name"] for c in d["contacts"])
            say(
                f">>> STORED sos-start [{record.priority.name}] session {record.session}: "
                f"{where}; for {names}"
            )
        elif record.kind == "fix":
            say(f">>> STORED route point {d['fix']['lat']:.5f},{d['fix']['lon']:.5f}")
        elif record.kind == "sos-end":
            say(f">>> STORED sos-end: {d['reason']}, {d['points']} route points")
        else:
            say(f">>> STORED {record.kind}")


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="          log: %(message)s")
    w("sosbeacon demo — hardware-free: simulated GPS on a pty, simulated button, real core\n")
    w("(the MQTT uplink and what contacts see arrive with the next issues)\n\n")
    clock = MonotonicClock()
    store = ShowingRecorder()
    with tempfile.TemporaryDirectory(prefix="sos-demo-") as tmp:
        port = PtyPort(Path(tmp) / "gps0", baudrate=38400)
        rx = SimReceiver(RouteWalker(Route.sample(), 1.4), rate_hz=RATE, script=SCRIPT)
        source = NmeaSerialSource(port=str(port.path), baudrate=38400)
        ctl = SosController(
            config=SosConfig(contacts=(Contact("Alice", "+44 7700 900123"),), min_distance=5),
            recorder=store,
            clock=clock,
            gps_power=ReceiverPower(source, family="ublox"),
            network=SimModem(clock, attach_time=2.0),
        )
        button = ScriptedButton(clock)
        w(
            f"simulated receiver on {port.path}; script: no fix for 3 s, line faults at "
            "4.5-7.5 s, tunnel 15-17 s;\nbutton held 3.5 s from 4 s (gesture at 7 s, SOS at "
            "12 s after the countdown); SOS stopped at 20 s\n\n"
        )

        async def gps() -> None:
            last = 0.0
            async for fix in source.fixes():
                await ctl.on_fix(fix)
                if time.monotonic() - last >= 1.0 or not fix.has_position:
                    say(fix_line(fix))
                    last = time.monotonic()

        async def story() -> None:
            await asyncio.sleep(4.0)
            say("button pressed and held")
            await button.press(long_press(3.5))
            say(f"button released; SOS state: {ctl.state.value}")
            await asyncio.sleep(4.6)
            say(f"SOS state: {ctl.state.value}")
            await asyncio.sleep(8.0)
            say("sosctl sos stop")
            await ctl.stop(trigger="cli")

        tasks = [
            asyncio.create_task(gps()),
            asyncio.create_task(run_button(button, GestureDetector(), ctl, clock)),
        ]
        await asyncio.wait_for(source.connected.wait(), 5)
        await asyncio.gather(run_receiver(rx, port, duration=DURATION), story())
        logging.getLogger("hw.serial_gps").setLevel(logging.ERROR)
        port.unplug()
        await asyncio.wait_for(source.disconnected.wait(), 5)
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
    st = source.stats
    kinds: dict[str, int] = {}
    for r in store.records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    w(
        f"\nGPS: {st.sentences} sentences decoded; rejected {st.bad_checksum} with a bad checksum "
        f"and {st.garbage} malformed; skipped {st.noise_bytes} bytes of binary noise; "
        f"{st.fixes} fixes.\n"
    )
    w(
        f"Stored for upload: {', '.join(f'{n} {k}' for k, n in kinds.items())}; every one "
        "expires 72 h after the SOS ended.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
