"""What the device keeps about itself beside its records, typed.

Two stores, each for what it is good at:

* :class:`DeviceState`: values in the outbox's ``meta`` table, each behind a typed
  :class:`Key` declared here with its owner, so no part writes free strings another
  part must parse. The keys' names are those older outboxes already hold.
* :class:`SessionMark`: the SOS session written in place into a file allocated
  beforehand, so a start or a stop on a full disk survives a restart.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sosbeacon.device.outbox.faults import allocate

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Key(Generic[T]):
    """One value of the device state: its name in ``meta``, what it is when never
    written (or unreadable), and how it is written and read."""

    name: str
    default: T
    encode: Callable[[T], str]
    decode: Callable[[str], T]


def _json_or_none(value: dict[str, Any] | None) -> str:
    return json.dumps(value, separators=(",", ":")) if value else ""


def _dict_or_none(raw: str) -> dict[str, Any] | None:
    if not raw:
        return None
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _dict(raw: str) -> dict[str, Any]:
    return _dict_or_none(raw) or {}


#: the SOS session running or being stopped (``Session.to_json``), or None (the daemon)
ACTIVE_SESSION: Key[dict[str, Any] | None] = Key(
    "active_session", None, _json_or_none, _dict_or_none
)
#: the seq of the last ``sos`` record published retained (the uplink's retained views)
RETAINED_SOS_SEQ: Key[int] = Key("sos_retained_seq", 0, str, int)
#: the last OwnTracks message published retained, by topic (the uplink's retained views)
OWNTRACKS_LAST: Key[dict[str, Any]] = Key("owntracks", {}, _json_or_none, _dict)
#: the SOS texts sent (device.sms_alerts): the session, what went to whom, whether the
#: end went; written before each text is sent, so a restart never sends one twice
SMS_LOG: Key[dict[str, Any]] = Key("sms_log", {}, _json_or_none, _dict)
#: the outbox's identity, made at its creation (the outbox itself)
OUTBOX_ID: Key[str] = Key("outbox_id", "", str, str)
#: what the owner must know about the store until acknowledged: {"at", "what"} (the outbox)
ALARM: Key[dict[str, Any] | None] = Key("alarm", None, _json_or_none, _dict_or_none)


def read(db: sqlite3.Connection, key: Key[T]) -> T:
    """``key``'s value on ``db``; its default if never written or unreadable (said)."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (key.name,)).fetchone()
    if row is None:
        return key.default
    try:
        return key.decode(str(row[0]))
    except (ValueError, TypeError) as exc:
        log.warning("the stored %s is unreadable (%s); ignored", key.name, exc)
        return key.default


def write(db: sqlite3.Connection, key: Key[T], value: T) -> None:
    db.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key.name, key.encode(value)),
    )


class DeviceState:
    """The typed values of ``meta``, read and written in the outbox's writer thread
    (``run``): ``await box.state.get(RETAINED_SOS_SEQ)``."""

    def __init__(self, run: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]):
        self._run = run

    async def get(self, key: Key[T]) -> T:
        value: T = await self._run(lambda db: read(db, key))
        return value

    async def put(self, key: Key[T], value: T) -> None:
        await self._run(lambda db: write(db, key, value))


class SessionMark:
    """The SOS session as last known (running, or ended and when), written in place
    into a small file allocated beforehand: writing it needs no new disk space, so a
    start or a stop on a full disk is remembered across a restart. A restart then never
    resumes a session that was stopped, nor forgets one that was started."""

    SIZE = 4096

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        """Allocate the file (at start, while there is room); keeps what it holds."""
        try:
            if self.path.stat().st_size == self.SIZE:
                return
        except FileNotFoundError:
            pass
        allocate(self.path, self.SIZE)

    def write(self, state: dict[str, Any]) -> bool:
        """Overwrite the file in place (no allocation, fsync'd); False if it could not."""
        text = json.dumps(state, separators=(",", ":")).encode()
        if len(text) > self.SIZE:
            raise ValueError("session state too large for its mark")
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, text.ljust(self.SIZE, b"\0"), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot record the SOS session in %s: %s", self.path, exc)
            return False
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes().rstrip(b"\0")
        except OSError:
            return None
        if not raw:
            return None
        try:
            state = json.loads(raw)
        except ValueError:
            log.warning("the SOS session mark %s is unreadable; ignored", self.path)
            return None
        return state if isinstance(state, dict) else None
