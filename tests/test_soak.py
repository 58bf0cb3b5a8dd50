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
