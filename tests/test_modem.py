"""The modem driver (hw/modem) through a pseudo-terminal against the simulated modem
(sim/atmodem.py): what it sends reaches the simulated network, reports and incoming
messages come back, and its faults read as what they mean."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sosbeacon.hw.modem.at import ModemError, ModemGone
from sosbeacon.hw.modem.driver import AtModem, Registered
from sosbeacon.sim.atmodem import SimAtModem

ALICE = "+447700900123"


@contextlib.asynccontextmanager
async def line(tmp_path: Path, *, pin: str = "", sim_pin: str = "") -> AsyncIterator[
    tuple[AtModem, SimAtModem]
]:  # fmt: skip
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    sim = SimAtModem(tmp_path / "modem0", pin=sim_pin, report_delay=0.2)
    sim.start()
    modem = AtModem(str(sim.path), pin=pin)
    try:
        yield modem, sim
    finally:
        modem.close()
        await sim.close()


async def test_a_long_message_goes_out_in_parts_and_its_reports_come_back(tmp_path: Path) -> None:
    async with line(tmp_path) as (modem, sim):
        await asyncio.wait_for(modem.open(), 10)
        assert await modem.registration() is Registered.HOME
        assert (await modem.signal()).dbm == -113 + 2 * 18
        text = "SOS Sam needs help. " * 12  # 240 characters: two messages
        refs = await asyncio.wait_for(modem.send(ALICE, text), 10)
        assert len(refs) == 2 and [s.to for s in sim.sent] == [ALICE, ALICE]
        assert "".join(s.text for s in sim.sent) == text
        assert {s.concat[1] for s in sim.sent if s.concat} == {2}
        reports = [await asyncio.wait_for(modem.reports.get(), 5) for _ in refs]
        assert sorted(r.reference for r in reports) == sorted(refs)
        assert all(r.delivered and r.recipient == ALICE for r in reports)
        euro = "Zoë: 5€ ✓"  # not all GSM 7-bit: UCS-2, whole
        await modem.send(ALICE, euro)
        assert sim.sent[-1].text == euro


async def test_incoming_messages_are_read_whole_and_deleted(tmp_path: Path) -> None:
    async with line(tmp_path) as (modem, sim):
        await modem.open()
        await sim.sms_from(ALICE, "OK")
        got = await asyncio.wait_for(modem.received.get(), 5)
        assert (got.sender, got.text) == (ALICE, "OK")
        long = "on my way, " * 20  # 220 characters: two parts, joined again
        await sim.sms_from(ALICE, long)
        got = await asyncio.wait_for(modem.received.get(), 5)
        assert got.text == long
        await asyncio.sleep(0.2)
        assert sim.stored == 0  # every message deleted from the SIM once read


async def test_a_urc_in_the_middle_of_an_answer_goes_to_its_handler(tmp_path: Path) -> None:
    async with line(tmp_path) as (modem, sim):
        await modem.open()
        sim.urc_in_next_answer(ALICE, "ACK")
        assert (await modem.signal()).dbm is not None  # the answer, whole and right
        got = await asyncio.wait_for(modem.received.get(), 5)
        assert got.text == "ACK"


async def test_refusals_say_what_they_mean_and_whether_to_try_again(tmp_path: Path) -> None:
    async with line(tmp_path) as (modem, sim):
        await modem.open()
        sim.state.fail_sends = [500, 50]
        with pytest.raises(ModemError, match=r"\+CMS ERROR: 500 \(unknown error\)") as first:
            await modem.send(ALICE, "SOS")
        assert first.value.temporary
        with pytest.raises(ModemError, match="not subscribed") as second:
            await modem.send(ALICE, "SOS")
        assert not second.value.temporary
        sim.state.registration = 3  # denied by the network
        assert await modem.registration() is Registered.DENIED
        with pytest.raises(ModemError, match="no network service"):
            await modem.send(ALICE, "SOS")
        with pytest.raises(Exception, match="not a phone number"):
            await modem.send("alice@example.org", "SOS")
        assert sim.sent == []


async def test_the_sim_pin_is_entered_or_its_absence_is_one_clear_error(tmp_path: Path) -> None:
    async with line(tmp_path / "a", sim_pin="1234") as (modem, _):
        with pytest.raises(ModemError, match="SIM PIN required"):
            await modem.open()
    async with line(tmp_path / "b", sim_pin="1234", pin="1234") as (modem, sim):
        await modem.open()
        await modem.send(ALICE, "SOS")
        assert len(sim.sent) == 1


async def test_a_reset_is_noticed_and_the_modem_set_up_again(tmp_path: Path) -> None:
    async with line(tmp_path) as (modem, sim):
        await modem.open()
        modem.set_up.clear()
        await sim.reset()  # echo on, text mode again, "RDY"
        await asyncio.wait_for(modem.set_up.wait(), 5)
        assert modem.resets == 1 and sim.state.pdu_mode and not sim.state.echo
        await modem.send(ALICE, "still here")  # PDU mode again: it goes
        assert sim.sent[-1].text == "still here"


async def test_a_port_that_disappears_ends_waiting_commands_with_modem_gone(
    tmp_path: Path,
) -> None:
    async with line(tmp_path) as (modem, sim):
        await modem.open()
        sim.unplug()

        async def keep_asking() -> None:
            while True:
                await modem.signal()
                await asyncio.sleep(0.1)

        with pytest.raises(ModemGone):
            await asyncio.wait_for(keep_asking(), 10)
        with pytest.raises(ModemGone, match="cannot open"):
            await AtModem(str(tmp_path / "modem0")).open()
