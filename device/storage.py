"""What a storage error means, and what the outbox does about it.

Only proven corruption may move a file aside: a full disk, a lock held by another
process, an I/O error or a read-only file system say nothing about the file's contents,
and moving a healthy outbox aside drops the SOS it holds. SQLite says which it is in its
primary result code (``sqlite3.Error.sqlite_errorcode``, Python 3.11); the outbox's own
integrity check raises :class:`CorruptOutbox`.

Also here: disk space kept back for what must be written on a full disk
(:class:`Reserve`), and the in-place record of the SOS session (:class:`SessionMark`).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# SQLite primary result codes (sqlite3.h)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


class Fault(enum.Enum):
    FULL = "disk full"
    LOCKED = "locked by another process"
    IO = "I/O error"
    READONLY = "read-only"
    CORRUPT = "corrupt"
    OTHER = "other"


class CorruptOutbox(sqlite3.DatabaseError):
    """The outbox failed its integrity check."""


def classify(exc: BaseException) -> Fault:
    """What a storage error says about the file. Anything SQLite does not call corrupt
    is not treated as corruption, whatever the message reads like."""
    if isinstance(exc, CorruptOutbox):
        return Fault.CORRUPT
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Fault.FULL
        if exc.errno == errno.EROFS:
            return Fault.READONLY
        return Fault.IO
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return Fault.OTHER
    return {
        _FULL: Fault.FULL,
        _BUSY: Fault.LOCKED,
        _LOCKED: Fault.LOCKED,
        _IOERR: Fault.IO,
        _CANTOPEN: Fault.IO,
        _READONLY: Fault.READONLY,
        _CORRUPT: Fault.CORRUPT,
        _NOTADB: Fault.CORRUPT,
    }.get(code & 0xFF, Fault.OTHER)


def allocate(path: Path, size: int) -> None:
    """``path`` as ``size`` zero bytes really on the disk (written and fsync'd, not a
    sparse file): space that can later be given back, or overwritten in place, without
    asking the file system for more. Raises OSError (ENOSPC) when there is no room."""
    with open(path, "wb") as f:
        chunk = b"\0" * 65536
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())


class Reserve:
    """A file of ``size`` bytes (really allocated, not sparse) kept beside the outbox:
    on a full disk it is given up so that an SOS record, a stop or the outbox's opening
    can still be written, and taken again once there is room."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def take(self) -> bool:
        """Allocate the reserve if it is not there; False when there is no room."""
        if self.size <= 0 or self.held:
            return True
        try:
            allocate(self.path, self.size)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the space back to the file system; True if there was any to give."""
        if not self.path.exists():
            return False
        with contextlib.suppress(OSError):
            self.path.unlink()
            log.warning(
                "the disk is full: the %d KiB kept in reserve (%s) were given up so that "
                "the SOS record can be stored; free some space on this file system",
                self.size // 1024,
                self.path,
            )
            return True
        return False


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
