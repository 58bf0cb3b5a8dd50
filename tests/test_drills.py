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


async def test_a_small_fleet_through_the_relay_loses_nothing(tmp_path: Path) -> None:
    """Three devices, an SOS every second on the next one, each contact's page watched:
    every outbox complete at the relay, and every latency measured."""
    from sosbeacon.sim.fleet import FleetSpec, run_fleet

    need_mosquitto()
    lines: list[str] = []
    spec = FleetSpec(devices=3, sos_per_minute=60, sos_seconds=3, duration=5)
    summary = await run_fleet(spec, workdir=tmp_path, out=lines.append)
    assert summary.passed, lines
    assert summary.outboxes == 3 and summary.records_lost == 0
    assert "0 records lost" in lines[-1]
    per_second = [ln for ln in lines if re.match(r"^\s+\d+\s+\d+\s", ln)]
    assert len(per_second) == 5  # one line per second of the run
    assert summary.sos_started >= 5  # one a second, the warm-up's not counted
    for figure in (summary.gesture_to_stored_ms, summary.gesture_to_notified_ms,
                   summary.gesture_to_page_ms, summary.fix_to_page_ms):  # fmt: skip
        assert figure["n"] >= 3 and 0 < figure["p50"] <= figure["p99"] < 10_000, figure
    assert summary.fixes_stored > 0 and summary.relay_cpu_s > 0 and summary.db_bytes > 0


async def test_a_fleet_rides_out_its_relay_paused_for_a_minute(tmp_path: Path) -> None:
    """The relay stopped (SIGSTOP) for a minute under load, the broker's queue bounded as
    docs/scaling.md sizes it: the devices' outboxes hold what the relay has not confirmed,
    SOSes started in the pause are stored once it is back, and afterwards every ledger is
    complete (a message the bounded broker dropped would be a hole)."""
    from sosbeacon.sim.fleet import QUEUE_SPARE, FleetSpec, run_fleet

    need_mosquitto()
    lines: list[str] = []
    spec = FleetSpec(
        devices=20, sos_per_minute=12, sos_seconds=40, duration=85,
        pause_at=15, pause_seconds=60, relay_window_live=10,
    )  # fmt: skip
    summary = await run_fleet(spec, workdir=tmp_path, out=lines.append)
    assert summary.passed and summary.records_lost == 0, lines[-1]
    assert summary.queue_bound == 20 * (spec.relay_window + 10 + QUEUE_SPARE)
    assert summary.outbox_peak > 0, lines  # the backlog waited in the outboxes
    held = [int(ln.split()[-1]) for ln in lines if re.match(r"^\s+\d+\s+\d+\s", ln)]
    assert held[-1] == 0  # ... and left them once the relay was back
    in_pause = summary.pause_gesture_to_stored_ms
    assert in_pause["n"] >= 10, lines[-1]  # one SOS every 5 s of the minute, each stored
    assert 0 < in_pause["p50"] <= in_pause["p99"] < 75_000, in_pause
    assert "relays paused 60 s" in lines[-1]


async def test_the_fleet_counts_an_alert_that_came_before_it_noted_the_session() -> None:
    """In a fleet busy with a thousand devices the relay's alert can reach the mail sink
    before the fleet has noted the session the gesture started. It is kept and counted
    when the session is noted; an end notice, which carries the link too, never counts
    as the alert (before 2026-12-03 it did, 60 s late: the fleet's 'late first e-mail')."""
    import time

    from sosbeacon.relay.notify import end_message, start_message
    from sosbeacon.sim.fleet import Session, Viewers, contact_address
    from sosbeacon.sim.mailsink import Mail

    link = "http://127.0.0.1:9/s/abcdefgh"  # nothing answers: the page is not watched
    now = time.monotonic()
    alert = start_message(who="dev7", drill=False, start={}, link=link, now=0, sent=0)
    end = end_message(who="dev7", drill=False, link=link, expires=None)
    to = [contact_address(7)]
    noted: dict[int, Session] = {}
    viewers = Viewers()
    try:
        viewers.arrived(Mail(to, end.title, end.body, now), lambda a: noted.get(7))
        viewers.arrived(Mail(to, alert.title, alert.body, now + 0.5), lambda a: noted.get(7))
        s = Session(7, "s7", time.time(), now)
        noted[7] = s
        viewers.registered(s, contact_address(7))
        assert s.notified == now + 0.5  # the alert, not the end notice before it
        viewers.arrived(Mail(to, end.title, end.body, now + 60), lambda a: noted.get(7))
        assert s.notified == now + 0.5
    finally:
        await viewers.close()
