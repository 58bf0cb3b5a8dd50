"""A probe into a running outbox, for tests only (``sosd`` never imports it).

Tests use the :class:`~device.outbox.Outbox` API; what the API does not show on purpose
is reached through here, by name, instead of through private members:

* :attr:`Probe.rows`: the row count the outbox keeps in memory (it must match the table);
* :attr:`Probe.unsaved_acks`: acknowledgements whose commit waits for room;
* :meth:`Probe.sql`: a statement on the writing connection, in the writer thread (a
  ``PRAGMA max_page_count`` makes a full disk; a ``SELECT`` reads the bookkeeping);
* :meth:`Probe.wrap`: a seam replaced while a block runs, to hold a commit half-way or
  make it fail: ``"store"`` (a group of records' commit), ``"ack"`` (a group of
  acknowledgements' commit), ``"gap"`` (writing a gap record inside a withdrawal) and
  ``"fresh"`` (a take of urgent records from memory, ``None`` when it cannot be);
* :attr:`Probe.lock`: the hand-out lock, to be watched;
* :attr:`Probe.wal_mark` and :meth:`Probe.checkpoints_unscheduled`: the WAL size that
  calls for a checkpoint now, and a block during which the checkpoint thread is never
  woken (as on a machine too busy to schedule it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

from sosbeacon.device.outbox.box import Outbox
from sosbeacon.device.outbox.writer import Checkpoints

Seam = Literal["store", "ack", "gap", "fresh"]


class Probe:
    def __init__(self, box: Outbox) -> None:
        self._box = box

    @property
    def rows(self) -> int:
        return self._box._capacity.rows

    @property
    def unsaved_acks(self) -> list[int]:
        """Acknowledged by the broker, their deletion not committed yet (a full disk)."""
        return self._box._handout.unsaved_acks()

    async def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        box = self._box
        return await box._writer.run(lambda: box._writer.db.execute(statement, args).fetchall())

    def _owner(self, seam: Seam) -> tuple[object, str]:
        box = self._box
        return {
            "store": (box, "_insert_sync"),
            "ack": (box, "_ack_sync"),
            "gap": (box._capacity, "insert_gap"),
            "fresh": (box._handout, "take_fresh"),
        }[seam]

    @contextlib.contextmanager
    def wrap(
        self, seam: Seam, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> Iterator[None]:
        """``seam`` replaced by ``wrapper(real)`` while the block runs."""
        owner, name = self._owner(seam)
        real = getattr(owner, name)
        setattr(owner, name, wrapper(real))
        try:
            yield
        finally:
            delattr(owner, name)  # the stand-in goes: the class's own method again

    @property
    def lock(self) -> Any:
        return self._box._handout.lock

    @lock.setter
    def lock(self, lock: threading.RLock | Any) -> None:
        self._box._handout.lock = lock

    def _checkpoints(self) -> Checkpoints:
        checkpoints = self._box._writer._checkpoints
        if checkpoints is None:
            raise RuntimeError("the outbox is closed")
        return checkpoints

    @property
    def wal_mark(self) -> int:
        """The WAL size that calls for a checkpoint now (``writer.wal_limit``)."""
        return self._checkpoints().limit

    @contextlib.contextmanager
    def checkpoints_unscheduled(self) -> Iterator[None]:
        """The checkpoint thread is not woken while the block runs: the writer's pokes
        go to an event nobody waits on (the thread still waits on its own)."""
        checkpoints = self._checkpoints()
        real = checkpoints._wake
        checkpoints._wake = threading.Event()
        try:
            yield
        finally:
            checkpoints._wake = real
