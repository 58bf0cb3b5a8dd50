"""The serial reader, fed by the simulated receiver through a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sosbeacon.device.gps import TimeIssue
from sosbeacon.hw.serial_gps import NmeaSerialSource
from sosbeacon.sim.clock import SimClock
from sosbeacon.sim.gps import (
    Fault,
    FaultKind,
    PtyPort,
    ReceiverScript,
    Route,
    RouteWalker,
    SimReceiver,
)
from sosbeacon.sim.gps.generator import EpochTruth
from sosbeacon.sim.gps.runner import run_receiver
from tests.helpers import collecting

START = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)


def receiver(**script: object) -> SimReceiver:
    return SimReceiver(
        RouteWalker(Route.sample(), 1.4),
        start=START,
        rate_hz=10,
        script=ReceiverScript(**script),  # type: ignore[arg-type]
        seed=7,
    )


@contextlib.asynccontextmanager
async def background(coro):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_simulated_route_with_every_fault_decodes_to_what_the_simulator_meant(
    tmp_path: Path,
) -> None:
    faults = [Fault(kind, 0.55 + 0.1 * i) for i, kind in enumerate(FaultKind)]
    rx = receiver(cold_start=0.3, outages=[(1.5, 1.8)], faults=faults)
    port = PtyPort(tmp_path / "gps0", baudrate=115200)
    source = NmeaSerialSource(port=str(port.path), baudrate=115200)
    truths: list[EpochTruth] = []
    async with collecting(source) as got:
        await asyncio.wait_for(source.connected.wait(), 5)
        await run_receiver(rx, port, duration=2.5, on_epoch=truths.append)
        port.unplug()  # end of input: the last epoch is flushed
        await asyncio.wait_for(source.disconnected.wait(), 5)
    by_time = {t.time: t for t in truths}
    positioned = [f for f in got.fixes if f.has_position]
    rollover = [f for f in positioned if f.time_issue is TimeIssue.BEFORE_FLOOR]
    assert len(rollover) == 1
    for fix in positioned:
        if fix.time_issue is TimeIssue.BEFORE_FLOOR:
            continue
        assert fix.time in by_time, fix
        truth = by_time[fix.time]
        assert truth.fix, f"position reported for a no-fix epoch: {fix}"
        assert fix.lat == pytest.approx(truth.lat, abs=2e-7)
        assert fix.lon == pytest.approx(truth.lon, abs=2e-7)
    # Every epoch with a fix got through except the ones a fault damaged.
    with_fix = sum(1 for t in truths if t.fix)
    assert len(positioned) >= with_fix - 4
    # The cold start, the tunnel and the zeroed void epoch really happened, and the
    # loop above showed none of them produced a position.
    assert sum(1 for t in truths if not t.fix) >= 3 + 3 + 1
    assert len(positioned) <= with_fix
    st = source.stats
    assert st.bad_checksum >= 1
    assert st.noise_bytes > 0
    assert st.garbage + st.bad_checksum >= 2  # the truncated/glued line is rejected too


async def test_resumes_within_one_retry_interval_after_unplug(tmp_path: Path) -> None:
    """The retries run on the source's clock (simulated here): once the receiver is
    plugged in again, one retry interval brings the fixes back, however busy the
    machine is."""
    clock = SimClock()
    port = PtyPort(tmp_path / "gps0", baudrate=115200)
    source = NmeaSerialSource(port=str(port.path), retry_interval=0.5, clock=clock)
    async with collecting(source) as got, background(run_receiver(receiver(), port, duration=60)):
        await got.wait_for(3)
        port.unplug()
        await asyncio.wait_for(source.disconnected.wait(), 5)
        for _ in range(2):  # unplugged for a second: the retries fail
            await asyncio.wait_for(clock.sleeping(), 5)
            await clock.advance(0.5)
        await asyncio.wait_for(clock.sleeping(), 5)
        assert not source.connected.is_set()
        port.plug()
        await clock.advance(0.5)  # one retry interval
        await asyncio.wait_for(source.connected.wait(), 5)
        await got.wait_for(1, timeout=5)
    assert source.stats.reconnects == 1


async def test_device_missing_at_start_is_waited_for(tmp_path: Path) -> None:
    link = tmp_path / "gps0"
    source = NmeaSerialSource(port=str(link), retry_interval=0.2)
    async with collecting(source) as got:
        await asyncio.sleep(0.5)  # nothing there yet: the source keeps retrying
        assert got.fixes == []
        port = PtyPort(link, baudrate=115200)
        async with background(run_receiver(receiver(), port, duration=60)):
            await got.wait_for(2, timeout=5)
        port.close()


async def test_send_reaches_the_receiver(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "gps0", baudrate=None)
    source = NmeaSerialSource(port=str(port.path))
    with pytest.raises(ConnectionError):
        await source.send(b"$PMTK161,0*28\r\n")
    async with collecting(source):
        await asyncio.wait_for(source.connected.wait(), 5)
        await source.send(b"$PMTK161,0*28\r\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        got = b""
        while b"\n" not in got and loop.time() < deadline:
            got += port.read_nowait()
            await asyncio.sleep(0.01)
    port.close()
    assert got == b"$PMTK161,0*28\r\n"


SHUTDOWN_SCRIPT = """
import asyncio, sys, tempfile
from pathlib import Path
from sosbeacon.hw.serial_gps import NmeaSerialSource
from sosbeacon.sim.gps import PtyPort, Route, RouteWalker, SimReceiver
from sosbeacon.sim.clock import SimClock
from sosbeacon.sim.gps.runner import run_receiver

