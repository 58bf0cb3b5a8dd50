"""The simulated receiver: what it writes is valid NMEA by an independent parser
(pynmeagps), follows its route, and injects exactly the faults asked for."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pynmeagps
import pytest

from sosbeacon.hw.nmea import NmeaDecoder, NmeaFramer
from sosbeacon.sim.gps import Fault, FaultKind, ReceiverScript, Route, RouteWalker, SimReceiver
from sosbeacon.sim.gps.route import haversine

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def rx(**kw: object) -> SimReceiver:
    script = kw.pop("script", ReceiverScript())
    return SimReceiver(
        RouteWalker(Route.sample(), 1.4),
        start=START,
        script=script,  # type: ignore[arg-type]
        **kw,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD"])
def test_every_generated_sentence_parses_with_pynmeagps(talker: str) -> None:
    r = rx(talker=talker, zda=True, script=ReceiverScript(cold_start=3))
    count = 0
    for n in range(10):
        data, _ = r.epoch(n)
        for line in data.splitlines():
            msg = pynmeagps.NMEAReader.parse(line, validate=pynmeagps.VALCKSUM)
            assert msg is not None
            assert msg.talker == talker
            count += 1
    assert count >= 50


def test_positions_follow_the_route_within_the_noise() -> None:
    r = rx(rate_hz=1)
    walker = r.walker
    for n in range(0, 300, 10):
        t = r.truth(n)
        p, _, _ = walker.at(n)
        assert haversine(t.lat, t.lon, p.lat, p.lon) < 15  # ~2.5 m sigma noise


def test_route_from_waypoints_and_gpx(tmp_path: Path) -> None:
    r = Route.from_text("55.0,-3.0;55.001,-3.0,10")
    assert r.length == pytest.approx(111.2, abs=0.5)
    p, course = r.at(r.length / 2)
    assert p.lat == pytest.approx(55.0005) and p.alt == pytest.approx(5)
    assert course == pytest.approx(0, abs=0.01)
    with pytest.raises(ValueError, match="lat,lon"):
        Route.from_text("55.0")
    gpx = tmp_path / "empty.gpx"
    gpx.write_text('<?xml version="1.0"?><gpx version="1.1" creator="t"></gpx>')
    with pytest.raises(ValueError, match="no track"):
        Route.from_gpx(gpx)
    assert Route.sample().length > 3000


def test_rate_is_bounded() -> None:
    with pytest.raises(ValueError, match="10 Hz"):
        rx(rate_hz=20)


def test_cold_start_and_outage_are_void_epochs() -> None:
    r = rx(rate_hz=1, script=ReceiverScript(cold_start=5, outages=[(10, 12)]))
    dec = NmeaDecoder()
    fixes = []
    for n in range(15):
        fixes.extend(dec.feed(r.epoch(n)[0]))
    fixes.extend(dec.flush())
    has = [f.has_position for f in fixes]
    assert has == [False] * 5 + [True] * 5 + [False] * 2 + [True] * 3


@pytest.mark.parametrize(
    ("kind", "counter"),
    [
        (FaultKind.BAD_CHECKSUM, "bad_checksum"),
        (FaultKind.TRUNCATED, "garbage"),
        (FaultKind.UBX, "noise_bytes"),
    ],
)
def test_each_fault_is_seen_by_the_decoder(kind: FaultKind, counter: str) -> None:
    r = rx(script=ReceiverScript(faults=[Fault(kind, 2)]))
    dec = NmeaDecoder()
    for n in range(4):
        dec.feed(r.epoch(n)[0])
    dec.flush()
    assert getattr(dec.stats, counter) > 0


def test_glued_fault_removes_one_line_end_and_loses_nothing() -> None:
    r = rx(script=ReceiverScript(faults=[Fault(FaultKind.GLUED, 0)]))
    data, _ = r.epoch(0)
    clean, _ = rx().epoch(0)
    assert data.count(b"\r\n") == clean.count(b"\r\n") - 1
    assert len(NmeaFramer().feed(data)) == clean.count(b"\r\n")


def test_zeroed_void_and_rollover() -> None:
    r = rx(
        script=ReceiverScript(
            faults=[Fault(FaultKind.ZEROED_VOID, 1), Fault(FaultKind.ROLLOVER, 2)]
        )
    )
    dec = NmeaDecoder()
    fixes = []
    for n in range(4):
        fixes.extend(dec.feed(r.epoch(n)[0]))
    fixes.extend(dec.flush())
    assert [f.has_position for f in fixes] == [True, False, True, True]
    assert fixes[2].time is not None and fixes[2].time.year == 2007
    assert fixes[2].time_issue is not None


def test_fault_spec_parsing() -> None:
    assert Fault.parse("ubx@12.5") == Fault(FaultKind.UBX, 12.5)
    with pytest.raises(ValueError, match="KIND@SECONDS"):
        Fault.parse("lightning@3")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sosbeacon.sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_decode_command_prints_json_fixes_and_a_summary(gpsd_logs: Path) -> None:
    import json

    res = run_cli("nmea", "decode", str(gpsd_logs / "neo-m8n.log"))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 24
    for row in rows:
        assert {"time", "lat", "lon", "alt", "speed", "course", "mode", "sats", "hdop"} <= set(row)
    assert rows[1]["lat"] == pytest.approx(44.0690105, abs=1e-7)
    assert rows[1]["mode"] == "3d"
    assert "293 sentences, 0 bad checksums" in res.stderr
    assert "24 fixes" in res.stderr


def test_decode_agrees_with_the_in_process_decoder(gpsd_logs: Path) -> None:
    """The pty path loses nothing compared with feeding the bytes directly."""
    import json

    from sosbeacon.sim.gpsd_corpus import decode_capture

    logs = [gpsd_logs / n for n in ("ublox-8.log", "firefly-II.log", "triton400.log")]
    res = run_cli("nmea", "decode", *map(str, logs))
    assert res.returncode == 0, res.stderr
    got = [(r["file"], r["lat"], r["lon"]) for r in map(json.loads, res.stdout.splitlines())]
    want = [(p.name, f.lat, f.lon) for p in logs for f in decode_capture(p) if f.has_position]
    assert got == want


def test_decode_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    res = run_cli("nmea", "decode", str(tmp_path / "nope.log"))
    assert res.returncode == 1
    assert "no such file" in res.stderr


def test_generate_then_decode(tmp_path: Path) -> None:
    out = tmp_path / "gen.log"
    res = run_cli(
        "gps",
        "generate",
        "-o",
        str(out),
        "--duration",
        "5",
        "--rate",
        "2",
        "--fault",
        "ubx@1",
        "--start",
        "2026-11-22T10:00:00",
    )
    assert res.returncode == 0, res.stderr
    dec = run_cli("nmea", "decode", str(out))
    assert len(dec.stdout.splitlines()) == 10
    bad = run_cli("gps", "generate", "-o", str(out), "--fault", "lightning@1")
    assert bad.returncode == 2 and "KIND@SECONDS" in bad.stderr


def test_watch_reads_a_simulated_receiver_on_a_pty(tmp_path: Path) -> None:
    """`sos-sim gps run` on one side, `sos-sim gps watch` on the other: the commands a
    developer uses on a board, with the pty standing in for the UART."""
    import json
    import time

    link = tmp_path / "gps0"
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sosbeacon.sim.cli",
            "gps",
            "run",
            "--link",
            str(link),
            "--rate",
            "5",
            "--baud",
            "115200",
            "--duration",
            "30",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not link.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        res = run_cli("gps", "watch", "--device", str(link), "--baud", "115200", "--count", "4")
    finally:
        sim.terminate()
        sim.wait(5)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 4
    assert all(abs(r["lat"] - 55.95) < 0.02 for r in rows), rows
    # pyserial flushes the input when it opens the port, so the reader joins the stream
    # mid-epoch: the first epoch may hold only its last sentences (a GLL: a 2D fix).
    assert all(r["mode"] == "3d" for r in rows[1:]), rows
    assert "fixes" in res.stderr
