"""A simulated cellular modem's AT port, on a pseudo-terminal: the real driver
(:mod:`hw.modem.driver`) talks to it as it would to a SIM7600 or an EC25.

It answers the subset the driver uses from a small state model: echo, numeric errors,
the SIM PIN, PDU mode, registration (+CREG/+CGREG/+CEREG), signal (+CSQ), sending
(+CMGS with the ``> `` prompt), the SIM's message store (+CMGR, +CMGD). On demand it
refuses the next sends (``+CMS ERROR: 500``, or the network's rejection), loses
coverage, resets (``RDY``, echo back on) or disappears (the pty unplugged). Delivery
reports follow a send after :attr:`report_delay`. Messages from a number are stored and
announced (``+CMTI``), a long one in parts. What was "sent to the network" is kept in
:attr:`sent`, for tests and drills to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sosbeacon.hw.modem import pdu
from sosbeacon.sim.gps.pty import PtyPort

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SentSms:
    """One message the simulated network carried: to whom, its text (this part's), its
    place in a long text, and the reference the modem gave it."""

    to: str
    text: str
    concat: tuple[int, int, int] | None
    reference: int
    at: float


@dataclass
class ModemState:
    pin: str = ""
    pin_entered: bool = False
    #: +CREG/+CGREG/+CEREG ``<stat>``: 1 home, 2 searching, 3 denied, 5 roaming
    registration: int = 1
    #: +CSQ ``<rssi>`` (0-31, 99 unknown)
    rssi: int = 18
    echo: bool = True
    pdu_mode: bool = False
    #: the next sends fail with these +CMS ERROR codes, one each (500, 42, ...)
    fail_sends: list[int] = field(default_factory=list)


class SimAtModem:
    def __init__(self, path: Path, *, pin: str = "", report_delay: float = 0.3) -> None:
        self.port = PtyPort(path, baudrate=None)
        self.state = ModemState(pin=pin)
        self.report_delay = report_delay
        self.sent: list[SentSms] = []
        #: AT commands answered (a test checks what does not talk to the modem)
        self.commands = 0
        self._store: dict[int, bytes] = {}
        self._next_index = 1
        self._mr = 0
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        #: a +CMTI to slip in before the next answer (a URC in the middle of a command)
        self._urc_before_next: bytes = b""

    @property
    def path(self) -> Path:
        return self.port.path

    @property
    def stored(self) -> int:
        """Messages waiting in the SIM's store (read ones are deleted by the driver)."""
        return len(self._store)

    def start(self) -> None:
        self._task = asyncio.create_task(self._serve())

    async def close(self) -> None:
        for t in [*self._jobs, *([self._task] if self._task else [])]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.port.close()

    # -- the world ------------------------------------------------------------------------

    async def sms_from(self, number: str, text: str, *, at: datetime | None = None) -> None:
        """A message from ``number`` arrives: stored in the SIM, announced by index."""
        when = at or datetime.now(UTC)
        self._mr = (self._mr + 1) % 256
        for part in pdu.split(text, self._mr):
            index = self._next_index
            self._next_index += 1
            self._store[index] = pdu.deliver(number, part, when)
            await self._send(f'\r\n+CMTI: "SM",{index}\r\n'.encode())

    def urc_in_next_answer(self, number: str, text: str) -> None:
        """The next command's answer comes after a +CMTI for a new message (a URC in
        the middle of a command, as modems do)."""
        index = self._next_index
        self._next_index += 1
        self._store[index] = pdu.deliver(number, pdu.split(text, 0)[0], datetime.now(UTC))
        self._urc_before_next = f'\r\n+CMTI: "SM",{index}\r\n'.encode()

    async def reset(self) -> None:
        """The modem restarts: echo back on, text mode, then ``RDY``."""
        self.state.echo, self.state.pdu_mode = True, False
        self.state.pin_entered = False
        await self._send(b"\r\nRDY\r\n")

    def unplug(self) -> None:
        self.port.unplug()

    # -- the line -------------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        await self.port.write(data)

    async def _serve(self) -> None:
        buf = b""
        while True:
            chunk = await self.port.read()
            if not chunk:
                await asyncio.sleep(0.1)  # unplugged: nothing to say until plugged again
                continue
            buf += chunk
            while b"\r" in buf:
                line, buf = buf.split(b"\r", 1)
                text = line.decode(errors="replace").strip()
                if not text:
                    continue
                if self.state.echo:
                    await self._send(line + b"\r\n")
                if text.upper().startswith("AT+CMGS="):
                    buf = await self._cmgs(text, buf)
                else:
                    await self._answer(text)

    async def _reply(self, *lines: str) -> None:
        pre, self._urc_before_next = self._urc_before_next, b""
        body = "".join(f"\r\n{x}\r\n" for x in lines)
        await self._send(pre + body.encode())

    async def _answer(self, cmd: str) -> None:
        self.commands += 1
        s = self.state
        up = cmd.upper()
        if up in ("AT", "AT+CMEE=1", "AT+CNMI=2,1,0,1,0"):
            await self._reply("OK")
        elif up in ("ATE0", "ATE1"):
            s.echo = up == "ATE1"
            await self._reply("OK")
        elif up == "AT+CPIN?":
            ready = not s.pin or s.pin_entered
            await self._reply("+CPIN: READY" if ready else "+CPIN: SIM PIN", "OK")
        elif up.startswith("AT+CPIN="):
            if cmd.split("=", 1)[1].strip('"') == s.pin:
                s.pin_entered = True
                await self._reply("OK")
            else:
                await self._reply("+CME ERROR: 16")
        elif not self._sim_ready():
            await self._reply("+CME ERROR: 11")
        elif up == "AT+CMGF=0":
            s.pdu_mode = True
            await self._reply("OK")
        elif up in ("AT+CREG?", "AT+CGREG?", "AT+CEREG?"):
            await self._reply(f"+{up[3:-1]}: 0,{s.registration}", "OK")
        elif up == "AT+CSQ":
            await self._reply(f"+CSQ: {s.rssi},99", "OK")
        elif up.startswith("AT+CMGR="):
            raw = self._store.get(int(up.split("=")[1]) if up.split("=")[1].isdigit() else -1)
            if raw is None:
                await self._reply("+CMS ERROR: 321")
            else:
                await self._reply(f"+CMGR: 0,,{len(raw) - raw[0] - 1}", raw.hex().upper(), "OK")
        elif up.startswith("AT+CMGD="):
            with contextlib.suppress(ValueError):
                self._store.pop(int(up.split("=")[1]), None)
            await self._reply("OK")
        else:
            await self._reply("ERROR")

    def _sim_ready(self) -> bool:
        return not self.state.pin or self.state.pin_entered

    async def _cmgs(self, cmd: str, buf: bytes) -> bytes:
        """AT+CMGS=<length>: the prompt, the PDU up to Ctrl-Z, then the network's say."""
        await self._send(b"\r\n> ")
        while b"\x1a" not in buf and b"\x1b" not in buf:
            chunk = await self.port.read()
            if not chunk:
                return b""
            buf += chunk
        cut = min(i for i in (buf.find(b"\x1a"), buf.find(b"\x1b")) if i >= 0)
        body, ended, rest = buf[:cut], buf[cut : cut + 1], buf[cut + 1 :]
        if ended == b"\x1b":
            await self._reply("OK")  # abandoned
            return rest
        s = self.state
        if not s.pdu_mode or not self._sim_ready():
            await self._reply("+CMS ERROR: 302")
            return rest
        if s.registration not in (1, 5):
            await self._reply("+CMS ERROR: 331")  # no network service
            return rest
        if s.fail_sends:
            await self._reply(f"+CMS ERROR: {s.fail_sends.pop(0)}")
            return rest
        try:
            raw = bytes.fromhex(body.decode().strip())
            sca = raw[0] + 1
            got = pdu.read_submit(raw[sca:])
        except (ValueError, pdu.PduError):
            await self._reply("+CMS ERROR: 304")
            return rest
        self._mr = (self._mr + 1) % 256
        self.sent.append(
            SentSms(got.to, got.text, got.concat, self._mr, asyncio.get_running_loop().time())
        )
        await self._reply(f"+CMGS: {self._mr}", "OK")
        if got.report:
            job = asyncio.create_task(self._report_later(self._mr, got.to))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        return rest

    async def _report_later(self, mr: int, to: str) -> None:
        await asyncio.sleep(self.report_delay)
        raw = pdu.status_report(mr, to, 0x00, datetime.now(UTC))
        await self._send(f"\r\n+CDS: {len(raw) - 1}\r\n{raw.hex().upper()}\r\n".encode())
