"""A minimal device process: live fixes at a fixed rate into the real outbox and uplink.

The target of the SIGKILL campaign (``tests/test_kill.py``, ``make soak``): it prints
``stored <seq>`` after each commit (flushed), so the test knows what the device
acknowledged as stored when it was killed. With ``--rate 0`` it only drains the outbox
and exits once it is empty.

    python -m sosbeacon.sim.recorder --outbox o.db --port 1883 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from sosbeacon.device.clock import MonotonicClock
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Outbox
from sosbeacon.device.records import Priority, Record, RecordKind
from sosbeacon.device.uplink import Uplink, UplinkConfig


def say(line: str) -> None:
    """One line for the test that drives us, flushed at once (we may be killed next)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    clock = MonotonicClock()
    async with await Outbox.open(Path(args.outbox), clock=clock) as box:
        uplink = Uplink(
            config=UplinkConfig(device_id=args.device, backoff_min=0.2, backoff_max=1.0),
            broker=BrokerConfig(host=args.host, port=args.port),
            outbox=box,
            clock=clock,
        )
        task = asyncio.create_task(uplink.run())
        say("ready")
        try:
            if args.rate <= 0:
                await uplink.drained()
                say("drained")
                return
            i = 0
            while True:
                t = clock.now()
                rec = Record(
                    kind=RecordKind.FIX,
                    time=t,
                    data={
                        "fix": {
                            "t": t.isoformat(),
                            "lat": 55.944 + i * 1e-5,
                            "lon": -3.161,
                            "acc": 5.0,
                        }
                    },
                    priority=Priority.LIVE,
                    session=args.session,
                )
                stored = await box.store(rec)
                say(f"stored {stored.seq}")
                i += 1
                await asyncio.sleep(1 / args.rate)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- driving it from outside: the SIGKILL campaign -------------------------------------

REPO = Path(__file__).resolve().parents[1]


async def spawn(outbox: Path, port: int, rate: float) -> asyncio.subprocess.Process:
    """This module as its own process, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sosbeacon.sim.recorder",
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
    """Collect the seqs the process says it committed, until it dies."""
    assert proc.stdout is not None
    async for line in proc.stdout:
        word, _, value = line.decode().partition(" ")
        if word == "stored":
            stored.append(int(value))


async def sigkill_campaign(
    outbox: Path,
    port: int,
    kills: int,
    *,
    rng: random.Random,
    progress: Callable[[int, int], None] | None = None,
    drain_within: float = 60.0,
) -> tuple[list[int], bytes]:
    """Start the recorder at 10 Hz and SIGKILL it at a random moment, ``kills`` times;
    then run it once more to drain what is left. Returns the seqs it said it stored, and
    the output of the final run (``drained`` when the outbox emptied)."""
    stored: list[int] = []
    for k in range(kills):
        proc = await spawn(outbox, port, rate=10)
        reader = asyncio.create_task(read_stored(proc, stored))
        await asyncio.sleep(rng.uniform(0.3, 1.2))  # a random moment, after start-up
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if progress is not None:
            progress(k + 1, len(stored))
    proc = await spawn(outbox, port, rate=0)
    out, _ = await asyncio.wait_for(proc.communicate(), drain_within)
    return stored, out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sosbeacon.sim.recorder", description=__doc__)
    p.add_argument("--outbox", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="dev1")
    p.add_argument("--session", default="kill-test")
    p.add_argument("--rate", type=float, default=10.0, help="fixes per second; 0: drain and exit")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
