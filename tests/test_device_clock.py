"""The device's clock is the schedule; the receiver's date is data.

A receiver's date can be decades off: after a GPS week rollover it reports dates 1024
weeks (19.6 years) in the past, and some report 1980 or 2080 after a cold start. These
tests put such a receiver (the simulator's ``rollover`` fault at every epoch, or its
clock 20 years ahead) through the real NMEA decoder, the SOS controller and the durable
outbox, all on a simulated device clock that starts at the real "now": batching waits
as configured, the route expires 72 hours after the end by the device's clock, message
expiry counts down on it, and the fix time published is still the receiver's own
(flagged as suspect where ``date_floor`` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sosbeacon.device.gps import Fix, TimeIssue
from sosbeacon.device.mqtt import BrokerConfig
from sosbeacon.device.outbox import Outbox
from sosbeacon.device.privacy import PrivacyConfig
from sosbeacon.device.records import Record, RecordKind, run_retention
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.device.uplink import Uplink, UplinkConfig, routine_due
from sosbeacon.device.wire import decode_sos, decode_track, owntracks_location, shown_time
from sosbeacon.hw.nmea import NmeaDecoder
from sosbeacon.sim.clock import SimClock
from sosbeacon.sim.gps import Fault, FaultKind, ReceiverScript, Route, RouteWalker, SimReceiver

RETENTION = 72 * 3600.0
RECEIVERS = ["rollover", "20-years-ahead"]


def device_clock() -> SimClock:
    """A simulated device clock starting at the real "now" (whatever date the suite
    runs on, libfaketime's included)."""
    return SimClock(datetime.now(UTC).replace(microsecond=0))


def receiver_fixes(receiver: str, device_now: datetime, n: int) -> list[Fix]:
    """``n`` fixes, one a second, from the simulated receiver through the real decoder."""
    walker = RouteWalker(Route.sample(), 1.4)
    if receiver == "rollover":
        faults = [Fault(FaultKind.ROLLOVER, float(i)) for i in range(n)]
        rx = SimReceiver(walker, start=device_now, script=ReceiverScript(faults=faults))
    else:
        rx = SimReceiver(walker, start=device_now + timedelta(days=20 * 365))
    decoder = NmeaDecoder(today=lambda: device_now.date())
    fixes: list[Fix] = []
    for i in range(n):
        fixes += decoder.feed(rx.epoch(i)[0])
    fixes += decoder.flush()
    positioned = [f for f in fixes if f.has_position]
    assert len(positioned) >= n - 1
    return positioned


def offline_uplink(box: Outbox, clock: SimClock) -> Uplink:
    """An uplink that is never run: only its message forming is used."""
    return Uplink(
        config=UplinkConfig(device_id="dev1"),
        broker=BrokerConfig(host="127.0.0.1", port=1),
        outbox=box,
        clock=clock,
    )


def controller(
    box: Outbox, clock: SimClock, *, privacy: PrivacyConfig | None = None, **sos: Any
) -> SosController:
    """The SOS controller on the durable outbox and the device's (simulated) clock."""
    return SosController(
        config=SosConfig(contacts=(Contact("Alice"),), **sos),
        recorder=box,
        clock=clock,
        privacy=privacy,
    )


def received_now(fix: Fix, clock: SimClock) -> Fix:
    return dataclasses.replace(fix, received=clock.monotonic())


@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_the_route_expires_72_hours_after_the_end_by_the_device_clock(
    tmp_path: Path, receiver: str
) -> None:
    clock = device_clock()
    fixes = receiver_fixes(receiver, clock.now(), 6)
    async with await Outbox.open(tmp_path / "o.db", clock=clock) as box:
        ctl = controller(box, clock, countdown=0, retention=RETENTION)
        await ctl.on_fix(received_now(fixes[0], clock))
        await ctl.start(trigger="cli", now=True)
        for fix in fixes[1:]:
            await clock.advance(31)  # past the heartbeat: every fix is a route point
            await ctl.on_fix(received_now(fix, clock))
        await ctl.stop(trigger="cli")
        ended = clock.now()
        kept = await box.export()
        assert len(kept) == len(fixes) + 1  # start, 5 route points, end

        # The published fix time is the receiver's own, flagged where the floor says so.
        points = [s.record.data["fix"] for s, _ in kept if s.kind is RecordKind.FIX]
        assert len(points) == len(fixes) - 1
        for p in points:
            t = datetime.fromisoformat(p["t"])
            if receiver == "rollover":
                assert t.year < ended.year - 18 and p["time_issue"] == "before-floor"
            else:
                assert t.year > ended.year + 18 and "time_issue" not in p

        # Message expiry counts down on the device's clock, from the end.
        await clock.advance(10 * 3600)
        uplink = offline_uplink(box, clock)
        messages = await uplink.sender.pack(await box.take())
        assert {m.expiry for m in messages} == {int(RETENTION) - 10 * 3600}
        lifecycle = [decode_sos(m.payload) for m in messages if m.topic.endswith("/sos")]
        assert [x.kind for x in lifecycle] == ["sos-start", "sos-end"]
        assert lifecycle[1].t == pytest.approx(ended.timestamp())  # the device's time
        route = [r for m in messages if m.topic.endswith("/track") for r in decode_track(m.payload)]
        assert len(route) == len(points)
        for r in route:
            if receiver == "rollover":
                # no room for the flag in a row: the fix goes whole, flag and all, with
                # the device's time beside it
                assert r.data["fix"]["time_issue"] == "before-floor"
                assert ended.timestamp() - 6 * 31 <= r.t <= ended.timestamp()
            else:
                assert r.t > (ended + timedelta(days=18 * 365)).timestamp()
        await box.requeue()

        # The retention loop deletes the route at the end + 72 h of the device's clock.
        retention = asyncio.create_task(run_retention(box, clock))
        try:
            await asyncio.wait_for(clock.sleeping(), 5)
            await clock.advance((ended - clock.now()).total_seconds() + RETENTION - 1)
            await asyncio.wait_for(clock.sleeping(), 5)
            assert len(await box.export()) == len(kept)  # one second before: all there
            await clock.advance(1.01)
            await asyncio.wait_for(clock.sleeping(), 5)
            # gone, and (never delivered here) named as expired for the receivers
            ((gap, _),) = await box.export()
            assert gap.record.data == {"ranges": [[1, len(kept)]], "reason": "expired"}
        finally:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention


@pytest.mark.parametrize("receiver", RECEIVERS)
async def test_routine_batching_waits_from_the_commit_by_the_device_clock(
    tmp_path: Path, receiver: str
) -> None:
    clock = device_clock()
    fixes = receiver_fixes(receiver, clock.now(), 3)
    cfg = UplinkConfig(device_id="dev1", batch_count=100, batch_interval=300.0)
    async with await Outbox.open(tmp_path / "o.db", clock=clock) as box:
        ctl = controller(box, clock, privacy=PrivacyConfig(track_outside_sos=True))
        committed = clock.now()
        await ctl.on_fix(received_now(fixes[0], clock))  # routine tracking, opted in
        p = await box.pending()
        assert p.routine == 1 and p.oldest_routine == committed
        assert routine_due(p, clock.now(), cfg) == 300.0  # a whole interval to wait
        await clock.advance(120)
        assert routine_due(await box.pending(), clock.now(), cfg) == 180.0
        await clock.advance(180)
        assert routine_due(await box.pending(), clock.now(), cfg) == 0.0
        # the age `sosctl status` shows is from the commit too
        assert (await box.stats()).oldest == committed
        # routine message expiry: a week from the commit, counted down on the device clock
        await clock.advance(86400 - 300)
        (msg,) = await offline_uplink(box, clock).sender.pack(await box.take())
        assert msg.expiry == 6 * 86400


def test_a_suspect_fix_time_is_reported_but_not_shown_as_its_age() -> None:
    """OwnTracks has no place for the flag: its ``tst`` (what apps show as "last seen")
    is the device's time of the record when the receiver's date is suspect."""
    device_time = datetime.now(UTC).replace(microsecond=0)
    rolled = device_time - timedelta(weeks=1024)
    fix = {"t": rolled.isoformat(), "lat": 55.95, "lon": -3.17, "time_issue": "before-floor"}
    suspect = Record(RecordKind.FIX, device_time, {"fix": fix})
    assert shown_time(suspect) == device_time
    loc = owntracks_location(fix, at=shown_time(suspect), tid="d1")
    assert loc["tst"] == int(device_time.timestamp())
    trusted = Record(RecordKind.FIX, device_time, {"fix": {**fix, "time_issue": None}})
    assert shown_time(trusted) == rolled


def test_the_decoder_flags_the_simulated_rollover() -> None:
    now = datetime.now(UTC)
    fixes = receiver_fixes("rollover", now, 3)
    assert {f.time_issue for f in fixes} == {TimeIssue.BEFORE_FLOOR}
    ahead = receiver_fixes("20-years-ahead", now, 3)
    assert {f.time_issue for f in ahead} == {None}


@pytest.mark.parametrize("days", [0, 400, 4400])
def test_the_test_ca_issues_certificates_valid_at_the_clock_it_is_given(
    tmp_path: Path, days: int
) -> None:
    from cryptography import x509

    from sosbeacon.sim.tlsca import TestCA

    at = datetime.now(UTC) + timedelta(days=days)
    ca = TestCA(tmp_path / "pki", now=lambda: at)
    leaf = ca.issue("broker", hosts=("127.0.0.1",))
    for pem in (ca.cert, leaf.cert):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        assert cert.not_valid_before_utc < at < cert.not_valid_after_utc
