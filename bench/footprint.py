"""Footprint of ``sosd run`` as it runs on a board: start-up time to READY (as systemd
sees it, through NOTIFY_SOCKET), CPU, wake-ups and memory while idle with the GPS at
1 Hz and during an active SOS, beside the floor measured in the same run.

The daemon runs the real backend (``hw``), not ``--sim``: NMEA from a serial device, the
battery from a sysfs-shaped ``power_supply`` tree, no button (``button.enabled =
false``), no modem, no NetworkManager. The simulated receiver runs in a process of its
own (``sos-sim gps run``) on a pseudo-terminal, so none of its cost is in the daemon's
figures.

Every process runs from byte-compiled modules, as on a board where the package was
installed (pip and Debian compile what they install): ``PYTHONDONTWRITEBYTECODE`` is
removed from the children's environment, so the first start-up compiles our sources
and every later one, and the measured daemon, loads them compiled. Compiling at each
start would cost the daemon about 2 MB of peak RSS and a tenth of a second.

The floor (``bench/floor.py``) reads a second simulated receiver at 1 Hz with
pyserial-asyncio-fast and does nothing else. Both are measured over the same window:

* CPU: utime + stime from ``/proc/PID/stat``, in % of one core;
* wake-ups: the context switches (voluntary and not) of all the process's threads, from
  ``/proc/PID/task/*/status``, per second;
* peak RSS (``VmHWM``) and USS (private pages, ``/proc/PID/smaps_rollup``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sosbeacon.device.cli import sosd_command
from sosbeacon.device.control import request
from sosbeacon.sim.battery import BatteryModel, SysfsWriter
from sosbeacon.sim.broker import Mosquitto
from sosbeacon.sim.fleet import cpu_seconds, rss_kib

REPO = Path(__file__).resolve().parents[1]
BAUD = 9600


def _switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far (threads that ended are not
    counted: the daemon's threads live as long as it does)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def _uss_mb(pid: int) -> float:
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return kb / 1024


@dataclass
class Figures:
    cpu_pct: float
    wakeups_s: float
    peak_rss_mb: float
    uss_mb: float


class _Meter:
    """One process's counters at the start of a window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(pid)
        self.sw0 = _switches(pid)

    def read(self) -> Figures:
        dt = time.monotonic() - self.t0
        return Figures(
            cpu_pct=(cpu_seconds(self.pid) - self.cpu0) / dt * 100,
            wakeups_s=(_switches(self.pid) - self.sw0) / dt,
            peak_rss_mb=rss_kib(self.pid, "VmHWM") / 1024,
            uss_mb=_uss_mb(self.pid),
        )


async def _window(pids: list[int], seconds: float) -> list[Figures]:
    meters = [_Meter(p) for p in pids]
    await asyncio.sleep(seconds)
    return [m.read() for m in meters]


