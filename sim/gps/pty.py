"""A serial port made of a pseudo-terminal.

The reader opens :attr:`PtyPort.path`, a symlink to the pty's slave side, exactly as it
would open ``/dev/serial/by-id/...`` on a board; the simulator writes the master side.
:meth:`PtyPort.unplug` and :meth:`PtyPort.plug` reproduce a USB receiver being pulled and
put back: the reader sees the read fail and the device node vanish, then reappear (with a
different ``/dev/pts/N`` behind the same name, as udev would do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path


class PtyPort:
    """The transmitting end of a simulated serial line.

    ``baudrate`` paces writes like a UART (10 bits per byte: start, 8 data, stop); ``None``
    writes as fast as the reader takes the bytes (used to replay captures quickly).
    """

    def __init__(self, path: Path | str, *, baudrate: int | None = 9600) -> None:
        self.path = Path(path)
        self.baudrate = baudrate
        self._master: int | None = None
        self._slave: int | None = None
        #: a read waiting for bytes (its loop, the descriptor it watches and what wakes
        #: it), woken by them or by :meth:`unplug`
        self._reading: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[None]] | None = None
        self.bytes_written = 0
        self.plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        """Create a new pty and point :attr:`path` at it."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        # Raw line discipline from the start: no echo, no CR/LF translation, no
        # canonical buffering, whatever the reader does or does not configure.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)

    def unplug(self) -> None:
        """Remove the device: the reader's next read fails and reopening it fails."""
        self._stop_reading()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def close(self) -> None:
        self.unplug()

    async def write(self, data: bytes) -> None:
        """Transmit ``data``, at the line's pace. Bytes sent while unplugged are lost, as
        on a real wire."""
        if self.baudrate is None:
            await self._write_all(data)
            return
        chunk = max(1, self.baudrate // 10 // 50)  # ~20 ms of line time per chunk
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            await self._write_all(part)
            await asyncio.sleep(len(part) * 10 / self.baudrate)

    async def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._master
            if fd is None:
                return
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                # Reader is behind: wait until the pty buffer drains.
                await _ready(fd, writing=True, within=1.0)
                continue
            except OSError:
                return
            self.bytes_written += n
            view = view[n:]

    async def read(self) -> bytes:
        """What the other end wrote, once there is some (b"" once unplugged)."""
        while True:
            fd = self._master
            if fd is None:
                return b""
            try:
                return os.read(fd, 4096)
            except BlockingIOError:
                await self._readable(fd)
            except OSError:
                return b""

    async def _readable(self, fd: int) -> None:
        """Until ``fd`` has bytes or the port is unplugged (no polling: an idle line
        costs no wake-ups, which a fleet of simulated modems would otherwise pay)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        self._reading = (loop, fd, ready)
        try:
            await ready
        finally:
            self._stop_reading()

    def _stop_reading(self) -> None:
        """The waiting read's descriptor no longer watched (before it is closed), and the
        read woken."""
        if self._reading is None:
            return
        loop, fd, ready = self._reading
        self._reading = None
        loop.remove_reader(fd)
        if not ready.done():
            ready.set_result(None)

    def read_nowait(self) -> bytes:
        """Bytes the reader sent to the receiver (configuration / power commands)."""
        if self._master is None:
            return b""
        try:
            return os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _ready(fd: int, *, writing: bool, within: float) -> None:
    """Until ``fd`` can be written (or read), or ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writing else loop.add_reader)(fd, wake)
    try:
        await asyncio.wait_for(ready, within)
    except TimeoutError:
        pass
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fd)
