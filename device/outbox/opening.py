"""Opening the outbox file, telling the faults apart.

Only proven corruption moves the file aside, and only after everything readable was
salvaged into a fresh one (:func:`device.outbox.salvage.rescue`). A lock held by another
process is waited for (up to ``lock_wait``); a full disk gives up the reserve and tries
again; the rest is raised as :class:`OutboxUnavailable`, with what to do, and the file is
left as it is.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.outbox import salvage, schema, state
from sosbeacon.device.outbox.capacity import Limits
from sosbeacon.device.outbox.errors import OutboxUnavailable
from sosbeacon.device.outbox.faults import CorruptOutbox, Fault, Reserve, classify
from sosbeacon.device.outbox.writer import free_bytes, wal_limit
from sosbeacon.device.private import private_db

log = logging.getLogger(__name__)
#: kept back for opening the outbox on a full disk (its -shm takes 32 KiB)
OPEN_RESERVE_BYTES = 96 * 1024


@dataclass(slots=True)
class Opened:
    """The writing connection, ready, and what opening read."""

    db: sqlite3.Connection
    outbox_id: str
    alarm: dict[str, Any] | None
    rows: int
    wal_limit: int


class Reserves:
    """The SOS reserve, and a smaller one for opening alone (SQLite makes its -shm and
    -wal files then): a restart on a disk that filled up, its SOS reserve used, still
    opens."""

    def __init__(self, path: Path, size: int) -> None:
        self.sos = Reserve(Path(f"{path}.reserve"), size)
        self.opening = Reserve(Path(f"{path}.reserve-open"), min(OPEN_RESERVE_BYTES, size))

    def give_up_one(self) -> bool:
        return self.opening.release() or self.sos.release()

    def take(self) -> bool:
        return self.opening.take() and self.sos.take()


def open_file(
    path: Path, limits: Limits, clock: Clock, reserves: Reserves, lock_wait: float
) -> Opened:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_wait
    said_locked = False
    while True:
        try:
            opened = _connect(path, limits, clock)
            break
        except sqlite3.DatabaseError as exc:
            fault = classify(exc)
            if fault is Fault.CORRUPT:
                salvage.rescue(path, clock, str(exc))
                opened = _connect(path, limits, clock)
                break
            if fault is Fault.LOCKED and time.monotonic() < deadline:
                if not said_locked:
                    log.warning(
                        "the outbox %s is locked by another process (%s); waiting up to "
                        "%.0f s for it. Is another sosd, or an sqlite3 shell, using it?",
                        path,
                        exc,
                        lock_wait,
                    )
                    said_locked = True
                time.sleep(0.2)
                continue
            if fault in (Fault.FULL, Fault.IO) and reserves.give_up_one():
                continue
            raise OutboxUnavailable(path, fault, exc) from exc
    # a fresh reserve once there is room again (a full disk may have used it)
    if not reserves.take():
        log.warning(
            "no room for the %d KiB kept in reserve beside %s: free some space, or an "
            "SOS on a full disk may not be storable",
            reserves.sos.size // 1024,
            path,
        )
    return opened


def _connect(path: Path, limits: Limits, clock: Clock) -> Opened:
    private_db(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        limit = wal_limit(limits.min_free_bytes, free_bytes(path.parent))
        schema.pragmas(db, limit)
        ok = db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise CorruptOutbox(f"integrity check failed: {ok}")
        schema.migrate(db, clock.now())
        alarm = state.read(db, state.ALARM)
        outbox_id = state.read(db, state.OUTBOX_ID)
        if not outbox_id:
            outbox_id = uuid.uuid4().hex[:16]  # 64 bits: unique enough per device
            state.write(db, state.OUTBOX_ID, outbox_id)
        schema.tidy(db)
        rows = db.execute("SELECT count(*) FROM records").fetchone()[0]
        # Can this connection write? A WAL database opens and reads under another
        # process's write lock; every store would then wait and fail.
        with schema.transaction(db):
            pass
    except sqlite3.DatabaseError:
        db.close()
        raise
    return Opened(db, outbox_id, alarm, rows, limit)
