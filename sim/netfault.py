"""A TCP proxy between device and broker that misbehaves on demand.

Modes, switchable at run time: ``pass`` (forward, optionally with added latency and a
bandwidth cap), ``refuse`` (new connections are reset at once; existing ones too),
``blackhole`` (connections are accepted, or kept, but nothing goes through in either
direction and nothing is said: the silent link a keepalive must detect). ``reset()``
resets every connection now (RST, not FIN).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct


class LinkMode(enum.StrEnum):
    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dropped NAT or a dead box looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(
        self, *, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self._listen_port = listen_port
        self.mode = LinkMode.PASS
        #: seconds added to every chunk, each way
        self.latency = 0.0
        #: bytes per second each way, None for unlimited
        self.bandwidth: int | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self.connections = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._listen_port)
        return self

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set(self, mode: LinkMode | str) -> None:
        self.mode = LinkMode(mode)
        if self.mode is LinkMode.REFUSE:
            self.reset()

    def reset(self) -> None:
        for client, upstream in list(self._conns):
            _rst(client)
            if upstream is not None:
                _rst(upstream)
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode is LinkMode.REFUSE:
            _rst(writer)
            return
        upstream_w: asyncio.StreamWriter | None = None
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(pair)
        try:
            if self.mode is LinkMode.BLACKHOLE:
                # Swallow until the client gives up; never connect upstream.
                while await reader.read(65536):
                    pass
                return
            try:
                up_r, upstream_w = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            self._conns.discard(pair)
            pair = (writer, upstream_w)
            self._conns.add(pair)
            await asyncio.gather(self._pump(reader, upstream_w), self._pump(up_r, writer))
        finally:
            self._conns.discard(pair)
            for w in (writer, upstream_w):
                if w is not None and not w.is_closing():
                    w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(16384)
                if not data:
                    break
                if self.mode is LinkMode.BLACKHOLE:
                    continue  # dropped silently, both ways
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.bandwidth:
                    await asyncio.sleep(len(data) / self.bandwidth)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()
