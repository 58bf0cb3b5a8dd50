"""Commands from contacts (over MQTT ``cmd``) applied to the SOS controller.

The uplink validates a command's shape (:func:`device.wire.parse_command`); this module
decides what it means for the device now, and refuses what it cannot do with a message
for the sender.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Protocol

from device.clock import Clock, MonotonicClock
from device.sos import SosController, SosRefused
from device.wire import Command, CommandError, CommandName

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

    def __init__(self, controller: SosController, *, clock: Clock | None = None) -> None:
        self.controller = controller
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
        ctl = self.controller
        self._limit(cmd)
        try:
            if cmd.name is CommandName.ACK:
                return await self._ack(cmd)
            if cmd.name is CommandName.CANCEL:
                if cmd.session is not None and (
                    ctl.session is None or ctl.session.id != cmd.session
                ):
                    raise SosRefused(f"session {cmd.session} is not active; nothing cancelled")
                stopped = await ctl.stop(trigger=f"cmd:cancel{':' + cmd.by if cmd.by else ''}")
                if not stopped:
                    raise SosRefused("no SOS or countdown is active; nothing cancelled")
                return {"state": ctl.state.value}
            if cmd.name is CommandName.DRILL:
                await ctl.start(trigger="cmd:drill", drill=True, now=True)
                assert ctl.session is not None
                return {"session": ctl.session.id, "drill": True}
            if cmd.name is CommandName.LOCATE_NOW:
                return {"fix_age": await ctl.locate_now()}
        except SosRefused as exc:
            raise CommandError(str(exc)) from None
        raise CommandError(f"command {cmd.name} is not handled")  # pragma: no cover

    async def _ack(self, cmd: Command) -> dict[str, Any]:
        ctl = self.controller
        current = ctl.session.id if ctl.session is not None else None
        now = self._clock.monotonic()
        at = self._acked.get((cmd.by or "", current or ""))
        same = cmd.session in (None, current)
        if current is not None and same and at is not None and now - at < ACK_INTERVAL:
            return {"session": current, "recorded": False}  # acknowledged already
        session = await ctl.acknowledge(by=cmd.by, session=cmd.session)
        self._acked[(cmd.by or "", session)] = now
        while len(self._acked) > 1024:
            self._acked.popitem(last=False)
        return {"session": session}
