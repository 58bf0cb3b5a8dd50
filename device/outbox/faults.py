"""What a storage error means, and what the outbox does about it.

Only proven corruption may move a file aside: a full disk, a lock held by another
process, an I/O error or a read-only file system say nothing about the file's contents,
and moving a healthy outbox aside drops the SOS it holds. SQLite says which it is in its
primary result code (``sqlite3.Error.sqlite_errorcode``, Python 3.11); the outbox's own
integrity check raises :class:`CorruptOutbox`.

Also here: disk space kept back for what must be written on a full disk
(:class:`Reserve`, and :func:`allocate` for any file that must be written in place).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import sqlite3
from pathlib import Path

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
    is not treated as corruption, whatever the message reads like. The outbox's own
    errors (``OutboxError``, an OSError without an errno) carry what SQLite said as
    their ``fault``."""
    if isinstance(exc, CorruptOutbox):
        return Fault.CORRUPT
    own = getattr(exc, "fault", None)
    if isinstance(own, Fault):
        return own
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
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
