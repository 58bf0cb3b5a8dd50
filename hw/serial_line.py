"""Opening a serial line (a UART, a USB serial device, a pty) for asyncio: the GPS
receiver (a protocol fed as bytes arrive) and the modem (streams, for its dialogue)
both come through here.

pyserial's ``Serial.read`` waits with ``select()``, which refuses a descriptor numbered
1024 or more ("filedescriptor out of range in select()"): a process that holds many
descriptors (a fleet of simulated devices in one process, or a daemon that grew) would
lose its GPS to that. The line is opened with pyserial's ``PosixPollSerial`` instead,
whose reads wait with ``poll()``, which has no such limit. A URL (``socket://``,
``rfc2217://``, ``loop://``) still goes through ``serial_for_url``.
"""

from __future__ import annotations

import asyncio

import serial
import serial_asyncio_fast
from serial.serialposix import PosixPollSerial


def _open(port: str, baudrate: int) -> serial.Serial:
    if "://" in port:
        return serial.serial_for_url(port, baudrate=baudrate)
    return PosixPollSerial(port, baudrate=baudrate)


async def open_protocol(port: str, baudrate: int, protocol: asyncio.Protocol) -> asyncio.Transport:
    """``port`` open, its bytes handed to ``protocol`` as they come; its transport.
    Raises :class:`OSError` or :class:`serial.SerialException` when it cannot be
    opened."""
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, _open, port, baudrate)
    transport, _ = await serial_asyncio_fast.connection_for_serial(loop, lambda: protocol, line)
    return transport


async def open_line(port: str, baudrate: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``port`` open, as a reader and a writer (for a dialogue: the modem)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = await open_protocol(port, baudrate, protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
