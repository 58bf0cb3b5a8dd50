"""The gpsd client: protocol handling against a scripted server, and real gpsd through
gpsfake reading a capture the simulator wrote."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sosbeacon.device.gps import FixMode
from sosbeacon.hw.gpsd_client import GpsdSource, tpv_to_fix
from sosbeacon.sim.gps import ReceiverScript, Route, RouteWalker, SimReceiver
from tests.conftest import find_tool, require
from tests.helpers import collecting
from tests.servers import free_port, gpsfake

TPV = {
    "class": "TPV",
    "device": "/dev/ttyACM0",
    "mode": 3,
    "time": "2026-11-22T10:00:01.000Z",
    "lat": 55.95,
    "lon": -3.17,
    "altMSL": 61.0,
    "speed": 1.4,
    "track": 121.8,
    "eph": 7.5,
    "status": 2,
}
SKY = {"class": "SKY", "hdop": 0.9, "uSat": 9}


def test_tpv_mapping() -> None:
    fix = tpv_to_fix(TPV, SKY)
    assert fix.time == datetime(2026, 11, 22, 10, 0, 1, tzinfo=UTC)
    assert (fix.lat, fix.lon, fix.alt, fix.speed, fix.course) == (55.95, -3.17, 61.0, 1.4, 121.8)
    assert fix.mode is FixMode.THREE_D
    assert fix.sats == 9 and fix.hdop == 0.9 and fix.accuracy == 7.5
    no_fix = tpv_to_fix({"class": "TPV", "mode": 1, "lat": 1.0, "lon": 2.0}, None)
    assert not no_fix.has_position


class ScriptedGpsd:
    """A fake gpsd that sends each connection the next script of raw lines, then hangs up."""

    def __init__(self, scripts: list[list[bytes]]) -> None:
        self.scripts = scripts
        self.watch_requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.watch_requests.append(await reader.readline())
        lines = self.scripts.pop(0) if self.scripts else []
        for line in lines:
            writer.write(line)
        await writer.drain()
        writer.close()


def line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


async def test_survives_truncated_json_garbage_and_restarts() -> None:
    second = dict(TPV, time="2026-11-22T10:00:02.000Z", lat=55.96)
    third = dict(TPV, time="2026-11-22T10:00:03.000Z", lat=55.97)
    fake = ScriptedGpsd(
        [
            [
                line({"class": "VERSION"}),
                line(SKY),
                line(TPV),
                line(TPV),
                b"not json\n",
                b"[1,2]\n",
                line(second)[:40],
            ],  # truncated mid-object by the hang-up
            [line(third)],
        ]
    )
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = GpsdSource(port=port, retry_interval=0.05)
    async with server, collecting(source) as got:
        await got.wait_for(2, timeout=5)
    assert [f.lat for f in got.fixes] == [55.95, 55.97]  # the duplicate TPV is dropped
    assert got.fixes[0].sats == 9
    assert source.stats.garbage == 3
    assert source.stats.reconnects >= 1
    assert all(w.startswith(b"?WATCH=") for w in fake.watch_requests)


async def test_waits_for_gpsd_to_appear() -> None:
    port = free_port()
    source = GpsdSource(port=port, retry_interval=0.05)
    fake = ScriptedGpsd([[line(SKY), line(TPV)]])
    async with collecting(source) as got:
        await asyncio.sleep(0.2)  # nobody listening yet
        assert got.fixes == []
        server = await asyncio.start_server(fake.handle, "127.0.0.1", port)
        async with server:
            await got.wait_for(1, timeout=5)


# -- real gpsd -------------------------------------------------------------------------


@pytest.fixture
def gpsfake_bin() -> str:
    path = find_tool("gpsfake")
    require(
        "gpsfake",
        path is not None and find_tool("gpsd") is not None,
        "sudo apt-get install gpsd gpsd-clients",
    )
    assert path is not None
    return path


def simulated_capture(tmp_path: Path, start: datetime, epochs: int) -> tuple[Path, dict]:  # type: ignore[type-arg]
    rx = SimReceiver(
        RouteWalker(Route.sample(), 1.4),
        start=start,
        rate_hz=1,
        script=ReceiverScript(outages=[(10, 13)]),
        seed=3,
    )
    log = tmp_path / "sim.log"
    truth = {}
    with log.open("wb") as fh:
        for n in range(epochs):
            data, t = rx.epoch(n)
            fh.write(data)
            truth[t.time] = t
    return log, truth


@pytest.mark.needs_gpsd
async def test_real_gpsd_reports_the_positions_the_simulator_meant(
    gpsfake_bin: str, tmp_path: Path
) -> None:
    start = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    log, truth = simulated_capture(tmp_path, start, 40)
    last = max(truth)
    port = free_port()
    with gpsfake(gpsfake_bin, log, port):
        source = GpsdSource(port=port, retry_interval=0.1)
        async with collecting(source) as got:
            async with asyncio.timeout(60):
                while not any(f.time == last for f in got.fixes):
                    await got.wait_for(1, positioned=False, timeout=60)
    timed = [f for f in got.fixes if f.has_position and f.time is not None]
    assert len(timed) >= 20, "gpsd should report most of the 37 epochs with a fix"
    for fix in timed:
        t = truth[fix.time]
        assert t.fix, f"gpsd reported a position during the simulated outage: {fix}"
        assert fix.lat == pytest.approx(t.lat, abs=1e-6)
        assert fix.lon == pytest.approx(t.lon, abs=1e-6)
        assert fix.mode is FixMode.THREE_D
        assert fix.alt == pytest.approx(t.alt, abs=0.06)


@pytest.mark.needs_gpsd
async def test_gpsd_restart_is_survived(gpsfake_bin: str, tmp_path: Path) -> None:
    first, _ = simulated_capture(tmp_path, datetime(2026, 11, 22, 10, 0, tzinfo=UTC), 25)
    second_dir = tmp_path / "b"
    second_dir.mkdir()
    second, truth2 = simulated_capture(second_dir, datetime(2026, 11, 22, 11, 0, tzinfo=UTC), 25)
    port = free_port()
    source = GpsdSource(port=port, retry_interval=0.1)
    async with collecting(source) as got:
        with gpsfake(gpsfake_bin, first, port):
            await got.wait_for(2, timeout=30)
        # gpsd is gone; a new one comes up on the same port
        with gpsfake(gpsfake_bin, second, port):
            async with asyncio.timeout(30):
                while not any(f.time in truth2 for f in got.fixes if f.has_position):
                    await got.wait_for(1, positioned=False, timeout=30)
    assert source.stats.reconnects >= 1
