"""An SMTP server on a free loopback port that keeps every message it receives: where the
relay's e-mail goes in the demo, the drills and the tests (aiosmtpd, a real SMTP
conversation; nothing leaves the machine)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from sosbeacon.sim.broker import free_port


@dataclass(frozen=True, slots=True)
class Mail:
    to: list[str]
    subject: str
    body: str
    #: time.monotonic() when it arrived
    at: float
    #: attached files: (file name, content type, bytes)
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)


class MailSink:
    """``login`` (user, password): the server asks for it (AUTH PLAIN or LOGIN, on
    loopback with no TLS) and refuses every other."""

    def __init__(self, login: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.login = login
        #: logins refused
        self.refused = 0
        self.mails: list[Mail] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if login is not None and not session.authenticated:
                    sink.refused += 1
                    return "530 5.7.0 Authentication required"
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                part = msg.get_body(preferencelist=("plain", "html"))
                body = part.get_content() if part is not None else ""
                files = []
                for a in msg.iter_attachments():
                    data = a.get_payload(decode=True)
                    if isinstance(data, bytes):
                        files.append((str(a.get_filename()), a.get_content_type(), data))
                mail = Mail(
                    list(envelope.rcpt_tos), str(msg["Subject"]), body, time.monotonic(), files
                )
                with sink._lock:
                    sink.mails.append(mail)
                    waiters = list(sink._waiters)
                for loop, event in waiters:
                    loop.call_soon_threadsafe(event.set)
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mech: str, data: Any) -> Any:
            ok = login is not None and (data.login, data.password) == (
                login[0].encode(),
                login[1].encode(),
            )
            sink.refused += not ok
            return AuthResult(success=ok)

        auth: dict[str, Any] = {}
        if login is not None:
            # a login over plain SMTP, on loopback: the sink checks it in handle_DATA
            # (aiosmtpd's auth_required warns about plain text, rightly, elsewhere)
            auth = {"authenticator": authenticate, "auth_require_tls": False}
            logging.getLogger("mail.log").setLevel(logging.ERROR)  # its login_data notice
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **auth)

    def url(self) -> str:
        """The relay's ``notify.services.email``: plain SMTP on loopback, with the login
        when there is one."""
        auth = ""
        if self.login is not None:
            auth = f"{quote(self.login[0], safe='')}:{quote(self.login[1], safe='')}@"
        return f"mailto://{auth}127.0.0.1:{self.port}?from=sos-relay@example.org&mode=insecure"

    async def wait(self, count: int = 1, within: float = 30.0) -> list[Mail]:
        """Until ``count`` messages have arrived (``TimeoutError`` after ``within`` s)."""

        me = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.append(me)
        try:
            async with asyncio.timeout(within):
                while True:
                    me[1].clear()
                    with self._lock:
                        if len(self.mails) >= count:
                            return list(self.mails)
                    await me[1].wait()
        finally:
            with self._lock:
                self._waiters.remove(me)

    def __enter__(self) -> MailSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
