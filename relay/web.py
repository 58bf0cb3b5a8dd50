"""The contacts' page: Starlette on uvicorn, inside the relay's event loop.

``/s/<token>`` is a live page of one SOS session and nothing else. No login: the link is
the capability. Every response says ``Referrer-Policy: no-referrer`` (the token never
leaks to the tile server or anywhere else) and ``X-Robots-Tag: noindex``, and carries a
strict Content-Security-Policy: scripts, styles and data only from the relay itself,
images also from the configured tile server, nothing else. No URL the page requests
holds a location, and no log line holds a token or a location (the access log is off;
the relay logs a link by its number).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.mqtt import MqttError
from sosbeacon.device.tomlconf import host_port
from sosbeacon.relay.service import Relay, sse

log = logging.getLogger("sos-relay.web")
STATIC = Path(__file__).parent / "static"
HEARTBEAT = 15.0


def tile_origin(template: str) -> str:
    """The origin the map tiles come from, for the CSP (``{s}`` subdomains as ``*``)."""
    if not template:
        return ""
    u = urlsplit(template.replace("{s}", "subdomain"))
    host = (u.hostname or "").replace("subdomain", "*")
    return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "")


def _csp(tiles: str) -> str:
    img = " ".join(x for x in ("'self'", "data:", tile_origin(tiles)) if x)
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; media-src 'self'; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; "
        "frame-ancestors 'none'"
    )


class _Headers:
    """The headers every response carries (pure ASGI: a live stream passes untouched)."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.csp = csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h["Referrer-Policy"] = "no-referrer"
                h["X-Robots-Tag"] = "noindex, nofollow, noarchive"
                h["Content-Security-Policy"] = self.csp
                h["X-Content-Type-Options"] = "nosniff"
                h["Cross-Origin-Resource-Policy"] = "same-origin"
                h["Permissions-Policy"] = "geolocation=(), camera=(), microphone=()"
                if not static:
                    h["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with)


_GONE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<link rel="icon" href="/static/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/page.css"></head>
<body class="gone"><main><h1>{title}</h1><p>{text}</p></main></body></html>"""


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def ranged(data: bytes, mime: str, header: str | None) -> Response:
    """``data``, or the part a ``Range: bytes=a-b`` header asks for (206): a browser
    reads an Ogg file's end to learn its duration."""
    size = len(data)
    common = {"Accept-Ranges": "bytes"}
    m = _RANGE.fullmatch((header or "").strip())
    if m is None or not (m.group(1) or m.group(2)):
        return Response(data, media_type=mime, headers=common)
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:  # the last N bytes
        first, last = max(0, size - int(m.group(2))), size - 1
    if first >= size or first > last:
        return Response(status_code=416, headers={**common, "Content-Range": f"bytes */{size}"})
    return Response(
        data[first : last + 1], status_code=206, media_type=mime,
        headers={**common, "Content-Range": f"bytes {first}-{last}/{size}"},
    )  # fmt: skip


def _gone_page(why: str) -> HTMLResponse:
    if why == "revoked":
        text = "This link was withdrawn. If you still need it, ask the person who sent it."
    else:
        text = (
            "This SOS route has expired: it was kept for 72 hours after the SOS ended, "
            "and has now been deleted."
        )
    return HTMLResponse(_GONE.format(title="Route no longer available", text=text), 410)


def _not_found() -> HTMLResponse:
    return HTMLResponse(
        _GONE.format(
            title="No such link",
            text="This link is not known here. Check that it was copied whole.",
        ),
        404,
    )


def app(relay: Relay) -> Starlette:
    cfg = relay.config
    page_html = (STATIC / "page.html").read_text()
    page_html = page_html.replace("{{tiles}}", html.escape(cfg.web.tiles, quote=True)).replace(
        "{{attribution}}", html.escape(cfg.web.tiles_attribution, quote=True)
    )

    async def _link(request: Request, *, record: bool) -> Any:
        tok = request.path_params["token"]
        view = await relay.store.open_link(tok, now=relay.clock(), record=record)
        if view is None:
            relay.counters.refused_tokens += 1
            log.info("web: unknown link (%d so far)", relay.counters.refused_tokens)
            return _not_found()
        if view.gone:
            return _gone_page(view.gone)
        return view

    async def page(request: Request) -> Response:
        view = await _link(request, record=True)
        if isinstance(view, Response):
            return view
        log.info("web: link %d opened", view.link_id)
        relay.tell("opened", link_id=view.link_id, name=view.name)
        key = await relay.store.session_key(view.session_id)
        if key:
            relay.mark(key[0])
        return HTMLResponse(page_html)

    async def data(request: Request) -> Response:
        view = await _link(request, record=False)
        if isinstance(view, Response):
            return view
        body = await relay.store.page(view.session_id)
        body["you"] = view.name
        body["now"] = relay.clock()
        return JSONResponse(body)

    async def events(request: Request) -> Response:
        view = await _link(request, record=False)
        if isinstance(view, Response):
            return view
        sid, name = view.session_id, view.name
        viewer = relay.hub.join(sid)

        async def stream() -> AsyncIterator[bytes]:
            try:
                first = await relay.store.page(sid)
                first["you"], first["now"] = name, relay.clock()
                yield sse("page", first)
                while not viewer.dropped:
                    try:
                        async with asyncio.timeout(HEARTBEAT):
                            yield await viewer.queue.get()
                    except TimeoutError:
                        yield b": ping\n\n"
            finally:
                relay.hub.leave(sid, viewer)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},  # nginx: do not buffer the stream
        )

    async def voice(request: Request) -> Response:
        view = await _link(request, record=False)
        if isinstance(view, Response):
            return view
        got = await relay.store.voice(view.session_id, str(request.path_params["clip"])[:64])
        if got is None:
            return _not_found()
        _clip, mime, data, _seconds = got
        return ranged(data, mime, request.headers.get("range"))

    async def ack(request: Request) -> Response:
        view = await _link(request, record=False)
        if isinstance(view, Response):
            return view
        try:
            cmd_id = await relay.send_ack(view.link_id, view.session_id, view.name)
        except MqttError as exc:
            log.warning("web: ack from link %d not sent: %s", view.link_id, exc)
            return JSONResponse({"ok": False, "error": "not sent: try again in a moment"}, 503)
        log.info("web: link %d acknowledged the SOS (command %s)", view.link_id, cmd_id)
        return JSONResponse({"ok": True})

    async def icon(_request: Request) -> Response:
        return FileResponse(STATIC / "icon.svg", media_type="image/svg+xml")

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, "mqtt": relay.connected.is_set()})

    routes = [
        Route("/s/{token}", page, methods=["GET"]),
        Route("/s/{token}/data", data, methods=["GET"]),
        Route("/s/{token}/events", events, methods=["GET"]),
        Route("/s/{token}/ack", ack, methods=["POST"]),
        Route("/s/{token}/voice/{clip}", voice, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/favicon.ico", icon, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Headers, csp=_csp(cfg.web.tiles))])


class _Server(uvicorn.Server):
    """uvicorn inside our loop: the relay owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebError(SosbeaconError, OSError):
    """The page cannot be served; the message says why and what to do."""


def bind(listen: str) -> socket.socket:
    host, port = host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WebError(
            f"web.listen {listen}: cannot listen there ({exc.strerror or exc}): another "
            "program has the port, or the address is not this machine's"
        ) from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(relay: Relay) -> None:
    """Serve the page until cancelled, then close the listening socket and the streams."""
    sock = bind(relay.config.web.listen)
    server = _Server(
        uvicorn.Config(
            app(relay), access_log=False, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=1, proxy_headers=True,
        )
    )  # fmt: skip
    log.info("web: serving on http://%s", relay.config.web.listen)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        sock.close()
