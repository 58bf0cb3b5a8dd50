"""Commands from contacts (over MQTT ``cmd``) applied to the SOS controller.

:class:`CommandDesk` answers one inbound command message: it refuses a retained one,
validates its shape (:func:`device.wire.parse_command`), answers a redelivery from
memory instead of running it twice, and records the outcome as an event.
:class:`SosCommands` decides what a valid command means for the device now, and refuses
what it cannot do with a message for the sender.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.events import EventKind, Events
from sosbeacon.device.mqtt import Inbound
from sosbeacon.device.sos import SosController, SosRefused
from sosbeacon.device.wire import Command, CommandError, CommandName, command_id, parse_command

if TYPE_CHECKING:
    from sosbeacon.device.voice import VoiceNotes

log = logging.getLogger(__name__)

#: at most this many commands of one kind from one sender ...
RATE_COUNT = 10
#: ... in this many seconds; beyond, they are refused until the window has moved on
RATE_WINDOW = 60.0
#: acknowledgements of one session by one contact within this many seconds are one
ACK_INTERVAL = 60.0


class CommandHandler(Protocol):
    async def __call__(self, cmd: Command) -> dict[str, Any]:
        """Apply ``cmd``; returns what the reply says. Raises :class:`CommandError`."""
        ...


class SosCommands:
    """Applies commands, limited per sender (``by``) and kind: a flood (5,000 ``ack``
    in two seconds) must neither fill the outbox nor drown an SOS in ``sos-ack``
    records. Repeated acknowledgements of one session by one contact within
    :data:`ACK_INTERVAL` are answered as done and recorded once."""

    def __init__(
        self,
        controller: SosController,
        *,
        clock: Clock | None = None,
        voice: VoiceNotes | None = None,
    ) -> None:
        self.controller = controller
        #: the voice notes, when the device has a microphone (``voice-now``)
        self.voice = voice
        self._clock = clock or MonotonicClock()
        #: (sender, kind) -> times of its recent commands
        self._recent: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        #: (sender, session) -> when its acknowledgement was recorded
        self._acked: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _limit(self, cmd: Command) -> None:
        now = self._clock.monotonic()
        key = (cmd.by or "", cmd.name.value)
        times = self._recent.setdefault(key, deque())
        self._recent.move_to_end(key)
        while times and now - times[0] >= RATE_WINDOW:
            times.popleft()
        if len(times) >= RATE_COUNT:
            raise CommandError(
                f"too many {cmd.name.value} commands from {cmd.by or 'an unnamed sender'}: at "
                f"most {RATE_COUNT} in {RATE_WINDOW:.0f} s; try again later"
            )
        times.append(now)
        while len(self._recent) > 1024:  # senders are few; a flood of names is bounded
            self._recent.popitem(last=False)

    async def __call__(self, cmd: Command) -> dict[str, Any]:
        self._limit(cmd)
        try:
            return await COMMANDS[cmd.name].run(self, cmd)
        except SosRefused as exc:
            raise CommandError(str(exc)) from None

    async def _cancel(self, cmd: Command) -> dict[str, Any]:
        ctl = self.controller
        if cmd.session is not None and (ctl.session is None or ctl.session.id != cmd.session):
            raise SosRefused(f"session {cmd.session} is not active; nothing cancelled")
        if not await ctl.stop(trigger=f"cmd:cancel{':' + cmd.by if cmd.by else ''}"):
            raise SosRefused("no SOS or countdown is active; nothing cancelled")
        return {"state": ctl.state.value}

    async def _drill(self, cmd: Command) -> dict[str, Any]:
        ctl = self.controller
        await ctl.start(trigger="cmd:drill", drill=True, now=True)
        assert ctl.session is not None
        return {"session": ctl.session.id, "drill": True}

    async def _locate_now(self, cmd: Command) -> dict[str, Any]:
        return {"fix_age": await self.controller.locate_now()}

    async def _voice_now(self, cmd: Command) -> dict[str, Any]:
        if self.voice is None:
            raise SosRefused("this device has no microphone: no voice note is recorded")
        self.controller.current(cmd.session)  # a stale command for an earlier SOS: refused
        return await self.voice.now(cmd.by)

    async def _ack(self, cmd: Command) -> dict[str, Any]:
        ctl = self.controller
        current = ctl.session.id if ctl.session is not None else None
        now = self._clock.monotonic()
        at = self._acked.get((cmd.by or "", current or ""))
        same = cmd.session in (None, current)
        if current is not None and same and at is not None and now - at < ACK_INTERVAL:
            return {"session": current, "recorded": False}  # acknowledged already
        session = await ctl.acknowledge(
            by=cmd.by, session=cmd.session, contact=cmd.contact, via=cmd.via
        )
        self._acked[(cmd.by or "", session)] = now
        while len(self._acked) > 1024:
            self._acked.popitem(last=False)
        return {"session": session}


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command: what it does, and how ``sosctl`` offers it."""

    name: CommandName
    help: str
    run: Callable[[SosCommands, Command], Awaitable[dict[str, Any]]]
    #: whether it names the session it is meant for (``--session`` in sosctl)
    takes_session: bool = True


