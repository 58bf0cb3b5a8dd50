"""SIGKILL at random moments while recording at 10 Hz: every record the device said it
stored reaches the receiver (no seq gap), however the kills fell."""

from __future__ import annotations

import os
import random
from pathlib import Path

from sosbeacon.sim.recorder import sigkill_campaign
from tests.mqtt_env import rig

KILLS = int(os.environ.get("SOS_KILLS", "20"))


async def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SOS_KILL_SEED", "4")))
    outbox = tmp_path / "device" / "outbox.db"
    async with rig(tmp_path, start=False) as r:
        stored, out = await sigkill_campaign(outbox, r.broker.port, KILLS, rng=rng)
        assert len(stored) >= KILLS, "the recorder never got to store anything"
        assert b"drained" in out  # the last run emptied the outbox
        led = await r.receiver.wait_for_seqs(max(stored))
        assert led.missing() == []
        assert set(stored) <= led.seen  # everything it said it stored arrived
        print(
            f"{KILLS} SIGKILLs: {len(stored)} records stored, {led.last} seqs received, "
            f"{led.duplicates} duplicates, 0 missing"
        )
