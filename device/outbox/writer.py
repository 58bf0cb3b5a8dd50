"""The outbox's writer thread: it owns the writing connection, so every write (and only
a write) runs there, one after another.

* Group commit (:class:`Grouped`): what arrives while a commit runs is committed in the
  next one together, so a burst costs one fsync, not one each.
* Bookkeeping (message ids, acknowledgements) is committed "light" (:meth:`Writer.light`),
  records always with ``synchronous=FULL``.
* Checkpoints run in a thread of their own, never inside a commit (:class:`Checkpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from sosbeacon.device.outbox.schema import transaction

log = logging.getLogger(__name__)
T = TypeVar("T")
In = TypeVar("In")

#: the WAL is copied back into the database once it holds this much (SQLite's default),
#: or less on a small disk (:func:`wal_limit`)
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
#: ... but never less than this
WAL_MIN_BYTES = 64 * 1024


class Writer:
    """The writer thread and its connection (attached once the file is open)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._db: sqlite3.Connection | None = None
        self._checkpoints: Checkpoints | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The writing connection: for code running in the writer thread only."""
        if self._db is None:
            raise RuntimeError("outbox is closed")
        return self._db

    def attach(self, db: sqlite3.Connection, checkpoints: Checkpoints) -> None:
        self._db, self._checkpoints = db, checkpoints

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.writing, fn)

    def writing(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the writer thread, then a checkpoint if the WAL has grown
        enough."""
        try:
            return fn(*args)
        finally:
            if self._checkpoints is not None and self._db is not None:
                self._checkpoints.poke(self._db)

    def grouped(
        self, commit: Callable[[list[In]], list[T]], after: Callable[[], None] | None = None
    ) -> Grouped[In, T]:
        return Grouped(self.pool, lambda items: self.writing(commit, items), after=after)

    @contextlib.contextmanager
    def light(self) -> Iterator[sqlite3.Connection]:
        """A transaction for bookkeeping (in flight, message ids, acknowledgements) with
        ``synchronous=NORMAL``: it survives a crash of the daemon; a power cut may undo
        it, which only means a resend (a duplicate the receiver drops by seq), never a
        loss. Records themselves are always committed with ``synchronous=FULL``."""
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with transaction(db):
                yield db
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        """In the writer thread: stop the checkpoints and close, leaving no WAL."""
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None
        if self._db is not None:
            # a clean stop leaves no WAL behind (SQLite would try too, as the last
            # connection; this says so when it cannot, e.g. on a full disk)
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log.warning("the outbox's WAL could not be emptied at stop: %s", exc)
            self._db.close()
            self._db = None


class Grouped(Generic[In, T]):
    """Group commit: items submitted while a commit runs go together in the next one, so
    a burst costs one transaction (and one fsync), not one each. ``commit`` runs in the
    writer thread and returns one result per item."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        commit: Callable[[list[In]], list[T]],
        *,
        after: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._commit = commit
        self._after = after
        self._waiting: list[tuple[In, asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await fut

    async def settled(self) -> None:
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                results = await loop.run_in_executor(
                    self._pool, functools.partial(self._commit, [item for item, _ in batch])
                )
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            if self._after is not None:
                self._after()


class Checkpoints:
    """Copies the WAL back into the database file in a thread of its own, with a
    connection of its own (a passive checkpoint: it waits for no reader and no writer).
    With SQLite's automatic checkpoints, the commit that crosses the mark does the
    checkpoint itself: an SOS record's commit could wait tens of milliseconds behind it,
    and a draining backlog paid for every checkpoint on its way. The writer calls
    :meth:`poke` after each job; past :data:`WAL_CHECKPOINT_BYTES` (the WAL file is cut
    back to that size when it starts over) a checkpoint runs. The WAL can only start
    over once everything in it was copied while no commit came in between, which a
    drain, committing all the time, never allows: so after each pass of the thread the
    writer copies what was committed meanwhile (little) itself. Should the WAL reach
    twice the mark all the same (the thread was not scheduled: a slow card, a busy
    machine), the writer does a whole checkpoint itself: the WAL never takes more than
    half of the free space (:func:`wal_limit`), however the thread is doing."""

    def __init__(
        self, path: Path, min_free: int, limit: int, give_way: Callable[[], None] = lambda: None
    ) -> None:
        self._path = path
        #: before a pass: waits (moments at most) while an SOS record is on its way out
        self._give_way = give_way
        self._wal = f"{path}-wal"
        self._min_free = min_free
        #: the WAL size that calls for a checkpoint (:func:`wal_limit`), looked at again
        #: every second: a disk that fills up gets a smaller WAL
        self.limit = limit
        self._limit_at = time.monotonic()
        self._wake = threading.Event()
        self._stop = False
        #: a pass is done: the writer copies the rest
        self._tail = False
        #: held over every checkpoint (SQLite runs one at a time, and refuses a second)
        self._running = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="outbox-checkpoint", daemon=True)
        self._thread.start()

    def poke(self, db: sqlite3.Connection) -> None:
        """After each writer job; a checkpoint that fails here (a full disk, a statement
        still open after a failed write) is tried again at the next one, and never
        hides the job's own outcome."""
        try:
            self._poke(db)
        except sqlite3.Error as exc:
            log.debug("outbox checkpoint deferred: %s", exc)

    def _poke(self, db: sqlite3.Connection) -> None:
        try:
            size = os.stat(self._wal).st_size
        except OSError:
            return
        now = time.monotonic()
        if now - self._limit_at > 1.0:
            self._limit_at = now
            limit = wal_limit(self._min_free, free_bytes(self._path.parent))
            if limit != self.limit:
                self.limit = limit
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"PRAGMA journal_size_limit={limit}")
        limit = self.limit
        if size > 2 * limit:
            # The thread fell behind (a slow card, a busy machine): the writer waits for
            # its pass, then does a whole checkpoint, as SQLite's own would. A drain slows
            # down rather than let the WAL grow past half of the free space.
            with self._running:
                self._tail = False
                db.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        elif self._tail and self._running.acquire(blocking=False):
            try:
                self._tail = False
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                self._running.release()
        elif size > limit:
            self._wake.set()

    def _loop(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                self._give_way()
                try:
                    with self._running:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                        self._tail = True
                except sqlite3.Error as exc:  # e.g. disk full: the WAL keeps the data
                    log.warning("outbox checkpoint failed (the WAL keeps the records): %s", exc)
        finally:
            db.close()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


def wal_limit(min_free: int, free: int) -> int:
    """When the WAL is copied back: at :data:`WAL_CHECKPOINT_BYTES`, or at a quarter of
    ``min_free_bytes`` or of the free space when that is less (a small SD card, a disk
    filling up), never below :data:`WAL_MIN_BYTES`. So the WAL takes a quarter of what
    is left (half, when the checkpoint thread falls behind), and a full disk is not the
    WAL's doing."""
    return max(WAL_MIN_BYTES, min(WAL_CHECKPOINT_BYTES, min_free // 4, free // 4))


def free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0
