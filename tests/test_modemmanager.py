"""Texts through ModemManager (hw/modem/mm.py): the real client against a fake
ModemManager service on a private dbus-daemon (never the machine's buses)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sosbeacon.device.actuators import Incoming
from sosbeacon.hw.modem.mm import MM, MmError, MmSms, ModemState
from sosbeacon.sim.modemmanager import FakeModemManager, FakeState, PrivateBus
from tests.conftest import find_tool, require
from tests.helpers import eventually


@pytest.fixture
def bus() -> Any:
    require("dbus-daemon", find_tool("dbus-daemon") is not None, "sudo apt-get install dbus-daemon")
    with PrivateBus() as b:
        yield b


@contextlib.asynccontextmanager
async def client(bus: PrivateBus, **kw: Any) -> AsyncIterator[MmSms]:
    mm = MmSms(bus_address=bus.address, retry=0.2, wait_open=5, poll=0.05, **kw)
    task = asyncio.create_task(mm.run())
    try:
        yield mm
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ready(mm: MmSms, within: float = 5.0) -> None:
    await eventually(lambda: mm.known()["ready"], within, 0.02)


async def gone(mm: MmSms, within: float = 5.0) -> None:
    await eventually(lambda: not mm.known()["ready"], within, 0.02)


async def next_text(mm: MmSms, within: float = 5.0) -> Incoming:
    async with asyncio.timeout(within):
        return await anext(aiter(mm.incoming()))


async def test_a_text_goes_through_modemmanager_and_is_not_kept(bus: PrivateBus) -> None:
    async with FakeModemManager(bus.address) as fake, client(bus) as mm:
        await ready(mm)
        await mm.send("+447700900123", "SOS: Sam needs help.\nReply OK to acknowledge.")
        assert [(s.to, s.text) for s in fake.sent] == [
            ("+447700900123", "SOS: Sam needs help.\nReply OK to acknowledge.")
        ]
        assert fake.messages == {}  # deleted once sent
        status = await mm.state()
        assert status == {
            "ready": True, "port": "/org/freedesktop/ModemManager1/Modem/0",
            "registered": "home", "on_network": True, "signal_pct": 67,
        }  # fmt: skip


async def test_modemmanager_s_refusals_are_errors_that_say_what_happened(
    bus: PrivateBus,
) -> None:
    state = FakeState(fail_sends=[(f"{MM}.Error.MessageError.NetworkOutOfOrder", "rejected")])
    async with FakeModemManager(bus.address, state) as fake, client(bus) as mm:
        await ready(mm)
        with pytest.raises(MmError) as err:
            await mm.send("+447700900123", "x")
        assert str(err.value) == "ModemManager: MessageError.NetworkOutOfOrder: rejected"
        assert isinstance(err.value, OSError)  # what the SOS texts treat as "did not go"
        fake.state.registration = 3  # denied
        with pytest.raises(OSError, match="no network service"):
            await mm.send("+447700900123", "x")
        assert (await mm.state())["registered"] == "denied"
        assert mm.known()["on_network"] is False
        assert fake.sent == [] and fake.messages == {}  # nothing left behind


async def test_texts_that_arrive_are_read_once_whole_and_deleted(bus: PrivateBus) -> None:
    async with FakeModemManager(bus.address) as fake:
        # one came before sosd was listening: read at start
        await fake.sms_from("+447700900456", "ok before")
        async with client(bus) as mm:
            assert await next_text(mm) == Incoming("+447700900456", "ok before")
            await fake.sms_from("+447700900123", "OK, on my way")
            assert await next_text(mm) == Incoming("+447700900123", "OK, on my way")
            # a long one: announced while its parts still arrive, read once complete
            job = asyncio.create_task(fake.sms_from("+447700900123", "x" * 300, parts_delay=0.3))
            got = await next_text(mm)
            await job
            assert got == Incoming("+447700900123", "x" * 300)
            await asyncio.sleep(0.1)
            assert fake.messages == {}


async def test_a_locked_sim_is_unlocked_with_the_pin_and_the_modem_enabled(
    bus: PrivateBus,
) -> None:
    state = FakeState(state=ModemState.LOCKED, pin="4321")
    async with FakeModemManager(bus.address, state) as fake, client(bus, pin="4321") as mm:
        await ready(mm)
        assert fake.state.pins_tried == ["4321"] and fake.state.enabled_calls == 1
        await mm.send("+447700900123", "x")
        assert len(fake.sent) == 1


async def test_without_the_pin_or_the_right_modem_it_says_so_and_never_is_ready(
    bus: PrivateBus, caplog: pytest.LogCaptureFixture
) -> None:
    state = FakeState(state=ModemState.LOCKED, pin="4321")
    async with FakeModemManager(bus.address, state) as fake:
        async with client(bus) as mm:
            await asyncio.sleep(0.6)
            assert mm.known() == {"ready": False, "port": "ModemManager"}
            mm.wait_open = 0.1
            with pytest.raises(OSError, match="no modem is ready"):
                await mm.send("+447700900123", "x")
        assert "the SIM asks for its PIN: set modem.pin_file" in caplog.text
        # said once, not every retry
        assert caplog.text.count("asks for its PIN") == 1
        fake.state.pin, fake.state.state = "", ModemState.REGISTERED
        async with client(bus, imei="000000000000000") as mm:
            await asyncio.sleep(0.4)
            assert not mm.known()["ready"]
        assert "no modem with IMEI 000000000000000 (found: 356938035643809)" in caplog.text


async def test_a_modem_that_goes_away_is_found_again_when_it_returns(bus: PrivateBus) -> None:
    async with FakeModemManager(bus.address) as fake, client(bus) as mm:
        await ready(mm)
        fake.unplug()
        await gone(mm)
        fake.plug()
        await ready(mm)
        await mm.send("+447700900123", "back")
        assert [s.text for s in fake.sent] == ["back"]


async def test_modemmanager_restarting_is_followed(bus: PrivateBus) -> None:
    async with client(bus) as mm:
        async with FakeModemManager(bus.address):
            await ready(mm)
        await gone(mm)  # ModemManager stopped
        async with FakeModemManager(bus.address) as again:
            await ready(mm)
            await mm.send("+447700900123", "again")
            assert [s.text for s in again.sent] == ["again"]
