"""An SMTP server on a free loopback port that keeps every message it receives: where the
relay's e-mail goes in the demo, the drills and the tests (aiosmtpd, a real SMTP
conversation; nothing leaves the machine)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from sim.broker import free_port


@dataclass(frozen=True, slots=True)
class Mail:
    to: list[str]
    subject: str
    body: str
    #: time.monotonic() when it arrived
    at: float


class MailSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self._arrived = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                part = msg.get_body(preferencelist=("plain", "html"))
                body = part.get_content() if part is not None else ""
                mail = Mail(list(envelope.rcpt_tos), str(msg["Subject"]), body, time.monotonic())
                with sink._arrived:
                    sink.mails.append(mail)
                    sink._arrived.notify_all()
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def url(self) -> str:
        """The relay's ``notify.services.email``: plain SMTP on loopback, no login."""
        return f"mailto://127.0.0.1:{self.port}?from=sos-relay@example.org&mode=insecure"

    async def wait(self, count: int = 1, within: float = 30.0) -> list[Mail]:
        """Until ``count`` messages have arrived (``TimeoutError`` after ``within`` s)."""

        def arrived() -> bool:
            with self._arrived:
                return self._arrived.wait_for(lambda: len(self.mails) >= count, within)

        if not await asyncio.to_thread(arrived):
            raise TimeoutError(f"{len(self.mails)} of {count} e-mail(s) within {within:g} s")
        return list(self.mails)

    def __enter__(self) -> MailSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
