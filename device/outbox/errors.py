"""The outbox's own errors: nothing outside the package needs to know it is SQLite.

Every public coroutine of the outbox raises :class:`OutboxError` (or a subclass), never
``sqlite3``'s errors; SQLite's error is kept as the ``__cause__``."""

from __future__ import annotations

import functools
import inspect
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sosbeacon.device.errors import SosbeaconError
from sosbeacon.device.outbox.faults import Fault, classify

C = TypeVar("C", bound=type)


class OutboxError(SosbeaconError, OSError):
    """The outbox could not do what was asked: the database refused (its ``__cause__``
    is SQLite's own error). ``fault`` says what kind (full, locked, I/O, read-only, ...)."""

    fault: Fault = Fault.OTHER

    @classmethod
    def of(cls, exc: sqlite3.Error) -> OutboxError:
        fault = classify(exc)
        err = (OutboxFull if fault is Fault.FULL else OutboxError)(f"outbox: {exc}")
        err.fault = fault
        return err


class OutboxFull(OutboxError):
    """The record could not be stored: the disk (or the configured cap) is full."""

    fault = Fault.FULL


class OutboxUnavailable(OutboxError):
    """The outbox cannot be opened, for a reason that says nothing about its contents
    (a full disk, a lock held too long, an I/O error, a read-only file system): the
    file is left as it is, and the message says what to do."""

    def __init__(self, path: Path, fault: Fault, exc: BaseException) -> None:
        self.fault = fault
        hint = {
            Fault.FULL: "free some space on that file system",
            Fault.LOCKED: "another process holds it: stop it (another sosd? an sqlite3 shell?)",
            Fault.IO: "check the storage (dmesg; an SD card that fails I/O needs replacing)",
            Fault.READONLY: "the file system is read-only: remount it read-write",
        }.get(fault, "see the error above")
        super().__init__(
            f"the outbox {path} cannot be opened ({fault.value}: {exc}); it was left "
            f"untouched. {hint[0].upper()}{hint[1:]}, then start sosd again."
        )


def as_full(exc: sqlite3.OperationalError, what: str, path: Path) -> BaseException:
    """A failed write as :class:`OutboxFull` (with what to do) when the disk is full;
    anything else as it is. Nothing was changed: every write is one transaction."""
    if classify(exc) is not Fault.FULL:
        return exc
    return OutboxFull(
        f"cannot {what}: {exc}. Nothing was changed and what is stored is safe; free "
        f"some space on the file system of {path}."
    )


def holdable(exc: BaseException) -> bool:
    """A write that may succeed later, unchanged: a full disk, a lock held by another
    process, an I/O error (SQLite's own error, or ours carrying it as its ``fault``).
    What it wrote waits in memory meanwhile."""
    return classify(exc) in (Fault.FULL, Fault.LOCKED, Fault.IO)


def _speaking_for_itself(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise OutboxError.of(exc) from exc

    return translated


def speaks_for_itself(cls: C) -> C:
    """Class decorator: every public coroutine of ``cls`` raises :class:`OutboxError`
    instead of SQLite's errors."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _speaking_for_itself(member))
    return cls
