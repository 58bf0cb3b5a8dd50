"""Bringing the uplink up: nmcli through a real subprocess (a stand-in nmcli script on
PATH records its arguments), and the simulated modem on a simulated clock."""

from __future__ import annotations

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
