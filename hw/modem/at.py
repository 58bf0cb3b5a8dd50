"""AT commands over a serial line (3GPP TS 27.007 / 27.005): one command at a time,
its response lines told apart from unsolicited result codes (URCs), which a modem may
send at any moment, in the middle of a command's answer included.

* A command's lines are those carrying its own prefix (``+CSQ:`` for ``AT+CSQ``) or no
  URC prefix at all; a line with a URC prefix goes to the URC handler. ``+CMT:`` and
  ``+CDS:`` are two lines (a header, then the PDU).
* ``OK`` ends a command; ``ERROR``, ``+CME ERROR: <n>`` and ``+CMS ERROR: <n>`` end it
  with a :class:`ModemError` that says what the number means.
* ``AT+CMGS`` waits for the ``> `` prompt before it sends its PDU and Ctrl-Z.
* The line going away (a USB modem unplugged) ends every waiting command with
  :class:`ModemGone`; the driver opens it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sosbeacon.device.errors import SosbeaconError

log = logging.getLogger(__name__)

#: what a modem may say unprompted
URC_PREFIXES = (
    "+CMTI:", "+CMT:", "+CDS:", "+CDSI:", "+CREG:", "+CEREG:", "+CGREG:", "RING",
    "+CLIP:", "RDY", "+CPIN:", "SMS DONE", "PB DONE", "+CFUN:", "NO CARRIER",
)  # fmt: skip
#: URCs followed by a second line (the PDU)
TWO_LINE_URCS = ("+CMT:", "+CDS:")

#: TS 27.007 9.2, +CME ERROR (mobile equipment)
CME = {
    0: "phone failure", 3: "operation not allowed", 4: "operation not supported",
    10: "SIM not inserted", 11: "SIM PIN required", 12: "SIM PUK required",
    13: "SIM failure", 14: "SIM busy", 15: "SIM wrong", 16: "incorrect password",
    17: "SIM PIN2 required", 18: "SIM PUK2 required", 20: "memory full",
    21: "invalid index", 22: "not found", 23: "memory failure", 30: "no network service",
    31: "network timeout", 32: "network not allowed, emergency calls only", 100: "unknown",
}  # fmt: skip
#: TS 27.005 3.2.5, +CMS ERROR (message service); 0-127 are the network's RP causes
#: (TS 24.011 E.2), 128-255 the TP failure causes (TS 23.040 9.2.3.22)
CMS = {
    1: "unassigned (unallocated) number", 8: "operator determined barring",
    10: "call barred", 21: "short message transfer rejected", 27: "destination out of service",
    28: "unidentified subscriber", 29: "facility rejected", 30: "unknown subscriber",
    38: "network out of order", 41: "temporary failure", 42: "congestion",
    47: "resources unavailable", 50: "requested facility not subscribed",
    69: "requested facility not implemented", 81: "invalid short message reference",
    96: "invalid mandatory information", 111: "protocol error", 127: "interworking",
    300: "ME failure", 301: "SMS service of ME reserved", 302: "operation not allowed",
    303: "operation not supported", 304: "invalid PDU mode parameter",
    305: "invalid text mode parameter", 310: "SIM not inserted", 311: "SIM PIN required",
    313: "SIM failure", 314: "SIM busy", 315: "SIM wrong", 320: "memory failure",
    321: "invalid memory index", 322: "memory full", 330: "SMSC address unknown",
    331: "no network service", 332: "network timeout", 500: "unknown error",
}  # fmt: skip
#: failures an SMS may succeed after (retry later); the rest will not change by waiting
CMS_TEMPORARY = {38, 41, 42, 47, 331, 332, 314, 500}


class ModemError(SosbeaconError, OSError):
    """The modem refused a command: ``kind`` is ``CME``, ``CMS``, ``ERROR`` or
    ``timeout``, ``code`` its number, ``meaning`` what that number means."""

    def __init__(self, command: str, kind: str, code: int | None = None) -> None:
        self.command, self.kind, self.code = command, kind, code
        table = CME if kind == "CME" else CMS if kind == "CMS" else {}
        self.meaning = (
            table.get(code, f"error {code}") if code is not None else
            ("no answer in time" if kind == "timeout" else "refused")
        )  # fmt: skip
        shown = f"+{kind} ERROR: {code}" if code is not None else kind
        super().__init__(f"the modem answered {command!r} with {shown} ({self.meaning})")

    @property
    def temporary(self) -> bool:
        """Whether the same command may succeed later, unchanged."""
        if self.kind == "timeout":
            return True
        return self.kind == "CMS" and self.code in CMS_TEMPORARY


class ModemGone(ModemError):
    """The serial line went away (unplugged, reset to another port)."""

    def __init__(self, command: str = "", why: str = "the line closed") -> None:
        SosbeaconError.__init__(self)
        self.command, self.kind, self.code, self.meaning = command, "gone", None, why
        self.args = (f"the modem's serial line is gone ({why})",)


@dataclass
class _Pending:
    command: str
    prefix: str | None
    lines: list[str] = field(default_factory=list)
    done: asyncio.Future[list[str]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    prompt: asyncio.Event = field(default_factory=asyncio.Event)


#: a URC as it arrived: its first line, and its PDU line for the two-line ones
Urc = Callable[[str, str | None], None]


class AtChannel:
    """Commands and URCs over a reader and writer (a serial line, a pty)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_urc: Urc
    ) -> None:
        self._reader, self._writer = reader, writer
        self._on_urc = on_urc
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._urc_head: str | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop())

    async def command(
        self, line: str, *, prefix: str | None = None, within: float = 10.0,
        data: bytes | None = None,
    ) -> list[str]:  # fmt: skip
        """Send ``line``; returns its response lines (those starting with ``prefix``, or
        with no URC prefix). With ``data``, it is sent after the ``> `` prompt, then
        Ctrl-Z."""
        async with self._lock:
            if self.closed.done():
                raise ModemGone(line, self.closed.result())
            pending = self._pending = _Pending(line, prefix)
            try:
                self._writer.write(line.encode() + b"\r")
                if data is not None:
                    try:
                        async with asyncio.timeout(within):  # not wait_for: python/cpython#86296
                            await pending.prompt.wait()
                    except TimeoutError:
                        self._writer.write(b"\x1b")  # abandon the message
                        raise ModemError(line, "timeout") from None
                    self._writer.write(data + b"\x1a")
                try:
                    async with asyncio.timeout(within):
                        return await asyncio.shield(pending.done)
                except TimeoutError:
                    raise ModemError(line, "timeout") from None
            finally:
                self._pending = None

    def close(self) -> None:
        self._task.cancel()
        if not self._writer.transport.is_closing():
            self._writer.transport.abort()  # never drain into a line that is gone
        self._finish("closed by us")

    def _finish(self, why: str) -> None:
        if not self.closed.done():
            self.closed.set_result(why)
        p = self._pending
        if p is not None and not p.done.done():
            p.done.set_exception(ModemGone(p.command, why))

    async def _read_loop(self) -> None:
        buf = b""
        try:
            while True:
                chunk = await self._reader.read(4096)
                if not chunk:
                    self._finish("end of file")
                    return
                buf += chunk
                buf = self._take_lines(buf)
        except (OSError, ConnectionError) as exc:
            self._finish(str(exc) or type(exc).__name__)
        except asyncio.CancelledError:
            self._finish("closed by us")
            raise

    def _take_lines(self, buf: bytes) -> bytes:
        while True:
            stripped = buf.lstrip(b"\r\n")
            p = self._pending
            if stripped.startswith(b"> ") and p is not None and not p.prompt.is_set():
                p.prompt.set()  # the prompt ends no line
                buf = stripped[2:]
                continue
            cut = min(
                (i for i in (stripped.find(b"\r"), stripped.find(b"\n")) if i >= 0), default=-1
            )
            if cut < 0:
                return stripped
            line, buf = stripped[:cut].decode(errors="replace").strip(), stripped[cut + 1 :]
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        if self._urc_head is not None:  # the PDU line of a two-line URC
            head, self._urc_head = self._urc_head, None
            self._urc(head, line)
            return
        p = self._pending
        if p is not None and line == p.command:
            return  # the modem's echo (before ATE0 took effect, or after a reset)
        own = p is not None and p.prefix is not None and line.startswith(p.prefix)
        if not own and line.startswith(URC_PREFIXES):
            if line.startswith(TWO_LINE_URCS):
                self._urc_head = line
            else:
                self._urc(line, None)
            return
        if p is None or p.done.done():
            log.debug("modem said %r, unasked", line)
            return
        if line == "OK":
            p.done.set_result(p.lines)
        elif line == "ERROR":
            p.done.set_exception(ModemError(p.command, "ERROR"))
        elif line.startswith(("+CME ERROR:", "+CMS ERROR:")):
            kind = line[1:4]
            code = line.split(":", 1)[1].strip()
            p.done.set_exception(ModemError(p.command, kind, int(code) if code.isdigit() else None))
        else:
            p.lines.append(line)

    def _urc(self, line: str, pdu_line: str | None) -> None:
        try:
            self._on_urc(line, pdu_line)
        except Exception:  # a URC handler's bug must not stop the line
            log.exception("handling the modem's %r failed", line)
