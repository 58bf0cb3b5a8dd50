"""SIGKILL at random moments while recording at 10 Hz: every record the device said it
stored reaches the receiver (no seq gap), however the kills fell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.mqtt_env import rig

KILLS = int(os.environ.get("SOS_KILLS", "20"))


async def spawn(outbox: Path, port: int, rate: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim.recorder",
        "--outbox",
        str(outbox),
        "--port",
        str(port),
        "--rate",
        str(rate),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_stored(proc: asyncio.subprocess.Process, stored: list[int]) -> None:
    assert proc.stdout is not None
    async for line in proc.stdout:
        word, _, value = line.decode().partition(" ")
        if word == "stored":
            stored.append(int(value))


async def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SOS_KILL_SEED", "4")))
    outbox = tmp_path / "device" / "outbox.db"
    stored: list[int] = []
    async with rig(tmp_path, start=False) as r:
        for _ in range(KILLS):
            proc = await spawn(outbox, r.broker.port, rate=10)
            reader = asyncio.create_task(read_stored(proc, stored))
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # a random moment, after start-up
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert len(stored) >= KILLS, "the recorder never got to store anything"
        # one last run that only drains what is left
        proc = await spawn(outbox, r.broker.port, rate=0)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert b"drained" in out
        led = await r.receiver.wait_for_seqs(max(stored))
        assert led.missing() == []
        assert set(stored) <= led.seen  # everything it said it stored arrived
        print(
            f"{KILLS} SIGKILLs: {len(stored)} records stored, {led.last} seqs received, "
            f"{led.duplicates} duplicates, 0 missing"
        )
