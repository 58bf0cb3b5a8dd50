"""systemd's notification protocol (``sd_notify``), without libsystemd.

``Type=notify`` services tell systemd READY=1 once they serve, STATUS=... for
``systemctl status``, WATCHDOG=1 at least every ``WatchdogSec`` (systemd restarts a daemon
that stops sending it) and STOPPING=1 on the way out. Outside systemd
(``NOTIFY_SOCKET`` unset) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self.address = addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        #: seconds between WATCHDOG=1 pings (half of WatchdogSec), or None
        self.watchdog_interval: float | None = int(usec) / 2e6 if usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(text.encode(), self.address)
        except OSError as exc:  # systemd gone or not listening: never fatal
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        self.send(status=status)

    def watchdog(self) -> None:
        self.send(watchdog="1")

    def stopping(self) -> None:
        self.send(stopping="1", status="stopping")
