"""The modem driver: a cellular modem's AT port, for SMS (TS 27.005) and for what the
network says of us (TS 27.007: registration, signal).

:meth:`AtModem.open` sets the modem up, and again after it resets (it says ``RDY`` or
``+CPIN: READY`` unasked): echo off, numeric errors, the SIM PIN if one is asked for
(never logged), PDU mode, and new-message indications (``+CMTI`` for a stored message,
``+CDS`` for a delivery report). Received messages are read, deleted from the SIM and
handed out whole (the parts of a long one joined); delivery reports are handed out as
they come.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import serial

from sosbeacon.device.actuators import Incoming
from sosbeacon.hw.modem import pdu
from sosbeacon.hw.modem.at import AtChannel, ModemError, ModemGone
from sosbeacon.hw.serial_line import open_line

log = logging.getLogger(__name__)


class Registered(enum.IntEnum):
    """``<stat>`` of +CREG / +CGREG / +CEREG."""

    NOT_SEARCHING = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5

    @property
    def on_network(self) -> bool:
        return self in (Registered.HOME, Registered.ROAMING)


def registered(n: int) -> Registered:
    """TS 27.007 ``<stat>``: 6 and 9 are home (SMS only, CSFB not preferred), 7 and 10
    roaming the same ways; 8 (emergency services only) sends no SMS."""
    if 0 <= n <= 5:
        return Registered(n)
    return {6: Registered.HOME, 7: Registered.ROAMING, 9: Registered.HOME}.get(
        n, Registered.ROAMING if n == 10 else Registered.UNKNOWN
    )


@dataclass(frozen=True, slots=True)
class Signal:
    """+CSQ: received strength in dBm (None: not known), bit error rate class."""

    dbm: int | None
    ber: int | None

    @classmethod
    def of(cls, rssi: int, ber: int) -> Signal:
        dbm = None if rssi == 99 else -113 + 2 * min(rssi, 31)
        return cls(dbm, None if ber == 99 else ber)


class AtModem:
    def __init__(self, port: str, *, baudrate: int = 115200, pin: str = "") -> None:
        self.port = port
        self.baudrate = baudrate
        self._pin = pin
        self._channel: AtChannel | None = None
        #: whole messages received, and delivery reports, as they come
        self.received: asyncio.Queue[Incoming] = asyncio.Queue()
        self.reports: asyncio.Queue[pdu.StatusReport] = asyncio.Queue()
        self._parts: dict[tuple[str, int, int], dict[int, str]] = {}
        self._ref = 0
        self._jobs: set[asyncio.Task[None]] = set()
        #: how often the modem reset on its own; set each time it is set up (again)
        self.resets = 0
        self.set_up = asyncio.Event()

    # -- the line ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the port and set the modem up. Raises :class:`ModemError` (a SIM PIN
        needed and none configured, say) or :class:`ModemGone`."""
        try:
            reader, writer = await open_line(self.port, self.baudrate)
        except (OSError, serial.SerialException) as exc:
            raise ModemGone("", f"cannot open {self.port}: {exc}") from None
        self._channel = AtChannel(reader, writer, self._urc)
        await self._setup()

    def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def wait_closed(self) -> str:
        """Until the line goes away (or is closed); returns why."""
        if self._channel is None:
            return "not open"
        return await asyncio.shield(self._channel.closed)

    @property
    def at(self) -> AtChannel:
        if self._channel is None or self._channel.closed.done():
            raise ModemGone("", "not open")
        return self._channel

    async def _setup(self) -> None:
        at = self.at
        await at.command("ATE0")
        await at.command("AT+CMEE=1")
        (state,) = await at.command("AT+CPIN?", prefix="+CPIN:") or ["+CPIN: READY"]
        if "SIM PIN" in state:
            if not self._pin:
                raise ModemError("AT+CPIN?", "CME", 11)
            await at.command(f'AT+CPIN="{self._pin}"')
        elif "PUK" in state:
            raise ModemError("AT+CPIN?", "CME", 12)
        await at.command("AT+CMGF=0")
        # new messages stored and announced by index; delivery reports sent as they come
        await at.command("AT+CNMI=2,1,0,1,0")
        self.set_up.set()

    # -- what the network says ----------------------------------------------------------

    async def registration(self) -> Registered:
        """The best of circuit (+CREG), packet (+CGREG) and LTE (+CEREG) registration:
        an SMS goes over whichever the modem is on. Off the network, the most telling
        state (denied, then searching)."""
        seen: set[Registered] = set()
        for cmd in ("CREG", "CGREG", "CEREG"):
            try:
                lines = await self.at.command(f"AT+{cmd}?", prefix=f"+{cmd}:")
            except ModemGone:
                raise
            except ModemError:
                continue  # a modem without that technology
            for line in lines:
                fields = [f.strip() for f in line.split(":", 1)[1].split(",")]
                if len(fields) >= 2 and fields[1].isdigit():
                    seen.add(registered(int(fields[1])))
        order = (Registered.HOME, Registered.ROAMING, Registered.DENIED, Registered.SEARCHING)
        return next((s for s in order if s in seen), Registered.NOT_SEARCHING)

    async def signal(self) -> Signal:
        (line,) = await self.at.command("AT+CSQ", prefix="+CSQ:")
        rssi, ber = (int(x) for x in line.split(":", 1)[1].split(","))
        return Signal.of(rssi, ber)

    # -- messages -----------------------------------------------------------------------

    async def send(self, number: str, text: str, *, report: bool = True) -> list[int]:
        """Send ``text`` to ``number`` (several messages if it is long); returns the
        message reference of each, which its delivery report names. Raises
        :class:`ModemError` (``temporary`` says whether to try again later)."""
        self._ref = (self._ref + 1) % 256
        refs = []
        for part in pdu.split(text, self._ref):
            raw = pdu.submit(number, part, report=report)
            lines = await self.at.command(
                f"AT+CMGS={len(raw)}", prefix="+CMGS:", within=60.0,
                data=b"00" + raw.hex().upper().encode(),
            )  # fmt: skip
            refs.append(int(lines[0].split(":", 1)[1].strip().split(",")[0]) if lines else -1)
        return refs

    def _urc(self, line: str, pdu_line: str | None) -> None:
        if line.startswith("+CMTI:"):
            index = line.rsplit(",", 1)[-1].strip()
            if index.isdigit():
                self._spawn(self._fetch(int(index)))
        elif line.startswith("+CDS:") and pdu_line is not None:
            try:
                self.reports.put_nowait(pdu.read_status_report(bytes.fromhex(pdu_line)))
            except (ValueError, pdu.PduError) as exc:
                log.warning("an unreadable delivery report from the modem (%s); ignored", exc)
        elif line == "RDY" or line.startswith("+CPIN: READY"):
            self.resets += 1
            log.warning("the modem reset; setting it up again")
            self._spawn(self._setup())

    async def _fetch(self, index: int) -> None:
        """Read a stored message, delete it from the SIM, and hand it out once whole."""
        lines = await self.at.command(f"AT+CMGR={index}", prefix="+CMGR:")
        await self.at.command(f"AT+CMGD={index}")
        raw = next((x for x in lines if not x.startswith("+CMGR:")), "")
        try:
            got = pdu.read_deliver(bytes.fromhex(raw))
        except (ValueError, pdu.PduError) as exc:
            log.warning("an unreadable message in the SIM (%s); deleted", exc)
            return
        if got.concat is None:
            self.received.put_nowait(Incoming(got.sender, got.text))
            return
        ref, total, number = got.concat
        parts = self._parts.setdefault((got.sender, ref, total), {})
        parts[number] = got.text
        if len(parts) == total:
            del self._parts[(got.sender, ref, total)]
            text = "".join(parts[n] for n in sorted(parts))
            self.received.put_nowait(Incoming(got.sender, text))

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await job
            except ModemError as exc:
                log.warning("the modem: %s", exc)

        task = asyncio.create_task(guarded())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
