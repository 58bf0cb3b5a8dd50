"""GPS over a serial line: a UART (``/dev/serial0``), a USB receiver (``/dev/ttyACM0``)
or a pseudo-terminal written by the simulator. All three go through this one reader.

The reader never gives up on the device: if it cannot be opened, or disappears (USB
unplugged, pty closed), it retries every :attr:`NmeaSerialSource.retry_interval` seconds
and resumes within that interval (plus one open) of the device coming back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from datetime import date

import serial

from sosbeacon.device.clock import Clock, MonotonicClock
from sosbeacon.device.gps import Fix, GpsStats
from sosbeacon.hw.link import Link
from sosbeacon.hw.nmea import DEFAULT_DATE_FLOOR, NmeaDecoder
from sosbeacon.hw.serial_line import open_protocol

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
        self._transport: asyncio.Transport | None = None
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
            # Each connection starts a fresh decoder: a half-sentence from before the
            # unplug must not be glued to what the device sends after.
            feed = _Feed(NmeaDecoder(date_floor=self._date_floor, stats=self._stats), self._clock)
            try:
                transport = await open_protocol(self.port, self.baudrate, feed)
            except (OSError, serial.SerialException) as exc:
                await link.open_failed(exc)
                continue
            link.opened()
            self._transport = transport
            try:
                async for fix in self._read(feed):
                    yield fix
            finally:
                link.closed()
                self._transport = None
                # abort(), not close(): close() drains the output with tcdrain() in a
                # worker thread, which never returns on a line whose other end is gone
                # (a pty whose master closed) and would hang shutdown.
                if not transport.is_closing():
                    transport.abort()
            await link.lost()

    async def _read(self, feed: _Feed) -> AsyncIterator[Fix]:
        """The fixes the line's bytes make, as epochs end. The bytes are decoded as they
        arrive (in the protocol, with no task woken per chunk); this task wakes once a
        fix is ready, or once a second of silence to close an epoch whose end was not
        recognised."""
        while True:
            if not feed.fixes and not feed.gone:
                feed.ready.clear()
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a
                    # cancellation that meets a read completing (python/cpython#86296)
                    async with asyncio.timeout(self.idle_flush):
                        await feed.ready.wait()
                except TimeoutError:
                    if feed.silent() >= self.idle_flush:
                        feed.fixes.extend(feed.decoder.flush(self._clock.monotonic()))
            while feed.fixes:
                yield feed.fixes.popleft()
            if feed.gone:
                for fix in feed.decoder.flush(self._clock.monotonic()):
                    yield fix
                return

    async def send(self, sentence: bytes) -> None:
        """Write raw bytes to the receiver (configuration and power commands).

        Raises :class:`ConnectionError` when the device is not open.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError(f"GPS device {self.port} is not open")
        transport.write(sentence)  # a few bytes: the transport sends them as it can


class _Feed(asyncio.Protocol):
    """The line's bytes into the decoder, as they arrive; the fixes they complete wait
    in :attr:`fixes` for the reading task, woken by :attr:`ready`."""

    def __init__(self, decoder: NmeaDecoder, clock: Clock) -> None:
        self.decoder = decoder
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self.fixes: deque[Fix] = deque()
        self.ready = asyncio.Event()
        #: when bytes last came (the event loop's time)
        self.last = self._loop.time()
        #: the line went away (EOF, a read error): what is left is flushed
        self.gone = False

    def silent(self) -> float:
        """Seconds since bytes last came (the event loop's time, as its timeouts')."""
        return self._loop.time() - self.last

    def data_received(self, data: bytes) -> None:
        self.last = self._loop.time()
        fixes = self.decoder.feed(data, self._clock.monotonic())
        if fixes:
            self.fixes.extend(fixes)
            self.ready.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("read from the GPS line failed: %s", exc)
        self.gone = True
        self.ready.set()