#: Every command, by name: the one place to add one. The same table serves contacts
#: (MQTT ``cmd``, through :class:`CommandDesk`), the control socket (``{"cmd": name}``)
#: and ``sosctl <name>``. :class:`~device.wire.CommandName` is the wire's vocabulary of
#: them (the relay speaks it too); a test fails if the two disagree.
COMMANDS: dict[CommandName, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(CommandName.ACK, "acknowledge the SOS, as a contact would", SosCommands._ack),
        CommandSpec(CommandName.CANCEL, "stop the SOS (or its countdown)", SosCommands._cancel),
        CommandSpec(
            CommandName.DRILL, "start a drill now, flagged end to end", SosCommands._drill, False
        ),
        CommandSpec(
            CommandName.LOCATE_NOW,
            "record the freshest fix now as a live position",
            SosCommands._locate_now,
            False,
        ),
        CommandSpec(
            CommandName.VOICE_NOW,
            "record a voice note now (if the owner shares voice)",
            SosCommands._voice_now,
        ),
    )
}


class CommandDesk:
    """Answers inbound command messages (the uplink hands them over as they arrive)."""

    #: the answers kept for redeliveries
    REMEMBERED = 256

    def __init__(self, handler: CommandHandler | None, events: Events) -> None:
        self._handler = handler
        self._events = events
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.received = 0
        self.rejected = 0

    @property
    def takes_commands(self) -> bool:
        return self._handler is not None

    async def answer(self, m: Inbound) -> dict[str, Any]:
        """The reply to ``m`` (never raises: a command must not take the daemon down)."""
        self.received += 1
        cmd_id: str | None = None
        try:
            if m.retain:
                raise CommandError(
                    "retained commands are ignored (they would run again at every "
                    "reconnect): publish commands without the retain flag"
                )
            cmd = parse_command(m.payload)
            cmd_id = cmd.id
            if cmd.id is not None and cmd.id in self._done:
                return self._done[cmd.id]  # a redelivery: answered, not re-run
            if self._handler is None:
                raise CommandError("this device does not take commands")
            result = await self._handler(cmd)
            reply: dict[str, Any] = {"id": cmd.id, "cmd": cmd.name.value, "ok": True, **result}
            log.info("command %s%s done", cmd.name.value, f" ({cmd.by})" if cmd.by else "")
        except CommandError as exc:
            self.rejected += 1
            log.warning("command on %s rejected: %s", m.topic, exc)
            reply = {"id": cmd_id or command_id(m.payload), "ok": False, "error": str(exc)}
        except Exception as exc:  # a command must never take the daemon down
            self.rejected += 1
            log.exception("command on %s failed", m.topic)
            reply = {"id": cmd_id, "ok": False, "error": f"internal error: {exc}"}
        self._events.emit(
            EventKind.COMMAND,
            cmd=reply.get("cmd"),
            id=reply.get("id"),
            ok=reply["ok"],
            **({"error": reply["error"]} if not reply["ok"] else {}),
        )
        if cmd_id is not None:
            self._done[cmd_id] = reply
            while len(self._done) > self.REMEMBERED:
                self._done.popitem(last=False)
        return reply
