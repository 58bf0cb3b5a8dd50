"""GPS over a serial line: a UART (``/dev/serial0``), a USB receiver (``/dev/ttyACM0``)
or a pseudo-terminal written by the simulator. All three go through this one reader.

The reader never gives up on the device: if it cannot be opened, or disappears (USB
unplugged, pty closed), it retries every :attr:`NmeaSerialSource.retry_interval` seconds
and resumes within that interval (plus one open) of the device coming back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import date

import serial

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.gps import Fix, GpsStats
from sosbeacon.hw.link import Link
from sosbeacon.hw.nmea import DEFAULT_DATE_FLOOR, NmeaDecoder
from sosbeacon.hw.serial_line import open_line

log = logging.getLogger(__name__)


class NmeaSerialSource:
    """A :class:`device.gps.GpsSource` reading NMEA 0183 from a serial device.

    Use as ``async for fix in source.fixes(): ...``; the iterator runs until cancelled.
    """

    def __init__(
        self,
        *,
        port: str,
        baudrate: int = 9600,
        date_floor: date = DEFAULT_DATE_FLOOR,
        retry_interval: float = 0.5,
        idle_flush: float = 1.5,
        clock: Clock | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        #: an epoch whose end we did not recognise is closed after this much silence
        self.idle_flush = idle_flush
        self._clock = clock if clock is not None else MonotonicClock()
        self._stats = GpsStats()
        self._date_floor = date_floor
        self._writer: asyncio.StreamWriter | None = None
        self._link = Link(
            what=f"GPS device {port}",
            hint="Check the path, the cable, and that this user is in the 'dialout' group.",
            retry_interval=retry_interval,
            clock=self._clock,
            stats=self._stats,
            log=log,
        )
        #: set while the device is open
        self.connected = self._link.connected
        #: set when the device went away and everything read from it was yielded
        self.disconnected = self._link.disconnected

    @property
    def stats(self) -> GpsStats:
        return self._stats

    async def fixes(self) -> AsyncIterator[Fix]:
        link = self._link
        while True:
            try:
                reader, writer = await open_line(self.port, self.baudrate)
            except (OSError, serial.SerialException) as exc:
                await link.open_failed(exc)
                continue
            link.opened()
            self._writer = writer
            # Each connection starts a fresh decoder: a half-sentence from before the
            # unplug must not be glued to what the device sends after.
            decoder = NmeaDecoder(date_floor=self._date_floor, stats=self._stats)
            try:
                async for fix in self._read(reader, decoder):
                    yield fix
            finally:
                link.closed()
                self._writer = None
                # abort(), not close(): close() drains the output with tcdrain() in a
                # worker thread, which never returns on a line whose other end is gone
                # (a pty whose master closed) and would hang shutdown.
                if not writer.transport.is_closing():
                    writer.transport.abort()
            await link.lost()

    async def _read(self, reader: asyncio.StreamReader, decoder: NmeaDecoder) -> AsyncIterator[Fix]:
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a
                # cancellation that meets a read completing (python/cpython#86296), and a
                # read completes every second here
                async with asyncio.timeout(self.idle_flush):
                    data = await reader.read(4096)
            except TimeoutError:
                for fix in decoder.flush(self._clock.monotonic()):
                    yield fix
                continue
            except (OSError, serial.SerialException) as exc:
                log.debug("read from %s failed: %s", self.port, exc)
                data = b""
            if not data:
                for fix in decoder.flush(self._clock.monotonic()):
                    yield fix
                return
            for fix in decoder.feed(data, self._clock.monotonic()):
                yield fix

    async def send(self, sentence: bytes) -> None:
        """Write raw bytes to the receiver (configuration and power commands).

        Raises :class:`ConnectionError` when the device is not open.
        """
        if self._writer is None:
            raise ConnectionError(f"GPS device {self.port} is not open")
        self._writer.write(sentence)
        await self._writer.drain()
