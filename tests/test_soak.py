"""`make soak` must keep working: its week-offline campaign, scaled down, run here (the
other campaigns repeat fault tests that run in full elsewhere in `make test`)."""

from __future__ import annotations

from pathlib import Path

from bench.soak import week_offline
from tests.mqtt_env import need_mosquitto


async def test_offline_under_capacity_limits_thins_routine_records_only(tmp_path: Path) -> None:
    need_mosquitto()
    got = await week_offline(tmp_path, 2 * 3600 + 1200)  # two hours: one with an SOS
    assert got["lost"] == 0
    assert got["SOS records"] == 3600 and got["SOS records evicted"] == 0
    assert got["routine records thinned"] > 0  # the cap forced thinning, and it was said


async def test_the_storage_campaign_scaled_down(tmp_path: Path) -> None:
    """Two cycles of `make soak`'s storage campaign: a stop on a full disk and a kill,
    then a kill mid-SOS on a full disk; each followed by a restart with room again."""
    from bench.soak import storage
    from sosbeacon.sim.smalldisk import can_mount
    from tests.conftest import require

    need_mosquitto()
    require("root (to mount a small tmpfs)", can_mount(), "run the tests as root")
    got = await storage(tmp_path, 2)
    assert got["lost"] == 0
    assert got["locations after a stop"] == 0
    assert got["stopped SOS back after a restart"] == 0
    assert got["SOS dropped by a crash"] == 0
    assert got["healthy files moved aside"] == 0
    assert got["cycles where the disk never filled"] == 0
