"""Commands from contacts (over MQTT ``cmd``) applied to the SOS controller.

The uplink validates a command's shape (:func:`device.wire.parse_command`); this module
decides what it means for the device now, and refuses what it cannot do with a message
for the sender.
"""

from __future__ import annotations

from typing import Any, Protocol

from device.sos import SosController, SosRefused
from device.wire import Command, CommandError, CommandName


class CommandHandler(Protocol):
    async def __call__(self, cmd: Command) -> dict[str, Any]:
        """Apply ``cmd``; returns what the reply says. Raises :class:`CommandError`."""
        ...


class SosCommands:
    def __init__(self, controller: SosController) -> None:
        self.controller = controller

    async def __call__(self, cmd: Command) -> dict[str, Any]:
        ctl = self.controller
        try:
            if cmd.name is CommandName.ACK:
                return {"session": await ctl.acknowledge(by=cmd.by, session=cmd.session)}
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