@asynccontextmanager
async def _process(
    argv: list[str], log: Path, **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    deployed = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with log.open("a") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, stdout=out, stderr=out, env={**deployed, **env}
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _appears(path: Path, within: float = 20.0) -> None:
    for _ in range(round(within / 0.05)):
        if os.path.exists(path):  # noqa: ASYNC240 (a poll of a few ms, once)
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{path} did not appear within {within:.0f} s")


def _receiver(link: Path) -> list[str]:
    return [sys.executable, "-m", "sosbeacon.sim.cli", "gps", "run", "--link", str(link),
            "--baud", str(BAUD)]  # fmt: skip


def _config(tmp: Path, gps: Path, power: Path) -> Path:
    conf = tmp / "sosbeacon.toml"
    conf.write_text(
        "\n".join(
            [
                "[device]",
                'id = "bench-beacon"',
                f'data_dir = "{tmp / "data"}"',
                "[sos]",
                "countdown = 0.0",
                "[[sos.contacts]]",
                'name = "Alice"',
                'reach = "+44 7700 900123"',
                "[gps]",
                f'device = "{gps}"',
                f"baud = {BAUD}",
                'power_commands = "none"',
                "[button]",
                "enabled = false",
                "[battery]",
                f'sysfs_root = "{power}"',
                "[network]",
                "monitor = false",
                "[modem]",
                'backend = "none"',
                "",
            ]
        )
    )
    conf.chmod(0o600)
    return conf


async def _ready(notify: socket.socket, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    while True:
        msg = (await asyncio.wait_for(loop.sock_recv(notify, 4096), within)).decode()
        if "READY=1" in msg:
            return


def _sosd(conf: Path, broker: int) -> list[str]:
    return sosd_command(
        "run", "--config", str(conf), "--broker", f"mqtt://127.0.0.1:{broker}",
        "--log-level", "warning",
    )  # fmt: skip


async def _startups(tmp: Path, conf: Path, broker: int, rounds: int) -> list[float]:
    """Seconds from exec to READY=1, ``rounds`` times (the outbox exists after the
    first: a start-up as after a reboot)."""
    times = []
    for i in range(rounds):
        path = tmp / f"notify-{i}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(path))
            notify.setblocking(False)
            t0 = time.monotonic()
            async with _process(_sosd(conf, broker), tmp / "sosd.log", NOTIFY_SOCKET=str(path)):
                await _ready(notify)
                times.append(time.monotonic() - t0)
    return times


def _row(ours: float, floor: float, digits: int = 2) -> tuple[float, float, str]:
    """Ours, the floor's, and their ratio."""
    return (round(ours, digits), round(floor, digits), f"{ours / floor:.2f}x" if floor else "-")


async def _measure(tmp: Path, seconds: float) -> dict[str, Any]:
    power = tmp / "power_supply"
    SysfsWriter(power).write(BatteryModel(soc=85.0))
    with Mosquitto(tmp / "broker") as broker:
        async with (
            _process(_receiver(tmp / "gps-daemon"), tmp / "receiver-1.log"),
            _process(_receiver(tmp / "gps-floor"), tmp / "receiver-2.log"),
        ):
            await _appears(tmp / "gps-daemon")
            await _appears(tmp / "gps-floor")
            conf = _config(tmp, tmp / "gps-daemon", power)
            startups = await _startups(tmp, conf, broker.port, rounds=5)
            floor_argv = [sys.executable, "-m", "bench.floor", str(tmp / "gps-floor"), str(BAUD)]
            async with (
                _process(_sosd(conf, broker.port), tmp / "sosd.log") as daemon,
                _process(floor_argv, tmp / "floor.log") as floor,
            ):
                sock = tmp / "data" / "sosd.sock"
                await _appears(sock)
                await asyncio.sleep(10)  # past the first fix and the first report
                idle, floor_idle = await _window([daemon.pid, floor.pid], seconds)
                await request(sock, {"cmd": "sos-start", "now": True})
                await asyncio.sleep(2)
                sos, floor_sos = await _window([daemon.pid, floor.pid], seconds)
                for proc, name in ((daemon, "sosd"), (floor, "the floor")):
                    if proc.returncode is not None:
                        raise RuntimeError(f"{name} exited during the bench; see {tmp}")
    w = f"{seconds:.0f} s"
    return {
        "start-up to READY=1, median of 5, s (target 0.3)": round(statistics.median(startups), 3),
        f"idle, GPS at 1 Hz, {w}: CPU % of a core, sosd / floor / ratio (target 2x)": _row(
            idle.cpu_pct, floor_idle.cpu_pct, 3
        ),
        "idle: wake-ups per s, sosd / floor / ratio (target floor + 2)": _row(
            idle.wakeups_s, floor_idle.wakeups_s
        ),
        "idle: peak RSS MB, sosd / floor (target 25)": _row(
            idle.peak_rss_mb, floor_idle.peak_rss_mb, 1
        )[:2],
        "idle: USS MB, sosd / floor": _row(idle.uss_mb, floor_idle.uss_mb, 1)[:2],
        f"SOS active, {w}: CPU % of a core, sosd / floor / ratio": _row(
            sos.cpu_pct, floor_sos.cpu_pct, 3
        ),
        "SOS active: wake-ups per s, sosd / floor / ratio": _row(
            sos.wakeups_s, floor_sos.wakeups_s
        ),
        "SOS active: peak RSS MB / USS MB": (round(sos.peak_rss_mb, 1), round(sos.uss_mb, 1)),
    }


def run(seconds: float = 60.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sos-bench-") as tmp:
        return asyncio.run(_measure(Path(tmp), seconds))


if __name__ == "__main__":
    for key, value in run(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0).items():
        print(f"{key}: {value}")
