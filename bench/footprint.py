"""Footprint of ``sosd run --sim``: start-up time to READY (as systemd sees it, through
NOTIFY_SOCKET), resident memory and CPU while idle with the GPS at 1 Hz and during an
active SOS, each over a window of ``seconds``.

The simulated hardware (receiver, battery cell) runs inside the same process in
``--sim``, so these figures include the simulator's own work: an upper bound for the
daemon on real hardware.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from sosbeacon.device.cli import sosd_command
from sosbeacon.device.control import request
from sosbeacon.sim.broker import Mosquitto

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _window(pid: int, seconds: float) -> tuple[float, float]:
    """(peak RSS in MB, CPU in % of one core) over ``seconds``."""
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    peak = 0.0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1.0)
        peak = max(peak, _rss_mb(pid))
    cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    return peak, cpu


async def _measure(tmp: Path, seconds: float) -> dict[str, Any]:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.setblocking(False)
    loop = asyncio.get_running_loop()
    with Mosquitto(tmp / "broker") as broker:
        data = tmp / "data"
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *sosd_command(
                "run",
                "--sim",
                "--data-dir",
                str(data),
                "--broker",
                f"mqtt://127.0.0.1:{broker.port}",
                "--log-level",
                "warning",
            ),
            cwd=REPO,
            env={**os.environ, "NOTIFY_SOCKET": str(tmp / "notify")},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            while True:
                msg = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 30)).decode()
                if "READY=1" in msg:
                    break
            startup = time.monotonic() - t0
            await asyncio.sleep(5)  # past the first fix
            idle_rss, idle_cpu = await _window(proc.pid, seconds)
            await request(data / "sosd.sock", {"cmd": "sos-start", "now": True})
            sos_rss, sos_cpu = await _window(proc.pid, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            notify.close()
    return {
        "start-up to READY=1, s (target 1.5)": round(startup, 2),
        f"idle, GPS at 1 Hz, {seconds:.0f} s: peak RSS MB (target 40)": round(idle_rss, 1),
        f"idle, GPS at 1 Hz, {seconds:.0f} s: CPU % of one core (target 1)": round(idle_cpu, 2),
        f"SOS active, {seconds:.0f} s: peak RSS MB": round(sos_rss, 1),
        f"SOS active, {seconds:.0f} s: CPU % of one core": round(sos_cpu, 2),
    }


def run(seconds: float = 60.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sos-bench-") as tmp:
        return asyncio.run(_measure(Path(tmp), seconds))
