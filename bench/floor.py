"""The floor of the footprint bench: a process that only reads NMEA lines from a serial
port with pyserial-asyncio-fast and does nothing with them. Nothing the daemon does for
a receiver at 1 Hz can cost less than this.

    python -m bench.floor PORT [BAUD]
"""

from __future__ import annotations

import asyncio
import sys

import serial_asyncio_fast


class _Lines(asyncio.Protocol):
    def __init__(self) -> None:
        self.lines = 0

    def data_received(self, data: bytes) -> None:
        self.lines += data.count(b"\n")


async def _read(port: str, baud: int) -> None:
    loop = asyncio.get_running_loop()
    await serial_asyncio_fast.create_serial_connection(loop, _Lines, port, baudrate=baud)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_read(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9600))
