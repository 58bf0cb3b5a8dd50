"""The modem as the daemon's :class:`device.actuators.SmsLink`: kept open (opened again
after it resets, is unplugged or is not there yet), its messages and failures in the
daemon's terms."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from sosbeacon.device.actuators import Incoming
from sosbeacon.hw.modem.at import ModemError, ModemGone
from sosbeacon.hw.modem.driver import AtModem

log = logging.getLogger(__name__)


class ModemSms:
    def __init__(self, modem: AtModem, *, retry: float = 5.0, wait_open: float = 30.0) -> None:
        self.modem = modem
        self.retry = retry
        self.wait_open = wait_open
        self._open = asyncio.Event()
        #: what state() last heard of the network (registration, signal)
        self._heard: dict[str, Any] = {}

    async def run(self) -> None:
        """Keep the modem open (a backend's background task)."""
        said = False
        while True:
            try:
                await self.modem.open()
            except ModemError as exc:
                if not said:
                    log.warning("the modem on %s: %s; trying again", self.modem.port, exc)
                said = True
                await asyncio.sleep(self.retry)
                continue
            said = False
            log.info("the modem on %s is ready for SMS", self.modem.port)
            self._open.set()
            why = await self.modem.wait_closed()
            self._open.clear()
            self.modem.close()
            log.warning("the modem on %s went away (%s); opening it again", self.modem.port, why)

    async def send(self, number: str, text: str) -> None:
        try:
            await asyncio.wait_for(self._open.wait(), self.wait_open)
        except TimeoutError:
            raise ModemGone("", f"the modem on {self.modem.port} is not ready") from None
        await self.modem.send(number, text)

    async def state(self) -> dict[str, Any]:
        """Ready or not, and, when ready, the network's registration and the signal
        (asked of the modem now, within two seconds)."""
        if not self._open.is_set():
            return self.known()
        try:
            async with asyncio.timeout(2):
                reg = await self.modem.registration()
                sig = await self.modem.signal()
        except (ModemError, TimeoutError) as exc:
            return {"ready": True, "port": self.modem.port, "error": str(exc) or "no answer"}
        self._heard = {
            "registered": reg.name.lower(), "on_network": reg.on_network, "signal_dbm": sig.dbm,
        }  # fmt: skip
        return self.known()

    def known(self) -> dict[str, Any]:
        if not self._open.is_set():
            return {"ready": False, "port": self.modem.port}
        return {"ready": True, "port": self.modem.port, **self._heard}

    async def incoming(self) -> AsyncIterator[Incoming]:
        while True:
            yield await self.modem.received.get()
