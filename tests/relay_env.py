"""The relay for tests: real local sinks for its notifications (an SMTP server and an
HTTP endpoint), a clock the test moves, and a relay on a free port beside a broker."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from relay import config as relay_config
from relay import db, links
from relay.config import RelayConfig
from relay.service import Relay
from relay.store import Store
from sim.broker import free_port


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str


class SmtpSink:
    """An SMTP server on a free loopback port that keeps every message it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.arrived = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                part = msg.get_body(preferencelist=("plain", "html"))
                body = part.get_content() if part is not None else ""
                with sink.arrived:
                    sink.mails.append(Mail(list(envelope.rcpt_tos), str(msg["Subject"]), body))
                    sink.arrived.notify_all()
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def url(self) -> str:
        """The relay's ``notify.services.email``: plain SMTP on loopback, no login."""
        return f"mailto://127.0.0.1:{self.port}?from=sos-relay@example.org&mode=insecure"

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


class HttpSink:
    """An HTTP endpoint on a free loopback port that keeps every JSON body posted to it
    (Apprise's ``json://``), with the path it was posted to."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                sink.posts.append((self.path, body))
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
    task: asyncio.Task[None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return self.relay.store

    async def wait(self, cond: Any, within: float = 20.0, step: float = 0.05) -> Any:
        """Until ``cond()`` (sync or async) is truthy; returns its value."""
        async with asyncio.timeout(within):
            while True:
                got = cond()
                if asyncio.iscoroutine(got):
                    got = await got
                if got:
                    return got
                await asyncio.sleep(step)

    async def links(self) -> list[str]:
        """Every link the relay made, whole (the test holds the relay's key)."""
        from sqlalchemy import select

        async with self.store.engine.connect() as conn:
            salts = (await conn.execute(select(db.links.c.salt).order_by(db.links.c.id))).scalars()
            return [self.config.link_base() + self.store.link_token(s) for s in salts]


def relay_settings(
    tmp_path: Path, broker_port: int, *, db_url: str = "", **overrides: Any
) -> RelayConfig:
    port = free_port()
    values: dict[str, Any] = {
        "relay.data_dir": str(tmp_path / "relay"),
        "relay.public_url": f"http://127.0.0.1:{port}",
        "relay.sweep_interval": 3600.0,
        "mqtt.broker": f"mqtt://127.0.0.1:{broker_port}",
        "mqtt.client_id": f"relay-{port}",
        "web.listen": f"127.0.0.1:{port}",
        "web.tiles": "",  # no tile server in the tests: the route shows on its own
        "notify.retry_min": 0.2,
        "notify.retry_max": 1.0,
        **overrides,
    }
    if db_url:
        values["database.url"] = db_url
    return relay_config.load(text="", overrides=values)


@contextlib.asynccontextmanager
async def relay_rig(
    cfg: RelayConfig, *, clock: RelayClock | None = None, **kw: Any
) -> AsyncIterator[RelayRig]:
    clock = clock or RelayClock()
    cfg.relay.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db.engine(cfg.database_url()), link_key=links.load_key(cfg.link_key_path()))
    relay = Relay(cfg, store, clock=clock, **kw)
    task = asyncio.create_task(relay.run())
    base = cfg.relay.public_url
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        rig = RelayRig(relay, cfg, clock, base, http, task)
        try:
            async with asyncio.timeout(20):
                await relay.connected.wait()
            await rig.wait(_up(http))
            yield rig
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()


def _up(http: httpx.AsyncClient) -> Any:
    async def ok() -> bool:
        try:
            return (await http.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    return ok
