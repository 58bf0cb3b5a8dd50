"""The real daemon as a process of its own (``sosd run --sim``), for drills, fault
campaigns and tests that kill it: started, waited for until its control socket answers,
stopped cleanly or killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

from sosbeacon.device.cli import sosd_command
from sosbeacon.device.control import NotRunning, request

REPO = Path(__file__).resolve().parents[1]


async def start_sosd(
    conf: Path, sock: Path, log: Path, *extra: str, within: float = 30.0
) -> asyncio.subprocess.Process:
    """``sosd run --sim --config CONF EXTRA...``, its output appended to ``log``; returns
    once it answers on ``sock``. Raises RuntimeError if it exits or stays silent."""
    with log.open("a") as out:
        proc = await asyncio.create_subprocess_exec(
            *sosd_command("run", "--sim", "--config", str(conf), *extra),
            stdout=out,
            stderr=out,
            cwd=REPO,
        )
    for _ in range(round(within / 0.05)):
        # a process of its own: its socket answering is the only sign it is ready
        if proc.returncode is not None:
            raise RuntimeError(f"sosd exited at start; see {log}")
        with contextlib.suppress(NotRunning, OSError, json.JSONDecodeError):
            if (await request(sock, {"cmd": "status"}, within=2))["ok"]:
                return proc
        await asyncio.sleep(0.05)
    proc.kill()
    await proc.wait()
    raise RuntimeError(f"sosd did not answer within {within:.0f} s; see {log}")


async def stop_sosd(proc: asyncio.subprocess.Process, *, within: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it does not stop in time; its exit code."""
    if proc.returncode is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def kill_sosd(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL: whatever it held in memory is gone, as in a power cut of the daemon."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def outbox_fault(sock: Path, *, within: float = 60.0) -> bool:
    """Until the daemon's status shows a storage fault (its outbox found the disk full,
    say); False if it did not within ``within`` seconds."""
    for _ in range(round(within / 0.1)):
        if (await request(sock, {"cmd": "status"}))["outbox"]["fault"]:
            return True
        await asyncio.sleep(0.1)
    return False