async def main(close_first):
    port = PtyPort(Path(tempfile.mkdtemp()) / "gps0", baudrate=115200)
    src = NmeaSerialSource(port=str(port.path))
    async def consume():
        async for _ in src.fixes():
            pass
    task = asyncio.create_task(consume())
    await src.connected.wait()
    await run_receiver(SimReceiver(RouteWalker(Route.sample(), 1.4), rate_hz=10), port,
                       duration=0.5)
    if close_first:
        port.close(); task.cancel()
    else:
        task.cancel(); port.close()

asyncio.run(main(False))
asyncio.run(main(True))
print("clean exit")
"""


def test_cancelling_a_connected_source_never_hangs_shutdown() -> None:
    """Regression: closing the serial transport used to drain it with tcdrain() in a
    worker thread, which never returned once the pty's other end was gone, so the
    process hung at exit."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "clean exit" in res.stdout


async def test_replayed_capture_decodes_like_the_file(tmp_path: Path, gpsd_logs: Path) -> None:
    """`sos-sim gps run --replay`: a real capture paced through the pty at a UART's rate
    gives the same positions as decoding the file directly."""
    from sosbeacon.sim.gps.runner import replay_capture
    from sosbeacon.sim.gpsd_corpus import decode_capture

    log = gpsd_logs / "mt3339.log"
    port = PtyPort(tmp_path / "gps0", baudrate=115200)
    source = NmeaSerialSource(port=str(port.path), baudrate=115200)
    async with collecting(source) as got:
        await asyncio.wait_for(source.connected.wait(), 5)
        await replay_capture(log, port)
        port.unplug()
        await asyncio.wait_for(source.disconnected.wait(), 10)
    want = [(f.lat, f.lon) for f in decode_capture(log) if f.has_position]
    assert [(f.lat, f.lon) for f in got.fixes if f.has_position] == want
    assert len(want) == 30


async def test_a_line_opened_past_descriptor_1024_reads_like_any_other(tmp_path: Path) -> None:
    """pyserial's own read waits with select(), which refuses descriptors from 1024 on
    (a process holding many: a fleet of devices). The line is read with poll()."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert held[-1] >= 1024
        port = PtyPort(tmp_path / "gps0", baudrate=115200)
        source = NmeaSerialSource(port=str(port.path), baudrate=115200)
        async with collecting(source) as got:
            await asyncio.wait_for(source.connected.wait(), 5)
            await run_receiver(receiver(), port, duration=1.0)
            port.unplug()
            await asyncio.wait_for(source.disconnected.wait(), 5)
        assert len([f for f in got.fixes if f.has_position]) >= 5
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_read_waiting_on_an_idle_port_wakes_when_bytes_come_or_it_is_unplugged(
    tmp_path: Path,
) -> None:
    port = PtyPort(tmp_path / "line", baudrate=None)
    slave = os.open(port.path, os.O_RDWR | os.O_NOCTTY)
    try:
        reading = asyncio.create_task(port.read())
        await asyncio.sleep(0.05)
        assert not reading.done()
        os.write(slave, b"AT\r")
        assert await asyncio.wait_for(reading, 1) == b"AT\r"
        reading = asyncio.create_task(port.read())
        await asyncio.sleep(0.05)
        port.unplug()
        assert await asyncio.wait_for(reading, 1) == b""
    finally:
        os.close(slave)
        port.close()
