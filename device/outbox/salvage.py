"""Whatever can still be read from a damaged outbox.

A corrupt SQLite file usually loses a few pages, not everything: the records and the
active SOS session around them are still there for ``SELECT``. Moving the file aside
and starting empty would drop them (and the SOS with them). This module reads what it
can, table by table and, for the records, range by range: a range that fails is split
until the unreadable rows are isolated and skipped. It never writes to the damaged
file; :func:`rescue` puts what it read into a fresh outbox and sets the damaged one
aside.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sosbeacon.device.clock import Clock
from sosbeacon.device.outbox import schema, state
from sosbeacon.device.outbox.capacity import complement, insert_gap_row

log = logging.getLogger(__name__)

#: the records' columns a salvage keeps, in this order; ones an older schema lacks are
#: read as NULL
RECORD_COLUMNS = (
    "seq",
    "kind",
    "priority",
    "time",
    "session",
    "drill",
    "data",
    "expires",
    "state",
    "row_t",
    "row_lat",
    "row_lon",
    "row_tail",
    "committed",
)
#: below this many rows a failing range is read row by row
_ROW_BY_ROW = 64


@dataclass
class Readable:
    """What was read. ``last_seq`` is the seq counter when it could be read (then the
    numbering can go on under the same outbox id), else ``None``."""

    records: list[tuple[Any, ...]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    sessions: list[tuple[str, float]] = field(default_factory=list)
    bindings: list[tuple[int, int, str]] = field(default_factory=list)
    last_seq: int | None = None
    #: rows that could not be read (by seq)
    unreadable: int = 0


def read_readable(path: Path) -> Readable:
    out = Readable()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        log.error("salvage: %s cannot be opened at all (%s); nothing salvaged", path, exc)
        return out
    try:
        db.execute("PRAGMA query_only=1")
        out.meta = dict(_rows(db, "SELECT key, value FROM meta"))
        counter = _rows(db, "SELECT value FROM counters WHERE name='seq'")
        out.last_seq = int(counter[0][0]) if counter else None
        out.sessions = [(str(s), float(e)) for s, e in _rows(db, "SELECT * FROM sessions")]
        out.bindings = [
            (int(a), int(b), str(m))
            for a, b, m in _rows(db, "SELECT first, last, msg_id FROM bindings")
        ]
        present = {r[1] for r in _rows(db, "PRAGMA table_info(records)")}
        cols = ", ".join(c if c in present else "NULL" for c in RECORD_COLUMNS)
        top = _top_seq(db, out.last_seq)
        if top:
            out.records, out.unreadable = _read_range(db, cols, 1, top)
    finally:
        db.close()
    return out


def _rows(db: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    try:
        return db.execute(sql).fetchall()
    except sqlite3.Error as exc:
        log.warning("salvage: %s failed (%s); that part is lost", sql.split(" FROM ")[-1], exc)
        return []


def _top_seq(db: sqlite3.Connection, counter: int | None) -> int:
    try:
        top = db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
    except sqlite3.Error:
        top = 0
    return max(int(top), counter or 0)


def _read_range(
    db: sqlite3.Connection, cols: str, a: int, b: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Rows with seq in a..b, and how many seqs of it could not be read (a seq read as
    absent is not counted: it was delivered and deleted, or never existed)."""
    sql = f"SELECT {cols} FROM records WHERE seq BETWEEN ? AND ? ORDER BY seq"
    try:
        return db.execute(sql, (a, b)).fetchall(), 0
    except sqlite3.Error:
        pass
    if b - a < _ROW_BY_ROW:
        got: list[tuple[Any, ...]] = []
        bad = 0
        for seq in range(a, b + 1):
            try:
                got += db.execute(sql, (seq, seq)).fetchall()
            except sqlite3.Error:
                bad += 1
        return got, bad
    mid = (a + b) // 2
    left, bad_left = _read_range(db, cols, a, mid)
    right, bad_right = _read_range(db, cols, mid + 1, b)
    return left + right, bad_left + bad_right


def rescue(path: Path, clock: Clock, why: str) -> None:
    """Everything readable of a corrupt outbox goes into a fresh one (the same
    ``outbox_id`` and seqs when the seq counter could be read, else a new id), with a
    ``gap`` record (reason ``corrupt``) naming every seq up to the last that will not be
    sent from it; then the corrupt file is set aside (never deleted) and an alarm is
    raised until the owner acknowledges it."""
    got = read_readable(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    fresh = Path(f"{path}.salvage-{stamp}")
    id_key, session_key = state.OUTBOX_ID.name, state.ACTIVE_SESSION.name
    same_box = got.last_seq is not None and id_key in got.meta
    box = got.meta[id_key] if same_box else uuid.uuid4().hex[:16]
    db = sqlite3.connect(fresh, isolation_level=None)
    try:
        db.executescript(schema.SCHEMA)
        db.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION}")
        with schema.transaction(db):
            meta = dict(got.meta) if same_box else {}
            if session_key in got.meta:
                meta[session_key] = got.meta[session_key]
            meta[id_key] = box
            db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            db.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?)", got.sessions)
            if same_box:
                db.executemany("INSERT OR REPLACE INTO bindings VALUES (?,?,?)", got.bindings)
            now = clock.now()
            cols = ", ".join(RECORD_COLUMNS)
            marks = ",".join("?" * len(RECORD_COLUMNS))
            committed = RECORD_COLUMNS.index("committed")
            db.executemany(
                f"INSERT INTO records ({cols}) VALUES ({marks})",
                [
                    r if r[committed] is not None else (*r[:committed], now.timestamp())
                    for r in got.records
                ],
            )
            at = RECORD_COLUMNS.index("state")
            sent = {r[0] for r in got.records if r[at] == schema.PENDING}
            top = max(got.last_seq or 0, max((r[0] for r in got.records), default=0))
            lost = complement(sent, top)  # ranges: top may be in the millions
            if lost:
                top += 1
                insert_gap_row(db, top, lost, "corrupt", now, now.timestamp())
            schema.set_seq(db, top)
            alarm = (
                f"the outbox was corrupt ({why}); {len(got.records)} record(s) and "
                f"{'the' if session_key in got.meta else 'no'} active SOS session "
                f"salvaged, {got.unreadable} unreadable; the damaged file is kept as "
                f"{path}.corrupt-{stamp}"
                + ("" if same_box else "; seq numbering restarts under a new outbox_id")
            )
            state.write(db, state.ALARM, {"at": now.isoformat(), "what": alarm})
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(f"{path}.corrupt-{stamp}{suffix}"))
    fresh.rename(path)
    log.error("ALARM: %s. Acknowledge with `sosctl alarm --ack`.", alarm)
