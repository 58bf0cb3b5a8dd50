"""The relay for tests: real local sinks for its notifications (an SMTP server and an
HTTP endpoint), a clock the test moves, and a relay on a free port beside a broker."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from sosbeacon.relay import db
from sosbeacon.relay.config import RelayConfig
from sosbeacon.relay.service import Relay
from sosbeacon.relay.store import Store
from sosbeacon.sim import localrelay
from tests.helpers import eventually


class HttpSink:
    """An HTTP endpoint on a free loopback port that keeps every JSON body posted to it
    (Apprise's ``json://``), with the path it was posted to."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        #: seconds each answer waits (a slow service); each request has its own thread
        self.delay = 0.0
        #: answers given
        self.answered = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                sink.posts.append((self.path, body))
                time.sleep(sink.delay)
                sink.answered += 1
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> HttpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class RelayClock:
    """The relay's clock in a test: real time plus what the test added."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class RelayRig:
    relay: Relay
    config: RelayConfig
    clock: RelayClock
    base: str
    http: httpx.AsyncClient
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.relay.store

    async def wait(self, cond: Any, within: float = 20.0, step: float = 0.05) -> Any:
        """Until ``cond()`` (sync or async) is truthy; returns its value."""
        return await eventually(cond, within, step)

    async def links(self) -> list[str]:
        """Every link the relay made, whole (the test holds the relay's key)."""
        from sqlalchemy import select

        async with self.store.engine.connect() as conn:
            salts = (await conn.execute(select(db.links.c.salt).order_by(db.links.c.id))).scalars()
            return [self.config.link_base() + self.store.link_token(s) for s in salts]


relay_settings = localrelay.settings


@contextlib.asynccontextmanager
async def relay_rig(
    cfg: RelayConfig, *, clock: RelayClock | None = None, **kw: Any
) -> AsyncIterator[RelayRig]:
    clock = clock or RelayClock()
    async with (
        localrelay.running(cfg, clock=clock, **kw) as relay,
        httpx.AsyncClient(base_url=cfg.relay.public_url, timeout=10) as http,
    ):
        yield RelayRig(relay, cfg, clock, cfg.relay.public_url, http)
