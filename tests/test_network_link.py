"""Bringing the uplink up: nmcli through a real subprocess (a stand-in nmcli script on
PATH records its arguments), and the simulated modem on a simulated clock."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sosbeacon.device.records import MemoryRecorder, RecordKind
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.hw.network import NmcliLink
from sosbeacon.sim.clock import SimClock
from sosbeacon.sim.modem import SimModem


def fake_nmcli(tmp_path: Path, exit_code: int) -> Path:
    script = tmp_path / "nmcli"
    script.write_text(
        f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\necho oops >&2\nexit {exit_code}\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_nmcli_is_asked_to_bring_the_connection_up(tmp_path: Path) -> None:
    link = NmcliLink(connection="cellular", nmcli=str(fake_nmcli(tmp_path, 0)), timeout=30)
    await link.up()
    assert (tmp_path / "args").read_text().split() == [
        "--wait",
        "30",
        "connection",
        "up",
        "id",
        "cellular",
    ]


async def test_nmcli_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await NmcliLink(connection="cellular", nmcli=str(fake_nmcli(tmp_path, 10))).up()
    assert "could not bring 'cellular' up (exit 10): oops" in caplog.text


async def test_missing_nmcli_is_a_clear_message(caplog: pytest.LogCaptureFixture) -> None:
    await NmcliLink(connection="x", nmcli="/nonexistent/nmcli").up()
    assert "nmcli not found" in caplog.text


async def test_sos_record_does_not_wait_for_the_modem() -> None:
    clock = SimClock(datetime(2026, 11, 22, tzinfo=UTC))
    modem = SimModem(clock, attach_time=20)
    store = MemoryRecorder()
    ctl = SosController(
        config=SosConfig(contacts=(Contact("A"),)), recorder=store, clock=clock, network=modem
    )
    await ctl.start(trigger="cli", now=True)
    assert len(store.of(RecordKind.SOS_START)) == 1  # written before the modem is up
    assert not modem.is_up
    await clock.advance(20)
    assert modem.is_up and modem.requests == 1


def test_what_nmcli_monitor_lines_say_of_the_network() -> None:
    from sosbeacon.hw.network import monitor_says

    assert monitor_says("Connectivity is now 'full'") is True
    assert monitor_says("Connectivity is now 'none'") is False
    assert monitor_says("Connectivity is now 'limited'") is None  # no change of mind
    assert monitor_says("Networkmanager is now in the 'connected' state") is True
    assert monitor_says("Networkmanager is now in the 'disconnected' state") is False
    assert monitor_says("Networkmanager is now in the 'connected (site only)' state") is None
    assert monitor_says("wlan0: using connection 'home'") is None
    assert monitor_says("") is None


async def test_networkmanager_is_followed_through_nmcli_monitor(tmp_path: Path) -> None:
    """A stand-in nmcli: the state now, then what `nmcli monitor` prints as the network
    drops and returns. LC_ALL=C is asked for (nmcli translates its messages)."""
    from sosbeacon.hw.network import NmcliMonitor

    script = tmp_path / "nmcli"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$LC_ALL" > "{tmp_path}/lang"\n'
        'if [ "$1" = "-t" ]; then echo connected; exit 0; fi\n'
        'echo "wlan0: disconnected"\n'
        "echo \"Networkmanager is now in the 'disconnected' state\"\n"
        "echo \"Connectivity is now 'none'\"\n"
        "echo \"Networkmanager is now in the 'connecting' state\"\n"
        "echo \"Connectivity is now 'full'\"\n"
        "exec sleep 30\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    seen: list[bool] = []
    stream = NmcliMonitor(nmcli=str(script)).changes()
    async with asyncio.timeout(10):
        async for up in stream:
            seen.append(up)
            if len(seen) == 4:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    assert seen == [True, False, False, True]  # now, then down (twice said), back
    assert (tmp_path / "lang").read_text().strip() == "C"


async def test_the_simulated_modem_reports_coverage_lost_and_back() -> None:
    clock = SimClock(datetime(2030, 1, 1, tzinfo=UTC))
    modem = SimModem(clock, attach_time=2, up=True)
    stream = modem.changes()
    assert await anext(stream) is True  # the state now
    modem.set_coverage(False)
    assert await anext(stream) is False
    asking = asyncio.create_task(modem.up())  # an SOS asks for it: no coverage, no link
    await clock.advance(3)
    await asking
    assert not modem.is_up
    modem.set_coverage(True)  # back: the modem it was asked to be up attaches
    assert await anext(stream) is True and modem.is_up
