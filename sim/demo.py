"""``make demo`` for what exists today: the GPS path, end to end, without hardware.

A simulated receiver walks the bundled route on a pseudo-terminal, with a cold start, a
tunnel and injected line faults; the daemon's real serial reader decodes it. The SOS,
MQTT and emergency-contact parts of the demo arrive with issues 3-5.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

from device.gps import Fix
from hw.serial_gps import NmeaSerialSource
from sim.gps import Fault, FaultKind, PtyPort, ReceiverScript, Route, RouteWalker, SimReceiver
from sim.gps.runner import run_receiver

DURATION = 16.0
RATE = 2.0
SCRIPT = ReceiverScript(
    cold_start=3.0,
    outages=[(9.0, 11.5)],
    faults=[
        Fault(FaultKind.BAD_CHECKSUM, 4.5),
        Fault(FaultKind.UBX, 5.5),
        Fault(FaultKind.GLUED, 6.5),
        Fault(FaultKind.TRUNCATED, 7.5),
        Fault(FaultKind.ROLLOVER, 13.0),
    ],
)


def _line(fix: Fix, t: float) -> str:
    if not fix.has_position:
        return f"  {t:5.1f}s  no fix        ({fix.mode.label}; sats {fix.sats or 0})"
    note = f"  time flagged: {fix.time_issue.value}" if fix.time_issue else ""
    return (
        f"  {t:5.1f}s  {fix.lat:9.5f} {fix.lon:10.5f}  {fix.mode.label}  "
        f"{fix.speed or 0:4.1f} m/s  sats {fix.sats}  hdop {fix.hdop}  ±{fix.accuracy} m{note}"
    )


async def main() -> int:
    w = sys.stdout.write
    w("sosbeacon demo — the GPS path, hardware-free\n")
    w("(the SOS button, MQTT uplink and what contacts see arrive with the next issues)\n\n")
    with tempfile.TemporaryDirectory(prefix="sos-demo-") as tmp:
        port = PtyPort(Path(tmp) / "gps0", baudrate=38400)
        rx = SimReceiver(RouteWalker(Route.sample(), 1.4), rate_hz=RATE, script=SCRIPT)
        source = NmeaSerialSource(port=str(port.path), baudrate=38400)
        w(f"simulated receiver on {port.path}\n")
        w(
            "script: no fix for 3 s (cold start), tunnel 9-11.5 s, line faults at 4.5-7.5 s, "
            "a week-rollover date at 13 s\n\n"
        )
        t0 = time.monotonic()

        async def show() -> None:
            async for fix in source.fixes():
                w(_line(fix, time.monotonic() - t0) + "\n")
                sys.stdout.flush()

        reader = asyncio.create_task(show())
        await asyncio.wait_for(source.connected.wait(), 5)
        await run_receiver(rx, port, duration=DURATION)
        # End of the demo, not a fault: keep the reader's "device went away" warning quiet.
        logging.getLogger("hw.serial_gps").setLevel(logging.ERROR)
        port.unplug()  # the reader decodes what is left, then sees the line go
        await asyncio.wait_for(source.disconnected.wait(), 5)
        reader.cancel()
    st = source.stats
    w(
        f"\n{st.sentences} sentences decoded; rejected: {st.bad_checksum} with a bad "
        f"checksum, {st.garbage} malformed; skipped: {st.noise_bytes} bytes of binary noise.\n"
        f"{st.epochs} epochs, {st.fixes} with a position.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
