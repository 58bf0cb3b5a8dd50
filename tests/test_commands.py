"""Commands from contacts: limited per sender and kind, ack floods collapsed, malformed
payloads refused with the id they carried."""

from __future__ import annotations

import pytest

from sosbeacon.device.commands import ACK_INTERVAL, COMMANDS, RATE_COUNT, RATE_WINDOW, SosCommands
from sosbeacon.device.records import MemoryRecorder, RecordKind
from sosbeacon.device.sos import Contact, SosConfig, SosController
from sosbeacon.device.wire import Command, CommandError, CommandName, command_id, parse_command
from sosbeacon.sim.clock import SimClock


async def armed(clock: SimClock) -> tuple[SosController, MemoryRecorder, SosCommands]:
    box = MemoryRecorder()
    ctl = SosController(
        config=SosConfig(contacts=(Contact("Alice"),), countdown=0), recorder=box, clock=clock
    )
    await ctl.start(trigger="cli", now=True)
    return ctl, box, SosCommands(ctl, clock=clock)


def ack(by: str | None = "Alice", session: str | None = None) -> Command:
    return Command(CommandName.ACK, by=by, session=session)


async def test_an_ack_flood_is_one_stored_ack_and_then_refused() -> None:
    clock = SimClock()
    _, box, commands = await armed(clock)
    replies, refusals = [], []
    for _ in range(5000):
        try:
            replies.append(await commands(ack()))
        except CommandError as exc:
            refusals.append(str(exc))
    refused = len(refusals)
    assert all("too many ack commands from Alice" in r for r in refusals)
    assert len(box.of(RecordKind.SOS_ACK)) == 1  # one stored acknowledgement
    assert len(replies) == RATE_COUNT and refused == 5000 - RATE_COUNT
    assert [r.get("recorded", True) for r in replies] == [True] + [False] * (RATE_COUNT - 1)
    # another contact is not held up by Alice's flood
    await commands(ack(by="Bob"))
    assert len(box.of(RecordKind.SOS_ACK)) == 2
    # once the window has moved on, Alice is heard again; past the interval, recorded again
    await clock.advance(max(RATE_WINDOW, ACK_INTERVAL))
    assert (await commands(ack()))["session"] is not None
    assert len(box.of(RecordKind.SOS_ACK)) == 3


async def test_limits_are_per_kind() -> None:
    clock = SimClock()
    ctl, _, commands = await armed(clock)
    for _ in range(RATE_COUNT):
        await commands(ack())
    with pytest.raises(CommandError, match="too many ack"):
        await commands(ack())
    await commands(Command(CommandName.CANCEL, by="Alice"))  # another kind: not limited
    assert ctl.session is None


async def test_an_ack_for_another_session_is_not_collapsed_into_this_one() -> None:
    clock = SimClock()
    ctl, box, commands = await armed(clock)
    assert ctl.session is not None
    await commands(ack(session=ctl.session.id))
    with pytest.raises(CommandError, match="not the active SOS"):
        await commands(ack(session="an-old-session"))
    assert len(box.of(RecordKind.SOS_ACK)) == 1


def test_a_deeply_nested_command_is_refused_not_a_traceback() -> None:
    payload = b"[" * 2000 + b"]" * 2000
    with pytest.raises(CommandError, match=r"nested too deeply|not JSON"):
        parse_command(payload)
    assert command_id(payload) is None


def test_a_refusal_names_the_id_that_was_sent() -> None:
    payload = b'{"cmd":"reboot","id":"c-17"}'
    with pytest.raises(CommandError, match="unknown command"):
        parse_command(payload)
    assert command_id(payload) == "c-17"
    assert command_id(b'{"cmd":"ack","id":5}') is None  # not a valid id: not echoed
    assert command_id(b"garbage") is None


def test_one_table_names_every_command_of_the_wire() -> None:
    """A command is added in one table (device.commands.COMMANDS); the wire's vocabulary
    and the table never disagree, and each is offered by sosctl."""
    from sosbeacon.device.cli import COMMAND_NAMES

    assert set(COMMANDS) == set(CommandName)
    assert all(spec.name is name and spec.help for name, spec in COMMANDS.items())
    assert {n.value for n in CommandName} == COMMAND_NAMES
