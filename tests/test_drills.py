"""Drills: shipped scenarios are valid; two of them run against the real daemon here (the
rest, longer, are for `sos-sim drill` and `make soak`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sosbeacon.sim.drill import Drill, Scenario, ScenarioError, list_scenarios
from tests.mqtt_env import need_mosquitto


def test_every_shipped_scenario_loads_and_expects_no_loss() -> None:
    names = {p.stem for p in list_scenarios()}
    assert {"tunnel", "dead-network", "low-battery", "false-trigger", "drill-interrupted"} <= names
    for path in list_scenarios():
        sc = Scenario.load(path)
        assert sc.steps and sc.expect.get("records_lost") == 0, path


def test_a_broken_scenario_says_what_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[step]]\nat = -1\ndo = "press"\n[[step]]\nat = 1\ndo = "fly"\n[expect]\nx = 1\n'
    )
    with pytest.raises(ScenarioError) as err:
        Scenario.load(bad)
    msg = str(err.value)
    assert "step[0].at" in msg and "'fly' is not one of" in msg and "expect.x: unknown" in msg


@pytest.mark.parametrize("name", ["false-trigger", "crash", "no-data", "data-returns"])
async def test_drill(name: str, tmp_path: Path) -> None:
    need_mosquitto()
    scenario = Scenario.load(next(p for p in list_scenarios() if p.stem == name))
    report = await Drill(scenario, tmp_path).run()
    assert report.passed, report.text() + "\n".join(report.events)
    assert report.figures["records lost"] == 0
    if name == "crash":
        assert sum("resumed after the restart" in e for e in report.events) == 2
        # the relay got the SOS through the kills and the broker restart, and e-mailed
        assert report.figures["relay stored the SOS (s after the gesture)"] is not None
        assert report.figures["contact notified by e-mail (s after the gesture)"] is not None
    if name in ("no-data", "data-returns"):
        # texted with no data at all: the alert, the thanks for her OK, the end
        assert report.figures["texts sent"] == 3
        assert any("texted +447700900123" in e for e in report.events)
        assert any("acknowledged by Alice (SMS)" in e for e in report.events)
    else:
        assert report.figures["texts sent"] == 0  # confirmed, or no SOS: nothing by SMS
    if name == "data-returns":
        # the backlog reached the relay: Alice got her link, and no second alarm
        subjects = [e for e in report.events if "e-mail to alice@example.org" in e]
        assert any("live route (you have acknowledged)" in e for e in subjects), subjects
        assert any("SOS ended" in e for e in subjects), subjects
        assert report.figures["relay alerts to Alice after her OK by SMS"] == 0


async def test_a_small_fleet_loses_nothing(tmp_path: Path) -> None:
    from sosbeacon.sim.fleet import run_fleet

    need_mosquitto()
    lines: list[str] = []
    code = await run_fleet(3, broker_url=None, duration=3, workdir=tmp_path, out=lines.append)
    assert code == 0, lines
    assert "3 outboxes" in lines[-1] and " 0 lost" in lines[-1]
    per_second = [ln for ln in lines if re.match(r"^\s+\d+\s+\d+\s", ln)]
    assert len(per_second) == 3  # one line per second of the run
