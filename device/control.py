"""The control socket between ``sosctl`` and the running ``sosd``: a Unix stream socket
in the data directory, readable and writable by the daemon's user and group only, one
JSON request and one JSON answer per line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sosbeacon.device.errors import SosbeaconError

log = logging.getLogger(__name__)
#: a handler answers a request with one object, or with a stream of them (``events``):
#: each a line, until the client goes away
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | AsyncIterator[dict[str, Any]]]]
#: an answer (an export) may be large; requests are small
LIMIT = 64 * 1024 * 1024


class NotRunning(SosbeaconError, ConnectionError):
    """No daemon answers on the socket."""


def _claim(path: Path) -> None:
    """Refuse if another daemon answers on ``path``; remove a stale socket (a crash)."""
    if path.exists():
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1)
            probe.connect(str(path))
            raise RuntimeError(f"another sosd is already running (it answers on {path})")
        path.unlink()


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """Listen on ``path`` (mode 0660)."""
    _claim(path)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    answer = await handler(request)
                    if not isinstance(answer, dict):
                        await _stream(answer, reader, writer)
                        return
                except (ValueError, json.JSONDecodeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # a control request must never take the daemon down
                    log.exception("control request failed")
                    answer = {"ok": False, "error": f"internal error: {exc}"}
                writer.write(json.dumps(answer, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_client, sock=_bound(path), limit=1024 * 1024)
    os.chmod(path, 0o660)
    return server


def _bound(path: Path) -> socket.socket:
    """A socket bound at ``path`` that nobody but its owner can connect to until it is
    opened to the group. Linux gives the new file the socket's own mode (less the umask),
    so the mode is set on the socket before ``bind``: the process-wide umask is never
    touched (changing it across an ``await`` leaked into every thread and every other
    daemon in the process, and made their temp directories unenterable)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


async def _stream(
    items: AsyncIterator[dict[str, Any]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Write ``items`` a line each until the client leaves (noticed at once, even with
    nothing to send: a follower that went away holds nothing)."""
    gone = asyncio.ensure_future(reader.read())  # EOF when the client closes
    it = aiter(items)
    try:
        while True:
            nxt: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(it))
            either: set[asyncio.Future[Any]] = {nxt, gone}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            writer.write(json.dumps(item, default=str).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        return
    finally:
        gone.cancel()
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):  # already closing
                await aclose()


async def follow(path: Path, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Send a streaming request (``{"cmd": "events"}``) and yield what comes, until the
    daemon closes the connection; raises :class:`NotRunning` if none answers."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=LIMIT)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(f"sosd is not running (nothing answers on {path})") from exc
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            yield json.loads(line)
    finally:
        writer.close()


async def request(path: Path, message: dict[str, Any], *, within: float = 30.0) -> dict[str, Any]:
    """Send one request to the daemon at ``path``; raises :class:`NotRunning`."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=LIMIT), within
        )
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotRunning(
            f"sosd is not running (nothing answers on {path}). Start it with "
            "`systemctl start sosbeacon` or `sosd run`; if it runs with another data "
            "directory, pass the same --config or --data-dir."
        ) from exc
    except PermissionError as exc:
        raise NotRunning(
            f"no permission to use {path}: run sosctl as the daemon's user, or add yourself "
            "to its group (sudo usermod -aG sosbeacon $USER, then log in again)"
        ) from exc
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), within)
    finally:
        writer.close()
    if not line:
        raise NotRunning(f"sosd closed the connection on {path} without answering")
    answer: dict[str, Any] = json.loads(line)
    return answer
